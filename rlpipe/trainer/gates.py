"""A session's gates: ``stop_when`` (end early once a metric holds), ``require`` (checked at the end) and
``handoff.checkpoint: best`` (hand over the best evaluation's checkpoint, kept out of rotation).

Gates decide on evaluations, so a gated session evaluates in the training process: the decision is then
taken at the evaluated step itself, not whenever a background result comes back. Everything is derived
from the evaluation history, so a resumed session reaches the same decision as an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stable_baselines3.common.callbacks import BaseCallback

from rlpipe.config import SessionConfig
from rlpipe.jsonio import read_json, write_json_atomic
from rlpipe.outcome import GateResult, SessionOutcome
from rlpipe.trainer import bundle as B
from rlpipe.trainer.callbacks import evaluations_since_best
from rlpipe.trainer.checkpoints import commit_checkpoint, sha256_file, verify

log = logging.getLogger(__name__)

BEST_DIR = "best"  # beside the step-* checkpoints; prune() only rotates step-*, so it is kept
STATE_FILES = B.STATE_FILES


def needs_inline_eval(session: SessionConfig) -> bool:
    """Whether the session's gates need each evaluation's result at its own step (no background worker)."""
    return session.stop_when is not None or session.handoff.checkpoint == "best"


def metric_series(history: list[dict[str, Any]], metric: str) -> list[tuple[int, float | None]]:
    """``(timesteps, value)`` of ``metric`` at each evaluation in step order, as the metric line prints it."""
    ordered = sorted(history, key=lambda h: h["timesteps"])
    rewards = [float(h["mean_reward"]) for h in ordered]
    out: list[tuple[int, float | None]] = []
    for i, h in enumerate(ordered):
        if metric == "eval_mean_reward":
            value: float | None = rewards[i]
        elif metric == "eval_std_reward":
            value = None if h.get("std_reward") is None else float(h["std_reward"])
        elif metric == "best_eval_reward":
            value = max(rewards[: i + 1])
        elif metric == "evals_since_best":
            value = float(evaluations_since_best(rewards[: i + 1]))
        else:
            raise ValueError(f"not an evaluation metric: {metric}")
        out.append((int(h["timesteps"]), value))
    return out


def _holds(value: float | None, at_least: float) -> bool:
    return value is not None and math.isfinite(value) and value >= at_least


def first_stop(session: SessionConfig, history: list[dict[str, Any]]) -> int | None:
    """The step of the first evaluation at which ``stop_when`` has held for ``for_evals`` evaluations in a row,
    or None. The step-0 evaluation of a warm start measures the previous session's policy: it does not count,
    also not towards ``best_eval_reward`` or ``evals_since_best``."""
    stop = session.stop_when
    if stop is None:
        return None
    run = 0
    for steps, value in metric_series([h for h in history if h["timesteps"] > 0], stop.metric):
        run = run + 1 if _holds(value, stop.at_least) else 0
        if run >= stop.for_evals:
            return steps
    return None


def check_require(session: SessionConfig, outcome: SessionOutcome) -> GateResult | None:
    """The ``require`` gate on a session's final outcome (None when the session has none)."""
    req = session.require
    if req is None:
        return None
    if req.metric == "final_eval_reward":
        value = outcome.final_eval_reward
    elif req.metric == "best_eval_reward":
        value = outcome.best_eval_reward
    else:
        history = [e.model_dump() for e in outcome.evaluations if e.timesteps is not None]
        series = metric_series(history, req.metric)
        value = series[-1][1] if series else None
    if value is not None and not math.isfinite(value):
        value = None
    return GateResult(metric=req.metric, at_least=req.at_least, value=value, passed=_holds(value, req.at_least))


class SessionGates:
    """The gates of one session run: decides a stop from the evaluations, keeps the best checkpoint, and
    adds the gate fields to the outcome."""

    def __init__(self, session: SessionConfig, checkpoints: Path,
                 save_state: Callable[[Path], None]) -> None:
        """``save_state(dir)`` writes the model's state (policy, optimizer, statistics, buffer) into ``dir``."""
        self.session = session
        self.checkpoints = checkpoints
        self.save_state = save_state
        self.stop_step: int | None = None
        self._best: tuple[int, float] | None = None  # (timesteps, reward) of the kept best checkpoint

    @property
    def stopped(self) -> bool:
        """``stop_when`` has held: the session ends at :attr:`stop_step`."""
        return self.stop_step is not None

    @property
    def keeps_best(self) -> bool:
        return self.session.handoff.checkpoint == "best"

    def restore(self, history: list[dict[str, Any]], resumed_at: int | None) -> None:
        """Take up a resumed session: a stop already reached stands; a best checkpoint saved after the resumed
        step (a trajectory that is trained again) or not matching the history is dropped."""
        self.stop_step = first_stop(self.session, history)
        if not self.keeps_best:
            return
        found = verify(self.checkpoints / BEST_DIR) if (self.checkpoints / BEST_DIR).is_dir() else None
        rewards = [h["mean_reward"] for h in history]
        if found is not None and (resumed_at is None or found.timesteps > resumed_at or not rewards
                                  or found.meta.get("mean_reward") != max(rewards)):
            found = None
        if found is None:
            shutil.rmtree(self.checkpoints / BEST_DIR, ignore_errors=True)
            self._best = None
        else:
            self._best = (found.timesteps, float(found.meta["mean_reward"]))

    def after_evaluation(self, steps: int, history: list[dict[str, Any]]) -> None:
        """Called once the evaluation of the policy at ``steps`` (the model's current step) is recorded."""
        entry = next((h for h in history if h["timesteps"] == steps), None)
        if entry is None:
            return
        if self.keeps_best and (self._best is None or entry["mean_reward"] > self._best[1]):
            self._save_best(steps, float(entry["mean_reward"]))
        if self.stop_step is None:
            self.stop_step = first_stop(self.session, history)
            if self.stop_step is not None:
                stop = self.session.stop_when
                assert stop is not None
                log.info("session %s: stop_when %s >= %g held for %d evaluation(s) at %d steps; ending early",
                         self.session.name, stop.metric, stop.at_least, stop.for_evals, self.stop_step)

    def _save_best(self, steps: int, reward: float) -> None:
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        staging = self.checkpoints / f".{BEST_DIR}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        self.save_state(staging)
        commit_checkpoint(staging, self.checkpoints / BEST_DIR, steps,
                          {"session": self.session.name, "mean_reward": reward})
        self._best = (steps, reward)

    def callback(self) -> BaseCallback:
        """An SB3 callback that ends ``learn()`` once the stop condition has held (place it after the evaluator)."""
        return _StopOnGate(self)

    def conclude(self, outcome: SessionOutcome) -> SessionOutcome:
        """``outcome`` with the gate fields: stopped early (and where), and the ``require`` check."""
        notes = list(outcome.notes)
        if self.keeps_best and self._best is not None:
            notes.append(f"hands over the checkpoint of its best evaluation ({self._best[0]} steps, reward "
                         f"{self._best[1]:.6g})")
        elif self.keeps_best:
            notes.append("handoff.checkpoint is best, but no best checkpoint was kept: hands over the last step")
        # A condition first met at the budget's last evaluation ended nothing early.
        early = self.stop_step is not None and self.stop_step < self.session.timesteps
        done = outcome.model_copy(update={"stopped_early": early, "stop_step": self.stop_step if early else None,
                                          "notes": notes})
        gate = check_require(self.session, done)
        if gate is not None and not gate.passed:
            log.warning("%s", gate.describe(self.session.name))
        return done.model_copy(update={"gate": gate})

    def hand_over_best(self, bundle_dir: Path) -> None:
        """Replace the state files of the written bundle by the best evaluation's checkpoint."""
        if not self.keeps_best or self._best is None:
            return
        best = self.checkpoints / BEST_DIR
        for name in STATE_FILES:
            target = bundle_dir / name
            if (best / name).exists():
                shutil.copy2(best / name, target.with_suffix(target.suffix + ".tmp"))
                (target.with_suffix(target.suffix + ".tmp")).replace(target)
            elif target.exists():
                target.unlink()
        meta_path = bundle_dir / B.BUNDLE_META
        meta = read_json(meta_path)
        meta["checkpoint"] = {"kind": "best", "timesteps": self._best[0], "mean_reward": self._best[1]}
        # The manifest describes the files now in the bundle, so a resume verifies the best checkpoint's.
        meta["files"] = sorted(p.name for p in bundle_dir.iterdir() if p.name != B.BUNDLE_META)
        meta["sha256"] = {n: sha256_file(bundle_dir / n) for n in STATE_FILES if (bundle_dir / n).exists()}
        write_json_atomic(meta_path, meta)


class _StopOnGate(BaseCallback):
    def __init__(self, gates: SessionGates) -> None:
        super().__init__()
        self.gates = gates

    def _on_step(self) -> bool:
        return not self.gates.stopped
