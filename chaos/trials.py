"""Random-kill trials: start a run, kill it at a random moment in a random way, resume until done, verify."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from chaos import checks, procs
from rlpipe.config import PipelineConfig
from rlpipe.jsonio import read_json

MODES = ("sigterm", "sigkill", "sigterm+sigkill", "sigint-group", "kill-worker")
MOMENTS = ("random", "after-checkpoint", "at-handover")
RUN_TIMEOUT = 600.0  # one process of the tiny curriculum takes well under a minute
MAX_RESUMES = 5


@dataclass
class Trial:
    number: int
    mode: str
    moment: str
    seconds: float = 0.0
    exits: list[int | None] = field(default_factory=list)
    resumes: int = 0
    notes: list[str] = field(default_factory=list)
    losses: list[str] = field(default_factory=list)

    def line(self) -> str:
        verdict = "ok" if not self.losses else "LOSS: " + "; ".join(self.losses)
        notes = f" ({'; '.join(self.notes)})" if self.notes else ""
        return (f"trial {self.number:3d}  {self.mode:<15} {self.moment:<34} exits={self.exits} "
                f"resumes={self.resumes} {self.seconds:5.1f}s  {verdict}{notes}")


def _checkpoints(out: Path, session: str) -> list[Path]:
    return sorted((out / session / "checkpoints").glob("step-*"))


def _wait_for(cond, proc: subprocess.Popen[bytes], limit: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and proc.poll() is None:
        if cond():
            return True
        time.sleep(0.01)
    return False


def _await_moment(rng: random.Random, moment: str, proc: subprocess.Popen[bytes], out: Path,
                  pipeline: PipelineConfig, reference_seconds: float) -> str:
    """Wait for the chosen moment; returns a description of it."""
    names = [s.name for s in pipeline.sessions]
    if moment == "after-checkpoint":
        session = rng.choice(names)
        k = rng.randint(1, 3)
        delay = rng.uniform(0.0, 0.3)
        _wait_for(lambda: len(_checkpoints(out, session)) >= min(k, 2) and
                  any(int(p.name.split("-")[1]) >= k * 512 for p in _checkpoints(out, session)), proc, RUN_TIMEOUT)
        time.sleep(delay)
        return f"{session} checkpoint {k * 512} +{delay:.2f}s"
    if moment == "at-handover":
        session = rng.choice(names[1:])
        delay = rng.uniform(0.0, 1.5)
        _wait_for(lambda: (out / session / "input" / "data" / "config" / "session.json").exists(), proc, RUN_TIMEOUT)
        time.sleep(delay)
        return f"{session} start +{delay:.2f}s"
    delay = rng.uniform(1.0, reference_seconds * 0.95)
    _wait_for(lambda: False, proc, delay)
    return f"{delay:.1f}s"


def _kill(rng: random.Random, mode: str, proc: subprocess.Popen[bytes], trial: Trial) -> None:
    if proc.poll() is not None:
        trial.notes.append("ended before the kill")
        return
    if mode == "sigterm":
        proc.send_signal(signal.SIGTERM)
    elif mode == "sigkill":
        proc.send_signal(signal.SIGKILL)
    elif mode == "sigterm+sigkill":
        proc.send_signal(signal.SIGTERM)
        grace = rng.uniform(0.05, 1.0)
        if not _wait_for(lambda: False, proc, grace) and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
    elif mode == "sigint-group":
        os.killpg(proc.pid, signal.SIGINT)
    elif mode == "kill-worker":
        worker = None
        deadline = time.monotonic() + 20
        while worker is None and time.monotonic() < deadline and proc.poll() is None:
            worker = procs.eval_worker_of(proc.pid)
            time.sleep(0.02)
        if worker is None:
            trial.notes.append("no evaluation worker running to kill")
            return
        os.kill(worker.pid, signal.SIGKILL)


def _finish(proc: subprocess.Popen[bytes], trial: Trial) -> None:
    """Wait for the process, then for its group (worker, resource tracker) to be gone."""
    try:
        proc.wait(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        trial.losses.append("run hung")
        procs.kill_group(proc.pid)
        proc.wait()
    trial.exits.append(proc.returncode)
    left = procs.wait_group_empty(proc.pid, 5.0)
    if left:
        trial.losses.append("left running: " + ", ".join(f"{p.pid} {p.cmdline[:60]}" for p in left))
        procs.kill_group(proc.pid)


def run_trial(number: int, rng: random.Random, config: Path, pipeline: PipelineConfig, base: Path,
              reference: Path, reference_seconds: float) -> Trial:
    """One trial; its directory is removed when it passes."""
    trial = Trial(number, MODES[number % len(MODES)], rng.choice(MOMENTS))
    root = base / f"trial-{number:03d}"
    out, tmp, log = root / "run", root / "tmp", root / "log.txt"
    tmp.mkdir(parents=True)
    clock = time.monotonic()
    proc = procs.start_run(config, out, tmp, log, resume=False)
    trial.moment = f"{trial.moment}: " + _await_moment(rng, trial.moment, proc, out, pipeline, reference_seconds)
    _kill(rng, trial.mode, proc, trial)
    _finish(proc, trial)
    state = read_json(out / "state.json") if (out / "state.json").exists() else None
    finished_before = {s["name"]: checks.bundle_digests(out, s["name"])
                       for s in (state or {"sessions": []})["sessions"] if s["status"] == "completed"}
    while (state is None or state["status"] != "succeeded") and trial.resumes < MAX_RESUMES and not trial.losses:
        trial.resumes += 1
        proc = procs.start_run(config, out, tmp, log, resume=state is not None)
        if trial.resumes == 1 and rng.random() < 0.25:  # now and then, kill the resumed run too
            second = rng.choice(MODES[:4])
            time.sleep(rng.uniform(1.0, reference_seconds * 0.5))
            trial.notes.append(f"resume {second} too")
            _kill(rng, second, proc, trial)
        _finish(proc, trial)
        state = read_json(out / "state.json") if (out / "state.json").exists() else None
    trial.seconds = time.monotonic() - clock
    if state is None or state["status"] != "succeeded":
        trial.losses.append(f"not done after {trial.resumes} resume(s): {state and state['status']}")
        return trial
    trial.losses += checks.verify_finished(out, pipeline)
    for name, before in finished_before.items():
        if checks.bundle_digests(out, name) != before:
            trial.losses.append(f"{name}: finished before the kill, its bundle changed on resume")
    for name in checks.clean_sessions(state):
        if checks.training_state(out, name) != checks.training_state(reference, name):
            trial.losses.append(f"{name}: trained without interruption, yet differs from the reference run")
    stray = checks.stray_files(out, tmp, reference.parent / "tmp")
    if stray:
        trial.losses.append("temporary files left: " + ", ".join(stray[:5]))
    if not trial.losses:
        import shutil

        shutil.rmtree(root)
    return trial
