"""The evaluation worker's first code: bound to its parent's life before anything heavy is imported.

A spawned worker unpickles its target and arguments before running any of our code; with torch and SB3 among
them that takes seconds, during which a killed trainer would leave it (and multiprocessing's resource tracker,
which lives as long as any process holds its pipe) running. This module imports only the standard library, and
the worker's real arguments arrive pickled, to be read once the worker is bound to its parent.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import signal
import sys
import threading
import time
from typing import Any

PARENT_WATCH_SECONDS = 0.5  # how often the watchdog thread looks, whatever the worker is doing
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent_pid: int) -> None:
    """End this process at once when ``parent_pid`` (its parent) dies, whatever it is doing then.

    A trainer killed while it writes a snapshot leaves the worker blocked reading the rest of it (the worker
    holds both ends of its queues, so no end of file ever comes), and multiprocessing's resource tracker lives
    as long as any process holds its pipe: both would stay for as long as the machine runs. On Linux the kernel
    sends SIGKILL when the parent dies (``PR_SET_PDEATHSIG``); elsewhere, and should that be unavailable, a
    watchdog thread sees the parent change.
    """
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # died before the request took effect
        os._exit(0)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_WATCH_SECONDS)
        os._exit(0)

    threading.Thread(target=watch, name="rlpipe-eval-parent-watch", daemon=True).start()


def main(parent_pid: int, payload: bytes, jobs: Any, results: Any) -> None:
    """The worker process: bind to the parent, then load the evaluation code and serve."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the trainer decides
    die_with_parent(parent_pid)
    from rlpipe.trainer.eval_worker import _serve  # torch, SB3, MuJoCo

    spec, policy_class, policy_data = pickle.loads(payload)
    _serve(spec, policy_class, policy_data, jobs, results)
