"""Tests for the lifter curriculum envs in ``rlpipe.envs``."""

from __future__ import annotations

import importlib
import pickle
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import rlpipe.envs
from rlpipe.envs import CRUSH_RESISTANCE_ID, ENV_IDS, HEIGHT_MAXIMIZE_ID

# Crouch pose of the robot's leg joints (front hip, front knee, back hip, back knee).
CROUCH = np.array([-0.96, 1.92, 0.96, -1.92])


def crouch_hold(env: gym.Env) -> np.ndarray:
    """Saturated joint PD that holds the start crouch: enough without load, not under it."""
    data = env.unwrapped.data
    torque = 30.0 * (CROUCH - data.qpos[4:8]) - 2.0 * data.qvel[4:8]
    return np.clip(torque / 15.0, -1.0, 1.0).astype(np.float32)


def rollout(env: gym.Env, seed: int, n_steps: int) -> list[tuple]:
    """Seeded rollout with a fixed action sequence; returns (obs, reward, term, info) per step."""
    env.reset(seed=seed)
    actions = np.random.default_rng(seed).uniform(-1, 1, size=(n_steps, 4)).astype(np.float32)
    out = []
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        out.append((obs, reward, terminated, info))
        if terminated or truncated:
            break
    return out


def test_register_is_idempotent() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rlpipe.envs.register_envs()
        importlib.reload(rlpipe.envs)
        rlpipe.envs.register_envs()
    assert set(ENV_IDS) == {HEIGHT_MAXIMIZE_ID, CRUSH_RESISTANCE_ID}
    for env_id in ENV_IDS:
        assert gym.spec(env_id).max_episode_steps == 1000


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_check_env(env_id: str) -> None:
    env = gym.make(env_id)
    # Rendering needs an OpenGL context, which headless CI may lack.
    check_env(env.unwrapped, skip_render_check=True)
    env.close()


def test_spaces_match_across_tasks() -> None:
    height_env, crush_env = gym.make(HEIGHT_MAXIMIZE_ID), gym.make(CRUSH_RESISTANCE_ID)
    assert height_env.observation_space == crush_env.observation_space
    assert height_env.action_space == crush_env.action_space
    assert height_env.observation_space.shape == (15,)
    assert height_env.observation_space.dtype == np.float64
    assert height_env.action_space.shape == (4,)
    assert np.all(height_env.action_space.low == -1) and np.all(height_env.action_space.high == 1)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_deterministic_under_seed(env_id: str) -> None:
    first = rollout(gym.make(env_id), seed=7, n_steps=60)
    second = rollout(gym.make(env_id), seed=7, n_steps=60)
    assert len(first) == len(second)
    for (obs_a, rew_a, term_a, info_a), (obs_b, rew_b, term_b, info_b) in zip(first, second):
        np.testing.assert_array_equal(obs_a, obs_b)
        assert rew_a == rew_b and term_a == term_b and info_a == info_b
    other = rollout(gym.make(env_id), seed=8, n_steps=5)
    assert not np.array_equal(other[0][0], first[0][0])


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_reward_terms_sum_to_reward(env_id: str) -> None:
    env = gym.make(env_id, height_reward_weight=2.0, healthy_reward=0.5, ctrl_cost_weight=0.1)
    env.reset(seed=0)
    for _ in range(40):
        action = env.action_space.sample()
        obs, reward, terminated, truncated, info = env.step(action)
        assert env.observation_space.contains(obs)
        terms = info["reward_height"] + info["reward_survive"] + info["reward_ctrl"]
        assert reward == pytest.approx(terms)
        assert info["reward_ctrl"] == pytest.approx(-0.1 * float(np.sum(np.square(action))))
        assert info["reward_survive"] == (0.0 if terminated else 0.5)
        if terminated or truncated:
            env.reset()


def test_load_presses_on_the_robot() -> None:
    n_steps = 250
    heights, loads = {}, {}
    for env_id in ENV_IDS:
        env = gym.make(env_id, terminate_when_unhealthy=False)
        obs, _ = env.reset(seed=0)
        for _ in range(n_steps):
            obs, _, _, _, info = env.step(crouch_hold(env))
        heights[env_id], loads[env_id] = info["torso_height"], info["load_force"]
        # The load observation is the deck force over load_obs_scale (100 N).
        assert obs[14] == pytest.approx(info["load_force"] / 100.0)
    # Only the plate's weight (0.5 kg) rests on the deck without the external load.
    assert loads[HEIGHT_MAXIMIZE_ID] == pytest.approx(0.5 * 9.81, rel=0.2)
    # 250 of 500 ramp steps to 150 N: about 75 N more pressing on the deck.
    assert loads[CRUSH_RESISTANCE_ID] > loads[HEIGHT_MAXIMIZE_ID] + 50.0
    assert heights[CRUSH_RESISTANCE_ID] < heights[HEIGHT_MAXIMIZE_ID] - 0.03


def test_crush_load_schedule() -> None:
    env = gym.make(
        CRUSH_RESISTANCE_ID,
        max_load_newtons=100.0,
        initial_load_newtons=10.0,
        load_ramp_steps=10,
        load_delay_steps=5,
        terminate_when_unhealthy=False,
    )
    env.reset(seed=0)
    applied = [env.step(np.zeros(4, np.float32))[4]["external_load"] for _ in range(20)]
    assert applied[:6] == pytest.approx([10.0] * 6)
    assert applied[10] == pytest.approx(55.0)
    assert applied[15:] == pytest.approx([100.0] * 5)
    # reset restarts the ramp
    env.reset(seed=1)
    assert env.step(np.zeros(4, np.float32))[4]["external_load"] == pytest.approx(10.0)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_truncates_at_max_episode_steps(env_id: str) -> None:
    env = gym.make(env_id, max_episode_steps=30, terminate_when_unhealthy=False)
    env.reset(seed=0)
    for step in range(1, 31):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        assert not terminated
        assert truncated == (step == 30)


def test_collapse_terminates() -> None:
    env = gym.make(HEIGHT_MAXIMIZE_ID)
    env.reset(seed=0)
    for _ in range(100):
        _, _, terminated, _, info = env.step(np.zeros(4, np.float32))
        if terminated:
            break
    assert terminated and info["reward_survive"] == 0.0 and info["torso_height"] < 0.2


def test_pickle_keeps_task_kwargs() -> None:
    env = gym.make(CRUSH_RESISTANCE_ID, max_load_newtons=42.0, healthy_reward=0.25).unwrapped
    clone = pickle.loads(pickle.dumps(env))
    assert clone._max_load == 42.0 and clone._healthy_reward == 0.25


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_sb3_ppo_smoke(env_id: str) -> None:
    torch = pytest.importorskip("torch")
    from stable_baselines3 import PPO

    torch.set_num_threads(1)
    model = PPO("MlpPolicy", gym.make(env_id), n_steps=128, batch_size=64, n_epochs=1, seed=0)
    model.learn(total_timesteps=256)
    action, _ = model.predict(model.get_env().reset(), deterministic=True)
    assert action.shape == (1, 4)
