"""The background evaluation worker and multiprocessing's resource tracker end at once when the trainer is
killed, even while the worker is blocked reading a snapshot the trainer was half-way through writing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

TRAINER = r"""
import os, struct, sys, time
from multiprocessing import resource_tracker
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from rlpipe.trainer.eval_worker import BackgroundEvaluator, EvalEnvSpec, snapshot

spec = EvalEnvSpec("Pendulum-v1", {}, 1, 1, normalize=False, seed=1)
model = PPO("MlpPolicy", make_vec_env("Pendulum-v1", n_envs=1), n_steps=64, batch_size=64, device="cpu")
worker = BackgroundEvaluator(spec, model)
if sys.argv[1] == "starting":  # killed while the worker still imports torch and SB3
    print(worker._process.pid, resource_tracker._resource_tracker._pid, flush=True)
    time.sleep(120)
assert worker.submit(snapshot(model, 1))
assert worker.collect(None)[0].error is None  # the worker is up and serving
# The first part of a snapshot, as when the trainer is killed in the middle of handing one over: the worker
# reads the header and waits for the rest.
os.write(worker._jobs._writer.fileno(), struct.pack("!i", 1 << 20) + b"x" * 1000)
time.sleep(0.5)
print(worker._process.pid, resource_tracker._resource_tracker._pid, flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead; it only waits for its (new) parent to reap it.
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize("moment", ["starting", "reading-a-snapshot"])
def test_worker_and_resource_tracker_exit_when_the_trainer_is_killed(moment: str) -> None:
    trainer = subprocess.Popen([sys.executable, "-c", TRAINER, moment], stdout=subprocess.PIPE, text=True)
    try:
        assert trainer.stdout is not None
        worker, tracker = (int(x) for x in trainer.stdout.readline().split())
        assert _alive(worker) and _alive(tracker)
    finally:
        trainer.send_signal(signal.SIGKILL)
        trainer.wait()
    # At once: well within the seconds a starting worker needs to import torch and SB3.
    deadline = time.monotonic() + 3
    while (_alive(worker) or _alive(tracker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(worker), "evaluation worker outlived its trainer"
    assert not _alive(tracker), "resource tracker outlived the trainer and its worker"
