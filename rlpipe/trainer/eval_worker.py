"""Evaluation in a second process, so training does not pause while the policy is evaluated.

The trainer hands over a snapshot (policy weights, observation statistics, step count) and trains on; the
worker evaluates the snapshot on an env built by the same recipe as the in-process one (:func:`make_eval_env`)
and seeded the same way, so on the CPU the recorded reward is the same number either way (tested). Results
come back in order and are recorded under their snapshot's step.
"""

from __future__ import annotations

import copy
import multiprocessing as mp
import os
import pickle
import queue
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecNormalize

from rlpipe.trainer import backends, eval_child

PARENT_CHECK_SECONDS = 2.0  # how often an idle worker looks whether its trainer is still alive
# Snapshots queued beyond this wait for a result first: a worker slower than training holds back training a
# little instead of piling up weights in memory.
MAX_PENDING = 4


@dataclass(frozen=True)
class EvalEnvSpec:
    """How an evaluation env is built; the trainer's in-process env and the worker's both follow it."""

    env_id: str
    env_kwargs: dict[str, Any]
    n_envs: int
    episodes: int
    normalize: bool
    seed: int


def make_eval_env(spec: EvalEnvSpec) -> VecEnv:
    """Evaluation env: ``n_envs`` episodes side by side, observation statistics frozen, rewards raw."""
    env: VecEnv = make_vec_env(spec.env_id, n_envs=spec.n_envs, seed=spec.seed, env_kwargs=dict(spec.env_kwargs),
                               vec_env_cls=DummyVecEnv)
    if spec.normalize:
        env = VecNormalize(env, training=False, norm_obs=True, norm_reward=False)
    return env


@dataclass(frozen=True)
class Snapshot:
    """What one evaluation needs from the trainer at one step (numpy arrays: no shared-memory handles)."""

    timesteps: int
    seed: int
    weights: dict[str, np.ndarray]
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


def snapshot(model: BaseAlgorithm, seed: int) -> Snapshot:
    """Copy what an evaluation of ``model`` needs now; training may change everything right after."""
    weights = backends.policy_weights(model.policy)
    norm = model.get_vec_normalize_env()
    return Snapshot(int(model.num_timesteps), seed, weights, copy.deepcopy(norm.obs_rms) if norm else None)


def evaluate_snapshot(policy: Any, env: VecEnv, shot: Snapshot, episodes: int) -> Outcome:
    """Evaluate ``shot`` with ``policy`` (a policy of the same class, whose weights are replaced) on ``env``."""
    from stable_baselines3.common.evaluation import evaluate_policy

    clock = time.perf_counter()
    backends.load_policy_weights(policy, shot.weights)
    if isinstance(env, VecNormalize):
        env.obs_rms = shot.obs_rms
    env.seed(shot.seed)
    rewards, lengths = evaluate_policy(policy, env, n_eval_episodes=episodes, deterministic=True, warn=False,
                                       return_episode_rewards=True)
    # The same reduction evaluate_policy applies when it returns mean and std itself.
    return Outcome(shot.timesteps, float(np.mean(rewards)), float(np.std(rewards)), time.perf_counter() - clock,
                   int(np.sum(lengths)))


def spare_policy(policy_class: type, policy_data: dict[str, Any]) -> Any:
    """A policy to load snapshots into, built in the training process without touching its random state:
    initialising weights draws from torch's global generator, and training must not depend on whether an
    evaluation ran here or in the worker."""
    import torch

    with torch.random.fork_rng(devices=[]):
        return policy_class(**policy_data)


def spawn_can_start() -> bool:
    """Whether a spawned worker can start: spawn imports the parent's main script in the child, and a main
    read from stdin (``python -``) has no file to import."""
    main = sys.modules.get("__main__")
    if getattr(getattr(main, "__spec__", None), "name", None):
        return True
    path = getattr(main, "__file__", None)
    return path is None or os.path.exists(path)


def _serve(spec: EvalEnvSpec, policy_class: type, policy_data: dict[str, Any], jobs: Any, results: Any) -> None:
    """The worker process (entered through :func:`rlpipe.trainer.eval_child.main`): build the env and policy
    once, then evaluate snapshots until told to stop."""
    import torch

    import rlpipe.envs  # noqa: F401  (registers rlpipe/* env ids)

    torch.set_num_threads(1)
    env = make_eval_env(spec)
    policy = policy_class(**policy_data)
    parent = mp.parent_process()
    try:
        while True:
            try:
                job: Snapshot | None = jobs.get(timeout=PARENT_CHECK_SECONDS)
            except queue.Empty:
                if parent is not None and not parent.is_alive():
                    break
                continue
            if job is None:
                break
            try:
                results.put(evaluate_snapshot(policy, env, job, spec.episodes))
            except Exception:
                results.put(Outcome(job.timesteps, error=traceback.format_exc(limit=5)))
    finally:
        env.close()
    results.close()
    results.join_thread()  # every result is in the pipe
    # Skip the interpreter's teardown (about a second with torch loaded): nothing is left to clean up, and
    # the next session's start would otherwise wait for it.
    os._exit(0)


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Start children with SIGINT ignored: the disposition survives exec and Python keeps it, so a Ctrl-C
    during the worker's imports cannot kill it with a traceback."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class BackgroundEvaluator:
    """Owns the worker process and its two queues; every call is made from the training thread."""

    def __init__(self, spec: EvalEnvSpec, model: BaseAlgorithm) -> None:
        ctx = mp.get_context("spawn")  # fork would copy torch's thread pools and the trainer's state
        self._jobs = ctx.Queue()
        self._results = ctx.Queue()
        policy = model.policy
        self._policy_class, self._policy_data = backends.policy_factory(policy)  # torch or JAX policies
        self._episodes = spec.episodes
        self._in_flight: dict[int, Snapshot] = {}  # kept until their result arrives
        # The heavy arguments travel pickled, so the child binds itself to this process's life before it
        # imports torch and SB3 to read them (seconds on a busy machine).
        self._process = ctx.Process(
            target=eval_child.main, name="rlpipe-eval", daemon=True,
            args=(os.getpid(), pickle.dumps((spec, self._policy_class, self._policy_data)), self._jobs,
                  self._results))
        with _sigint_ignored():
            self._process.start()
        self.pending = 0
        self.dead = False  # the worker exited: nothing more will come back
        self._stopping = False

    def submit(self, shot: Snapshot) -> bool:
        """Queue a snapshot for evaluation and return at once; False when the worker is gone."""
        if self.dead or not self._process.is_alive():
            self.dead = True
            return False
        self._jobs.put(shot)
        self._in_flight[shot.timesteps] = shot
        self.pending += 1
        return True

    def collect(self, timeout: float | None = 0.0, at_most: int | None = None) -> list[Outcome]:
        """Finished results: those ready now (``timeout`` 0), or pending ones, waiting up to ``timeout`` seconds
        in total (``None``: as long as the worker lives), at most ``at_most`` of them. A worker found dead sets
        :attr:`dead`; what it finished before is still returned."""
        done: list[Outcome] = []
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.pending and (at_most is None or len(done) < at_most):
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
                    self.dead = True
                    break
                continue
            self.pending -= 1
            self._in_flight.pop(outcome.timesteps, None)
            done.append(outcome)
        return done

    def evaluate_unfinished(self, env: VecEnv) -> list[Outcome]:
        """Evaluate here, on ``env`` (built from the same spec), the snapshots the worker never returned."""
        shots, self._in_flight, self.pending = list(self._in_flight.values()), {}, 0
        if not shots:
            return []
        policy = spare_policy(self._policy_class, self._policy_data)
        return [evaluate_snapshot(policy, env, shot, self._episodes) for shot in shots]

    @property
    def exitcode(self) -> int | None:
        """The worker's exit code once it has exited."""
        return self._process.exitcode

    def stop(self) -> None:
        """Tell the worker to exit once it has finished what is queued; returns at once."""
        if not self._stopping:
            self._stopping = True
            try:
                self._jobs.put(None)
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        """Stop the worker and wait for it; a worker that does not exit in a few seconds is terminated."""
        self.stop()
        self._process.join(timeout=5)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout=5)
        for q in (self._jobs, self._results):
            q.close()
            q.cancel_join_thread()  # a worker killed mid-put must not hang our exit
