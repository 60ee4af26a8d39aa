"""SB3 callbacks that make a session exact and resumable: budget/stop, evaluation, checkpoints.

Schedules count environment steps (``num_timesteps``), not callback calls, so they line up across
different ``n_envs`` and stay on the same grid after a resume.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecEnv, sync_envs_normalization

from rlpipe.contract import metric_line
from rlpipe.state import utcnow
from rlpipe.trainer.eval_worker import (MAX_PENDING, BackgroundEvaluator, Outcome, Snapshot, evaluate_snapshot,
                                        snapshot, spare_policy)

log = logging.getLogger(__name__)


def crossed(before: int, after: int, every: int) -> bool:
    """True when a multiple of ``every`` lies in ``(before, after]``."""
    return after // every > before // every


def evaluations_since_best(rewards: list[float]) -> int:
    """How many evaluations (in step order) came after the first one that reached the best reward: 0 when the
    latest improved on all before it. A stalled session shows as a growing count (an alarm can watch it)."""
    if not rewards:
        return 0
    best = max(rewards)
    return len(rewards) - 1 - rewards.index(best)


class BudgetAndStop(BaseCallback):
    """Stops learning exactly at the session budget, or as soon as a stop is requested (SIGTERM, Ctrl-C)."""

    def __init__(self, budget: int, stop: threading.Event,
                 progress: Callable[[int, int], None] | None = None) -> None:
        super().__init__()
        self.budget = budget
        self.stop = stop
        self.progress = progress
        self.first_step_at: str | None = None
        self._first_step_clock: float | None = None
        self._start_steps = 0
        self._last_progress = 0

    def _on_training_start(self) -> None:
        self._start_steps = self.model.num_timesteps

    def _on_step(self) -> bool:
        if self.first_step_at is None:
            self.first_step_at = utcnow()
            self._first_step_clock = time.perf_counter()
        steps = self.model.num_timesteps
        if self.progress and (steps - self._last_progress >= max(1, self.budget // 200) or steps >= self.budget):
            self._last_progress = steps
            self.progress(steps, self.budget)
        return steps < self.budget and not self.stop.is_set()

    def fps(self) -> float:
        """Environment steps per second trained in this process, since its first step."""
        if self._first_step_clock is None:
            return 0.0
        elapsed = time.perf_counter() - self._first_step_clock
        return (self.model.num_timesteps - self._start_steps) / elapsed if elapsed > 0 else 0.0


class EveryStepsCallback(BaseCallback):
    """Calls :meth:`fire` whenever ``num_timesteps`` crosses a multiple of ``every_steps``.

    Unlike SB3's ``EveryNTimesteps`` (relative to the last trigger), the grid is absolute, so a resumed
    session evaluates and checkpoints at the same steps as an uninterrupted one.
    """

    def __init__(self, every_steps: int) -> None:
        super().__init__()
        self.every_steps = every_steps
        self._last = 0

    def _on_training_start(self) -> None:
        self._last = self.model.num_timesteps

    def _on_step(self) -> bool:
        now = self.model.num_timesteps
        if crossed(self._last, now, self.every_steps):
            self.fire()
        self._last = now
        return True

    def fire(self) -> None:
        """The periodic action."""
        raise NotImplementedError


class Evaluator(EveryStepsCallback):
    """Evaluates every ``every_steps`` on a separate env with frozen normalisation; prints a metric line.

    With a :class:`BackgroundEvaluator` the evaluations run in its worker process: the callback only hands
    over a snapshot and records results as they come back (at the latest in :meth:`drain`). Should the worker
    fail, evaluation continues in this process. The in-process env is built on first use.
    """

    def __init__(self, make_env: Callable[[], VecEnv], every_steps: int, episodes: int, session: str,
                 global_offset: int, history: list[dict[str, Any]], on_eval: Callable[[], None],
                 fps: Callable[[], float], seed: int, background: BackgroundEvaluator | None = None) -> None:
        super().__init__(every_steps)
        self._make_env = make_env
        self._eval_env: VecEnv | None = None
        self.episodes = episodes
        self.session = session
        self.global_offset = global_offset
        self.history = history
        self.on_eval = on_eval
        self.fps = fps
        self.seed = seed
        self.background = background
        self._clock = time.perf_counter()
        self._taken_at: dict[int, float] = {}
        self._policy: Any = None  # built on first use by evaluate_snapshot

    @property
    def eval_env(self) -> VecEnv:
        """The in-process evaluation env."""
        if self._eval_env is None:
            self._eval_env = self._make_env()
        return self._eval_env

    def fire(self) -> None:
        self.evaluate()

    def _on_step(self) -> bool:
        keep_going = super()._on_step()
        if self.background is not None and self.background.pending:
            self._take(self.background.collect(0))
        return keep_going

    def evaluate(self) -> None:
        """Evaluate the policy as it is now: in the background worker when there is one, else right here."""
        steps = int(self.model.num_timesteps)
        # Reseeded per evaluation so results do not depend on how many evaluations ran before (resume).
        seed = self.seed + steps
        taken_at = time.perf_counter()
        if self._to_background(lambda: snapshot(self.model, seed), taken_at):
            return
        train_env = self.model.get_env()
        if train_env is not None:
            sync_envs_normalization(train_env, self.eval_env)
        self.eval_env.seed(seed)
        mean, std = evaluate_policy(self.model, self.eval_env, n_eval_episodes=self.episodes, deterministic=True,
                                    warn=False)
        self.record(steps, float(mean), float(std), taken_at)

    def evaluate_snapshot(self, shot: Snapshot) -> None:
        """Evaluate weights kept on disk (a checkpoint, a handed-over bundle) as the evaluation of their step."""
        taken_at = time.perf_counter()
        if self._to_background(lambda: shot, taken_at):
            return
        if self._policy is None:  # a policy of the model's class whose weights each snapshot replaces
            self._policy = spare_policy(type(self.model.policy), self.model.policy._get_constructor_parameters())
        outcome = evaluate_snapshot(self._policy, self.eval_env, shot, self.episodes)
        self.record(shot.timesteps, outcome.mean_reward, outcome.std_reward, taken_at)

    def _to_background(self, take: Callable[[], Snapshot], taken_at: float) -> bool:
        """Hand a snapshot to the worker; False when there is none (any more): evaluate here."""
        if self.background is None:
            return False
        if self.background.pending >= MAX_PENDING:
            self._take(self.background.collect(None, at_most=1))
        if self.background is not None:
            shot = take()
            if self.background.submit(shot):
                self._taken_at[shot.timesteps] = taken_at
                return True
            self._fall_back("the worker exited")
        return False

    def drain(self, timeout: float | None) -> None:
        """Record the background evaluations still running, waiting up to ``timeout`` seconds (``None``: as
        long as the worker lives); what does not arrive in time is logged and dropped."""
        background = self.background
        if background is None or not background.pending:
            return
        self._take(background.collect(timeout))
        if self.background is not None and background.pending:
            if background.dead:
                self._fall_back("the worker exited")
            else:
                log.warning("session %s: %d background evaluation(s) not finished within %s s; not recorded",
                            self.session, background.pending, timeout)

    def _fall_back(self, why: str, detail: str = "") -> None:
        background, self.background = self.background, None
        if background is None:
            return
        log.warning("session %s: background evaluation stopped (%s, exit code %s); evaluating in this process "
                    "from now on, starting with the %d snapshot(s) it did not return%s", self.session, why,
                    background.exitcode, background.pending, detail)
        self._take(background.evaluate_unfinished(self.eval_env))

    def _take(self, outcomes: list[Outcome]) -> None:
        for outcome in outcomes:
            if outcome.error is not None:
                self._fall_back(f"the evaluation at {outcome.timesteps} steps failed", ":\n" + outcome.error)
                continue
            self.record(outcome.timesteps, outcome.mean_reward, outcome.std_reward,
                        self._taken_at.pop(outcome.timesteps, time.perf_counter()))

    def record(self, steps: int, mean: float, std: float, taken_at: float) -> dict[str, Any]:
        """Record the evaluation of the policy at ``steps`` (``taken_at``: when that policy was taken, on the
        session's clock): history, TensorBoard, metric line, metrics file."""
        entry = {"timesteps": steps, "global_timesteps": self.global_offset + steps,
                 "mean_reward": mean, "std_reward": std, "wall_seconds": round(taken_at - self._clock, 3)}
        self.history[:] = [h for h in self.history if h["timesteps"] != steps] + [entry]
        best = max(h["mean_reward"] for h in self.history)
        stalled = evaluations_since_best([h["mean_reward"] for h in sorted(self.history,
                                                                           key=lambda h: h["timesteps"])])
        if getattr(self.model, "_logger", None) is not None:  # absent when no learn() ran in this process
            self.logger.record("eval/mean_reward", mean)
            self.logger.record("eval/std_reward", std)
            self.logger.dump(steps)
        print(metric_line(self.session, timesteps=steps, global_timesteps=self.global_offset + steps,
                          eval_mean_reward=mean, eval_std_reward=std, best_eval_reward=float(best),
                          fps=round(self.fps(), 1), evals_since_best=stalled), flush=True)
        self.on_eval()
        return entry


class Checkpointer(EveryStepsCallback):
    """Saves a checkpoint every ``every_steps`` environment steps."""

    def __init__(self, every_steps: int, save: Callable[[], None]) -> None:
        super().__init__(every_steps)
        self.save = save

    def fire(self) -> None:
        self.save()
