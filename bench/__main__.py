"""``python -m bench [--quick] [--only throughput,transition,transfer,orchestration,sbx,gates] [--out DIR]``.

Runs the benchmarks in this order (throughput first, while nothing of ours runs beside it) and writes
``results.json``, ``RESULTS.md`` and the plots into ``--out`` (default: this directory). The results are
rewritten after every section, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench import analysis, gates, machine, orchestration, report, sbx, throughput, transfer, transition
from bench.settings import FULL, QUICK, SMOKE, Budgets
from rlpipe.jsonio import read_json, write_json_atomic

SECTIONS = ("throughput", "transition", "transfer", "orchestration", "sbx", "gates")
HERE = Path(__file__).resolve().parent
THROUGHPUT_PNG = "throughput.png"
TRANSFER_PNG = "transfer_vs_scratch.png"

log = logging.getLogger("bench")


def _budget_notes(b: Budgets) -> list[str]:
    tt = b.transfer_timesteps
    return [
        f"mode {b.mode}: {b.repetitions} repetitions; throughput windows PPO {b.ppo_window:,} steps, SAC "
        f"{b.sac_window:,} steps after learning_starts, raw env {b.raw_window:,} steps; baselines (a)–(c) cut off "
        f"after {b.max_seconds:g} s",
        f"transitions: {b.transition_runs} runner runs and {b.cold_runs} cold-process runs, "
        f"{b.transition_timesteps:,} steps per session",
        "transfer: " + ("the default curriculum's budgets and evaluation settings" if tt is None else
                        f"{tt:,} steps per session, evaluation every {b.transfer_eval_every:,} steps with "
                        f"{b.transfer_eval_episodes} episodes (reduced from the default curriculum's)")
        + f"; seeds {list(b.transfer_seeds)}; {b.workers} runs at a time",
        "gates: the quickstart curriculum (configs/quickstart.yaml) "
        + ("at its own budgets" if b.gate_timesteps is None else f"with {b.gate_timesteps:,} steps per session")
        + f", evaluation every {b.gate_eval_every:,} steps"
        + ("" if b.gate_eval_episodes is None else f" with {b.gate_eval_episodes} episodes")
        + f"; seeds {list(b.transfer_seeds)}, {b.gate_parallel} lineages at a time; stop_when at "
        f"{b.gate_fraction:g} of the ungated final reward for {b.gate_for_evals} evaluations",
    ]


def write_outputs(results: dict[str, Any], out: Path) -> None:
    """results.json and RESULTS.md (with the headline recomputed from what is there)."""
    results["headline"] = report.headline(results)
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    write_json_atomic(out / "results.json", results)
    (out / "RESULTS.md").write_text(report.render_markdown(results, analysis.explain(results)))


def render_only(out: Path) -> int:
    """Rewrite the headline, RESULTS.md and the throughput plot from an existing results.json."""
    results = read_json(out / "results.json")
    results["headline"] = report.headline(results)
    if results.get("throughput"):
        report.throughput_plot(results["throughput"], out / THROUGHPUT_PNG)
    write_json_atomic(out / "results.json", results)
    (out / "RESULTS.md").write_text(report.render_markdown(results, analysis.explain(results)))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmarks and write their results."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller budgets (about 10 minutes on 2 cores)")
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # tests only: microscopic budgets
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections to run")
    parser.add_argument("--out", type=Path, default=HERE, help="where results.json, RESULTS.md, PNGs go")
    parser.add_argument("--workdir", type=Path, default=None, help="keep run directories and logs here")
    parser.add_argument("--merge", action="store_true",
                        help="keep the other sections of --out's results.json and replace only those run now")
    parser.add_argument("--render-only", action="store_true",
                        help="measure nothing: rewrite RESULTS.md and the throughput plot from --out's results.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    if args.render_only:
        return render_only(args.out)
    budgets = SMOKE if args.smoke else QUICK if args.quick else FULL
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    results: dict[str, Any] = {"schema_version": 1, "mode": budgets.mode, "machine": machine.describe(),
                               "budgets": dataclasses.asdict(budgets), "budgets_notes": _budget_notes(budgets),
                               "wall_seconds": 0.0, "section_wall_seconds": {}}
    if args.merge and (out / "results.json").exists():
        results = read_json(out / "results.json")
        if results.get("mode") != budgets.mode:
            parser.error(f"--merge: {out / 'results.json'} is a {results.get('mode')} run, this is {budgets.mode}")
        now = machine.describe()
        # The budgets of the sections run now (the same mode): a section added since the first run is described.
        results["budgets"], results["budgets_notes"] = dataclasses.asdict(budgets), _budget_notes(budgets)
        results.setdefault("merged_sections", []).extend(
            {"section": name, "date": now["date"], "source_sha256": now["source_sha256"]} for name in only)

    def workdir(name: str) -> Path | None:
        return args.workdir / name if args.workdir else None

    def finish_section(name: str, t0: float) -> None:
        results["section_wall_seconds"][name] = round(time.perf_counter() - t0, 1)
        results["wall_seconds"] = round(sum(results["section_wall_seconds"].values()), 1)
        write_outputs(results, out)
        log.info("%s done in %.0f s", name, results["section_wall_seconds"][name])

    if "throughput" in only:
        t0 = time.perf_counter()
        results["throughput"] = throughput.run(budgets, workdir("throughput"))
        report.throughput_plot(results["throughput"], out / THROUGHPUT_PNG)
        results["throughput"]["plot"] = THROUGHPUT_PNG
        finish_section("throughput", t0)
    if "transition" in only:
        t0 = time.perf_counter()
        results["transition"] = transition.run(budgets, workdir("transition"))
        finish_section("transition", t0)
    if "transfer" in only:
        t0 = time.perf_counter()
        results["transfer"] = transfer.run(budgets, out / TRANSFER_PNG, workdir("transfer"))
        finish_section("transfer", t0)
    if "orchestration" in only:
        t0 = time.perf_counter()
        first_step = None
        if "transition" in results:
            first_step = results["transition"]["cold_process"]["warm_started_session"][
                "spawn_to_first_step_seconds"]["median"]
        try:
            results["orchestration"] = orchestration.run(budgets, first_step, workdir("orchestration"))
        except Exception as exc:  # a failed model of the AWS path is reported; the other sections stay
            log.exception("orchestration benchmark failed")
            results["orchestration"] = {"available": False, "reason": f"{type(exc).__name__}: {exc}"}
        finish_section("orchestration", t0)
    if "sbx" in only:
        t0 = time.perf_counter()
        results["sbx"] = sbx.run(budgets, workdir("sbx"))
        finish_section("sbx", t0)
    if "gates" in only:
        t0 = time.perf_counter()
        results["gates"] = gates.run(budgets, workdir("gates"))
        finish_section("gates", t0)
    log.info("wrote %s and %s (%.1f min)", out / "results.json", out / "RESULTS.md", results["wall_seconds"] / 60)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
