"""Run state: one document per run, the single source for resume, status and reports.

Locally it lives at ``runs/<pipeline>/state.json``; on AWS at ``s3://<bucket>/runs/<run_id>/state.json``.
Both drivers change it only through these models, so a report reads the same shape from either.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rlpipe.config import PipelineConfig
from rlpipe.outcome import Evaluation, GateResult, SessionOutcome, VideoOutcome
from rlpipe.plan import Plan, build_plan

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


def _finite(value: float | None) -> float | None:
    """``value`` if it is a finite number, else None (JSON has no NaN or infinity)."""
    return value if value is not None and math.isfinite(value) else None


def _first(*values: float | None) -> float | None:
    return next((v for v in values if v is not None), None)


def _on_run_axis(evaluations: list[Evaluation], offset: int) -> list[Evaluation]:
    """Evaluations with both step counts (session and run), sorted; those without a finite reward dropped."""
    out = []
    for e in evaluations:
        mean = _finite(e.mean_reward)
        run_steps = e.global_timesteps if e.global_timesteps is not None else \
            None if e.timesteps is None else offset + e.timesteps
        if mean is None or run_steps is None:
            continue
        out.append(Evaluation(timesteps=e.timesteps if e.timesteps is not None else run_steps - offset,
                              global_timesteps=run_steps, mean_reward=mean,
                              std_reward=_finite(e.std_reward) or 0.0, wall_seconds=_finite(e.wall_seconds)))
    return sorted(out, key=lambda e: e.global_timesteps or 0)


def handoff_notes(planned_carried: list[str], carried: list[str]) -> list[str]:
    """Where the trainer's actual carry differs from the plan, so no difference passes unnoticed."""
    notes = [f"planned to carry {part}, but it was not carried" for part in planned_carried if part not in carried]
    notes += [f"carried {part}, which the plan did not list" for part in carried if part not in planned_carried]
    return notes


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
    # From the trainer's outcome (metrics.json), see apply().
    evaluations: list[Evaluation] = Field(default_factory=list)
    fps: float | None = None
    transfer_eval_seconds: float | None = None
    notes: list[str] = Field(default_factory=list)
    handoff_notes: list[str] = Field(default_factory=list)
    handoff_source: Literal["plan", "trainer"] = "plan"
    video: VideoOutcome | None = None  # the final policy's video, or why there is none
    stopped_early: bool = False
    stop_step: int | None = None
    gate: GateResult | None = None
    # Filled by the AWS driver only.
    job_name: str | None = None
    training_seconds: float | None = None
    billable_seconds: float | None = None
    spot_savings: float | None = None
    warm_pool_status: str | None = None
    reused_previous_pool: bool | None = None
    warm_pool_idle_seconds: float | None = None
    cost_usd: float | None = None

    def apply(self, outcome: SessionOutcome) -> None:
        """Take in the trainer's outcome: the one place that decides what of ``metrics.json`` enters the state.

        The outcome is the authority on steps, rewards, evaluations, its end and what a warm start carried;
        the state keeps its first step and wall time (they span attempts) and its status.
        """
        if outcome.global_timestep_offset is not None:
            self.global_timestep_offset = outcome.global_timestep_offset
        if outcome.timesteps is not None:
            self.timesteps = outcome.timesteps
        self.evaluations = _on_run_axis(outcome.evaluations, self.global_timestep_offset)
        rewards = [e.mean_reward for e in self.evaluations]
        self.final_eval_reward = _first(_finite(outcome.final_eval_reward), rewards[-1] if rewards else None,
                                        self.final_eval_reward)
        self.best_eval_reward = _first(_finite(outcome.best_eval_reward), max(rewards) if rewards else None,
                                       self.best_eval_reward)
        timing = outcome.timing
        self.started_at = self.started_at or timing.started_at
        self.first_step_at = self.first_step_at or timing.first_step_at
        self.ended_at = timing.ended_at or self.ended_at
        if self.wall_seconds is None:
            self.wall_seconds = _finite(timing.wall_seconds)
        self.fps = _finite(timing.fps)
        self.transfer_eval_seconds = _finite(timing.transfer_eval_seconds)
        if outcome.carried is not None or outcome.reset is not None:
            carried = list(outcome.carried or [])
            if self.handoff_source == "plan" and self.handoff_from:  # self.carried is still the plan's
                self.handoff_notes = handoff_notes(self.carried, carried)
            self.carried, self.reset, self.handoff_source = carried, list(outcome.reset or []), "trainer"
        self.notes = [str(n) for n in outcome.notes]
        self.video = outcome.video or self.video
        self.stopped_early, self.stop_step, self.gate = outcome.stopped_early, outcome.stop_step, outcome.gate

    @property
    def gate_failed(self) -> bool:
        """The session ended below its ``require`` threshold: its lineage stops here."""
        return self.gate is not None and not self.gate.passed

    def add_wall_seconds(self, start: str | None, end: str | None) -> None:
        """Add the time from ``start`` to ``end`` to the session's wall time (it sums over attempts)."""
        span = seconds_between(start, end)
        if span is not None:
            self.wall_seconds = round((self.wall_seconds or 0) + span, 3)


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
    def new(cls, pipeline: PipelineConfig, run_id: str, plan: Plan | None = None) -> RunState:
        """Fresh state for ``pipeline`` (planned as ``plan``, built when not given) with every session pending."""
        plan = plan or build_plan(pipeline)
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

    def failed_gate(self) -> SessionState | None:
        """The completed session whose ``require`` gate failed (the lineage ended there), if any."""
        return next((s for s in self.sessions if s.status == "completed" and s.gate_failed), None)

    def settled(self) -> str | None:
        """Why this lineage needs no further run: it succeeded, or it ended on a ``require`` gate; else None."""
        if self.status == "succeeded" and self.next_index() is None:
            return "succeeded"
        gated = self.failed_gate()
        return f"ended at session '{gated.name}''s require gate" if gated is not None else None

    def next_index(self) -> int | None:
        """Index of the first session not completed (pending, interrupted or failed); None when all are done."""
        return next((i for i, s in enumerate(self.sessions) if s.status != "completed"), None)

    def measure_transition(self, index: int) -> None:
        """Session ``index``'s hand-over time: the previous session's end to its first step, step-0 evaluation
        excluded (:func:`transition_seconds`). The drivers decide when a gap is a hand-over."""
        if index:
            st = self.sessions[index]
            st.transition_seconds = transition_seconds(self.sessions[index - 1].ended_at, st.first_step_at,
                                                       st.transfer_eval_seconds)

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
