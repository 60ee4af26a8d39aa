"""Atomic files: a reader never sees a half-written state file or report, even after a crash."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from rlpipe.write_errors import naming


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory, fsync and rename."""
    path = Path(path)
    with naming(path):  # a full disk is reported with the file that did not fit
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def remove_stale_temp_files(root: str | Path) -> list[Path]:
    """Delete the temp files that atomic writes of a killed process left under ``root`` (``.<name>.*.tmp``);
    call it only while no other process writes there (the run directory's lock). Returns what was deleted."""
    stale = [p for p in Path(root).rglob(".*.tmp") if p.is_file() and not p.is_symlink()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically, like :func:`write_bytes_atomic`."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text())
