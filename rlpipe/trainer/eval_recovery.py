"""Evaluations lost to a kill, run again on resume with the weights they belong to.

A background evaluation finishes after the checkpoint of its step, so a process killed in between (SIGKILL, or
SIGTERM then SIGKILL inside the grace period: SageMaker's stop and spot reclaims) resumes from a checkpoint
whose step, or the step-0 transfer evaluation, was never recorded. Every step of the session's evaluation
grid up to the resumed step that is not in the history is evaluated again: step 0 with the handed-over bundle,
a grid step with its checkpoint. The evaluation seed follows the step, so the result is the one the lost
evaluation would have recorded. Where those weights are gone (a rotated checkpoint) the gap is recorded with
its reason instead of being hidden.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.running_mean_std import RunningMeanStd
from stable_baselines3.common.save_util import load_from_zip_file

from rlpipe.config import SessionConfig
from rlpipe.trainer import bundle as B
from rlpipe.trainer.checkpoints import checkpoint_name, verify
from rlpipe.trainer.eval_worker import Snapshot

log = logging.getLogger(__name__)


def evaluation_grid(budget: int, every: int, n_envs: int, warm_start: bool) -> list[int]:
    """The steps a session evaluates at when nothing interrupts it: 0 for a warm start (the transferred policy
    before training), the first step count (a multiple of ``n_envs``) at or past each multiple of ``every``,
    and the final step (the budget, itself a multiple of ``n_envs``)."""
    steps = {0} if warm_start else set()
    k = 1
    while True:
        at = -(-k * every // n_envs) * n_envs  # the vector step that crosses k * every
        if at >= budget:
            break
        steps.add(at)
        k += 1
    steps.add(budget)
    return sorted(steps)


def session_grid(session: SessionConfig) -> list[int]:
    """:func:`evaluation_grid` of ``session``."""
    return evaluation_grid(session.timesteps, session.eval.every_steps, session.n_envs or 1,
                           session.use_previous_checkpoint)


@dataclass(frozen=True)
class Gap:
    """An evaluation of the grid that cannot be run again."""

    timesteps: int
    reason: str

    def as_dict(self, global_offset: int) -> dict[str, Any]:
        return {"timesteps": self.timesteps, "global_timesteps": global_offset + self.timesteps,
                "reason": self.reason}


def _policy_weights(model_zip: Path) -> dict[str, np.ndarray]:
    _, params, _ = load_from_zip_file(str(model_zip), device="cpu")
    return {k: v.detach().cpu().numpy().copy() for k, v in params["policy"].items()}


def _obs_rms(stats: Path | None) -> RunningMeanStd | None:
    if stats is None:
        return None
    with open(stats, "rb") as fh:
        return pickle.load(fh).obs_rms  # a pickled VecNormalize without its venv


def bundle_snapshot(session: SessionConfig, bundle: B.Bundle, seed: int, obs_shape: tuple[int, ...]) -> Snapshot:
    """The step-0 snapshot of a warm start from ``bundle``: its policy, and the observation statistics the
    warm-started session began with (the bundle's when carried, fresh ones when reset)."""
    obs_rms = None
    if session.normalize:
        carried = session.handoff.vecnormalize == "carry" and bundle.file(B.VECNORMALIZE) is not None
        obs_rms = _obs_rms(bundle.file(B.VECNORMALIZE)) if carried else RunningMeanStd(shape=obs_shape)
    return Snapshot(0, seed, _policy_weights(bundle.path / B.MODEL), obs_rms)


def checkpoint_snapshot(checkpoints: Path, steps: int, seed: int) -> Snapshot | None:
    """The snapshot of the intact checkpoint at ``steps``, or None when there is none."""
    path = checkpoints / checkpoint_name(steps)
    ckpt = verify(path) if path.is_dir() else None
    if ckpt is None:
        return None
    return Snapshot(steps, seed, _policy_weights(ckpt.path / B.MODEL), _obs_rms(ckpt.file(B.VECNORMALIZE)))


def lost_steps(session: SessionConfig, history: list[dict[str, Any]], up_to: int) -> list[int]:
    """Grid steps up to ``up_to`` with no evaluation in ``history``."""
    done = {h["timesteps"] for h in history}
    return [s for s in session_grid(session) if s <= up_to and s not in done]


def recover(session: SessionConfig, history: list[dict[str, Any]], up_to: int, checkpoints: Path,
            previous: B.Bundle | None, seed: int, obs_shape: tuple[int, ...]) -> tuple[list[Snapshot], list[Gap]]:
    """Snapshots to evaluate again (``seed``: the evaluation seed of step 0) and the gaps that remain, for the
    grid steps up to ``up_to`` missing from ``history``."""
    shots: list[Snapshot] = []
    gaps: list[Gap] = []
    for steps in lost_steps(session, history, up_to):
        shot: Snapshot | None = None
        if steps == 0:
            if previous is not None:
                shot = bundle_snapshot(session, previous, seed, obs_shape)
            why = "the handed-over bundle it belongs to is no longer available"
        else:
            shot = checkpoint_snapshot(checkpoints, steps, seed + steps)
            why = (f"its checkpoint {checkpoint_name(steps)} no longer exists (checkpoint.keep="
                   f"{session.checkpoint.keep}, every {session.checkpoint.every_steps} steps)")
        if shot is not None:
            shots.append(shot)
        else:
            gaps.append(Gap(steps, f"evaluation at {steps} steps lost to an interruption and not run again: {why}"))
    return shots, gaps
