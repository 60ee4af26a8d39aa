"""Budgets of the full run, the quick run (``--quick``) and the smoke test; what is measured on which env."""

from __future__ import annotations

from dataclasses import dataclass, replace

HEIGHT = "rlpipe/HeightMaximize-v0"
HOPPER = "Hopper-v5"


@dataclass(frozen=True)
class Budgets:
    """How much each benchmark runs. Steps are environment steps (summed over vectorised envs)."""

    mode: str
    envs: tuple[str, ...] = (HEIGHT, HOPPER)
    algorithms: tuple[str, ...] = ("ppo", "sac")
    repetitions: int = 5
    # PPO windows are whole rollouts of every variant (rlpipe: 4 envs x 512; SB3 defaults: 1 env x 2048).
    ppo_window: int = 20480
    # SAC windows start after SB3's learning_starts (100), so every step in them also trains.
    sac_window: int = 1000
    raw_window: int = 20000
    # A baseline that is far slower than the others is cut off after this long (its rate is still exact).
    max_seconds: float = 45.0
    transition_runs: int = 5
    transition_timesteps: int = 2048
    cold_runs: int = 5
    transfer_seeds: tuple[int, ...] = (0, 1, 2)
    # None: the default curriculum's own budgets and evaluation settings.
    transfer_timesteps: int | None = None
    transfer_eval_every: int | None = None
    transfer_eval_episodes: int | None = None
    workers: int = 2
    # The gates section: the quickstart curriculum (configs/quickstart.yaml) over transfer_seeds, without and with
    # a stop_when on every session. None: the quickstart's own budgets and evaluation episodes.
    gate_timesteps: int | None = None
    gate_eval_every: int = 10000  # the quickstart evaluates every 25000: too coarse a grid for a gate to act on
    gate_eval_episodes: int | None = None
    gate_fraction: float = 0.9  # the threshold: this fraction of the ungated arm's mean final eval reward
    gate_for_evals: int = 2
    gate_parallel: int = 2  # lineages at once (one core each: the trainer uses one torch thread)
    orchestration_sessions: tuple[int, ...] = (1, 2, 5)


FULL = Budgets(mode="full")
QUICK = Budgets(mode="quick", repetitions=3, ppo_window=4096, sac_window=150, raw_window=5000, max_seconds=10.0,
                transition_runs=3, transition_timesteps=1024, cold_runs=2,
                transfer_timesteps=16384, transfer_eval_every=4096, transfer_eval_episodes=3,
                gate_timesteps=20480, gate_eval_every=2048)
# Microscopic: only checks that everything runs and the outputs are well formed (tests/test_bench_smoke.py).
SMOKE = replace(QUICK, mode="smoke", envs=(HEIGHT,), algorithms=("ppo",), repetitions=1, ppo_window=256,
                sac_window=20, raw_window=200, max_seconds=2.0, transition_runs=1, transition_timesteps=64, cold_runs=1,
                transfer_seeds=(0, 1), transfer_timesteps=256, transfer_eval_every=128,
                transfer_eval_episodes=1, orchestration_sessions=(1, 2),
                gate_timesteps=256, gate_eval_every=64, gate_eval_episodes=1)
