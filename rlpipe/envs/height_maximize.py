r"""``rlpipe/HeightMaximize-v0``: raise the lifter's torso as high as it can go and hold it.

First task of the lifter curriculum. The robot starts crouched (torso at
~0.32 m) and earns ``reward_height`` for lifting its torso towards the fully
extended stance (~0.535 m), where the term saturates at ``height_reward_weight``.
No external load is applied; the passive plate still rests on the deck, so the
load observation reads only the plate's weight (~0.05).

Observation (15,), action (4,), reward terms (``reward_height``,
``reward_survive``, ``reward_ctrl``) and termination are documented in
:mod:`rlpipe.envs.robot_base`. Episodes are truncated by the registered
``max_episode_steps`` (1000 steps = 20 s).

Per step, a robot that stands tall scores about ``1 + 1 = 2``; one that stays
in the start crouch about 1; a collapsed robot is terminated.
"""

from __future__ import annotations

from typing import Any

from rlpipe.envs.robot_base import LifterEnv


class HeightMaximizeEnv(LifterEnv):
    """Lift the torso and hold it high; see the module docstring."""

    def __init__(self, **kwargs: Any) -> None:
        """All keyword arguments are those of :class:`LifterEnv`."""
        super().__init__(**kwargs)
