"""Trainer: exact budgets, SIGTERM checkpoint + resume, corrupt checkpoints, handoff carry/reset rules."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from stable_baselines3.common.save_util import load_from_zip_file

from rlpipe.jsonio import read_json
from rlpipe.trainer.checkpoints import newest_valid
from rlpipe.trainer.entrypoint import EXIT_INTERRUPTED
from rlpipe.trainer.session import SessionTrainer

from .trainer_utils import pipeline_raw, session_root


def policy_state(path: Path) -> dict[str, torch.Tensor]:
    _, params, _ = load_from_zip_file(str(path), device="cpu")
    return params["policy"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k].cpu(), b[k].cpu()), k


def test_exact_budget_not_multiple_of_rollout(tmp_path: Path) -> None:
    # 200 steps with n_envs=2 and n_steps=64: PPO alone would overshoot to 256.
    raw = pipeline_raw()
    raw["sessions"][0]["timesteps"] = 200
    result = SessionTrainer(session_root(tmp_path, raw, 0)).run()
    assert result.status == "completed" and result.timesteps == 200
    bundle = read_json(tmp_path / "model" / "bundle.json")
    assert bundle["timesteps"] == 200
    metrics = read_json(tmp_path / "model" / "metrics.json")
    assert metrics["evaluations"][-1]["timesteps"] == 200
    assert metrics["final_eval_reward"] == metrics["evaluations"][-1]["mean_reward"]
    assert {"model.zip", "vecnormalize.pkl", "metrics.json"} <= set(bundle["files"])
    assert (tmp_path / "checkpoints" / "metrics.json").exists()  # synced to S3 on AWS
    assert list((tmp_path / "output" / "tensorboard").rglob("events.out.tfevents.*"))


def test_metric_lines_match_sagemaker_metric_definitions(tmp_path: Path) -> None:
    import re

    from rlpipe.contract import METRIC_DEFINITIONS

    session_root(tmp_path, pipeline_raw(), 0)
    out = subprocess.run([sys.executable, "-m", "rlpipe.trainer", "--root", str(tmp_path)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    found = {d["Name"]: re.findall(d["Regex"], out.stdout) for d in METRIC_DEFINITIONS}
    assert len(found["eval_mean_reward"]) == 2  # evaluations at 128 and 256 steps
    assert found["timesteps"] == ["128", "256"]
    assert all(len(v) == 2 for v in found.values())


def test_sigterm_checkpoints_then_restart_resumes_exactly(tmp_path: Path) -> None:
    raw = pipeline_raw()
    raw["sessions"][0]["timesteps"] = 20000
    paths = session_root(tmp_path, raw, 0)
    cmd = [sys.executable, "-m", "rlpipe.trainer", "--root", str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while newest_valid(paths.checkpoints) is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_INTERRUPTED, err
    assert "Traceback" not in err
    stopped = newest_valid(paths.checkpoints)
    assert stopped is not None and 0 < stopped.timesteps < 20000
    assert not (paths.model / "bundle.json").exists()

    # Restart: the model it starts from is the checkpoint's, not a fresh one.
    trainer = SessionTrainer(paths)
    model, env, ckpt = trainer._prepare()
    assert ckpt is not None and ckpt.timesteps == stopped.timesteps
    assert model.num_timesteps == stopped.timesteps
    assert_same_weights(model.policy.state_dict(), policy_state(stopped.path / "model.zip"))
    env.close()

    raw["sessions"][0]["timesteps"] = stopped.timesteps + 256  # keep the test short: same session, nearer end
    session_root(tmp_path, raw, 0)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    bundle = read_json(paths.model / "bundle.json")
    assert bundle["timesteps"] == stopped.timesteps + 256
    metrics = read_json(paths.model / "metrics.json")
    steps = [e["timesteps"] for e in metrics["evaluations"]]
    assert steps == sorted(steps) and steps[0] == 128  # history kept across the restart


def test_corrupt_newest_checkpoint_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    raw = pipeline_raw()
    raw["sessions"][0]["checkpoint"] = {"every_steps": 128, "keep": 3}
    paths = session_root(tmp_path, raw, 0)
    SessionTrainer(paths).run()
    ckpts = sorted(paths.checkpoints.glob("step-*"))
    assert [c.name for c in ckpts] == ["step-000000000128", "step-000000000256"]
    model_zip = ckpts[-1] / "model.zip"
    model_zip.write_bytes(model_zip.read_bytes()[:100])  # truncated, as by a kill mid-write
    with caplog.at_level(logging.WARNING):
        found = newest_valid(paths.checkpoints)
    assert found is not None and found.timesteps == 128
    assert "skipping checkpoint step-000000000256" in caplog.text
    (ckpts[0] / "manifest.json").unlink()  # a checkpoint whose manifest never got written
    assert newest_valid(paths.checkpoints) is None


def _two_sessions(tmp_path: Path, raw: dict) -> tuple[Path, SessionTrainer]:
    first = tmp_path / "s1"
    SessionTrainer(session_root(first, raw, 0)).run()
    second = session_root(tmp_path / "s2", raw, 1, previous=first / "model")
    return first, SessionTrainer(second)


def test_handoff_carries_policy_optimizer_and_vecnormalize(tmp_path: Path) -> None:
    first, trainer = _two_sessions(tmp_path, pipeline_raw())
    model, env, _ = trainer._prepare()
    assert_same_weights(model.policy.state_dict(), policy_state(first / "model" / "model.zip"))
    assert model.num_timesteps == 0
    assert sorted(trainer.carried) == sorted(["policy", "optimizer", "vecnormalize"])
    assert len(model.policy.optimizer.state) > 0  # Adam moments came along
    import pickle

    with open(first / "model" / "vecnormalize.pkl", "rb") as fh:
        saved = pickle.load(fh)
    np.testing.assert_array_equal(env.obs_rms.mean, saved.obs_rms.mean)
    assert env.obs_rms.count == saved.obs_rms.count
    env.close()
    result = trainer.run()
    assert result.status == "completed"
    metrics = read_json(tmp_path / "s2" / "model" / "metrics.json")
    assert metrics["carried"] == ["policy", "optimizer", "vecnormalize"]
    assert metrics["reset"] == ["num_timesteps"]
    assert [e["global_timesteps"] for e in metrics["evaluations"]] == [256, 256 + 128, 256 + 256]  # 0 = transfer


def test_handoff_reset_rules(tmp_path: Path) -> None:
    raw = pipeline_raw()
    raw["sessions"][1]["handoff"] = {"optimizer": "reset", "vecnormalize": "reset"}
    first, trainer = _two_sessions(tmp_path, raw)
    model, env, _ = trainer._prepare()
    assert_same_weights(model.policy.state_dict(), policy_state(first / "model" / "model.zip"))
    assert len(model.policy.optimizer.state) == 0
    assert env.obs_rms.count < 1  # fresh statistics
    assert trainer.carried == ["policy"]
    assert set(trainer.reset) == {"optimizer", "vecnormalize", "num_timesteps"}
    env.close()


def test_off_policy_replay_buffer_carry(tmp_path: Path) -> None:
    raw = pipeline_raw(algorithm="sac", n_envs=1, timesteps=120,
                       hyperparameters={"learning_starts": 50, "buffer_size": 500, "batch_size": 32,
                                        "policy_kwargs": {"net_arch": [16, 16]}})
    raw["defaults"] = {"eval": {"every_steps": 120, "episodes": 1}, "checkpoint": {"every_steps": 120}}
    raw["sessions"][1]["handoff"] = {"replay_buffer": "carry"}
    first, trainer = _two_sessions(tmp_path, raw)
    assert (first / "model" / "replay_buffer.pkl").exists()
    import pickle

    with open(first / "model" / "replay_buffer.pkl", "rb") as fh:
        saved = pickle.load(fh)
    assert saved.size() >= 119  # SB3 stops before storing the transition of the budget's last step
    model, env, _ = trainer._prepare()
    assert model.replay_buffer.size() == saved.size()
    np.testing.assert_array_equal(model.replay_buffer.observations[:10], saved.observations[:10])
    assert "replay_buffer" in trainer.carried
    env.close()


def test_missing_previous_bundle_fails_with_reason(tmp_path: Path) -> None:
    raw = pipeline_raw()
    session_root(tmp_path, raw, 1)  # use_previous_checkpoint but no previous channel
    out = subprocess.run([sys.executable, "-m", "rlpipe.trainer", "--root", str(tmp_path)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 1
    assert "BundleError: no previous bundle" in (tmp_path / "output" / "failure").read_text()


def test_entrypoint_accepts_sagemaker_train_argument(tmp_path: Path) -> None:
    session_root(tmp_path, pipeline_raw(), 0)
    out = subprocess.run([sys.executable, "-m", "rlpipe.trainer", "train", "--root", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr


def _evaluations(root: Path) -> list[tuple[int, float, float]]:
    return [(e["timesteps"], e["mean_reward"], e["std_reward"])
            for e in read_json(root / "model" / "metrics.json")["evaluations"]]


def test_background_evaluation_records_what_in_process_evaluation_does(tmp_path: Path) -> None:
    import multiprocessing

    raw = pipeline_raw(eval={"every_steps": 128, "episodes": 2})
    raw["sessions"][1]["timesteps"] = 640
    first = tmp_path / "s1"
    SessionTrainer(session_root(first, raw, 0)).run()
    results = {}
    for background in (False, True):
        raw["sessions"][1]["eval"]["background"] = background
        root = tmp_path / f"background-{background}"
        result = SessionTrainer(session_root(root, raw, 1, previous=first / "model")).run()
        assert result.status == "completed" and result.timesteps == 640
        results[background] = _evaluations(root)
    # The step-0 transfer evaluation, five periodic ones and the final one: same steps, same rewards.
    assert [e[0] for e in results[True]] == [0, 128, 256, 384, 512, 640]
    assert results[True] == results[False]
    assert not multiprocessing.active_children()  # the worker is gone


@contextmanager
def _worker_and_evaluator() -> Iterator[tuple[Any, Any, list[dict], float]]:
    """A PPO model, its background worker and an Evaluator using it; also the in-process reward (seed 7)."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy

    from rlpipe.trainer.callbacks import Evaluator
    from rlpipe.trainer.eval_worker import BackgroundEvaluator, EvalEnvSpec, make_eval_env

    spec = EvalEnvSpec("rlpipe/HeightMaximize-v0", {}, 1, 1, normalize=False, seed=0)
    env = make_vec_env("rlpipe/HeightMaximize-v0", n_envs=1)
    model = PPO("MlpPolicy", env, n_steps=64, seed=0, policy_kwargs={"net_arch": [8]})
    reference = make_eval_env(spec)
    reference.seed(7)
    expected, _ = evaluate_policy(model, reference, n_eval_episodes=1, deterministic=True, warn=False)
    reference.close()
    worker = BackgroundEvaluator(spec, model)
    history: list[dict] = []
    evaluator = Evaluator(lambda: make_eval_env(spec), 64, 1, "s", 0, history, on_eval=lambda: None,
                          fps=lambda: 0.0, seed=7, background=worker)
    evaluator.init_callback(model)
    try:
        yield worker, evaluator, history, float(expected)
    finally:
        worker.close()
        env.close()
    assert worker.exitcode is not None


def test_background_worker_reports_a_failed_evaluation_and_the_trainer_falls_back() -> None:
    from rlpipe.trainer.eval_worker import Snapshot, snapshot

    with _worker_and_evaluator() as (worker, evaluator, history, expected):
        evaluator.evaluate()  # step 0, in the worker
        worker.submit(Snapshot(64, 7, {"not": np.zeros(1)}, None))  # weights of another policy
        evaluator.drain(None)
        assert worker.pending == 0 and evaluator.background is None  # fell back after the failure
        assert [(h["timesteps"], h["mean_reward"]) for h in history] == [(0, pytest.approx(expected))]
        evaluator.evaluate()  # now in this process: the same number
        assert history[-1]["mean_reward"] == history[0]["mean_reward"]
        assert snapshot(evaluator.model, 7).weights.keys() == evaluator.model.policy.state_dict().keys()


def test_a_killed_worker_loses_no_evaluation() -> None:
    with _worker_and_evaluator() as (worker, evaluator, history, expected):
        evaluator.evaluate()  # handed to the worker, which is still starting
        worker._process.kill()  # as by the OOM killer
        evaluator.drain(None)
        assert evaluator.background is None
        assert [(h["timesteps"], h["mean_reward"]) for h in history] == [(0, pytest.approx(expected))]


def test_resume_evaluates_a_checkpoint_whose_evaluation_was_lost(tmp_path: Path) -> None:
    raw = pipeline_raw(eval={"every_steps": 128, "episodes": 1})
    raw["sessions"][0]["timesteps"] = 384
    paths = session_root(tmp_path, raw, 0)
    SessionTrainer(paths).run()
    complete = _evaluations(tmp_path)
    # As if the process died while step 256 was evaluated in the background: newest checkpoint 256, no
    # evaluation of 256 anywhere.
    import shutil

    from rlpipe.jsonio import write_json_atomic

    shutil.rmtree(paths.checkpoints / "step-000000000384")
    shutil.rmtree(paths.model)
    metrics = read_json(paths.checkpoints / "metrics.json")
    metrics["evaluations"] = [e for e in metrics["evaluations"] if e["timesteps"] == 128]
    write_json_atomic(paths.checkpoints / "metrics.json", metrics)
    manifest = paths.checkpoints / "step-000000000256" / "manifest.json"
    doc = read_json(manifest)
    doc["evaluations"] = [e for e in doc["evaluations"] if e["timesteps"] == 128]
    write_json_atomic(manifest, doc)
    result = SessionTrainer(paths).run()
    assert result.resumed_from == 256
    resumed = _evaluations(tmp_path)
    assert [e[0] for e in resumed] == [128, 256, 384]
    # 256 evaluated again from the checkpoint: the same reward (the steps after it train on new env seeds).
    assert resumed[:2] == complete[:2]


def test_resume_keeps_evaluations_recorded_after_the_checkpoint() -> None:
    from rlpipe.trainer.session import evaluations_up_to

    def ev(steps: int, reward: float) -> dict:
        return {"timesteps": steps, "mean_reward": reward}

    # Checkpoint at 256 written while the evaluation of 256 ran in the background; metrics.json has it, and
    # the evaluation of 384, whose steps the resumed session trains again.
    merged = evaluations_up_to([ev(128, 1.0)], [ev(128, 9.0), ev(256, 2.0), ev(384, 3.0)], 256)
    assert merged == [ev(128, 1.0), ev(256, 2.0)]


def test_background_evaluation_needs_a_spare_core_and_several_evaluations(monkeypatch: pytest.MonkeyPatch) -> None:
    from rlpipe.config import SessionConfig
    from rlpipe.trainer import session as trainer_session

    def session(**fields: object) -> SessionConfig:
        base = {"name": "s", "env": "Hopper-v5", "timesteps": 300_000, "eval": {"every_steps": 20_000}}
        return SessionConfig.model_validate({**base, **fields})

    monkeypatch.setattr(trainer_session.os, "cpu_count", lambda: 2)
    assert trainer_session.background_eval_for(session())  # PPO: one torch thread, DummyVecEnv on 2 cores
    assert trainer_session.background_eval_for(session(algorithm="sac"))
    assert not trainer_session.background_eval_for(session(timesteps=40_000))  # one evaluation before the end
    assert not trainer_session.background_eval_for(session(eval={"every_steps": 20_000, "background": False}))
    assert not trainer_session.background_eval_for(session(torch_threads=2))  # training takes both cores
    monkeypatch.setattr(trainer_session.os, "cpu_count", lambda: 4)
    assert not trainer_session.background_eval_for(session(n_envs=4))  # four env processes and the learner
    assert trainer_session.background_eval_for(session(n_envs=2))
    monkeypatch.setattr(trainer_session.os, "cpu_count", lambda: 1)
    assert not trainer_session.background_eval_for(session())
    assert trainer_session.background_eval_for(session(eval={"every_steps": 20_000, "background": True}))
