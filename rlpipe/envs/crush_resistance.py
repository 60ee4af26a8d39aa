r"""``rlpipe/CrushResistance-v0``: hold the torso high while a load presses it down.

Second task of the lifter curriculum, on the same robot with the same
observation and action spaces as ``rlpipe/HeightMaximize-v0``. The load plate
resting on the torso deck is pushed down by an external force that grows over
the episode:

    load(t) = initial_load_newtons
              + (max_load_newtons - initial_load_newtons)
              * clip((t - load_delay_steps) / load_ramp_steps, 0, 1)

where ``t`` is the number of env steps since reset (``load_delay_steps`` steps
at ``initial_load_newtons`` first). The force goes through the plate's contact
with the deck into the torso and legs, so the policy feels it in the load
observation (item 14, deck force / ``load_obs_scale``) and must carry it:
bent knees cannot, at full load, so the robot has to keep its legs near
straight and balanced.

Reward terms are those of :mod:`rlpipe.envs.robot_base`
(``reward_height`` + ``reward_survive`` + ``reward_ctrl``); being crushed below
``healthy_z_range`` terminates the episode. ``info["external_load"]`` is the
force applied in the last step and ``info["load_force"]`` the force measured
on the deck.
"""

from __future__ import annotations

from typing import Any

from gymnasium import utils

from rlpipe.envs.robot_base import LifterEnv


class CrushResistanceEnv(LifterEnv):
    """Hold the torso high under a growing load; see the module docstring."""

    def __init__(
        self,
        max_load_newtons: float = 150.0,
        initial_load_newtons: float = 0.0,
        load_ramp_steps: int = 500,
        load_delay_steps: int = 0,
        **kwargs: Any,
    ) -> None:
        """Build the env.

        Args:
            max_load_newtons: downward force on the plate once ramped up (N).
                The robot itself weighs ~54 N, the plate ~4.9 N.
            initial_load_newtons: force at the start of the ramp (N).
            load_ramp_steps: env steps to go from the initial to the max load;
                0 applies the max load at once.
            load_delay_steps: env steps at the initial load before the ramp.
            **kwargs: keyword arguments of :class:`LifterEnv`.
        """
        if load_ramp_steps < 0 or load_delay_steps < 0:
            raise ValueError("load_ramp_steps and load_delay_steps must be >= 0")
        self._max_load = float(max_load_newtons)
        self._initial_load = float(initial_load_newtons)
        self._load_ramp_steps = int(load_ramp_steps)
        self._load_delay_steps = int(load_delay_steps)
        super().__init__(**kwargs)
        # Re-record the pickling args: the base class only saw its own kwargs.
        utils.EzPickle.__init__(
            self,
            max_load_newtons=max_load_newtons,
            initial_load_newtons=initial_load_newtons,
            load_ramp_steps=load_ramp_steps,
            load_delay_steps=load_delay_steps,
            **self._ezpickle_kwargs,
        )

    def external_load_newtons(self) -> float:
        """Load for the step about to be simulated (ramped by step count)."""
        t = self._step_count - self._load_delay_steps
        if t < 0:
            return self._initial_load
        if self._load_ramp_steps == 0:
            return self._max_load
        frac = min(1.0, t / self._load_ramp_steps)
        return self._initial_load + frac * (self._max_load - self._initial_load)
