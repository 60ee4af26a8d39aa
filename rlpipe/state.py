"""Run state: one document per run, the single source for resume, status and reports.

Locally it lives at ``runs/<pipeline>/state.json``; on AWS at ``s3://<bucket>/runs/<run_id>/state.json``.
Both drivers change it only through these models, so a report reads the same shape from either.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rlpipe.config import PipelineConfig
from rlpipe.plan import build_plan

SessionStatus = Literal["pending", "running", "completed", "failed", "interrupted"]
RunStatus = Literal["pending", "running", "succeeded", "failed", "interrupted"]


def utcnow() -> str:
    """ISO-8601 UTC timestamp."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def seconds_between(start: str | None, end: str | None) -> float | None:
    """Seconds from ``start`` to ``end`` (ISO timestamps), or None if either is missing."""
    if not start or not end:
        return None
    try:
        return round((datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds(), 3)
    except (TypeError, ValueError):  # unparseable, or naive mixed with aware
        return None


def transition_seconds(prev_ended_at: str | None, first_step_at: str | None,
                       transfer_eval_seconds: float | None = None) -> float | None:
    """Hand-over time between two sessions: the previous session's end to this one's first training step.

    The step-0 evaluation of a warm-started policy runs in between; it is a measurement, not hand-over cost,
    so it is subtracted (and reported as an evaluation of its own).
    """
    gap = seconds_between(prev_ended_at, first_step_at)
    if gap is None:
        return None
    return round(max(0.0, gap - (transfer_eval_seconds or 0.0)), 3)


class SessionState(BaseModel):
    """What is known about one session of a run."""

    model_config = ConfigDict(extra="ignore")

    name: str
    env: str
    algorithm: str
    status: SessionStatus = "pending"
    timesteps_budget: int
    timesteps: int = 0
    global_timestep_offset: int = 0
    handoff_from: str | None = None
    carried: list[str] = Field(default_factory=list)
    reset: list[str] = Field(default_factory=list)
    started_at: str | None = None
    first_step_at: str | None = None
    ended_at: str | None = None
    wall_seconds: float | None = None
    transition_seconds: float | None = None
    final_eval_reward: float | None = None
    best_eval_reward: float | None = None
    bundle: str | None = None
    resumed_from_timesteps: int | None = None
    attempts: int = 0
    error: str | None = None
    # Filled by the AWS driver only.
    job_name: str | None = None
    training_seconds: float | None = None
    billable_seconds: float | None = None
    spot_savings: float | None = None
    warm_pool_status: str | None = None
    reused_previous_pool: bool | None = None
    warm_pool_idle_seconds: float | None = None
    cost_usd: float | None = None


class RunState(BaseModel):
    """A run of a pipeline."""

    model_config = ConfigDict(extra="ignore")

    pipeline: str
    run_id: str
    config_fingerprint: str
    status: RunStatus = "pending"
    created_at: str = Field(default_factory=utcnow)
    updated_at: str = Field(default_factory=utcnow)
    ended_at: str | None = None
    error: str | None = None
    sessions: list[SessionState]

    @classmethod
    def new(cls, pipeline: PipelineConfig, run_id: str) -> RunState:
        """Fresh state for ``pipeline`` with every session pending."""
        plan = build_plan(pipeline)
        sessions = [SessionState(name=p.name, env=p.env, algorithm=p.algorithm, timesteps_budget=p.timesteps,
                                 global_timestep_offset=p.global_timestep_offset,
                                 handoff_from=p.handoff_from, carried=p.carried, reset=p.reset)
                    for p in plan.sessions]
        return cls(pipeline=pipeline.name, run_id=run_id, config_fingerprint=pipeline.fingerprint(),
                   sessions=sessions)

    def session(self, name: str) -> SessionState:
        """The state of session ``name``."""
        for s in self.sessions:
            if s.name == name:
                return s
        raise KeyError(name)

    def next_index(self) -> int | None:
        """Index of the first session not completed (pending, interrupted or failed); None when all are done."""
        return next((i for i, s in enumerate(self.sessions) if s.status != "completed"), None)

    def touch(self) -> None:
        """Mark the state as changed now."""
        self.updated_at = utcnow()

    def finish(self, status: RunStatus, error: str | None = None) -> None:
        """Record the run's final status."""
        self.status = status
        self.error = error
        self.ended_at = utcnow()
        self.touch()

    def to_json(self) -> dict[str, Any]:
        """JSON-able form."""
        return self.model_dump(mode="json")
