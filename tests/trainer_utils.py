"""Helpers to lay out a session root the way the runner or SageMaker does."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from rlpipe.config import parse_pipeline
from rlpipe.contract import ContainerPaths, session_document
from rlpipe.jsonio import write_json_atomic

from .conftest import TINY


def pipeline_raw(**session_overrides: Any) -> dict[str, Any]:
    """TINY with the given keys set in both sessions."""
    raw = copy.deepcopy(TINY)
    for s in raw["sessions"]:
        s.update(copy.deepcopy(session_overrides))
    return raw


def session_root(root: Path, raw: dict[str, Any], index: int, previous: Path | None = None,
                 check_envs: bool = True) -> ContainerPaths:
    """Write ``session.json`` for session ``index`` of ``raw`` under ``root``; link ``previous`` as its bundle."""
    pipeline = parse_pipeline(raw, check_envs=check_envs)
    paths = ContainerPaths(root)
    s = pipeline.sessions[index]
    offset = sum(x.timesteps for x in pipeline.sessions[:index])
    write_json_atomic(paths.session_file, session_document(
        pipeline.name, "run-test", index, s.model_dump(mode="json"),
        pipeline.sessions[index - 1].name if s.use_previous_checkpoint else None, offset))
    if previous is not None:
        paths.previous.parent.mkdir(parents=True, exist_ok=True)
        paths.previous.symlink_to(previous, target_is_directory=True)
    return paths
