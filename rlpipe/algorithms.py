"""What rlpipe knows about each stable-baselines3 algorithm, without importing SB3.

Kept as plain data so config validation runs where SB3 is absent (the AWS Lambdas);
``tests/test_algorithms.py`` checks it against SB3's real constructor signatures.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AlgorithmInfo:
    """Static facts about one algorithm."""

    name: str
    sb3_class: str
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
