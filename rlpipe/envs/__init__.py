"""Lifter robot tasks for the curriculum, registered with gymnasium on import.

- ``rlpipe/HeightMaximize-v0``: raise the torso and hold it high.
- ``rlpipe/CrushResistance-v0``: hold it high while a growing load presses down.

Both share the robot, observation space and action space (see
:mod:`rlpipe.envs.robot_base`), so policies transfer between them.
:func:`register_envs` is also the ``gymnasium.envs`` plugin entry point.
"""

from __future__ import annotations

import gymnasium

HEIGHT_MAXIMIZE_ID = "rlpipe/HeightMaximize-v0"
CRUSH_RESISTANCE_ID = "rlpipe/CrushResistance-v0"
ENV_IDS: tuple[str, ...] = (HEIGHT_MAXIMIZE_ID, CRUSH_RESISTANCE_ID)

# 1000 steps x 20 ms = 20 s episodes, as for gymnasium's MuJoCo tasks.
MAX_EPISODE_STEPS = 1000

_ENTRY_POINTS: dict[str, str] = {
    HEIGHT_MAXIMIZE_ID: "rlpipe.envs.height_maximize:HeightMaximizeEnv",
    CRUSH_RESISTANCE_ID: "rlpipe.envs.crush_resistance:CrushResistanceEnv",
}


def register_envs() -> None:
    """Register the rlpipe envs with gymnasium; safe to call any number of times."""
    for env_id, entry_point in _ENTRY_POINTS.items():
        # gymnasium warns when an id is registered twice, so skip known ids.
        if env_id in gymnasium.registry:
            continue
        gymnasium.register(
            id=env_id,
            entry_point=entry_point,
            max_episode_steps=MAX_EPISODE_STEPS,
        )


register_envs()

__all__ = ["CRUSH_RESISTANCE_ID", "ENV_IDS", "HEIGHT_MAXIMIZE_ID", "register_envs"]
