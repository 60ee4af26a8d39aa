"""Shared fixtures: tiny pipelines that train in seconds."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest

# Tests never reach AWS: fake credentials and a region for boto3 and moto.
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parent.parent

TINY: dict[str, Any] = {
    "name": "tiny",
    "defaults": {
        "algorithm": "ppo",
        "n_envs": 2,
        "hyperparameters": {"n_steps": 64, "batch_size": 64, "policy_kwargs": {"net_arch": [16, 16]}},
        # No policy video: the tests that want one ask for it (recording takes seconds per session).
        "eval": {"every_steps": 128, "episodes": 1, "video": {"enabled": False}},
        "checkpoint": {"every_steps": 128},
    },
    "sessions": [
        {"name": "stand", "env": "rlpipe/HeightMaximize-v0", "timesteps": 256},
        {"name": "hold", "env": "rlpipe/CrushResistance-v0", "timesteps": 256, "use_previous_checkpoint": True},
    ],
}


@pytest.fixture
def tiny_raw() -> dict[str, Any]:
    """A fresh copy of the tiny two-session pipeline as a dict."""
    return copy.deepcopy(TINY)
