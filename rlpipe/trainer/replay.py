"""Replay buffers saved at the size they are filled to.

SB3 pickles a replay buffer with its preallocated arrays: SAC's default capacity of 1,000,000 transitions
writes about 270 MB to every checkpoint and bundle however few transitions it holds (on AWS, each of those
files is uploaded to S3). Here the arrays are cut to the transitions held before pickling and grown back to
the buffer's capacity after loading. A buffer saved by SB3 itself loads too: it has nothing to grow.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.save_util import save_to_pkl

FILLED = "_rlpipe_saved_rows"  # set on a cut buffer: how many rows each per-transition array kept


def _rows_kept(buffer: ReplayBuffer) -> int:
    # One row past ``pos``: with optimize_memory_usage the next observation of the newest transition is there.
    return buffer.buffer_size if buffer.full else min(buffer.pos + 1, buffer.buffer_size)


def _with_arrays(buffer: ReplayBuffer, rows: int, change: Callable[[np.ndarray], np.ndarray]) -> ReplayBuffer:
    """A shallow copy of ``buffer`` whose per-transition arrays (first axis ``rows`` long) are ``change``d."""
    out = copy.copy(buffer)
    for name, value in vars(buffer).items():
        if isinstance(value, np.ndarray) and value.ndim and value.shape[0] == rows:
            setattr(out, name, change(value))
        elif isinstance(value, dict) and value and all(isinstance(v, np.ndarray) for v in value.values()):
            setattr(out, name, {k: change(v) if v.ndim and v.shape[0] == rows else v for k, v in value.items()})
    return out


def save_replay_buffer(model: OffPolicyAlgorithm, path: Path) -> None:
    """Pickle the model's replay buffer with only its filled rows."""
    buffer = model.replay_buffer
    assert buffer is not None, "an off-policy model always has a replay buffer"
    rows = _rows_kept(buffer)
    cut = _with_arrays(buffer, buffer.buffer_size, lambda a: a[:rows])
    setattr(cut, FILLED, rows)
    save_to_pkl(str(path), cut, verbose=0)


def _grown(array: np.ndarray, capacity: int) -> np.ndarray:
    full = np.zeros((capacity, *array.shape[1:]), dtype=array.dtype)  # untouched pages cost no memory
    full[: array.shape[0]] = array
    return full


def load_replay_buffer(model: OffPolicyAlgorithm, path: Path) -> None:
    """Load a replay buffer saved by :func:`save_replay_buffer` (or by SB3) into ``model`` at full capacity."""
    model.load_replay_buffer(str(path))
    buffer = model.replay_buffer
    rows: Any = getattr(buffer, FILLED, None)
    if buffer is None or rows is None:
        return
    model.replay_buffer = _with_arrays(buffer, rows, lambda a: _grown(a, buffer.buffer_size))
    delattr(model.replay_buffer, FILLED)
