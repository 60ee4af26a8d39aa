r"""Shared MuJoCo base for the ``lifter`` curriculum tasks.

The robot (``assets/lifter.xml``) is a planar body on two articulated legs
(front and back, each with a hip and a knee hinge). It moves in the x-z plane
with a free planar root (``rootx``, ``rootz``, ``rooty``). A passive load plate
rides on a slide rail on top of the torso and rests on the torso's deck; the
deck carries a touch sensor that measures how hard the plate presses. Every
task built on :class:`LifterEnv` uses the same model, observation space and
action space, so a policy trained on one task transfers to the others.

## Action space
``Box(-1, 1, (4,), float32)``: torques on the leg hinges, scaled by the motor
gear (15 N m at ``|a| = 1``).

| Num | Action                     | Joint      |
|-----|----------------------------|------------|
| 0   | front hip torque           | front_hip  |
| 1   | front knee torque          | front_knee |
| 2   | back hip torque            | back_hip   |
| 3   | back knee torque           | back_knee  |

## Observation space
``Box(-inf, inf, (15,), float64)``:

| Num | Observation                                             | Unit       |
|-----|---------------------------------------------------------|------------|
| 0   | torso height ``rootz`` + torso origin height (world z)  | m          |
| 1   | torso pitch ``rooty``                                   | rad        |
| 2-5 | front_hip, front_knee, back_hip, back_knee angles       | rad        |
| 6   | plate height above its resting point on the deck        | m          |
| 7   | torso x velocity                                        | m/s        |
| 8   | torso z velocity                                        | m/s        |
| 9   | torso pitch rate                                        | rad/s      |
| 10-13 | front_hip, front_knee, back_hip, back_knee velocities | rad/s      |
| 14  | load sensed on the deck / ``load_obs_scale``            | -          |

Velocities are clipped to ``[-10, 10]``. The torso's x position is left out
so that policies are position-agnostic (it is in ``info["x_position"]``).
Item 14 is the deck touch sensor (plate weight alone is ~4.9 N, i.e. ~0.05
with the default scale of 100 N).

## Rewards
``reward = reward_height + reward_survive + reward_ctrl`` where

- ``reward_height`` = ``height_reward_weight * min(z - z_ref, z_top - z_ref) / (z_top - z_ref)``:
  torso height ``z`` relative to the reference height ``z_ref`` (the crouched
  start pose), normalised so that 0 is the start pose and 1 the fully extended
  stance ``z_top``. It is capped at 1 so hopping above the stance earns
  nothing over standing tall.
- ``reward_survive`` = ``healthy_reward`` while the robot is healthy, else 0.
- ``reward_ctrl`` = ``-ctrl_cost_weight * sum(action**2)``.

Each term is reported (already weighted) under its name in ``info``, so the
three always sum to the reward.

## Episode end
The robot is unhealthy when the torso height leaves ``healthy_z_range``
(collapsed), the pitch leaves ``healthy_pitch_range`` (tipped over), or any
state value leaves ``healthy_state_range`` (diverged). With
``terminate_when_unhealthy=True`` (default) this terminates the episode.
Time limits are left to ``gymnasium.register(max_episode_steps=...)``.

## Starting state
The ``crouch`` keyframe (torso at ~0.32 m, feet under the hips), plus uniform
noise of ``reset_noise_scale`` on the robot's joint positions and velocities.
The plate starts resting on the deck, at rest.
"""

from __future__ import annotations

from os import path
from typing import Any

import numpy as np
from gymnasium import utils
from gymnasium.envs.mujoco import MujocoEnv
from gymnasium.spaces import Box
from numpy.typing import NDArray

ASSETS_DIR = path.join(path.dirname(__file__), "assets")
DEFAULT_XML = path.join(ASSETS_DIR, "lifter.xml")

DEFAULT_CAMERA_CONFIG: dict[str, float | int | NDArray[np.float64]] = {
    "trackbodyid": 1,
    "distance": 2.0,
    "lookat": np.array((0.0, 0.0, 0.35)),
    "elevation": -15.0,
}

OBS_DIM = 15
# Velocities are clipped as in gymnasium's locomotion envs: keeps observations
# bounded when a contact briefly produces a large impulse.
VELOCITY_CLIP = 10.0


class LifterEnv(MujocoEnv, utils.EzPickle):
    """Base class for tasks on the lifter robot (see the module docstring).

    Subclasses change the task through :meth:`external_load_newtons` (a
    downward force on the load plate) and the constructor defaults; the
    observation, action and reward structure stay the same.
    """

    metadata = {
        "render_modes": ["human", "rgb_array", "depth_array", "rgbd_tuple"],
    }

    def __init__(
        self,
        xml_file: str = DEFAULT_XML,
        frame_skip: int = 5,
        default_camera_config: dict[str, Any] = DEFAULT_CAMERA_CONFIG,
        height_reward_weight: float = 1.0,
        healthy_reward: float = 1.0,
        ctrl_cost_weight: float = 1e-2,
        terminate_when_unhealthy: bool = True,
        healthy_z_range: tuple[float, float] = (0.2, float("inf")),
        healthy_pitch_range: tuple[float, float] = (-0.7, 0.7),
        healthy_state_range: tuple[float, float] = (-100.0, 100.0),
        reference_height: float | None = None,
        top_height: float | None = None,
        load_obs_scale: float = 100.0,
        reset_noise_scale: float = 5e-3,
        **kwargs: Any,
    ) -> None:
        """Build the env.

        Args:
            xml_file: MJCF model; must keep the lifter's joint, body, sensor
                and keyframe names.
            frame_skip: physics steps per env step (default 5 x 4 ms = 20 ms).
            default_camera_config: camera settings for rendering.
            height_reward_weight: weight of ``reward_height``.
            healthy_reward: ``reward_survive`` per healthy step.
            ctrl_cost_weight: weight of the squared-action penalty.
            terminate_when_unhealthy: end the episode when unhealthy.
            healthy_z_range: allowed torso height (m).
            healthy_pitch_range: allowed torso pitch (rad).
            healthy_state_range: allowed range of every qpos/qvel entry except
                ``rootx``.
            reference_height: ``z_ref`` of ``reward_height``; ``None`` uses
                the torso height of the crouch keyframe.
            top_height: height at which ``reward_height`` saturates; ``None``
                uses the fully extended stance (the model's qpos0).
            load_obs_scale: newtons that map to 1.0 in the load observation.
            reset_noise_scale: half-width of the uniform reset noise.
            **kwargs: passed to :class:`MujocoEnv` (``render_mode``, ``width``...).
        """
        utils.EzPickle.__init__(
            self,
            xml_file=xml_file,
            frame_skip=frame_skip,
            default_camera_config=default_camera_config,
            height_reward_weight=height_reward_weight,
            healthy_reward=healthy_reward,
            ctrl_cost_weight=ctrl_cost_weight,
            terminate_when_unhealthy=terminate_when_unhealthy,
            healthy_z_range=healthy_z_range,
            healthy_pitch_range=healthy_pitch_range,
            healthy_state_range=healthy_state_range,
            reference_height=reference_height,
            top_height=top_height,
            load_obs_scale=load_obs_scale,
            reset_noise_scale=reset_noise_scale,
            **kwargs,
        )
        self._height_reward_weight = height_reward_weight
        self._healthy_reward = healthy_reward
        self._ctrl_cost_weight = ctrl_cost_weight
        self._terminate_when_unhealthy = terminate_when_unhealthy
        self._healthy_z_range = healthy_z_range
        self._healthy_pitch_range = healthy_pitch_range
        self._healthy_state_range = healthy_state_range
        self._load_obs_scale = load_obs_scale
        self._reset_noise_scale = reset_noise_scale
        self._step_count = 0

        MujocoEnv.__init__(
            self,
            xml_file,
            frame_skip,
            observation_space=None,
            default_camera_config=default_camera_config,
            **kwargs,
        )
        self.metadata = {
            "render_modes": ["human", "rgb_array", "depth_array", "rgbd_tuple"],
            "render_fps": int(np.round(1.0 / self.dt)),
        }

        model = self.model
        self._torso_id = model.body("torso").id
        self._plate_id = model.body("plate").id
        self._plate_qpos_adr = int(model.joint("plate_slide").qposadr[0])
        self._plate_dof_adr = int(model.joint("plate_slide").dofadr[0])
        self._load_sensor_adr = int(model.sensor("load").adr[0])
        # World height of the torso origin when rootz == 0; rootz is relative to it.
        self._torso_z0 = float(model.body_pos[self._torso_id][2])
        # Robot dofs are everything but the passive plate rail. Reset noise
        # only goes there: noise on the rail would start the plate inside the deck.
        self._robot_qpos_idx = np.delete(np.arange(model.nq), self._plate_qpos_adr)
        self._robot_dof_idx = np.delete(np.arange(model.nv), self._plate_dof_adr)
        # Observed qpos: robot dofs minus rootx (index 0).
        self._obs_qpos_idx = self._robot_qpos_idx[1:]

        self.init_qpos = model.key_qpos[model.key("crouch").id].copy()
        self.init_qvel = np.zeros(model.nv)
        self._reference_height = (
            self._torso_z0 + float(self.init_qpos[1])
            if reference_height is None
            else float(reference_height)
        )
        self._top_height = self._torso_z0 if top_height is None else float(top_height)
        if self._top_height <= self._reference_height:
            raise ValueError("top_height must be above reference_height")

        self.observation_space = Box(
            low=-np.inf, high=np.inf, shape=(OBS_DIM,), dtype=np.float64
        )
        self.observation_structure = {
            "skipped_qpos": 1,
            "qpos": len(self._obs_qpos_idx),
            "plate_gap": 1,
            "qvel": len(self._robot_dof_idx),
            "load": 1,
        }

    # ------------------------------------------------------------------ state
    @property
    def torso_height(self) -> float:
        """World z of the torso origin (m)."""
        return self._torso_z0 + float(self.data.qpos[1])

    @property
    def load_force(self) -> float:
        """Normal force the plate exerts on the torso deck (N)."""
        return float(self.data.sensordata[self._load_sensor_adr])

    @property
    def is_healthy(self) -> bool:
        """Torso up, not tipped over, state finite and bounded."""
        z = self.torso_height
        pitch = float(self.data.qpos[2])
        min_z, max_z = self._healthy_z_range
        min_pitch, max_pitch = self._healthy_pitch_range
        min_state, max_state = self._healthy_state_range
        state = np.concatenate((self.data.qpos[1:], self.data.qvel))
        return bool(
            min_z < z < max_z
            and min_pitch < pitch < max_pitch
            and np.all((min_state < state) & (state < max_state))
        )

    @property
    def healthy_reward(self) -> float:
        """``reward_survive`` for the current state."""
        return self._healthy_reward * float(self.is_healthy)

    def control_cost(self, action: NDArray[np.float32]) -> float:
        """Weighted squared-action penalty (positive)."""
        return self._ctrl_cost_weight * float(np.sum(np.square(action)))

    def external_load_newtons(self) -> float:
        """Downward force (N) applied to the plate during the next step.

        The base task applies none; load-bearing tasks override this.
        """
        return 0.0

    # ------------------------------------------------------------------- core
    def _get_obs(self) -> NDArray[np.float64]:
        qpos = self.data.qpos
        obs = np.empty(OBS_DIM, dtype=np.float64)
        obs[0] = self._torso_z0 + qpos[1]
        obs[1:6] = qpos[self._obs_qpos_idx[1:]]
        obs[6] = qpos[self._plate_qpos_adr]
        obs[7:14] = np.clip(
            self.data.qvel[self._robot_dof_idx], -VELOCITY_CLIP, VELOCITY_CLIP
        )
        obs[14] = self.load_force / self._load_obs_scale
        return obs

    def _get_rew(self, action: NDArray[np.float32]) -> tuple[float, dict[str, float]]:
        span = self._top_height - self._reference_height
        height = min(self.torso_height, self._top_height) - self._reference_height
        height_reward = self._height_reward_weight * height / span
        healthy_reward = self.healthy_reward
        ctrl_cost = self.control_cost(action)
        reward = height_reward + healthy_reward - ctrl_cost
        reward_info = {
            "reward_height": height_reward,
            "reward_survive": healthy_reward,
            "reward_ctrl": -ctrl_cost,
        }
        return reward, reward_info

    def _get_state_info(self) -> dict[str, float]:
        return {
            "x_position": float(self.data.qpos[0]),
            "torso_height": self.torso_height,
            "height_above_reference": self.torso_height - self._reference_height,
            "pitch": float(self.data.qpos[2]),
            "load_force": self.load_force,
            "external_load": 0.0 - float(self.data.xfrc_applied[self._plate_id, 2]),
        }

    def step(
        self, action: NDArray[np.float32]
    ) -> tuple[NDArray[np.float64], float, bool, bool, dict[str, float]]:
        """Apply the task load, simulate ``frame_skip`` physics steps, score."""
        # The load is set before simulating so the whole control period sees it.
        self.data.xfrc_applied[self._plate_id, 2] = -self.external_load_newtons()
        self.do_simulation(action, self.frame_skip)
        self._step_count += 1

        observation = self._get_obs()
        reward, reward_info = self._get_rew(action)
        terminated = self._terminate_when_unhealthy and not self.is_healthy
        info = {**self._get_state_info(), **reward_info}

        if self.render_mode == "human":
            self.render()
        # truncation is left to the TimeLimit wrapper added by gymnasium.make
        return observation, reward, terminated, False, info

    def reset_model(self) -> NDArray[np.float64]:
        """Crouch keyframe plus uniform noise on the robot's dofs."""
        self._step_count = 0
        noise = self._reset_noise_scale
        qpos = self.init_qpos.copy()
        qvel = self.init_qvel.copy()
        qpos[self._robot_qpos_idx] += self.np_random.uniform(
            -noise, noise, size=len(self._robot_qpos_idx)
        )
        qvel[self._robot_dof_idx] += self.np_random.uniform(
            -noise, noise, size=len(self._robot_dof_idx)
        )
        # set_state runs mj_forward, which also evaluates the touch sensor, so
        # the reset observation already senses the resting plate.
        self.set_state(qpos, qvel)
        return self._get_obs()

    def _get_reset_info(self) -> dict[str, float]:
        return self._get_state_info()
