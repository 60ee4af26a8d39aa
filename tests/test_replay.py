"""Replay buffers are saved at their filled size and load back exactly, at full capacity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from stable_baselines3 import SAC

import rlpipe.envs  # noqa: F401
from rlpipe.trainer.replay import load_replay_buffer, save_replay_buffer


def _sac(buffer_size: int, **kwargs: object) -> SAC:
    return SAC("MlpPolicy", "rlpipe/HeightMaximize-v0", buffer_size=buffer_size, learning_starts=1000, seed=0,
               policy_kwargs={"net_arch": [8]}, **kwargs)


def _arrays(buffer: object) -> dict[str, np.ndarray]:
    return {k: v for k, v in vars(buffer).items() if isinstance(v, np.ndarray)}


@pytest.mark.parametrize("buffer_size, steps, kwargs", [
    (5000, 150, {}),                                          # partly filled
    (100, 150, {}),                                           # wrapped around: full
    (5000, 150, {"optimize_memory_usage": True,              # next observations share the observations array
                 "replay_buffer_kwargs": {"handle_timeout_termination": False}}),
])
def test_round_trip_is_exact_and_small(tmp_path: Path, buffer_size: int, steps: int, kwargs: dict) -> None:
    model = _sac(buffer_size, **kwargs)
    model.learn(steps)  # learning_starts > steps: only collection, fast
    original = model.replay_buffer
    save_replay_buffer(model, tmp_path / "compact.pkl")
    model.save_replay_buffer(str(tmp_path / "sb3.pkl"))
    if not original.full:
        assert (tmp_path / "compact.pkl").stat().st_size < (tmp_path / "sb3.pkl").stat().st_size / 10

    for name in ("compact.pkl", "sb3.pkl"):  # our format, and a buffer written by SB3 itself
        other = _sac(buffer_size, **kwargs)
        load_replay_buffer(other, tmp_path / name)
        loaded = other.replay_buffer
        assert (loaded.pos, loaded.full, loaded.buffer_size) == (original.pos, original.full, original.buffer_size)
        assert _arrays(loaded).keys() == _arrays(original).keys()
        for key, array in _arrays(original).items():
            np.testing.assert_array_equal(_arrays(loaded)[key], array, err_msg=key)
        batch = loaded.sample(16)  # samples and keeps filling like the original
        assert batch.observations.shape[0] == 16
        other.learn(10, reset_num_timesteps=False)
