"""The run report's data (``report.json``): the run state joined with each session's ``metrics.json``.

The same function serves the local runner and the AWS report Lambda, so it needs only the core (no
matplotlib, no SB3). The state is the authority on status; ``metrics.json`` (written by the trainer) is the
authority on rewards, evaluations and what a warm start really carried.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from rlpipe.state import RunState, SessionState, seconds_between, utcnow

REPORT_SCHEMA_VERSION = 1

# The report's run status: a run that is pending or running is reported as "running".
_RUN_STATUS = {"pending": "running", "running": "running", "succeeded": "succeeded",
               "failed": "failed", "interrupted": "interrupted"}

# Filled by the AWS driver only; copied into a session's report entry when set.
AWS_FIELDS = ("job_name", "training_seconds", "billable_seconds", "spot_savings", "warm_pool_status",
              "reused_previous_pool", "warm_pool_idle_seconds", "cost_usd")

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


def _int(value: Any) -> int | None:
    f = _num(value)
    return int(f) if f is not None else None


def _first(*values: Any) -> Any:
    """The first value that is not None."""
    return next((v for v in values if v is not None), None)


def _seconds(start: str | None, end: str | None) -> float | None:
    """:func:`seconds_between`, or None for timestamps it cannot compare (a report must not crash on them)."""
    try:
        return seconds_between(start, end)
    except (TypeError, ValueError):
        return None


def _evaluations(metrics: Mapping[str, Any], offset: int) -> list[dict[str, Any]]:
    """The session's evaluations on the global timestep axis, sorted, non-finite rewards dropped."""
    out = []
    for e in metrics.get("evaluations") or []:
        if not isinstance(e, Mapping):
            continue
        mean = _num(e.get("mean_reward"))
        steps = _int(e.get("timesteps"))
        global_steps = _first(_int(e.get("global_timesteps")), None if steps is None else offset + steps)
        if mean is None or global_steps is None:
            continue
        out.append({"timesteps": steps if steps is not None else global_steps - offset,
                    "global_timesteps": global_steps, "mean_reward": mean,
                    "std_reward": _num(e.get("std_reward")) or 0.0,
                    "wall_seconds": _num(e.get("wall_seconds"))})
    out.sort(key=lambda e: e["global_timesteps"])
    return out


def _handoff_notes(planned_carried: list[str], carried: list[str]) -> list[str]:
    """Say where the trainer's actual carry differs from the plan, so no difference passes unnoticed."""
    notes = []
    for part in planned_carried:
        if part not in carried:
            notes.append(f"planned to carry {part}, but it was not carried")
    for part in carried:
        if part not in planned_carried:
            notes.append(f"carried {part}, which the plan did not list")
    return notes


def _session_entry(index: int, s: SessionState, m: Mapping[str, Any] | None,
                   prev: dict[str, Any] | None) -> dict[str, Any]:
    m = m or {}
    timing = m.get("timing") if isinstance(m.get("timing"), Mapping) else {}

    offset = _first(_int(m.get("global_timestep_offset")), s.global_timestep_offset)

    evaluations = _evaluations(m, offset)
    rewards = [e["mean_reward"] for e in evaluations]
    final_reward = _first(_num(m.get("final_eval_reward")), rewards[-1] if rewards else None,
                          _num(s.final_eval_reward))
    best_reward = _first(_num(m.get("best_eval_reward")), max(rewards) if rewards else None,
                         _num(s.best_eval_reward))

    first_step_at = _first(s.first_step_at, timing.get("first_step_at"))
    ended_at = _first(s.ended_at, timing.get("ended_at"))
    # The drivers decide what counts as a hand-over (rlpipe.state.transition_seconds); none is guessed here.
    transition = _num(s.transition_seconds)

    # What a warm start carried: the trainer's account when it has run, the plan's until then.
    has_handoff_record = "carried" in m or "reset" in m
    carried = list(m.get("carried") or []) if has_handoff_record else list(s.carried)
    reset = list(m.get("reset") or []) if has_handoff_record else list(s.reset)
    notes = [str(n) for n in (m.get("notes") or [])]
    if has_handoff_record and s.handoff_from:
        notes += _handoff_notes(s.carried, carried)

    entry: dict[str, Any] = {
        "index": index,
        "name": s.name,
        "env": s.env,
        "algorithm": s.algorithm,
        "status": s.status,
        "timesteps": s.timesteps or _int(m.get("timesteps")) or 0,
        "timesteps_budget": s.timesteps_budget,
        "global_timestep_offset": offset,
        "started_at": _first(s.started_at, timing.get("started_at")),
        "first_step_at": first_step_at,
        "ended_at": ended_at,
        "wall_seconds": _first(_num(s.wall_seconds), _num(timing.get("wall_seconds"))),
        "transition_seconds": transition,
        "fps": _num(timing.get("fps")),
        "final_eval_reward": final_reward,
        "best_eval_reward": best_reward,
        "handoff_from": s.handoff_from,
        "warm_started": s.handoff_from is not None,
        "carried": carried,
        "reset": reset,
        "handoff_source": "trainer" if has_handoff_record else "plan",
        "notes": notes,
        "bundle": s.bundle,
        "resumed_from_timesteps": s.resumed_from_timesteps,
        "attempts": s.attempts,
        "error": s.error,
        "has_metrics": bool(m),
        "evaluations": evaluations,
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


def build_report(state: RunState, metrics: Mapping[str, dict | None]) -> dict[str, Any]:
    """The content of ``report.json`` for ``state``, with ``metrics`` mapping session name to its metrics.json.

    A session missing from ``metrics`` (or mapped to None) has not produced metrics yet; its entry then
    holds what the state knows. ``total_wall_seconds`` spans the first session's start to the last known end,
    falling back to the sum of session wall and transition times.
    """
    sessions: list[dict[str, Any]] = []
    for i, s in enumerate(state.sessions):
        m = metrics.get(s.name)
        sessions.append(_session_entry(i, s, m if isinstance(m, Mapping) else None,
                                       sessions[-1] if sessions else None))

    walls = [s["wall_seconds"] for s in sessions if s["wall_seconds"] is not None]
    transitions = [s["transition_seconds"] for s in sessions if s["transition_seconds"] is not None]
    session_wall = round(sum(walls), 3) if walls else None
    span = _span_seconds(sessions, state.ended_at)
    if span is None and walls:
        span = round(sum(walls) + sum(transitions), 3)

    failures = [{"session": s["name"], "status": s["status"], "error": s["error"]}
                for s in sessions if s["status"] in ("failed", "interrupted")]
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
