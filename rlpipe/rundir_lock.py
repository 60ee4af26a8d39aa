"""One process per run directory: an exclusive OS lock on ``<run dir>/rlpipe.lock``.

The lock is ``flock`` on an open file, so the kernel drops it when the holder exits in any way (a SIGKILL
never leaves a stale lock). The file holds the holder's PID, only so that the refusal can name it.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no lock, as before
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = "rlpipe.lock"


class RunDirBusy(RuntimeError):
    """Another process holds the run directory."""

    def __init__(self, out_dir: Path, pid: str) -> None:
        self.pid = pid
        super().__init__(f"{out_dir} is in use by another rlpipe process (PID {pid or 'unknown'}, lock "
                         f"{out_dir / LOCK_FILE}); wait for it to end or stop it, then run again")


class RunDirLock:
    """An exclusive, non-blocking lock on a run directory, held until :meth:`release` or process exit."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> RunDirLock:
        """Take the lock (creating the directory and lock file if needed); raise :class:`RunDirBusy` if taken."""
        if self._fd is not None or fcntl is None:
            return self
        self.out_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunDirBusy(self.out_dir, holder) from None
            raise
        # The PID is informational; a failed write (disk full) does not weaken the lock.
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock (the file stays: removing it would race with a process about to lock it)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor releases the flock

    def __enter__(self) -> RunDirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()
