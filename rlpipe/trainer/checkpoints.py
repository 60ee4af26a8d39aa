"""Checkpoints a restarted session resumes from: one directory per checkpoint, a manifest written last.

A checkpoint counts only if its manifest exists and every file matches the manifest's SHA-256, so a file
truncated by a kill, or a partial S3 sync after a spot interruption, is skipped with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlpipe.contract import CHECKPOINT_PREFIX, MANIFEST_FILE
from rlpipe.integrity import ManifestShape
from rlpipe.write_errors import naming

log = logging.getLogger(__name__)

MANIFEST = MANIFEST_FILE
PREFIX = CHECKPOINT_PREFIX


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's contents."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checkpoint_name(timesteps: int) -> str:
    """Directory name that sorts by timesteps."""
    return f"{PREFIX}{timesteps:012d}"


@dataclass(frozen=True)
class Checkpoint:
    """A verified checkpoint directory and its manifest."""

    path: Path
    timesteps: int
    meta: dict[str, Any]

    def file(self, name: str) -> Path | None:
        """Path of ``name`` inside the checkpoint if it was saved."""
        return self.path / name if name in self.meta["files"] else None


def commit_checkpoint(staging: Path, final: Path, timesteps: int, meta: dict[str, Any]) -> Checkpoint:
    """Seal the files in ``staging`` with a manifest and move the directory into place atomically."""
    files = {p.name: sha256_file(p) for p in sorted(staging.iterdir()) if p.is_file()}
    manifest = {"timesteps": timesteps, "files": files, **meta}
    tmp = staging / f".{MANIFEST}.tmp"
    with naming(staging / MANIFEST):
        tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, staging / MANIFEST)
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    return Checkpoint(final, timesteps, manifest)


def verify(path: Path) -> Checkpoint | None:
    """The checkpoint at ``path`` if complete and intact, else None (with a warning saying why)."""
    manifest = path / MANIFEST
    try:
        meta = json.loads(manifest.read_text())
        ManifestShape.model_validate(meta)  # a wrongly shaped manifest is as unusable as a truncated one
        for name, digest in meta["files"].items():
            if sha256_file(path / name) != digest:
                log.warning("skipping checkpoint %s: %s does not match its checksum", path.name, name)
                return None
        return Checkpoint(path, int(meta["timesteps"]), meta)
    except FileNotFoundError as exc:
        log.warning("skipping checkpoint %s: missing %s", path.name, Path(exc.filename or "?").name)
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("skipping checkpoint %s: unreadable manifest (%s)", path.name, exc)
    return None


def newest_valid(directory: Path) -> Checkpoint | None:
    """The newest intact checkpoint in ``directory``, skipping damaged ones."""
    if not directory.is_dir():
        return None
    for path in sorted(directory.glob(f"{PREFIX}*"), reverse=True):
        if path.is_dir():
            found = verify(path)
            if found:
                return found
    return None


def prune(directory: Path, keep: int, protect: Collection[str] = ()) -> None:
    """Delete all but the ``keep`` newest checkpoints, except those named in ``protect``, and any abandoned
    staging directories."""
    for stale in directory.glob(f".{PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    done = sorted(p for p in directory.glob(f"{PREFIX}*") if p.is_dir())
    for old in done[:-keep] if keep else done:
        if old.name not in protect:
            shutil.rmtree(old, ignore_errors=True)
