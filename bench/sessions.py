"""The configurations benchmarked, all derived from the default curriculum (``configs/pipeline.yaml``).

Nothing here restates rlpipe's defaults: sessions are the default pipeline's sessions with only the fields a
benchmark must change (env, budget, seed, intervals) replaced, so the numbers follow the defaults as they move.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from rlpipe.config import PipelineConfig, SessionConfig, load_pipeline, parse_pipeline
from rlpipe.contract import ContainerPaths, session_document
from rlpipe.jsonio import write_json_atomic

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO / "configs" / "pipeline.yaml"


def default_pipeline() -> PipelineConfig:
    """The default curriculum, validated."""
    return load_pipeline(DEFAULT_CONFIG)


def default_session_dict(index: int = 0) -> dict[str, Any]:
    """Session ``index`` of the default curriculum as a plain dict (defaults applied, includes inlined)."""
    return default_pipeline().sessions[index].model_dump(mode="json")


def throughput_session(algorithm: str, env_id: str, timesteps: int, interval: int | None = None,
                       background_eval: bool | None = None, backend: str = "sb3",
                       seed: int | None = None) -> SessionConfig:
    """The default curriculum's first session on ``env_id`` with ``algorithm``.

    For an algorithm other than the curriculum's (PPO), its hyperparameters and ``n_envs`` fall back to the
    schema's defaults for that algorithm: the curriculum's hyperparameters are PPO's. ``interval`` (when
    given) replaces the evaluation and checkpoint intervals, so a short window still holds some of each;
    ``background_eval`` (when given) sets ``eval.background``; ``backend`` and ``seed`` those settings.
    """
    raw = default_session_dict(0)
    raw.update(name="throughput", env=env_id, timesteps=timesteps, backend=backend)
    if seed is not None:
        raw["seed"] = seed
    if algorithm != raw["algorithm"] or backend != "sb3":
        raw.update(algorithm=algorithm, n_envs=None, hyperparameters={})
    if interval is not None:
        raw["eval"]["every_steps"] = interval
        raw["checkpoint"]["every_steps"] = interval
    if background_eval is not None:
        raw["eval"]["background"] = background_eval
    raw["eval"]["video"] = {"enabled": False}  # training is measured here; recording is timed by its own log
    return SessionConfig.model_validate(raw)


def write_session_root(root: Path, session: SessionConfig, previous: Path | None = None, index: int = 0,
                       pipeline_name: str = "bench") -> ContainerPaths:
    """Lay out a container-contract root for ``session`` (as the runner does); link ``previous`` as its bundle."""
    paths = ContainerPaths(root)
    write_json_atomic(paths.session_file, session_document(
        pipeline_name, f"{pipeline_name}-run", index, session.model_dump(mode="json"),
        "previous" if previous is not None else None, 0))
    if previous is not None:
        paths.previous.parent.mkdir(parents=True, exist_ok=True)
        paths.previous.symlink_to(previous.resolve(), target_is_directory=True)
    return paths


def curriculum(seed: int, timesteps: int | None = None, eval_every: int | None = None,
               eval_episodes: int | None = None, sessions: slice = slice(None), scratch: bool = False,
               name: str | None = None) -> PipelineConfig:
    """The default curriculum with ``seed`` in every session and optionally smaller budgets.

    ``sessions`` picks sessions (e.g. ``slice(1, 2)`` for the second alone); ``scratch`` turns off the warm
    start, so the same session trains from a fresh policy.
    """
    raw = default_pipeline().resolved()
    chosen = copy.deepcopy(raw["sessions"][sessions])
    for s in chosen:
        s["seed"] = seed
        if timesteps is not None:
            s["timesteps"] = timesteps
        if eval_every is not None:
            s["eval"]["every_steps"] = eval_every
            s["checkpoint"]["every_steps"] = eval_every
        if eval_episodes is not None:
            s["eval"]["episodes"] = eval_episodes
        if scratch:
            s["use_previous_checkpoint"] = False
        s["eval"]["video"] = {"enabled": False}  # training and hand-overs are measured, not recording
    return parse_pipeline({"name": name or raw["name"], "sessions": chosen})
