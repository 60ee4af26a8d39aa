"""Processes of a run under test: started in their own process group, found through /proc, never by name."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

RLPIPE = [sys.executable, "-c", "from rlpipe.cli import app; app()"]


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    pgid: int
    state: str
    cmdline: str


def processes() -> list[Proc]:
    """Every live (not zombie) process on the machine."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z":
            continue
        found.append(Proc(int(entry.name), int(fields[1]), int(fields[2]), fields[0], cmd))
    return found


def in_group(pgid: int) -> list[Proc]:
    """Live processes of process group ``pgid``."""
    return [p for p in processes() if p.pgid == pgid]


def children(pid: int) -> list[Proc]:
    """Live direct children of ``pid``."""
    return [p for p in processes() if p.ppid == pid]


def eval_worker_of(pid: int) -> Proc | None:
    """The background evaluation worker started by ``pid`` (a spawned multiprocessing child), if running."""
    return next((c for c in children(pid) if "multiprocessing.spawn" in c.cmdline), None)


def wait_group_empty(pgid: int, seconds: float) -> list[Proc]:
    """Wait up to ``seconds`` for process group ``pgid`` to end; the processes still in it."""
    deadline = time.monotonic() + seconds
    while True:
        left = in_group(pgid)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


def kill_group(pgid: int) -> None:
    """SIGKILL a process group this harness started (cleanup after a finding)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def start_run(config: Path, out: Path, tmpdir: Path, log: Path, resume: bool) -> subprocess.Popen[bytes]:
    """``rlpipe run`` in a new session (its own process group), with its own temp dir and log file."""
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    args = [*RLPIPE, "run", str(config), "--output", str(out), *(["--resume"] if resume else [])]
    with open(log, "ab") as fh:
        return subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
