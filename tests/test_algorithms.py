"""The static algorithm tables (usable without SB3 or SBX) agree with both backends' real constructors."""

from __future__ import annotations

import importlib
import inspect

import pytest
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

from rlpipe.algorithms import BACKEND_PACKAGES, BACKENDS, SBX_ALGORITHMS, algorithms_of

# Set by rlpipe itself, or objects that cannot come from YAML.
RLPIPE_OWNED = {"self", "policy", "env", "tensorboard_log", "verbose", "seed", "device", "_init_setup_model",
                "rollout_buffer_class", "replay_buffer_class", "action_noise"}
# Taken by SBX but not offered (see rlpipe/algorithms.py): a list of steps within one session's budget.
NOT_OFFERED = {"sbx": {"param_resets"}}
PAIRS = [(b, name) for b in BACKENDS for name in sorted(algorithms_of(b))]


@pytest.mark.parametrize("backend,name", PAIRS, ids=[f"{b}-{n}" for b, n in PAIRS])
def test_hyperparameters_match_the_backend_signature(backend: str, name: str) -> None:
    info = algorithms_of(backend)[name]
    cls = getattr(importlib.import_module(BACKEND_PACKAGES[backend]), info.sb3_class)
    params = set(inspect.signature(cls.__init__).parameters) - RLPIPE_OWNED - NOT_OFFERED.get(backend, set())
    assert info.hyperparameters == params
    assert info.off_policy == issubclass(cls, OffPolicyAlgorithm)


def test_sbx_offers_what_the_installed_version_has() -> None:
    """Every SBX algorithm for continuous control that the installed package exports is in the table."""
    import sbx

    continuous = {n.lower() for n in ("SAC", "TD3", "TQC", "CrossQ", "PPO") if inspect.isclass(getattr(sbx, n, None))}
    assert set(SBX_ALGORITHMS) == continuous
