"""One throughput measurement per process: ``python -m bench.throughput_variants SPEC_JSON OUT_JSON``.

Variants (each run in a fresh interpreter, so torch's thread settings never leak from one to the next):
- ``sb3_defaults``: a plain stable-baselines3 script with SB3's own defaults, ``PPO("MlpPolicy", env)``;
- ``sb3_same_settings``: a plain SB3 script with exactly the settings rlpipe uses (n_envs, vec env class,
  VecNormalize, torch threads, hyperparameters), without rlpipe's callbacks, evaluation or logging;
- ``raw_env``: the env stepped with random actions, no learning (this machine's ceiling);
- ``rlpipe``: rlpipe's ``SessionTrainer`` on a session root, evaluation and checkpoints included.

Every learning variant is timed the same way: a callback appended after any other callback opens a window at
the start of training (off-policy: at the first step that trains, after ``learning_starts``) and closes it at
its last ``on_step``; the rate is steps / seconds inside that window. Setup and imports are outside it.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

WINDOW_OPENS_AT_START = 0


def _timer_class() -> type:
    from stable_baselines3.common.callbacks import BaseCallback

    class StepWindow(BaseCallback):
        """Times steps from ``opens_after`` steps (0: the start of training) to the last step seen."""

        def __init__(self, opens_after: int, max_seconds: float | None) -> None:
            super().__init__()
            self.opens_after = opens_after
            self.max_seconds = max_seconds
            self.t0: float | None = None
            self.s0 = 0
            self.t_last: float | None = None
            self.s_last = 0
            self.capped = False
            self.in_learn = False
            self.updates: list[tuple[float, float]] = []  # (start, seconds) of each gradient-update phase

        def _open(self, now: float) -> None:
            self.t0, self.s0 = now, self.num_timesteps
            self.t_last, self.s_last = now, self.num_timesteps

        def _on_training_start(self) -> None:
            self.in_learn = True
            if self.opens_after == WINDOW_OPENS_AT_START:
                self._open(time.perf_counter())

        def _on_step(self) -> bool:
            now = time.perf_counter()
            if self.t0 is None:
                if self.num_timesteps > self.opens_after:
                    self._open(now)
                return True
            self.t_last, self.s_last = now, self.num_timesteps
            if self.max_seconds is not None and now - self.t0 > self.max_seconds:
                self.capped = True
                return False
            return True

        def _on_training_end(self) -> None:
            self.in_learn = False

        @property
        def is_open(self) -> bool:
            """True while ``learn()`` runs and the window has opened."""
            return self.in_learn and self.t0 is not None

        def result(self) -> dict[str, Any]:
            steps = self.s_last - self.s0
            seconds = (self.t_last - self.t0) if self.t0 is not None and self.t_last is not None else 0.0
            updating = sum(d for start, d in self.updates
                           if self.t0 is not None and self.t_last is not None and self.t0 <= start < self.t_last)
            return {"steps": steps, "seconds": round(seconds, 4),
                    "steps_per_second": round(steps / seconds, 2) if seconds > 0 else None, "capped": self.capped,
                    "update_seconds": round(updating, 4),
                    "update_share": round(updating / seconds, 4) if seconds > 0 else None}

    return StepWindow


def install_window(opens_after: int, max_seconds: float | None, also_time: tuple[type, ...] = ()) -> Any:
    """Append a timing callback to every ``learn()`` call in this process; returns it."""
    from stable_baselines3.common.callbacks import BaseCallback, CallbackList
    from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
    from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm

    timer = _timer_class()(opens_after, max_seconds)
    for base in (OnPolicyAlgorithm, OffPolicyAlgorithm):
        original = base.learn

        def learn(self: Any, total_timesteps: int, callback: Any = None, *args: Any,
                  _original: Any = original, **kwargs: Any) -> Any:
            if callback is None:
                callback = timer
            elif isinstance(callback, list):
                callback = CallbackList([*callback, timer])
            elif isinstance(callback, BaseCallback):
                callback = CallbackList([callback, timer])
            else:  # a plain function: SB3 converts it, keep it first
                from stable_baselines3.common.callbacks import ConvertCallback

                callback = CallbackList([ConvertCallback(callback), timer])
            return _original(self, total_timesteps, callback, *args, **kwargs)

        base.learn = learn  # type: ignore[method-assign]
    for cls in (*(_algorithm(name) for name in ("ppo", "a2c", "sac", "td3")), *also_time):
        # Time each gradient-update phase (``train()``) that starts inside the window: what the algorithm's
        # own work costs per step, apart from env stepping and everything around it.
        def train(self: Any, *args: Any, _original: Any = cls.train, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return _original(self, *args, **kwargs)
            finally:
                if timer.is_open:
                    timer.updates.append((start, time.perf_counter() - start))

        cls.train = train  # type: ignore[method-assign]
    return timer


def _opens_after(algorithm_cls: type, model_kwargs: dict[str, Any]) -> int:
    from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

    if not issubclass(algorithm_cls, OffPolicyAlgorithm):
        return WINDOW_OPENS_AT_START
    import inspect

    default = inspect.signature(algorithm_cls.__init__).parameters["learning_starts"].default
    return int(model_kwargs.get("learning_starts", default))


def _algorithm(name: str, backend: str = "sb3") -> type:
    from rlpipe.trainer.session import algorithm_class

    return algorithm_class(name, backend)


def final_reward(model: Any, env_id: str, seed: int, episodes: int = 5) -> float:
    """Mean deterministic reward of ``model`` over ``episodes`` on a fresh env built by the trainer's evaluation
    recipe (the training env's observation statistics, raw rewards, the trainer's evaluation seed)."""
    import copy

    from stable_baselines3.common.evaluation import evaluate_policy

    from rlpipe.trainer.eval_worker import EvalEnvSpec, make_eval_env
    from rlpipe.trainer.session import EVAL_SEED_OFFSET, MAX_EVAL_ENVS

    norm = model.get_vec_normalize_env()
    env = make_eval_env(EvalEnvSpec(env_id, {}, min(episodes, MAX_EVAL_ENVS), episodes, normalize=norm is not None,
                                    seed=seed + EVAL_SEED_OFFSET))
    if norm is not None:
        env.obs_rms = copy.deepcopy(norm.obs_rms)
    mean, _ = evaluate_policy(model, env, n_eval_episodes=episodes, deterministic=True, warn=False)
    env.close()
    return round(float(mean), 3)


def run_sb3_defaults(spec: dict[str, Any]) -> dict[str, Any]:
    """``ALGO("MlpPolicy", env).learn(n)``: SB3's defaults, torch's default thread count."""
    import gymnasium as gym
    import torch

    import rlpipe.envs  # noqa: F401  (registers rlpipe/* ids)

    cls = _algorithm(spec["algorithm"])
    opens_after = _opens_after(cls, {}) + spec.get("warmup", 0)
    timer = install_window(opens_after, spec.get("max_seconds"))
    env = gym.make(spec["env"])
    model = cls("MlpPolicy", env, seed=spec.get("seed", 0))
    model.learn(total_timesteps=opens_after + spec["window"])
    window = timer.result()
    if spec.get("final_reward"):
        window["final_reward"] = final_reward(model, spec["env"], spec.get("seed", 0))
    return {**window, "torch_threads": torch.get_num_threads(), "n_envs": model.n_envs,
            "settings": "SB3 defaults"}


def run_sb3_same_settings(spec: dict[str, Any]) -> dict[str, Any]:
    """A plain SB3 script with the session's exact settings and nothing of rlpipe's around ``learn()``."""
    import torch
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    import rlpipe.envs  # noqa: F401
    from bench.sessions import throughput_session
    from rlpipe.trainer.session import choose_vec_env, torch_threads_for

    from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

    backend = spec.get("backend", "sb3")
    s = throughput_session(spec["algorithm"], spec["env"], spec["timesteps"], backend=backend, seed=spec.get("seed"))
    if backend == "sbx":
        from rlpipe.trainer.backends import configure_xla_threads

        configure_xla_threads(s)  # the trainer's own rule, before JAX starts
    cls = _algorithm(s.algorithm, backend)
    torch.set_num_threads(torch_threads_for(s))  # the trainer's own rule
    opens_after = _opens_after(cls, s.hyperparameters) + spec.get("warmup", 0)
    timer = install_window(opens_after, spec.get("max_seconds"), (cls,) if backend != "sb3" else ())
    env = make_vec_env(s.env, n_envs=s.n_envs, seed=s.seed, env_kwargs=dict(s.env_kwargs),
                       vec_env_cls=choose_vec_env(s))
    if s.normalize:
        env = VecNormalize(env, norm_obs=True, norm_reward=True, gamma=float(s.hyperparameters.get("gamma", 0.99)))
    model = cls(s.policy, env, seed=s.seed, device=getattr(s, "device", "cpu"), verbose=0, **s.hyperparameters)
    model.learn(total_timesteps=opens_after + spec["window"])
    window = timer.result()
    if spec.get("final_reward"):
        window["final_reward"] = final_reward(model, s.env, s.seed)
    return {**window, "torch_threads": torch.get_num_threads(), "n_envs": model.n_envs,
            "xla_flags": os.environ.get("XLA_FLAGS"),
            "settings": s.model_dump(mode="json", include={"n_envs", "hyperparameters", "normalize",
                                                           "torch_threads", "vec_env", "backend"})}


def run_raw_env(spec: dict[str, Any]) -> dict[str, Any]:
    """Random actions in one env, resetting at episode ends; no learning."""
    import gymnasium as gym

    import rlpipe.envs  # noqa: F401

    env = gym.make(spec["env"])
    env.reset(seed=spec.get("seed", 0))
    env.action_space.seed(spec.get("seed", 0))
    limit = spec.get("max_seconds")
    steps, episodes, capped = 0, 0, False
    t0 = time.perf_counter()
    while steps < spec["window"]:
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        steps += 1
        if terminated or truncated:
            env.reset()
            episodes += 1
        if limit is not None and steps % 1000 == 0 and time.perf_counter() - t0 > limit:
            capped = True
            break
    seconds = time.perf_counter() - t0
    env.close()
    return {"steps": steps, "seconds": round(seconds, 4), "steps_per_second": round(steps / seconds, 2),
            "capped": capped, "episodes": episodes, "n_envs": 1}


def _eval_env_steps(evaluator: Any) -> int:
    """Env steps the evaluator's env has taken in finished episodes (from its Monitor wrappers)."""
    venv = evaluator.eval_env
    while hasattr(venv, "venv"):
        venv = venv.venv
    return sum(sum(e.get_episode_lengths()) for e in getattr(venv, "envs", []) if hasattr(e, "get_episode_lengths"))


def _max_episode_steps(env_id: str) -> int | None:
    import gymnasium as gym

    return gym.spec(env_id).max_episode_steps


def run_rlpipe(spec: dict[str, Any]) -> dict[str, Any]:
    """rlpipe's trainer on a fresh session root; evaluation and checkpoint time inside the window is recorded."""
    import torch

    from bench.sessions import throughput_session, write_session_root
    from rlpipe.contract import METRICS_FILE
    from rlpipe.jsonio import read_json
    from rlpipe.trainer import callbacks as cb
    from rlpipe.trainer import eval_worker
    from rlpipe.trainer import session as trainer_session

    s = throughput_session(spec["algorithm"], spec["env"], spec["timesteps"], spec.get("interval"),
                           background_eval=spec.get("background_eval"), backend=spec.get("backend", "sb3"),
                           seed=spec.get("seed"))
    cls = trainer_session.algorithm_class(s.algorithm, s.backend)
    timer = install_window(_opens_after(cls, s.hyperparameters) + spec.get("warmup", 0), None,
                           (cls,) if s.backend != "sb3" else ())
    if spec.get("xla_multi_thread"):  # the thread-rule comparison: XLA's default pool instead of one thread
        from rlpipe.trainer import backends

        backends.xla_single_threaded_for = lambda session: False  # type: ignore[assignment]
    periodic: dict[str, list[float]] = {"eval": [], "checkpoint": [], "eval_steps": [], "record": []}

    def timed(kind: str, fn: Any) -> Any:
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            t, steps = time.perf_counter(), _eval_env_steps(self) if kind == "eval" else 0
            try:
                return fn(self, *args, **kwargs)
            finally:
                if timer.is_open:  # only what lands inside the measured window
                    periodic[kind].append(time.perf_counter() - t)
                    if kind == "eval":
                        periodic["eval_steps"].append(_eval_env_steps(self) - steps)
        return wrapper

    cb.Evaluator.evaluate = timed("eval", cb.Evaluator.evaluate)  # type: ignore[method-assign]
    # Recording a background result (history, metric line, metrics.json) also runs on the training loop; an
    # in-process evaluation records inside evaluate(), already timed.
    cb.Evaluator.record = timed("record", cb.Evaluator.record)  # type: ignore[method-assign]
    worker: dict[str, list[float]] = {"seconds": [], "env_steps": []}
    collect = eval_worker.BackgroundEvaluator.collect

    def collect_recorded(self: Any, *args: Any, **kwargs: Any) -> list[Any]:
        outcomes = collect(self, *args, **kwargs)
        worker["seconds"] += [o.seconds for o in outcomes]
        worker["env_steps"] += [o.env_steps for o in outcomes]
        return outcomes

    eval_worker.BackgroundEvaluator.collect = collect_recorded  # type: ignore[method-assign]
    def trainer_timings(kind: str, seconds: float) -> None:
        if timer.is_open:
            periodic[kind].append(seconds)

    with tempfile.TemporaryDirectory(prefix="rlpipe-bench-") as tmp:
        paths = write_session_root(Path(tmp) / "root", s)
        result = trainer_session.SessionTrainer(paths, timings=trainer_timings).run()
        window = timer.result()  # read before the post-learn work below can move it
        metrics = read_json(paths.model / METRICS_FILE) if result.status == "completed" else {}
    return {**window, "torch_threads": torch.get_num_threads(), "n_envs": s.n_envs,
            "eval_every_steps": s.eval.every_steps, "checkpoint_every_steps": s.checkpoint.every_steps,
            "eval_episodes": s.eval.episodes,
            "eval_seconds": [round(x, 4) for x in periodic["eval"]], "eval_env_steps": periodic["eval_steps"],
            "max_episode_steps": _max_episode_steps(s.env),
            "checkpoint_seconds": [round(x, 4) for x in periodic["checkpoint"]],
            "background_eval": bool(worker["seconds"]),  # what happened, not only what was chosen
            "record_seconds": [round(x, 4) for x in periodic["record"]],
            "worker_eval_seconds": [round(x, 4) for x in worker["seconds"]],
            "worker_eval_env_steps": worker["env_steps"],
            "trainer_reported_fps": metrics.get("timing", {}).get("fps"), "status": result.status,
            "final_reward": metrics.get("final_eval_reward"), "xla_flags": os.environ.get("XLA_FLAGS")}


VARIANTS = {"sb3_defaults": run_sb3_defaults, "sb3_same_settings": run_sb3_same_settings,
            "raw_env": run_raw_env, "rlpipe": run_rlpipe, "rlpipe_in_process": run_rlpipe,
            # the sbx section (bench/sbx.py): the same two scripts with backend sbx in the spec
            "sbx_same_settings": run_sb3_same_settings, "rlpipe_sbx": run_rlpipe,
            "rlpipe_sbx_xla_multi": run_rlpipe}


def main(argv: list[str]) -> int:
    """Run the measurement described by the JSON spec ``argv[0]`` and write its result to ``argv[1]``."""
    spec = json.loads(argv[0])
    started = time.perf_counter()
    result = VARIANTS[spec["variant"]](spec)
    result.update(variant=spec["variant"], algorithm=spec.get("algorithm"), env=spec["env"],
                  process_seconds=round(time.perf_counter() - started, 3))
    Path(argv[1]).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
