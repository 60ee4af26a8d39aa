"""Train one session under the container contract: resume or warm-start, learn to the exact budget, hand over.

Carry/reset rules for a warm start (``handoff`` in the session config), each stated in the log and the bundle:
- policy: always carried (that is the transfer);
- optimizer: ``carry`` loads the optimizer moments (and SAC's learned entropy coefficient); ``reset`` starts fresh;
- vecnormalize: ``carry`` continues the observation/reward statistics; ``reset`` starts new ones;
- replay_buffer (off-policy): ``carry`` loads the previous transitions; ``reset`` starts empty;
- num_timesteps: always reset; each session has its own budget. The global offset is kept for plots.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import CallbackList
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.save_util import load_from_zip_file
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecNormalize

import rlpipe.envs  # noqa: F401  (registers rlpipe/* env ids)
from rlpipe.algorithms import BACKEND_PACKAGES, algorithm_info
from rlpipe.config import SessionConfig
from rlpipe.contract import ContainerPaths
from rlpipe.integrity import DamagedFile, MetricsShape, SessionDocShape, parse_checked
from rlpipe.jsonio import write_json_atomic
from rlpipe.outcome import SessionOutcome
from rlpipe.state import utcnow
from rlpipe.trainer import backends
from rlpipe.trainer import bundle as B
from rlpipe.trainer.callbacks import BudgetAndStop, Checkpointer, Evaluator
from rlpipe.trainer.checkpoints import (Checkpoint, checkpoint_name, commit_checkpoint, newest_valid, prune,
                                        sha256_file)
from rlpipe.trainer.eval_recovery import lost_steps, recover
from rlpipe.trainer.eval_worker import BackgroundEvaluator, EvalEnvSpec, make_eval_env, spawn_can_start
from rlpipe.trainer.gates import SessionGates, needs_inline_eval
from rlpipe.trainer.replay import load_replay_buffer, save_replay_buffer
from rlpipe.trainer.video import record_video
from rlpipe.write_errors import naming, naming_full_disk

log = logging.getLogger(__name__)

EVAL_SEED_OFFSET = 1_000_003  # keeps evaluation episodes apart from training episodes
# Evaluation episodes run side by side in one DummyVecEnv so the policy is queried in batches: about twice
# as fast as one env at a time for 5 episodes (bench/RESULTS.md).
MAX_EVAL_ENVS = 8
# On a stop (SIGTERM, Ctrl-C) background evaluations get this long before the checkpoint is written;
# SageMaker allows 120 s between SIGTERM and SIGKILL.
STOP_DRAIN_SECONDS = 20.0
TORCH_DEFAULT_THREADS = torch.get_num_threads()  # before any session changes it (the runner is in-process)
HANDOFF_ORDER = ("policy", "optimizer", "vecnormalize", "replay_buffer", "num_timesteps")


@dataclass
class SessionResult:
    """How a session ended in this process."""

    status: str  # "completed" | "interrupted"
    timesteps: int
    resumed_from: int | None
    outcome: SessionOutcome | None = None  # what metrics.json holds, for a completed session


def algorithm_class(name: str, backend: str = "sb3") -> type[BaseAlgorithm]:
    """The class of algorithm ``name`` in ``backend``'s package (:attr:`AlgorithmInfo.sb3_class`)."""
    return getattr(importlib.import_module(BACKEND_PACKAGES[backend]), algorithm_info(name, backend).sb3_class)


def torch_threads_for(session: SessionConfig) -> int:
    """Torch threads for a session: its own setting, else 1 on-policy (small MLP batches run fastest on one
    thread) and, off-policy, torch's default only on more than 2 cores: on 2 cores a second busy process makes
    two threads collapse to a few steps/s (bench/RESULTS.md)."""
    if session.torch_threads:
        return session.torch_threads
    if session.info.off_policy and (os.cpu_count() or 1) > 2:
        return TORCH_DEFAULT_THREADS
    return 1


def choose_vec_env(session: SessionConfig) -> type[VecEnv]:
    """DummyVecEnv on small machines (process overhead outweighs parallel stepping on <= 2 cores)."""
    if session.n_envs > 1 and (
            session.vec_env == "subproc" or (session.vec_env == "auto" and (os.cpu_count() or 1) > 2
                                             and session.n_envs > 2)):
        return SubprocVecEnv
    return DummyVecEnv


def background_eval_for(session: SessionConfig) -> bool:
    """Whether periodic evaluations run in a worker process: the session's own setting, else when a core is
    left over by training and the session evaluates at least twice before its end (the worker's start, about
    2 s of one core, costs more than fewer evaluations take off the training loop)."""
    if session.eval.background is not None:
        return session.eval.background
    busy = torch_threads_for(session)
    if choose_vec_env(session) is SubprocVecEnv:
        busy += session.n_envs
    evaluations_before_end = (session.timesteps - 1) // session.eval.every_steps
    return (os.cpu_count() or 1) > busy and evaluations_before_end >= 2


def evaluations_up_to(checkpointed: list[dict[str, Any]], recorded: list[dict[str, Any]],
                      timesteps: int) -> list[dict[str, Any]]:
    """A checkpoint's evaluations plus those recorded after it was written (background evaluations finish
    after the checkpoint of their step), from the newest ``metrics.json``; evaluations of later steps are
    dropped: those steps are trained again."""
    by_step = {h["timesteps"]: h for h in recorded if h["timesteps"] <= timesteps}
    by_step.update({h["timesteps"]: h for h in checkpointed})
    return [by_step[k] for k in sorted(by_step)]


class SessionTrainer:
    """One session's training, from the paths of the container contract."""

    def __init__(self, paths: ContainerPaths, stop: threading.Event | None = None,
                 progress: Callable[[int, int], None] | None = None, started_at: str | None = None,
                 timings: Callable[[str, float], None] | None = None) -> None:
        """``timings`` receives (kind, seconds) of work on the training loop besides stepping: ``checkpoint``."""
        self.paths = paths
        self.timings = timings
        self.stop = stop or threading.Event()
        self.progress = progress
        self.started_at = started_at or utcnow()
        doc = parse_checked(paths.session_file, SessionDocShape, "the driver writes it: re-run the session "
                            "from the runner (rlpipe run --resume) or re-submit the training job").model_dump()
        self.doc = doc
        self.session = SessionConfig.model_validate(doc["session"])
        self.global_offset = int(doc.get("global_timestep_offset", 0))
        self.handoff_from: str | None = doc.get("handoff_from")
        self.history: list[dict[str, Any]] = []
        self.carried: list[str] = []
        self.reset: list[str] = []
        self.notes: list[str] = []
        backends.configure_xla_threads(self.session)  # before SBX's import starts JAX
        self.info = algorithm_class(self.session.algorithm, self.session.backend)
        self.off_policy = issubclass(self.info, OffPolicyAlgorithm)
        self.evaluation_gaps: list[dict[str, Any]] = []
        # Extracted bundle archives: inside the session root (not the system temp dir), created only when a
        # channel holds an archive; a copy left by a killed process is removed here.
        self._scratch = paths.output / ".bundle-scratch"
        shutil.rmtree(self._scratch, ignore_errors=True)
        self._checkpointed_at: int | None = None
        self.warm_started = False
        self.transfer_eval_seconds = 0.0
        self._open_envs: list[VecEnv] = []  # closed in run()'s finally, also when preparation fails

    # -- environments -------------------------------------------------------------------------------------
    def _make_env(self, n_envs: int, seed: int) -> VecEnv:
        s = self.session
        env = make_vec_env(s.env, n_envs=n_envs, seed=seed, env_kwargs=dict(s.env_kwargs),
                           vec_env_cls=choose_vec_env(s))
        self._open_envs.append(env)
        return env

    def _eval_spec(self) -> EvalEnvSpec:
        s = self.session
        return EvalEnvSpec(s.env, dict(s.env_kwargs), min(s.eval.episodes, MAX_EVAL_ENVS), s.eval.episodes,
                           normalize=s.normalize, seed=s.seed + EVAL_SEED_OFFSET)

    def _make_eval_env(self) -> VecEnv:
        env = make_eval_env(self._eval_spec())
        self._open_envs.append(env)
        return env

    def _wrap_normalize(self, venv: VecEnv, stats: Path | None) -> VecEnv:
        if not self.session.normalize:
            return venv
        if stats is not None:
            env = VecNormalize.load(str(stats), venv)
            env.training = True
            return env
        gamma = float(self.session.hyperparameters.get("gamma", 0.99))
        return VecNormalize(venv, norm_obs=True, norm_reward=True, gamma=gamma)

    # -- model --------------------------------------------------------------------------------------------
    def _new_model(self, env: VecEnv) -> BaseAlgorithm:
        s = self.session
        return self.info(s.policy, env, seed=s.seed, device=s.device, verbose=0,
                         tensorboard_log=str(self.paths.tensorboard), **s.hyperparameters)

    def _warm_start(self, model: BaseAlgorithm, prev: B.Bundle) -> None:
        """Load the previous bundle's policy (and, per the handoff rules, optimizer and replay buffer)."""
        h = self.session.handoff
        if backends.is_jax_policy(model.policy):
            backends.warm_start_jax(model, prev.path / B.MODEL, carry_optimizer=h.optimizer == "carry")
        else:
            _, params, torch_vars = load_from_zip_file(str(prev.path / B.MODEL), device=model.device)
            model.policy.load_state_dict(params["policy"], strict=True)
            if h.optimizer == "carry":
                optim = {k: v for k, v in params.items() if "optimizer" in k}
                model.set_parameters(optim, exact_match=False, device=model.device)
                for name, value in (torch_vars or {}).items():
                    target = getattr(model, name, None)
                    if isinstance(target, torch.Tensor):
                        with torch.no_grad():
                            target.copy_(value)
        self.carried.append("policy")
        (self.carried if h.optimizer == "carry" else self.reset).append("optimizer")
        if self.off_policy:
            rb = prev.file(B.REPLAY_BUFFER)
            if h.replay_buffer == "carry" and rb is not None:
                load_replay_buffer(model, rb)
                self.carried.append("replay_buffer")
            else:
                self.reset.append("replay_buffer")
                if h.replay_buffer == "carry":
                    self.notes.append("replay buffer requested but the previous bundle has none: started empty")

    def _prepare(self) -> tuple[BaseAlgorithm, VecEnv, Checkpoint | None]:
        s = self.session
        self.carried, self.reset, self.notes = [], [], []
        ckpt = newest_valid(self.paths.checkpoints)
        prev: B.Bundle | None = None
        if ckpt is None and s.use_previous_checkpoint:
            prev = B.open_bundle(self.paths.previous, self._scratch)
        start = ckpt.timesteps if ckpt else 0
        stats: Path | None = None
        if ckpt is not None:
            stats = ckpt.file(B.VECNORMALIZE)
        elif prev is not None and s.normalize:
            if s.handoff.vecnormalize == "carry" and prev.file(B.VECNORMALIZE):
                stats = prev.file(B.VECNORMALIZE)
                self.carried.append("vecnormalize")
            else:
                self.reset.append("vecnormalize")
                if s.handoff.vecnormalize == "carry":
                    self.notes.append("vecnormalize requested but the previous bundle has none: new statistics")
        elif prev is not None and prev.file(B.VECNORMALIZE):
            self.reset.append("vecnormalize")
            self.notes.append("previous VecNormalize statistics unused: normalize is false in this session")
        # Different seeds after a resume so the restarted part does not replay the first episodes.
        env = self._wrap_normalize(self._make_env(s.n_envs, s.seed + start), stats)
        if ckpt is not None:
            model = self.info.load(str(ckpt.path / B.MODEL), env=env, device=s.device,
                                   tensorboard_log=str(self.paths.tensorboard))
            rb = ckpt.file(B.REPLAY_BUFFER)
            if self.off_policy and rb is not None:
                load_replay_buffer(model, rb)
            meta = ckpt.meta
            self.history = evaluations_up_to(list(meta.get("evaluations", [])), self._recorded_evaluations(),
                                             ckpt.timesteps)
            self.carried, self.reset, self.notes = (list(meta.get("carried", [])), list(meta.get("reset", [])),
                                                    list(meta.get("notes", [])))
            log.info("session %s: resuming from checkpoint %s (%d of %d steps)", s.name, ckpt.path.name,
                     ckpt.timesteps, s.timesteps)
        else:
            model = self._new_model(env)
            if prev is not None:
                self.warm_started = True
                self._warm_start(model, prev)
                self.reset.append("num_timesteps")
                log.info("session %s: warm start from %s; carried: %s; reset: %s", s.name,
                         self.handoff_from or prev.meta.get("session"), ", ".join(self.carried) or "-",
                         ", ".join(self.reset) or "-")
        for note in self.notes:
            log.warning("session %s: %s", s.name, note)
        return model, env, ckpt

    def _recover_evaluations(self, evaluator: Evaluator, up_to: int) -> None:
        """Run again the evaluations of the grid up to ``up_to`` that a kill lost; record those that cannot be."""
        s = self.session
        previous = None
        if s.use_previous_checkpoint and 0 in lost_steps(s, self.history, up_to):
            try:
                previous = B.open_bundle(self.paths.previous, self._scratch)
            except B.BundleError as exc:
                log.warning("session %s: %s", s.name, exc)
        shots, gaps = recover(s, self.history, up_to, self.paths.checkpoints, previous, s.seed + EVAL_SEED_OFFSET,
                              evaluator.model.observation_space.shape)
        for shot in shots:
            log.info("session %s: evaluating %d steps again (lost to an interruption)", s.name, shot.timesteps)
            evaluator.evaluate_snapshot(shot)
        self.evaluation_gaps = [g.as_dict(self.global_offset) for g in gaps]
        for gap in gaps:
            log.warning("session %s: %s", s.name, gap.reason)
            if gap.reason not in self.notes:
                self.notes.append(gap.reason)

    def _recorded_evaluations(self) -> list[dict[str, Any]]:
        path = self.paths.checkpoints / B.METRICS
        if not path.exists():
            return []
        try:
            return [e.model_dump() for e in parse_checked(path, MetricsShape, "ignored").evaluations]
        except DamagedFile as exc:  # the checkpoint's own list stands; lost evaluations are run again
            log.warning("session %s: %s", self.session.name, exc)
            return []

    # -- outputs ------------------------------------------------------------------------------------------
    def _outcome(self, model: BaseAlgorithm, budget_cb: BudgetAndStop | None, ended: bool) -> SessionOutcome:
        self.carried.sort(key=HANDOFF_ORDER.index)
        self.reset.sort(key=HANDOFF_ORDER.index)
        evaluations = sorted(self.history, key=lambda h: h["timesteps"])
        rewards = [h["mean_reward"] for h in evaluations]
        return SessionOutcome.model_validate({
            "session": self.session.name, "env": self.session.env, "algorithm": self.session.algorithm,
            "global_timestep_offset": self.global_offset, "timesteps": int(model.num_timesteps),
            "timesteps_budget": self.session.timesteps,
            "evaluations": evaluations,
            "evaluation_gaps": self.evaluation_gaps,
            "best_eval_reward": max(rewards) if rewards else None,
            "final_eval_reward": rewards[-1] if rewards and ended else None,
            "timing": {"started_at": self.started_at,
                       "first_step_at": budget_cb.first_step_at if budget_cb else None,
                       "ended_at": utcnow() if ended else None,
                       "fps": round(budget_cb.fps(), 1) if budget_cb else 0.0,
                       "transfer_eval_seconds": self.transfer_eval_seconds},
            "carried": self.carried, "reset": self.reset, "notes": self.notes,
            "handoff_from": self.handoff_from,
        })

    def _save_state(self, model: BaseAlgorithm, env: VecEnv, into: Path) -> None:
        with naming(into / B.MODEL):
            model.save(str(into / B.MODEL))
        if isinstance(env, VecNormalize):
            with naming(into / B.VECNORMALIZE):
                env.save(str(into / B.VECNORMALIZE))
        if self.off_policy:
            with naming(into / B.REPLAY_BUFFER):
                save_replay_buffer(model, into / B.REPLAY_BUFFER)

    def _checkpoint(self, model: BaseAlgorithm, env: VecEnv) -> None:
        steps = int(model.num_timesteps)
        if steps == self._checkpointed_at:
            return
        clock = time.perf_counter()
        directory = self.paths.checkpoints
        directory.mkdir(parents=True, exist_ok=True)
        staging = directory / f".{checkpoint_name(steps)}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        self._save_state(model, env, staging)
        commit_checkpoint(staging, directory / checkpoint_name(steps), steps,
                          {"session": self.session.name, "evaluations": self.history,
                           "carried": self.carried, "reset": self.reset, "notes": self.notes})
        self._prune(steps)
        self._checkpointed_at = steps
        log.info("session %s: checkpoint at %d steps", self.session.name, steps)
        if self.timings is not None:
            self.timings("checkpoint", time.perf_counter() - clock)

    def _prune(self, steps: int) -> None:
        # A checkpoint whose evaluation has not come back yet is kept: a kill now would lose its weights too.
        prune(self.paths.checkpoints, self.session.checkpoint.keep,
              protect={checkpoint_name(x) for x in lost_steps(self.session, self.history, steps)})

    def _write_outcome(self, outcome: SessionOutcome) -> None:
        # Also beside the checkpoints: on AWS that prefix syncs to S3 as plain objects during training.
        for target in (self.paths.checkpoints / B.METRICS, self.paths.model / B.METRICS):
            write_json_atomic(target, outcome.to_json())

    def _write_bundle(self, model: BaseAlgorithm, env: VecEnv, outcome: SessionOutcome) -> None:
        out = self.paths.model
        out.mkdir(parents=True, exist_ok=True)
        self._save_state(model, env, out)
        files = sorted(p.name for p in out.iterdir() if p.name != B.BUNDLE_META)
        write_json_atomic(out / B.BUNDLE_META, {
            "format_version": B.FORMAT_VERSION, "session": self.session.name, "env": self.session.env,
            "algorithm": self.session.algorithm, "timesteps": int(model.num_timesteps),
            "global_timesteps": self.global_offset + int(model.num_timesteps),
            "normalize": isinstance(env, VecNormalize), "off_policy": self.off_policy,
            "carried": self.carried, "reset": self.reset, "notes": self.notes, "created_at": utcnow(),
            "files": files,
            # Checked before the bundle is used or reported (rlpipe.integrity); metrics and plot are rewritten.
            "sha256": {n: sha256_file(out / n) for n in files if n in B.STATE_FILES},
        })
        self._write_outcome(outcome)
        try:
            from rlpipe.report.plots import learning_curve_png

            one = {"pipeline": self.doc.get("pipeline"), "run_id": self.doc.get("run_id"), "status": "completed",
                   "sessions": [{"name": self.session.name, "status": "completed", **outcome.to_json(),
                                 "wall_seconds": None}]}
            (out / B.CURVE).write_bytes(learning_curve_png(one))
        except Exception as exc:  # a plot must never cost the bundle
            log.warning("session %s: learning curve not drawn: %s", self.session.name, exc)

    def _record_video(self, outcome: SessionOutcome, steps: int) -> SessionOutcome:
        """The handed-over policy's video (:mod:`rlpipe.trainer.video`), seeded as the final evaluation. The
        session ends after it, so recording counts as session time, not as the hand-over to the next session."""
        video = record_video(self.session, self.paths.model, self.session.seed + EVAL_SEED_OFFSET + steps,
                             stop=self.stop, copy_to=self.paths.checkpoints)
        timing = outcome.timing.model_copy(update={"ended_at": utcnow()})
        outcome = outcome.model_copy(update={"video": video, "timing": timing})
        self._write_outcome(outcome)
        return outcome

    # -- run ----------------------------------------------------------------------------------------------
    def run(self) -> SessionResult:
        """Train to the budget (or until stopped) and write the bundle; checkpoints along the way."""
        with naming_full_disk(self.paths.root):  # e.g. tensorboard's writer: name the file that did not fit
            return self._run()

    def _run(self) -> SessionResult:
        s = self.session
        torch.set_num_threads(torch_threads_for(s))
        background: BackgroundEvaluator | None = None
        try:
            model, env, ckpt = self._prepare()
            resumed_from = ckpt.timesteps if ckpt else None
            self._checkpointed_at = resumed_from
            gates = SessionGates(s, self.paths.checkpoints, lambda into: self._save_state(model, env, into))
            gates.restore(self.history, resumed_from)
            background = (BackgroundEvaluator(self._eval_spec(), model)
                          if background_eval_for(s) and not needs_inline_eval(s) and spawn_can_start() else None)
            budget_cb = BudgetAndStop(s.timesteps, self.stop, self.progress)

            def on_eval() -> None:
                gates.after_evaluation(int(model.num_timesteps), self.history)
                self._write_outcome(self._outcome(model, budget_cb, False))

            evaluator = Evaluator(self._make_eval_env, s.eval.every_steps, s.eval.episodes, s.name, self.global_offset,
                                  self.history, fps=budget_cb.fps, seed=s.seed + EVAL_SEED_OFFSET,
                                  on_eval=on_eval, background=background)
            checkpointer = Checkpointer(s.checkpoint.every_steps, lambda: self._checkpoint(model, env))
            evaluator.init_callback(model)
            if self.warm_started and not self.stop.is_set():
                # Step 0 of a warm start: how well the transferred policy does on the new task before training.
                # The time it holds up the first step is recorded (a background evaluation: the hand-over).
                clock = time.perf_counter()
                evaluator.evaluate()
                self.transfer_eval_seconds = round(time.perf_counter() - clock, 3)
            elif ckpt is not None and not self.stop.is_set():
                self._recover_evaluations(evaluator, ckpt.timesteps)
            remaining = s.timesteps - int(model.num_timesteps)
            if remaining > 0 and not self.stop.is_set() and not gates.stopped:
                model.learn(total_timesteps=remaining,
                            callback=CallbackList([budget_cb, evaluator, checkpointer, gates.callback()]),
                            reset_num_timesteps=ckpt is None, tb_log_name=s.name, progress_bar=False)
            steps = int(model.num_timesteps)
            if steps < s.timesteps and not gates.stopped:
                self._checkpoint(model, env)  # first: the stop window is short; evaluations merge on resume
                evaluator.drain(STOP_DRAIN_SECONDS)
                self._write_outcome(self._outcome(model, budget_cb, False))
                log.info("session %s: stopped at %d of %d steps; checkpoint saved", s.name, steps, s.timesteps)
                return SessionResult("interrupted", steps, resumed_from)
            wait = STOP_DRAIN_SECONDS if self.stop.is_set() else None
            evaluator.drain(wait)
            if not any(h["timesteps"] == steps for h in self.history):
                evaluator.evaluate()
                evaluator.drain(wait)
            if background is not None:
                background.stop()  # it exits while the bundle is written
            outcome = gates.conclude(self._outcome(model, budget_cb, True))
            self._write_bundle(model, env, outcome)
            gates.hand_over_best(self.paths.model)
            self._checkpoint(model, env)  # a re-run after a crash here only rewrites the bundle
            self._prune(steps)  # every evaluation is in: checkpoints kept for theirs can go
            outcome = self._record_video(outcome, steps)
            return SessionResult("completed", steps, resumed_from, outcome)
        finally:
            if background is not None:
                background.close()
            for opened in self._open_envs:
                opened.close()
            self._open_envs.clear()
            shutil.rmtree(self._scratch, ignore_errors=True)
