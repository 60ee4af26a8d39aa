"""Failed writes (a full disk above all) that name their file, and room kept to record such a failure.

Libraries that write files (SB3's zip, pickle, torch) often raise ``OSError`` without a file name; a user
then reads "No space left on device" and cannot tell which disk. :func:`naming` attaches the path. When the
disk is full, the run state that should record the failure cannot be written either: :class:`SpaceReserve`
keeps a small file in the run directory that is deleted to make room for that one write.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

RESERVE_FILE = ".rlpipe-space-reserve"
RESERVE_BYTES = 512 * 1024  # far above a run state's size (a few KiB per session)
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class WriteFailed(OSError):
    """Writing ``path`` failed; the message names the file and the system's reason."""

    def __init__(self, path: Path, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror or str(cause), str(path))
        self.path = Path(path)

    def __str__(self) -> str:
        hint = "; free space, then continue with --resume" if self.errno in NO_SPACE else ""
        return f"could not write {self.path}: {self.strerror}{hint}"


def _path_in_traceback(exc: BaseException) -> Path | None:
    """The file a write was at when it failed, read from the innermost frame that names one (tensorboard's
    writer thread, for one, re-raises a full disk in the training thread without a file name)."""
    found: Path | None = None
    tb = exc.__traceback__
    while tb is not None:
        for name in ("filename", "path", "file_path"):
            value = tb.tb_frame.f_locals.get(name)
            if isinstance(value, (str, os.PathLike)) and str(value):
                found = Path(value)
                break
        tb = tb.tb_next
    return found


@contextmanager
def naming_full_disk(default: Path | str) -> Iterator[None]:
    """Re-raise a full disk (``ENOSPC``, ``EDQUOT``) from the block as :class:`WriteFailed` naming the file
    being written if it can be found, else ``default``; other errors pass unchanged."""
    try:
        yield
    except WriteFailed:
        raise
    except OSError as exc:
        if exc.errno not in NO_SPACE:
            raise
        where = Path(exc.filename) if exc.filename else _path_in_traceback(exc) or Path(default)
        raise WriteFailed(where, exc) from exc


@contextmanager
def naming(path: Path | str) -> Iterator[None]:
    """Re-raise an ``OSError`` from the block as :class:`WriteFailed` naming ``path`` (unless it names one)."""
    try:
        yield
    except WriteFailed:
        raise
    except OSError as exc:
        raise WriteFailed(Path(exc.filename) if exc.filename else Path(path), exc) from exc


class SpaceReserve:
    """A file of :data:`RESERVE_BYTES` in ``directory`` that :meth:`write_with_room` deletes when a write finds
    the disk full, then retries once: so the failure itself can still be recorded."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / RESERVE_FILE

    def ensure(self) -> None:
        """Create the reserve if missing; a disk already too full for it is not an error here."""
        if self.path.exists() and self.path.stat().st_size >= RESERVE_BYTES:
            return
        try:
            with open(self.path, "wb") as fh:
                fh.write(b"\0" * RESERVE_BYTES)  # written, not sparse: the blocks are really taken
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            self.path.unlink(missing_ok=True)
            log.warning("no space reserve in %s (%s)", self.path.parent, exc.strerror)

    def write_with_room(self, write: Callable[[], None]) -> None:
        """Run ``write``; if the disk is full, free the reserve and run it once more."""
        try:
            write()
        except OSError as exc:
            if exc.errno not in NO_SPACE or not self.path.exists():
                raise
            self.path.unlink()
            log.warning("disk full: released %s to record the run state", self.path)
            write()
