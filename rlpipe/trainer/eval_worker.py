"""Evaluation in a second process, so training does not pause while the policy is evaluated.

The trainer hands over a snapshot (policy weights, observation statistics, step count) and trains on; the
worker evaluates the snapshot on its own env, seeded exactly as an in-process evaluation is, so the result is
the same number either way. Results come back in order and are recorded under their snapshot's step.
On a machine with a spare core this takes evaluation off the training loop (bench/RESULTS.md).
"""

from __future__ import annotations

import copy
import logging
import multiprocessing as mp
import queue
import signal
import time
import traceback
from dataclasses import dataclass
from typing import Any

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

log = logging.getLogger(__name__)

PARENT_CHECK_SECONDS = 2.0  # how often an idle worker looks whether its trainer is still alive


@dataclass(frozen=True)
class EvalEnvSpec:
    """How the worker builds its evaluation env: the same recipe as the trainer's in-process one."""

    env_id: str
    env_kwargs: dict[str, Any]
    n_envs: int
    episodes: int
    normalize: bool
    clip_obs: float
    epsilon: float


@dataclass(frozen=True)
class Snapshot:
    """What one evaluation needs from the trainer at one step."""

    timesteps: int
    seed: int
    state_dict: dict[str, Any]
    obs_rms: Any  # RunningMeanStd | None


@dataclass(frozen=True)
class Outcome:
    """One evaluation's result, or why it could not run."""

    timesteps: int
    mean_reward: float = 0.0
    std_reward: float = 0.0
    seconds: float = 0.0
    env_steps: int = 0
    error: str | None = None


def snapshot(model: BaseAlgorithm, train_env: VecEnv | None, seed: int) -> Snapshot:
    """Copy what an evaluation of ``model`` needs now; training may change everything right after."""
    weights = {k: v.detach().to("cpu", copy=True) for k, v in model.policy.state_dict().items()}
    obs_rms = copy.deepcopy(train_env.obs_rms) if isinstance(train_env, VecNormalize) else None
    return Snapshot(int(model.num_timesteps), seed, weights, obs_rms)


def _serve(spec: EvalEnvSpec, policy_class: type, policy_data: dict[str, Any], jobs: Any, results: Any) -> None:
    """The worker process: build the env and policy once, then evaluate snapshots until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the trainer decides
    import torch
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.vec_env import DummyVecEnv

    import rlpipe.envs  # noqa: F401  (registers rlpipe/* env ids)

    torch.set_num_threads(1)
    env: VecEnv = make_vec_env(spec.env_id, n_envs=spec.n_envs, env_kwargs=dict(spec.env_kwargs),
                               vec_env_cls=DummyVecEnv)
    if spec.normalize:
        env = VecNormalize(env, training=False, norm_obs=True, norm_reward=False, clip_obs=spec.clip_obs,
                           epsilon=spec.epsilon)
    policy = policy_class(**policy_data)
    parent = mp.parent_process()
    try:
        while True:
            try:
                job: Snapshot | None = jobs.get(timeout=PARENT_CHECK_SECONDS)
            except queue.Empty:
                if parent is not None and not parent.is_alive():
                    return
                continue
            if job is None:
                return
            clock = time.perf_counter()
            try:
                policy.load_state_dict(job.state_dict)
                if isinstance(env, VecNormalize):
                    env.obs_rms = job.obs_rms
                env.seed(job.seed)
                rewards, lengths = evaluate_policy(policy, env, n_eval_episodes=spec.episodes, deterministic=True,
                                                   warn=False, return_episode_rewards=True)
                # The same reduction evaluate_policy applies when it returns mean and std itself.
                results.put(Outcome(job.timesteps, float(np.mean(rewards)), float(np.std(rewards)),
                                    time.perf_counter() - clock, int(np.sum(lengths))))
            except Exception:
                results.put(Outcome(job.timesteps, error=traceback.format_exc(limit=5)))
    finally:
        env.close()


class BackgroundEvaluator:
    """Owns the worker process and its two queues; every call is made from the training thread."""

    def __init__(self, spec: EvalEnvSpec, model: BaseAlgorithm) -> None:
        ctx = mp.get_context("spawn")  # fork would copy torch's thread pools and the trainer's state
        self._jobs = ctx.Queue()
        self._results = ctx.Queue()
        policy = model.policy
        self._process = ctx.Process(
            target=_serve, name="rlpipe-eval", daemon=True,
            args=(spec, type(policy), policy._get_constructor_parameters(), self._jobs, self._results))
        self._process.start()
        self.pending = 0

    def submit(self, shot: Snapshot) -> None:
        """Queue a snapshot for evaluation; returns at once."""
        self._jobs.put(shot)
        self.pending += 1

    def collect(self, timeout: float | None = 0.0) -> list[Outcome]:
        """Finished results: those ready now (``timeout`` 0), or all pending ones, waiting up to ``timeout``
        seconds in total (``None``: as long as the worker lives)."""
        done: list[Outcome] = []
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.pending:
            try:
                if timeout == 0:
                    outcome = self._results.get_nowait()
                else:
                    left = PARENT_CHECK_SECONDS if deadline is None else max(0.0, deadline - time.monotonic())
                    outcome = self._results.get(timeout=min(left, PARENT_CHECK_SECONDS))
            except queue.Empty:
                if timeout == 0 or (deadline is not None and time.monotonic() >= deadline):
                    break
                if not self._process.is_alive():
                    raise RuntimeError(f"evaluation worker exited (code {self._process.exitcode}) with "
                                       f"{self.pending} evaluation(s) pending") from None
                continue
            self.pending -= 1
            done.append(outcome)
        return done

    def close(self) -> None:
        """Stop the worker; a worker that does not exit in a few seconds is terminated."""
        try:
            self._jobs.put(None)
        except (OSError, ValueError):
            pass
        self._process.join(timeout=5)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout=5)
        for q in (self._jobs, self._results):
            q.close()
            q.cancel_join_thread()  # a worker killed mid-put must not hang our exit
