"""The sbx backend under the trainer contract: exact budget, checkpoints, bundle, metric lines, warm start
SBX -> SBX carrying what SB3 sessions carry, resume from a checkpoint, background evaluation, XLA threads."""

from __future__ import annotations

import copy
import pickle
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest
from stable_baselines3.common.save_util import load_from_zip_file

from rlpipe.config import SessionConfig
from rlpipe.contract import METRIC_DEFINITIONS
from rlpipe.jsonio import read_json
from rlpipe.trainer import backends
from rlpipe.trainer.checkpoints import newest_valid, verify
from rlpipe.trainer.session import SessionTrainer

from .trainer_utils import session_root

BUDGET = 200
SBX_RAW: dict[str, Any] = {
    "name": "tiny-sbx",
    "defaults": {
        "backend": "sbx", "algorithm": "sac", "n_envs": 1,
        "hyperparameters": {"learning_starts": 50, "buffer_size": 1000, "batch_size": 32,
                            "policy_kwargs": {"net_arch": [16, 16]}},
        "eval": {"every_steps": 100, "episodes": 2}, "checkpoint": {"every_steps": 100},
    },
    "sessions": [
        {"name": "stand", "env": "rlpipe/HeightMaximize-v0", "timesteps": BUDGET},
        {"name": "hold", "env": "rlpipe/CrushResistance-v0", "timesteps": BUDGET, "use_previous_checkpoint": True,
         "handoff": {"replay_buffer": "carry"}},
    ],
}


def _leaves(tree: Any) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def assert_same_tree(a: Any, b: Any) -> None:
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(_leaves(a), _leaves(b)):
        np.testing.assert_array_equal(x, y)


def saved(path: Path) -> dict[str, Any]:
    data, _, _ = load_from_zip_file(str(path), device="cpu")
    return data


@pytest.fixture(scope="module")
def first_session(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A tiny SBX SAC session run as SageMaker runs it (``python -m rlpipe.trainer``); its root and stdout."""
    root = tmp_path_factory.mktemp("sbx") / "s1"
    session_root(root, SBX_RAW, 0)
    out = subprocess.run([sys.executable, "-m", "rlpipe.trainer", "--root", str(root)], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return root, out.stdout


def test_sbx_session_meets_the_trainer_contract(first_session: tuple[Path, str]) -> None:
    root, stdout = first_session
    bundle = read_json(root / "model" / "bundle.json")
    assert bundle["timesteps"] == BUDGET  # exact budget
    assert {"model.zip", "vecnormalize.pkl", "replay_buffer.pkl", "metrics.json"} <= set(bundle["files"])
    data = saved(root / "model" / "model.zip")
    assert type(data["policy"]).__module__.startswith("sbx.")  # the JAX policy, not a torch one
    ckpt = newest_valid(root / "checkpoints")
    assert ckpt is not None and ckpt.timesteps == BUDGET and verify(ckpt.path) is not None  # manifest checks
    found = {d["Name"]: re.findall(d["Regex"], stdout) for d in METRIC_DEFINITIONS}
    assert found["timesteps"] == ["100", "200"]
    metrics = read_json(root / "model" / "metrics.json")
    assert [e["timesteps"] for e in metrics["evaluations"]] == [100, 200]
    with open(root / "model" / "replay_buffer.pkl", "rb") as fh:
        assert pickle.load(fh).size() >= BUDGET - 1  # the compact save holds the filled rows


def _second(tmp_path: Path, first: Path, **handoff: str) -> SessionTrainer:
    raw = copy.deepcopy(SBX_RAW)
    raw["sessions"][1]["handoff"].update(handoff)
    return SessionTrainer(session_root(tmp_path / "s2", raw, 1, previous=first / "model"))


def test_warm_start_sbx_to_sbx_carries_what_sb3_carries(first_session: tuple[Path, str], tmp_path: Path) -> None:
    first, _ = first_session
    prev = saved(first / "model" / "model.zip")
    trainer = _second(tmp_path, first)
    model, env, _ = trainer._prepare()
    try:
        for name in ("actor_state", "qf_state"):
            new, old = getattr(model.policy, name), getattr(prev["policy"], name)
            assert_same_tree(new.params, old.params)  # policy
            assert_same_tree(new.opt_state, old.opt_state)  # optimizer moments
            assert int(new.step) == int(old.step) > 0
        assert_same_tree(model.policy.qf_state.target_params, prev["policy"].qf_state.target_params)
        assert_same_tree(model.ent_coef_state.params, prev["ent_coef_state"].params)  # learned entropy coefficient
        with open(first / "model" / "vecnormalize.pkl", "rb") as fh:
            stats = pickle.load(fh)
        np.testing.assert_array_equal(env.obs_rms.mean, stats.obs_rms.mean)
        with open(first / "model" / "replay_buffer.pkl", "rb") as fh:
            assert model.replay_buffer.size() == pickle.load(fh).size()
        assert trainer.carried == ["vecnormalize", "policy", "optimizer", "replay_buffer"]
        assert model.num_timesteps == 0
    finally:
        env.close()
    result = trainer.run()
    assert result.status == "completed" and result.timesteps == BUDGET
    metrics = read_json(tmp_path / "s2" / "model" / "metrics.json")
    assert metrics["carried"] == ["policy", "optimizer", "vecnormalize", "replay_buffer"]
    assert [e["timesteps"] for e in metrics["evaluations"]] == [0, 100, 200]  # step-0 transfer evaluation


def test_warm_start_sbx_optimizer_reset(first_session: tuple[Path, str], tmp_path: Path) -> None:
    first, _ = first_session
    prev = saved(first / "model" / "model.zip")
    trainer = _second(tmp_path, first, optimizer="reset", replay_buffer="reset")
    model, env, _ = trainer._prepare()
    env.close()
    assert_same_tree(model.policy.actor_state.params, prev["policy"].actor_state.params)
    assert int(model.policy.actor_state.step) == 0
    assert all(not np.any(x) for x in _leaves(model.policy.actor_state.opt_state) if x.dtype.kind == "f" and x.ndim)
    assert model.replay_buffer.size() == 0
    assert trainer.carried == ["vecnormalize", "policy"] and "optimizer" in trainer.reset


def test_warm_start_from_an_sb3_bundle_is_refused(tmp_path: Path) -> None:
    """Validation refuses a cross-backend warm start; the trainer also refuses one it is handed anyway."""
    import gymnasium as gym
    import stable_baselines3

    path = tmp_path / "model.zip"
    stable_baselines3.SAC("MlpPolicy", gym.make("Pendulum-v1"), policy_kwargs={"net_arch": [8]}).save(str(path))
    import sbx

    model = sbx.SAC("MlpPolicy", gym.make("Pendulum-v1"), policy_kwargs={"net_arch": [8]})
    with pytest.raises(backends.HandoffMismatch, match="another backend"):
        backends.warm_start_jax(model, path, carry_optimizer=True)


def test_sbx_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    paths = session_root(tmp_path, SBX_RAW, 0)
    stop = threading.Event()

    def progress(steps: int, total: int) -> None:
        if steps >= 130:
            stop.set()

    result = SessionTrainer(paths, stop=stop, progress=progress).run()
    assert result.status == "interrupted" and 130 <= result.timesteps < BUDGET
    stopped = newest_valid(paths.checkpoints)
    assert stopped is not None and stopped.timesteps == result.timesteps
    trainer = SessionTrainer(paths)
    model, env, ckpt = trainer._prepare()
    env.close()
    assert ckpt is not None and model.num_timesteps == stopped.timesteps
    assert_same_tree(model.policy.actor_state.params, saved(stopped.path / "model.zip")["policy"].actor_state.params)
    assert model.replay_buffer.size() >= stopped.timesteps - 1
    resumed = SessionTrainer(paths).run()
    assert resumed.status == "completed" and resumed.resumed_from == stopped.timesteps
    assert read_json(paths.model / "bundle.json")["timesteps"] == BUDGET


def test_background_evaluation_of_an_sbx_policy_matches_in_process(first_session: tuple[Path, str],
                                                                     tmp_path: Path) -> None:
    first, _ = first_session
    rewards = {}
    for background in (False, True):
        raw = copy.deepcopy(SBX_RAW)
        raw["sessions"][1].update(timesteps=100, eval={"every_steps": 50, "episodes": 2, "background": background})
        root = tmp_path / f"background-{background}"
        result = SessionTrainer(session_root(root, raw, 1, previous=first / "model")).run()
        assert result.status == "completed"
        rewards[background] = [(e["timesteps"], e["mean_reward"], e["std_reward"])
                               for e in read_json(root / "model" / "metrics.json")["evaluations"]]
    assert [e[0] for e in rewards[True]] == [0, 50, 100]
    assert rewards[True] == rewards[False]


def _session(**changes: Any) -> SessionConfig:
    raw = {"name": "x", "env": "Hopper-v5", "timesteps": 100, "backend": "sbx", "algorithm": "sac", **changes}
    return SessionConfig.model_validate(raw)


def test_xla_thread_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert backends.xla_single_threaded_for(_session())
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert not backends.xla_single_threaded_for(_session())
    assert backends.xla_single_threaded_for(_session(torch_threads=1))
    assert backends.xla_flags(True, "--xla_dump_to=/tmp/x --xla_cpu_multi_thread_eigen=true") == \
        "--xla_dump_to=/tmp/x --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    assert backends.xla_flags(False, "--xla_cpu_multi_thread_eigen=false") == ""
