"""The ``rlpipe`` command line: validate, plan, run and report pipelines (and drive them on AWS)."""

from __future__ import annotations

import json
import logging
import sys
import threading
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from rlpipe.algorithms import describe_backends
from rlpipe.config import ConfigError, PipelineConfig, json_schema, load_pipeline
from rlpipe.contract import STATE_FILE
from rlpipe.plan import CostCeilingError, Plan, build_plan, check_cost_ceiling

app = typer.Typer(help="Curricula of stable-baselines3 sessions on MuJoCo, locally and on SageMaker.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
# Off a terminal rich assumes 80 columns; logs and CI are wider than that.
console = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200)

ConfigArg = Annotated[Path, typer.Argument(help="pipeline YAML file", show_default=False)]


def _refuse_over_ceiling(p: Plan) -> None:
    """Exit 2 with a named error when the estimate for all seeds exceeds ``max_cost_usd``."""
    try:
        check_cost_ceiling(p)
    except CostCeilingError as exc:
        err.print(f"[bold red]error[/]: {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _load(config: Path) -> PipelineConfig:
    try:
        return load_pipeline(config)
    except ConfigError as exc:
        err.print(f"[bold red]{exc.source}: {len(exc.problems)} problem(s)[/]", highlight=False)
        for p in exc.problems:
            err.print(f"  {p}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


@app.command()
def validate(config: ConfigArg) -> None:
    """Check a pipeline; print every problem (session, field, what is valid). Exit 0 when valid."""
    pipeline = _load(config)
    console.print(f"[green]valid[/]: {pipeline.name}, {len(pipeline.sessions)} session(s)")
    for s in pipeline.sessions:
        console.print(f"  {s.name}: {s.algorithm} on backend {s.backend}", markup=False, highlight=False)
    console.print(f"algorithms by backend: {describe_backends()}", markup=False, highlight=False)


@app.command()
def schema() -> None:
    """Print the JSON Schema of the pipeline file."""
    print(json.dumps(json_schema(), indent=2))


@app.command()
def plan(config: ConfigArg, as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """Show what a pipeline will do: handoffs, warm-pool reuse on AWS and an estimated cost."""
    pipeline = _load(config)
    p = build_plan(pipeline)
    if as_json:
        print(json.dumps(p.to_dict(), indent=2))
        _refuse_over_ceiling(p)
        return
    table = Table(title=f"{p.pipeline}: {len(p.sessions)} session(s)")
    for col in ("#", "session", "env", "algo", "timesteps", "from", "instance", "spot", "pool",
                "reuses pool", "keep-alive s", "est. $"):
        table.add_column(col, overflow="fold",
                         justify="right" if col in ("#", "timesteps", "keep-alive s", "est. $") else "left")
    for s in p.sessions:
        table.add_row(str(s.index + 1), s.name, s.env, s.algorithm, f"{s.timesteps:,}", s.handoff_from or "-",
                      f"{s.instance_type} x{s.instance_count}", "yes" if s.spot else "no",
                      "yes" if s.warm_pool else "no",
                      ("yes" if s.reuses_previous_pool else "no") if s.index else "-",
                      str(s.keep_alive_seconds),
                      f"{s.estimated_cost_usd:.3f}" if s.estimated_cost_usd is not None else "n/a")
    console.print(table)
    total = f"${p.estimated_cost_usd:.2f}" if p.estimated_cost_usd is not None else "n/a"
    console.print(f"estimated AWS cost {total} per lineage (prices: {p.price_region}, recorded "
                  f"{p.price_recorded}; see rlpipe/data/prices.json)")
    if len(p.seeds) > 1 or p.max_cost_usd is not None:
        waves = "; then ".join(", ".join(f"seed {x}" for x in wave) for wave in p.waves())
        console.print(f"lineages: {len(p.seeds)} (seeds {', '.join(map(str, p.seeds))}), {p.parallel} at once: "
                      f"{waves}", highlight=False)
        all_seeds = (f"${p.estimated_cost_all_seeds_usd:.2f}" if p.estimated_cost_all_seeds_usd is not None
                     else "n/a")
        ceiling = f" (max_cost_usd ${p.max_cost_usd:.2f})" if p.max_cost_usd is not None else ""
        console.print(f"estimated AWS cost for all lineages {all_seeds}{ceiling}", highlight=False)
    for s in p.sessions:
        if s.index and not s.reuses_previous_pool:
            console.print(f"{s.name}: cold start ({s.reuse_reason})", highlight=False)
        for note in s.notes:
            console.print(f"[yellow]note[/] {s.name}: {note}", highlight=False)
    for cfg in pipeline.sessions:
        gates = _gate_words(cfg)
        if gates:
            console.print(f"{cfg.name}: {gates}", highlight=False)
    _refuse_over_ceiling(p)


def _gate_words(cfg) -> str:  # type: ignore[no-untyped-def]
    """A session's gates in words, for the plan."""
    parts = []
    if cfg.stop_when is not None:
        w = cfg.stop_when
        parts.append(f"stops early once {w.metric} >= {w.at_least:g} for {w.for_evals} evaluation(s) in a row")
    if cfg.require is not None:
        parts.append(f"requires {cfg.require.metric} >= {cfg.require.at_least:g} (below: its lineage ends there)")
    if cfg.handoff.checkpoint == "best":
        parts.append("hands over the checkpoint of its best evaluation")
    return "; ".join(parts)


class _ProgressHooks:
    """Rich progress bars on a terminal; plain log lines otherwise."""

    def __init__(self, pipeline: PipelineConfig, progress: Progress | None) -> None:
        self.progress = progress
        self.budgets = [s.timesteps for s in pipeline.sessions]
        self.overall = progress.add_task("pipeline", total=sum(self.budgets)) if progress else None
        self.current: int | None = None
        self.index = 0
        self._last_logged = -1

    def started(self, index: int, name: str, done: int, budget: int) -> None:
        self.index = index
        if self.progress is not None:
            if self.current is not None:
                self.progress.remove_task(self.current)
            self.current = self.progress.add_task(name, total=budget, completed=done)
        else:
            print(f"session {index + 1}/{len(self.budgets)} {name}: starting ({budget:,} steps)", flush=True)

    def step(self, steps: int, budget: int) -> None:
        before = sum(self.budgets[: self.index])
        if self.progress is not None:
            self.progress.update(self.current, completed=steps)
            self.progress.update(self.overall, completed=before + steps)
            return
        tenth = steps * 10 // budget
        if tenth != self._last_logged:
            self._last_logged = tenth
            print(f"  {steps:,}/{budget:,} steps ({tenth * 10}%)", flush=True)

    def finished(self, index: int, name: str, status: str) -> None:
        if self.progress is None:
            print(f"session {index + 1}/{len(self.budgets)} {name}: {status}", flush=True)


@app.command()
def run(config: ConfigArg,
        output: Annotated[Optional[Path], typer.Option("--output", "-o", help="run directory "
                                                       "(default: runs/<pipeline name>)")] = None,
        resume: Annotated[bool, typer.Option("--resume", help="skip completed sessions (and settled lineages), "
                                             "continue the interrupted ones from their newest checkpoint")] = False,
        lineage: Annotated[Optional[int], typer.Option("--lineage", hidden=True,
                                                       help="run only this seed's lineage into --output")] = None,
        repair: Annotated[bool, typer.Option("--repair", help="with --resume: set damaged checkpoints and "
                                             "metrics aside (never deleted) and rebuild a damaged bundle from "
                                             "its session's final checkpoint")] = False,
        ) -> None:
    """Run a pipeline locally, session after session, each warm-started as configured; with several seeds,
    one lineage per seed, `parallel` at a time."""
    from rlpipe.runner import LocalRunner, RunDirError, SessionHooks, default_output
    from rlpipe.trainer.entrypoint import EXIT_INTERRUPTED, install_stop_handlers

    pipeline = _load(config)
    seeds = pipeline.seed_list()
    if lineage is None:
        _refuse_over_ceiling(build_plan(pipeline))
    elif lineage not in seeds:
        err.print(f"[bold red]error[/]: --lineage {lineage}: not one of the config's seeds "
                  f"({', '.join(map(str, seeds))})", highlight=False)
        raise typer.Exit(2)
    out = output or default_output(pipeline)
    stop = threading.Event()
    if lineage is None and len(seeds) > 1:
        _run_lineages(pipeline, config, out, output, resume, stop)
        return
    if lineage is not None or pipeline.seeds:
        pipeline = pipeline.lineage(seeds[0] if lineage is None else lineage)
    try:
        runner_ = LocalRunner(pipeline, out, resume=resume, stop=stop, repair=repair)
    except RunDirError as exc:
        err.print(f"[bold red]error[/]: {exc}", highlight=False, soft_wrap=True)  # one line, whatever its length
        raise typer.Exit(2) from None
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("rlpipe").setLevel(logging.INFO)
    install_stop_handlers(stop)
    tty = sys.stdout.isatty()
    progress = Progress(TextColumn("{task.description:<20}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TimeRemainingColumn(), console=console) if tty else None
    hooks = _ProgressHooks(pipeline, progress)
    runner_.hooks = SessionHooks(hooks.started, hooks.step, hooks.finished)
    try:
        if progress is not None:
            with progress:
                state = runner_.run()
        else:
            state = runner_.run()
    except Exception as exc:
        err.print(f"[bold red]run failed[/]: {exc}", highlight=False)
        err.print(f"state and partial report in {out}", highlight=False)
        raise typer.Exit(1) from None
    _summary(state, out)
    if state.status == "interrupted":
        err.print(f"stopped; continue with: rlpipe run {config} --resume" + (f" --output {output}" if output else ""))
        raise typer.Exit(EXIT_INTERRUPTED)
    if state.status == "failed" and state.failed_gate() is not None:
        err.print(f"[bold red]lineage ended[/]: {state.error}", highlight=False)
        raise typer.Exit(1)


def _run_lineages(pipeline: PipelineConfig, config: Path, out: Path, output: Optional[Path], resume: bool,
                  stop: threading.Event) -> None:
    """Several seeds: one process per lineage, ``parallel`` at a time; a summary table at the end."""
    from rlpipe.lineages import LineageRunner
    from rlpipe.runner import RunDirError
    from rlpipe.trainer.entrypoint import EXIT_INTERRUPTED, install_stop_handlers

    try:
        driver = LineageRunner(pipeline, config, out, resume=resume, stop=stop)
    except RunDirError as exc:
        err.print(f"[bold red]error[/]: {exc}", highlight=False)
        raise typer.Exit(2) from None
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    install_stop_handlers(stop)
    lineages = driver.run()
    table = Table(title=f"{pipeline.name}: {len(lineages)} lineage(s)")
    for col in ("seed", "status", "error"):
        table.add_column(col)
    for lin in lineages:
        table.add_row(str(lin.seed), lin.status, lin.error or "-")
    console.print(table)
    console.print(f"report: {out / 'report.html'}")
    statuses = {lin.status for lin in lineages}
    if "interrupted" in statuses:
        err.print(f"stopped; continue with: rlpipe run {config} --resume" + (f" --output {output}" if output else ""))
        raise typer.Exit(EXIT_INTERRUPTED)
    if "failed" in statuses:
        raise typer.Exit(1)


def _summary(state, out: Path) -> None:  # type: ignore[no-untyped-def]
    table = Table(title=f"{state.pipeline}: {state.status}")
    for col in ("session", "status", "timesteps", "wall s", "transition s", "final reward", "best reward",
                "carried"):
        table.add_column(col)
    for s in state.sessions:
        table.add_row(s.name, s.status, f"{s.timesteps:,}", f"{s.wall_seconds or 0:.1f}",
                      f"{s.transition_seconds:.2f}" if s.transition_seconds is not None else "-",
                      f"{s.final_eval_reward:.1f}" if s.final_eval_reward is not None else "-",
                      f"{s.best_eval_reward:.1f}" if s.best_eval_reward is not None else "-",
                      ", ".join(s.carried) or "-")
    console.print(table)
    console.print(f"report: {out / 'report.html'}")


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="local run directory")]) -> None:
    """Rebuild report.json / report.md / report.html of a local run."""
    from rlpipe.report.local import write_local_report

    from rlpipe.lineages import is_multi_seed_run, write_multi_seed_report

    if is_multi_seed_run(run_dir):
        written = write_multi_seed_report(run_dir)
    elif not (run_dir / STATE_FILE).exists():
        err.print(f"[bold red]error[/]: {run_dir} holds no state.json (not a run directory)", highlight=False)
        raise typer.Exit(2)
    else:
        from rlpipe.integrity import DamagedFile
        from rlpipe.runner import load_state

        try:
            load_state(run_dir)
        except DamagedFile as exc:
            err.print(f"[bold red]error[/]: {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        written = write_local_report(run_dir)
    for path in written.values():
        console.print(str(path))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train(root: Annotated[Optional[Path], typer.Option(help="container-contract root "
                                                       "(default: $RLPIPE_ROOT or /opt/ml)")] = None) -> None:
    """Run one session under the SageMaker container contract (what the training image runs)."""
    from rlpipe.trainer.entrypoint import main

    raise typer.Exit(main(["--root", str(root)] if root else []))


def _register_cloud() -> None:
    try:
        from rlpipe.cloud.cli import register
    except ModuleNotFoundError as exc:  # the AWS commands need the `cli` extra (boto3)
        if exc.name not in ("boto3", "botocore", "rlpipe.cloud", "rlpipe.cloud.cli"):
            raise
        return
    register(app)


_register_cloud()
