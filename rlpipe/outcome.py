"""A session's outcome as the trainer reports it in ``metrics.json``; drivers and the report read it only here."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

log = logging.getLogger(__name__)


class Evaluation(BaseModel):
    """One evaluation: mean and spread of the episode rewards at a session step (and on the run's axis)."""

    model_config = ConfigDict(extra="allow")

    timesteps: int | None = None
    global_timesteps: int | None = None
    mean_reward: float
    std_reward: float | None = None
    wall_seconds: float | None = None


class OutcomeTiming(BaseModel):
    """When the session started, took its first step and ended (ISO), and how fast it trained."""

    model_config = ConfigDict(extra="allow")

    started_at: str | None = None
    first_step_at: str | None = None
    ended_at: str | None = None
    wall_seconds: float | None = None
    fps: float | None = None
    # The step-0 evaluation of a warm start runs between start and first step: not hand-over cost.
    transfer_eval_seconds: float | None = None


class VideoOutcome(BaseModel):
    """The session's policy video: what was recorded, or why there is none (``status`` and ``reason``).

    ``render_seconds`` is the time spent recording it; the session's end is taken after it, so it is session
    time, not hand-over time between sessions.
    """

    model_config = ConfigDict(extra="allow")

    status: Literal["recorded", "missing", "disabled"]
    reason: str | None = None
    file: str | None = None  # in the model dir (the bundle)
    filmstrip: str | None = None
    frames: int | None = None
    fps: float | None = None
    seconds: float | None = None
    width: int | None = None
    height: int | None = None
    episodes: int | None = None
    episode_rewards: list[float] = Field(default_factory=list)
    size_bytes: int | None = None
    gl_backend: str | None = None
    render_seconds: float | None = None


class GateResult(BaseModel):
    """A session's ``require`` gate as checked when it ended: the metric, its threshold, the value it reached
    (None when the session recorded no such value: the gate then fails) and whether it passed."""

    model_config = ConfigDict(extra="allow")

    metric: str
    at_least: float
    value: float | None = None
    passed: bool

    def describe(self, session: str) -> str:
        """One line naming the gate, the value reached and the verdict."""
        got = "no value" if self.value is None else f"{self.value:.6g}"
        verdict = "passed" if self.passed else "failed"
        return (f"session '{session}' {verdict} its require gate: {self.metric} {got}, required at least "
                f"{self.at_least:g}")


class SessionOutcome(BaseModel):
    """The trainer's ``metrics.json``: rewards, evaluations, timing and what a warm start really carried.

    ``carried``/``reset`` are None when the file holds no handoff record (the plan's then stands).
    """

    model_config = ConfigDict(extra="allow")

    session: str | None = None
    env: str | None = None
    algorithm: str | None = None
    global_timestep_offset: int | None = None
    timesteps: int | None = None
    timesteps_budget: int | None = None
    evaluations: list[Evaluation] = Field(default_factory=list)
    best_eval_reward: float | None = None
    final_eval_reward: float | None = None
    timing: OutcomeTiming = Field(default_factory=OutcomeTiming)
    carried: list[str] | None = None
    reset: list[str] | None = None
    notes: list[str] = Field(default_factory=list)
    handoff_from: str | None = None
    video: VideoOutcome | None = None
    # Gates: a ``stop_when`` that ended the session before its budget (at ``stop_step``), and the ``require``
    # check at its end (None without one).
    stopped_early: bool = False
    stop_step: int | None = None
    gate: GateResult | None = None

    @field_validator("evaluations", mode="before")
    @classmethod
    def _readable_evaluations(cls, value: Any) -> list[Any]:
        """Evaluations that cannot be read are left out, not the whole outcome."""
        out = []
        for e in value if isinstance(value, list) else []:
            try:
                out.append(Evaluation.model_validate(e))
            except ValidationError:
                continue
        return out

    @field_validator("timing", mode="before")
    @classmethod
    def _timing_mapping(cls, value: Any) -> Any:
        return value if isinstance(value, Mapping) else {}

    @field_validator("video", mode="before")
    @classmethod
    def _readable_video(cls, value: Any) -> Any:
        """A video record that cannot be read is dropped, not the whole outcome."""
        try:
            return None if value is None else VideoOutcome.model_validate(value)
        except ValidationError:
            return None

    @classmethod
    def read(cls, data: Any, source: str = "metrics.json") -> SessionOutcome | None:
        """``data`` (a parsed ``metrics.json``) as an outcome; None when there is none or it cannot be read."""
        if isinstance(data, SessionOutcome):
            return data
        if not isinstance(data, Mapping):
            return None
        try:
            return cls.model_validate(data)
        except ValidationError as err:  # a report must still come out when one file is damaged
            log.warning("cannot read %s: %s", source, err)
            return None

    def to_json(self) -> dict[str, Any]:
        """JSON-able form: the content of ``metrics.json``."""
        return self.model_dump(mode="json")
