"""The run report's data (``report.json``), from the run state alone; the core only (no matplotlib, no SB3),
so the local runner and the AWS report Lambda share it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from rlpipe.outcome import SessionOutcome
from rlpipe.state import RunState, SessionState, seconds_between, utcnow

REPORT_SCHEMA_VERSION = 1

# The report's run status: a run that is pending or running is reported as "running".
_RUN_STATUS = {"pending": "running", "running": "running", "succeeded": "succeeded",
               "failed": "failed", "interrupted": "interrupted"}

# Filled by the AWS driver only; copied into a session's report entry when set.
AWS_FIELDS = ("job_name", "training_seconds", "billable_seconds", "spot_savings", "warm_pool_status",
              "reused_previous_pool", "warm_pool_idle_seconds", "cost_usd")

_EVALUATION_KEYS = {"timesteps", "global_timesteps", "mean_reward", "std_reward", "wall_seconds"}

# Run totals over the AWS fields: report key -> session field.
_AWS_TOTALS = {"total_cost_usd": "cost_usd", "total_billable_seconds": "billable_seconds",
               "total_training_seconds": "training_seconds",
               "total_warm_pool_idle_seconds": "warm_pool_idle_seconds"}


def _num(value: Any) -> float | None:
    """A finite float, or None (JSON has no NaN or infinity)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _seconds(start: str | None, end: str | None) -> float | None:
    """:func:`seconds_between`, or None for timestamps it cannot compare (a report must not crash on them)."""
    try:
        return seconds_between(start, end)
    except (TypeError, ValueError):
        return None


def _session_entry(index: int, s: SessionState) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "index": index,
        "name": s.name,
        "env": s.env,
        "algorithm": s.algorithm,
        "status": s.status,
        "timesteps": s.timesteps,
        "timesteps_budget": s.timesteps_budget,
        "global_timestep_offset": s.global_timestep_offset,
        "started_at": s.started_at,
        "first_step_at": s.first_step_at,
        "ended_at": s.ended_at,
        "wall_seconds": _num(s.wall_seconds),
        # The drivers decide what counts as a hand-over (RunState.measure_transition); none is guessed here.
        "transition_seconds": _num(s.transition_seconds),
        "fps": _num(s.fps),
        "final_eval_reward": _num(s.final_eval_reward),
        "best_eval_reward": _num(s.best_eval_reward),
        "handoff_from": s.handoff_from,
        "warm_started": s.handoff_from is not None,
        # What a warm start carried: the trainer's account when it has run, the plan's until then.
        "carried": list(s.carried),
        "reset": list(s.reset),
        "handoff_source": s.handoff_source,
        "notes": s.notes + s.handoff_notes,
        "bundle": s.bundle,
        "resumed_from_timesteps": s.resumed_from_timesteps,
        "attempts": s.attempts,
        "error": s.error,
        "has_metrics": s.handoff_source == "trainer" or bool(s.evaluations),
        "evaluations": [e.model_dump(mode="json", include=_EVALUATION_KEYS) for e in s.evaluations],
        # Where the files are relative to the report is the driver's to add (``href``, ``filmstrip_href``).
        "video": s.video.model_dump(mode="json") if s.video else None,
        "stopped_early": s.stopped_early,
        "stop_step": s.stop_step,
        "gate": s.gate.model_dump(mode="json", include={"metric", "at_least", "value", "passed"}) if s.gate else None,
    }
    for name in AWS_FIELDS:
        value = getattr(s, name)
        if value is not None:
            entry[name] = value
    return entry


def _span_seconds(sessions: list[dict[str, Any]], run_ended_at: str | None) -> float | None:
    """Seconds from the first session's start to the last known end (transitions included)."""
    starts = [s["started_at"] for s in sessions if s["started_at"]]
    ends = [s["ended_at"] for s in sessions if s["ended_at"]] + ([run_ended_at] if run_ended_at else [])
    if not starts or not ends:
        return None
    try:
        first = min(starts, key=datetime.fromisoformat)
        last = max(ends, key=datetime.fromisoformat)
    except (TypeError, ValueError):
        return None
    span = _seconds(first, last)
    return span if span is not None and span >= 0 else None


def build_report(state: RunState, outcomes: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The content of ``report.json`` for ``state``.

    ``outcomes`` maps a session name to its latest ``metrics.json`` (parsed, or a :class:`SessionOutcome`),
    applied to a copy of the state first (:meth:`SessionState.apply`); the report then reads the state only.
    A session without one holds what the state knows. ``total_wall_seconds`` spans the first session's start
    to the last known end, falling back to the sum of session wall and transition times.
    """
    state = state.model_copy(deep=True)
    for s in state.sessions:
        outcome = SessionOutcome.read((outcomes or {}).get(s.name), f"metrics of session '{s.name}'")
        if outcome is not None:
            s.apply(outcome)
    sessions = [_session_entry(i, s) for i, s in enumerate(state.sessions)]

    walls = [s["wall_seconds"] for s in sessions if s["wall_seconds"] is not None]
    transitions = [s["transition_seconds"] for s in sessions if s["transition_seconds"] is not None]
    session_wall = round(sum(walls), 3) if walls else None
    span = _span_seconds(sessions, state.ended_at)
    if span is None and walls:
        span = round(sum(walls) + sum(transitions), 3)

    failures = [{"session": s["name"], "status": s["status"], "error": s["error"]}
                for s in sessions if s["status"] in ("failed", "interrupted")]
    failures += [{"session": s.name, "status": "gate_failed", "error": s.gate.describe(s.name)}
                 for s in state.sessions if s.status == "completed" and s.gate_failed and s.gate]
    report: dict[str, Any] = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "pipeline": state.pipeline,
        "run_id": state.run_id,
        "status": _RUN_STATUS.get(state.status, state.status),
        "state_status": state.status,
        "config_fingerprint": state.config_fingerprint,
        "created_at": state.created_at,
        "updated_at": state.updated_at,
        "ended_at": state.ended_at,
        "generated_at": utcnow(),
        "error": state.error,
        "failures": failures,
        "sessions_total": len(sessions),
        "sessions_completed": sum(s["status"] == "completed" for s in sessions),
        "total_wall_seconds": span,
        "total_session_wall_seconds": session_wall,
        "total_transition_seconds": round(sum(transitions), 3) if transitions else None,
        "total_timesteps": sum(s["timesteps"] for s in sessions),
        "total_timesteps_budget": sum(s["timesteps_budget"] for s in sessions),
        "aws": any(name in s for s in sessions for name in AWS_FIELDS),
        "sessions": sessions,
    }
    for key, field in _AWS_TOTALS.items():
        values = [_num(s.get(field)) for s in sessions]
        values = [v for v in values if v is not None]
        if values:
            report[key] = round(sum(values), 6 if field == "cost_usd" else 3)
    return report
