"""The handoff bundle: what one session leaves in the model dir for the next.

Files: ``model.zip`` (policy + optimizer, SB3 format), ``vecnormalize.pkl``, ``replay_buffer.pkl``
(off-policy), ``bundle.json`` (counters, what was carried/reset), ``metrics.json``, ``learning_curve.png``.
On SageMaker the model dir arrives in the next job as ``model.tar.gz``; locally as a plain directory.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlpipe.contract import (BUNDLE_META_FILE, CURVE_FILE, METRICS_FILE, MODEL_FILE, REPLAY_BUFFER_FILE,
                             VECNORMALIZE_FILE)
from rlpipe.integrity import bundle_problem
from rlpipe.jsonio import read_json

MODEL = MODEL_FILE
VECNORMALIZE = VECNORMALIZE_FILE
REPLAY_BUFFER = REPLAY_BUFFER_FILE
BUNDLE_META = BUNDLE_META_FILE
METRICS = METRICS_FILE
CURVE = CURVE_FILE
FORMAT_VERSION = 1
STATE_FILES = (MODEL, VECNORMALIZE, REPLAY_BUFFER)  # what training state a bundle carries (hashed in bundle.json)


class BundleError(RuntimeError):
    """The previous session's bundle is missing or unusable."""


@dataclass(frozen=True)
class Bundle:
    """A handoff bundle on disk."""

    path: Path
    meta: dict[str, Any]

    def file(self, name: str) -> Path | None:
        """Path of ``name`` in the bundle, or None if the bundle does not hold it."""
        p = self.path / name
        return p if p.exists() else None


def _extract(archive: Path, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")  # "data" refuses absolute paths and links out of the tree
    return into


def open_bundle(channel: Path, scratch: Path) -> Bundle:
    """Open the bundle in an input channel: a directory, or SageMaker's ``model.tar.gz`` (extracted to ``scratch``)."""
    if not channel.exists():
        raise BundleError(f"no previous bundle at {channel}")
    root = channel
    archives = sorted(channel.glob("*.tar.gz"))
    if not (channel / BUNDLE_META).exists() and archives:
        root = _extract(archives[0], scratch)
    if not (root / BUNDLE_META).exists() or not (root / MODEL).exists():
        raise BundleError(f"{channel} holds no handoff bundle ({BUNDLE_META} and {MODEL} expected)")
    problem = bundle_problem(root)
    if problem is not None:
        raise BundleError(f"the previous session's bundle is damaged: {problem}")
    meta = read_json(root / BUNDLE_META)
    if meta.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"bundle format {meta.get('format_version')} is not supported (expected {FORMAT_VERSION})")
    return Bundle(root, meta)
