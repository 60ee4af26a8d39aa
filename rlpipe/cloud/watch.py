"""Following a run on AWS: each session's state, steps, latest evaluation reward and speed.

The run's ``state.json`` in S3 says what each session is doing; for a running session two fresher sources
exist: the newest checkpoint manifest its job synced to S3 (steps and evaluations so far) and the metrics
SageMaker publishes to CloudWatch from the job's metric lines (each evaluation, within a minute or so).
Of these, the one with the most steps wins. ``rlpipe status RUN --watch`` redraws this until the run ends.

A run with several seeds is one table per lineage (each lineage is a single-seed run of its own, see
:mod:`rlpipe.cloud.steps.lineages`) under a line for the run: its seeds, how many run at once and its status
across lineages.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from rlpipe.cloud.metrics import latest_job_metrics
from rlpipe.cloud.steps.lineages import run_status
from rlpipe.cloud.store import RunKeys, S3Store, is_missing
from rlpipe.state import RunState, SessionState

TERMINAL_STATUSES = ("succeeded", "failed", "interrupted")
CHECKPOINT_MANIFEST = "manifest.json"  # rlpipe.trainer.checkpoints.MANIFEST (the trainer is not imported here)
CHECKPOINT_DIR_PREFIX = "step-"
# What the live view asks CloudWatch for: the session's own steps, its latest evaluation and speed.
LIVE_METRICS = ("timesteps", "eval_mean_reward", "fps")


@dataclass(frozen=True)
class Progress:
    """Where a session stands: steps, latest evaluation reward, speed, and where that was read."""

    timesteps: int | None = None
    reward: float | None = None
    fps: float | None = None
    source: str = "state"


@dataclass
class RunView:
    """One refresh: the run's state, each session's progress, and the driving execution's status."""

    state: RunState
    progress: dict[str, Progress] = field(default_factory=dict)
    execution_status: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        return self.state.status

    @property
    def ended(self) -> bool:
        """Whether there is nothing more to follow: the run has a terminal status, or its execution ended
        (the cleanup then closes the run; the last state is shown as it is)."""
        return self.state.status in TERMINAL_STATUSES or self.execution_status not in (None, "RUNNING")


@dataclass(frozen=True)
class LineageView:
    """One lineage of a run with several seeds: its seed, its run id and its view (None while its state has not
    been written yet)."""

    seed: int
    run_id: str
    view: RunView | None

    @property
    def status(self) -> str:
        return self.view.state.status if self.view is not None else "pending"


@dataclass
class LineagesView:
    """One refresh of a run with several seeds: its ``lineages.json``, each lineage's view and the driving
    execution's status."""

    record: Mapping[str, Any]
    lineages: list[LineageView]
    execution_status: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return str(self.record["run_id"])

    @property
    def status(self) -> str:
        """The run's status across its lineages (as the report across lineages states it)."""
        return run_status([lin.status for lin in self.lineages])

    @property
    def ended(self) -> bool:
        """Whether there is nothing more to follow: every lineage has a terminal status, or the execution
        ended."""
        return (all(lin.status in TERMINAL_STATUSES for lin in self.lineages)
                or self.execution_status not in (None, "RUNNING"))


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def state_progress(session: SessionState) -> Progress:
    """Progress as ``state.json`` records it (final for a finished session, last recorded for a running one)."""
    latest = session.evaluations[-1].mean_reward if session.evaluations else None
    return Progress(timesteps=session.timesteps, reward=_finite(session.final_eval_reward) if latest is None
                    else latest, fps=_finite(session.fps), source="state")


def checkpoint_progress(store: S3Store, run_id: str, session: str) -> Progress | None:
    """Progress from the newest complete checkpoint the session's job synced to S3 (its manifest is written
    last), or None when there is none yet."""
    prefix = RunKeys(run_id).checkpoints(session)
    names: list[str] = []
    for page in store.s3.get_paginator("list_objects_v2").paginate(Bucket=store.bucket, Prefix=prefix,
                                                                     Delimiter="/"):
        names += [p["Prefix"][len(prefix):].rstrip("/") for p in page.get("CommonPrefixes", [])]
    for name in sorted((n for n in names if n.startswith(CHECKPOINT_DIR_PREFIX)), reverse=True):
        try:
            manifest = store.get_json_or_none(f"{prefix}{name}/{CHECKPOINT_MANIFEST}")
        except ValueError:  # a manifest caught mid-upload: try the one before
            manifest = None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("timesteps"), int):
            continue
        rewards = [e.get("mean_reward") for e in manifest.get("evaluations") or [] if isinstance(e, dict)]
        rewards = [r for r in rewards if isinstance(r, (int, float)) and math.isfinite(r)]
        return Progress(timesteps=manifest["timesteps"], reward=rewards[-1] if rewards else None,
                        source="checkpoint")
    return None


def cloudwatch_progress(cloudwatch: Any, job_name: str) -> Progress | None:
    """Progress from the job's newest metrics on CloudWatch, or None when it has published none yet."""
    found = latest_job_metrics(cloudwatch, job_name, LIVE_METRICS)
    if not found:
        return None
    steps = found.get("timesteps")
    return Progress(timesteps=int(steps[1]) if steps else None,
                    reward=found["eval_mean_reward"][1] if "eval_mean_reward" in found else None,
                    fps=found["fps"][1] if "fps" in found else None, source="cloudwatch")


def freshest(*candidates: Progress | None) -> Progress:
    """The candidate with the most steps (the first one on a tie); a missing reward or speed is taken from
    the others."""
    present = [c for c in candidates if c is not None]
    if not present:
        return Progress()
    best = max(present, key=lambda c: -1 if c.timesteps is None else c.timesteps)
    reward = next((c.reward for c in [best, *present] if c.reward is not None), None)
    fps = next((c.fps for c in [best, *present] if c.fps is not None), None)
    return Progress(timesteps=best.timesteps, reward=reward, fps=fps, source=best.source)


class _Sources:
    """Reading the optional sources of a view: what cannot be read is noted, not fatal."""

    unavailable: dict[str, str]

    def _optional(self, what: str, call: Callable[[], Any]) -> Any:
        """``call()``, or None (noting why) when the user's credentials may not use that source."""
        try:
            return call()
        except Exception as exc:  # botocore ClientError (AccessDenied, throttling): the view goes on without it
            self.unavailable[what] = " ".join(str(exc).split())[:200]
            return None

    def _execution(self, store: S3Store, keys: RunKeys, stepfunctions: Any) -> tuple[str | None, list[str]]:
        """The status of the execution that drives the run of ``keys`` and a note when it has ended."""
        owner = store.get_json_or_none(keys.owner) or {}
        arn = owner.get("execution_arn")
        if not arn:
            return None, []
        described = self._optional("the execution", lambda: stepfunctions.describe_execution(executionArn=arn))
        status = (described or {}).get("status")
        if status in (None, "RUNNING"):
            return status, []
        return status, [f"execution {owner.get('execution') or arn} ended as {status}; the run's state is "
                        "updated by its cleanup"]

    def _unavailable_notes(self) -> list[str]:
        return [f"{what} not read: {why}" for what, why in sorted(self.unavailable.items())]


@dataclass
class RunWatcher(_Sources):
    """Reads one run's view from S3 (and CloudWatch and Step Functions when clients are given)."""

    store: S3Store
    run_id: str
    cloudwatch: Any = None
    stepfunctions: Any = None
    unavailable: dict[str, str] = field(default_factory=dict)  # source -> why it could not be read

    def view(self) -> RunView:
        """The run now."""
        self.unavailable.clear()
        keys = RunKeys(self.run_id)
        state = RunState.model_validate(self.store.get_json(keys.state))
        view = RunView(state=state)
        for session in state.sessions:
            from_state = state_progress(session)
            if session.status != "running":
                view.progress[session.name] = from_state
                continue
            from_checkpoint = self._optional("checkpoints", lambda s=session.name: checkpoint_progress(
                self.store, self.run_id, s))
            from_metrics = None
            if self.cloudwatch is not None and session.job_name:
                from_metrics = self._optional("CloudWatch metrics", lambda j=session.job_name: cloudwatch_progress(
                    self.cloudwatch, j))
            view.progress[session.name] = freshest(from_metrics, from_checkpoint, from_state)
        if self.stepfunctions is not None and state.status not in TERMINAL_STATUSES:
            view.execution_status, notes = self._execution(self.store, keys, self.stepfunctions)
            view.notes += notes
        view.notes += self._unavailable_notes()
        return view


@dataclass
class LineagesWatcher(_Sources):
    """Reads the view of a run with several seeds (``record``: its ``lineages.json``): each lineage through a
    :class:`RunWatcher`, the one execution that drives them all once per refresh."""

    store: S3Store
    record: Mapping[str, Any]
    cloudwatch: Any = None
    stepfunctions: Any = None
    unavailable: dict[str, str] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        return str(self.record["run_id"])

    def _lineage(self, seed: int, run_id: str) -> LineageView:
        try:
            # No Step Functions client: the lineages share the run's execution, asked about once below.
            view: RunView | None = RunWatcher(self.store, run_id, cloudwatch=self.cloudwatch).view()
        except Exception as exc:  # lineages.json is written just before the lineages' states
            if not is_missing(exc):
                raise
            view = None
        return LineageView(seed=seed, run_id=run_id, view=view)

    def view(self) -> LineagesView:
        """The run now."""
        self.unavailable.clear()
        view = LineagesView(record=self.record, lineages=[self._lineage(int(item["seed"]), str(item["run_id"]))
                                                          for item in self.record["lineages"]])
        if self.stepfunctions is not None and not view.ended:
            view.execution_status, view.notes = self._execution(self.store, RunKeys(self.run_id),
                                                                self.stepfunctions)
        view.notes += self._unavailable_notes()
        return view


def _fmt(value: Any, spec: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return format(value, spec)


def run_table(view: RunView, footer: str | None = None, title: str | None = None) -> Table:
    """One row per session (a line between lineages: sessions that start from scratch): status, attempt, job,
    steps against the budget, latest evaluation reward, speed, where those came from, pool reuse, AWS time and
    cost. ``footer`` goes under the notes; ``title`` replaces ``<pipeline> / <run id>: <status>``."""
    state = view.state
    table = Table(title=title or f"{state.pipeline} / {state.run_id}: {state.status}",
                  caption="\n".join([*view.notes, *([footer] if footer else [])]) or None)
    for col in ("#", "session", "status", "try", "job", "steps", "reward", "fps", "from", "billable s",
                "pool", "reused pool", "cost $"):
        table.add_column(col, justify="right" if col in ("#", "steps", "reward", "fps", "billable s", "cost $")
                         else "left")
    for i, s in enumerate(state.sessions):
        if i and s.handoff_from is None:
            table.add_section()
        progress = view.progress.get(s.name) or state_progress(s)
        steps = progress.timesteps if progress.timesteps is not None else s.timesteps
        share = f" ({100 * steps / s.timesteps_budget:.0f}%)" if s.timesteps_budget else ""
        table.add_row(str(i), s.name, s.status, _fmt(s.attempts or None), _fmt(s.job_name),
                      f"{steps:,} / {s.timesteps_budget:,}{share}", _fmt(progress.reward, ".2f"),
                      _fmt(progress.fps, ".0f"), progress.source, _fmt(s.billable_seconds, ".0f"),
                      _fmt(s.warm_pool_status), _fmt(s.reused_previous_pool), _fmt(s.cost_usd, ".4f"))
    return table


def lineages_table(view: LineagesView, footer: str | None = None) -> Group:
    """A run with several seeds: a line for the run (seeds, lineages at once, status across lineages), then
    :func:`run_table` of each lineage; notes and ``footer`` at the end."""
    record = view.record
    seeds = ", ".join(str(lin.seed) for lin in view.lineages)
    header = (f"{record.get('pipeline')} / {view.run_id}: {view.status} (seeds {seeds}; "
              f"{record.get('parallel', 1)} at once{'; fail_fast' if record.get('fail_fast') else ''})")
    parts: list[RenderableType] = [Text(header, style="bold")]
    for lin in view.lineages:
        if lin.view is None:
            parts.append(Text(f"seed {lin.seed} / {lin.run_id}: pending (no state yet)"))
        else:
            parts.append(run_table(lin.view, title=f"seed {lin.seed} / {lin.run_id}: {lin.status}"))
    tail = [*view.notes, *([footer] if footer else [])]
    if tail:
        parts.append(Text("\n".join(tail), style="dim"))
    return Group(*parts)


def render(view: RunView | LineagesView, footer: str | None = None) -> RenderableType:
    """The view of a run: :func:`run_table` for a single-seed run, :func:`lineages_table` for several seeds."""
    return lineages_table(view, footer) if isinstance(view, LineagesView) else run_table(view, footer)


def pause(seconds: float) -> None:
    """Wait between refreshes (a seam for tests)."""
    time.sleep(seconds)


def follow(watcher: RunWatcher | LineagesWatcher, console: Console, interval: float) -> RunView | LineagesView:
    """Redraw the run every ``interval`` seconds until it ends; returns the last view."""
    def drawn(view: RunView | LineagesView) -> RenderableType:
        when = datetime.now().strftime("%H:%M:%S")
        return render(view, None if view.ended else f"read at {when}, again every {interval:g} s (Ctrl-C stops "
                                                      "watching, not the run)")

    view: RunView | LineagesView = watcher.view()
    with Live(drawn(view), console=console, auto_refresh=False, transient=False) as live:
        while not view.ended:
            pause(interval)
            view = watcher.view()
            live.update(drawn(view), refresh=True)
    return view
