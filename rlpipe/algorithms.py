"""What rlpipe knows about each algorithm of each backend, without importing SB3 or SBX.

Two backends train a session: ``sb3`` (stable-baselines3, torch) and ``sbx`` (SBX, stable-baselines3's JAX
sibling: the same algorithm API and callbacks, gradient updates compiled by XLA). Kept as plain data so config
validation runs where neither is installed (the AWS Lambdas); ``tests/test_algorithms.py`` checks it against
the real constructor signatures of both.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AlgorithmInfo:
    """Static facts about one algorithm of one backend."""

    name: str
    sb3_class: str  # the class name in the backend's package (stable_baselines3 or sbx)
    off_policy: bool
    needs_box_actions: bool
    default_n_envs: int
    hyperparameters: frozenset[str]
    default_n_steps: int = 1  # rollout length per env (on-policy); SB3's own default


# Keys rlpipe sets itself (logging, seeding, device) are not user hyperparameters.
_ON_POLICY_COMMON = {
    "learning_rate", "n_steps", "gamma", "gae_lambda", "ent_coef", "vf_coef", "max_grad_norm",
    "use_sde", "sde_sample_freq", "normalize_advantage", "stats_window_size", "policy_kwargs",
    "rollout_buffer_kwargs",
}
_OFF_POLICY_COMMON = {
    "learning_rate", "buffer_size", "learning_starts", "batch_size", "tau", "gamma", "train_freq",
    "gradient_steps", "replay_buffer_kwargs", "optimize_memory_usage", "n_steps", "stats_window_size",
    "policy_kwargs",
}

ALGORITHMS: dict[str, AlgorithmInfo] = {
    "ppo": AlgorithmInfo(
        "ppo", "PPO", False, False, 4,
        frozenset(_ON_POLICY_COMMON | {"batch_size", "n_epochs", "clip_range", "clip_range_vf", "target_kl"}),
        default_n_steps=2048,
    ),
    "a2c": AlgorithmInfo(
        "a2c", "A2C", False, False, 4,
        frozenset(_ON_POLICY_COMMON | {"rms_prop_eps", "use_rms_prop"}),
        default_n_steps=5,
    ),
    "sac": AlgorithmInfo(
        "sac", "SAC", True, True, 1,
        frozenset(_OFF_POLICY_COMMON | {"ent_coef", "target_update_interval", "target_entropy", "use_sde",
                                        "sde_sample_freq", "use_sde_at_warmup"}),
    ),
    "td3": AlgorithmInfo(
        "td3", "TD3", True, True, 1,
        frozenset(_OFF_POLICY_COMMON | {"policy_delay", "target_policy_noise", "target_noise_clip"}),
    ),
}

BACKENDS = ("sb3", "sbx")
BACKEND_PACKAGES = {"sb3": "stable_baselines3", "sbx": "sbx"}

# SBX (sbx-rl 0.28) builds on SB3's off-policy base but takes no optimize_memory_usage (its replay buffer
# feeds numpy batches to jitted updates) and adds a critic learning rate. Its ``param_resets`` (a list of
# steps) is not offered: a list of steps of one session's budget would not carry across a warm start.
_SBX_OFF_POLICY_COMMON = (_OFF_POLICY_COMMON - {"optimize_memory_usage"}) | {"qf_learning_rate", "policy_delay"}
_SBX_ENTROPY = {"ent_coef", "target_entropy", "use_sde", "sde_sample_freq", "use_sde_at_warmup"}

SBX_ALGORITHMS: dict[str, AlgorithmInfo] = {
    "ppo": AlgorithmInfo(
        "ppo", "PPO", False, False, 4,
        frozenset((_ON_POLICY_COMMON - {"stats_window_size"}) | {"batch_size", "n_epochs", "clip_range", "clip_range_vf", "target_kl"}),
        default_n_steps=2048,
    ),
    "sac": AlgorithmInfo("sac", "SAC", True, True, 1, frozenset(_SBX_OFF_POLICY_COMMON | _SBX_ENTROPY)),
    "td3": AlgorithmInfo(
        "td3", "TD3", True, True, 1,
        frozenset(_SBX_OFF_POLICY_COMMON | {"target_policy_noise", "target_noise_clip"}),
    ),
    "tqc": AlgorithmInfo(
        "tqc", "TQC", True, True, 1,
        frozenset(_SBX_OFF_POLICY_COMMON | _SBX_ENTROPY | {"top_quantiles_to_drop_per_net"}),
    ),
    # CrossQ drops target networks (batch renormalisation instead), hence no tau.
    "crossq": AlgorithmInfo("crossq", "CrossQ", True, True, 1,
                            frozenset((_SBX_OFF_POLICY_COMMON - {"tau"}) | _SBX_ENTROPY)),
}

_BY_BACKEND: dict[str, dict[str, AlgorithmInfo]] = {"sb3": ALGORITHMS, "sbx": SBX_ALGORITHMS}
ALL_ALGORITHMS: tuple[str, ...] = tuple(sorted(set(ALGORITHMS) | set(SBX_ALGORITHMS)))


def algorithms_of(backend: str) -> dict[str, AlgorithmInfo]:
    """The algorithms ``backend`` offers, by name (KeyError for an unknown backend)."""
    return _BY_BACKEND[backend]


def algorithm_info(name: str, backend: str = "sb3") -> AlgorithmInfo:
    """Facts about ``name`` on ``backend`` (KeyError when the backend does not offer it)."""
    return _BY_BACKEND[backend][name]


def offered(name: str) -> list[str]:
    """The backends that offer algorithm ``name``."""
    return [b for b in BACKENDS if name in _BY_BACKEND[b]]


def describe_backends() -> str:
    """One line per backend: the algorithms it offers (for errors, ``rlpipe validate`` and the schema)."""
    return "; ".join(f"{b}: {', '.join(sorted(_BY_BACKEND[b]))}" for b in BACKENDS)
