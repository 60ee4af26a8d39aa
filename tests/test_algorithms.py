"""The static algorithm table (usable without SB3) agrees with SB3's real constructors."""

from __future__ import annotations

import inspect

import pytest
import stable_baselines3
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

from rlpipe.algorithms import ALGORITHMS

# Set by rlpipe itself, or objects that cannot come from YAML.
RLPIPE_OWNED = {"self", "policy", "env", "tensorboard_log", "verbose", "seed", "device", "_init_setup_model",
                "rollout_buffer_class", "replay_buffer_class", "action_noise"}


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_hyperparameters_match_sb3_signature(name: str) -> None:
    info = ALGORITHMS[name]
    cls = getattr(stable_baselines3, info.sb3_class)
    params = set(inspect.signature(cls.__init__).parameters) - RLPIPE_OWNED
    assert info.hyperparameters == params
    assert info.off_policy == issubclass(cls, OffPolicyAlgorithm)
