"""The local driver of a run with several seeds: one lineage (the whole curriculum) per seed, ``parallel`` at a
time, each in its own process and its own run directory with the single-seed layout.

Layout of such a run directory (default ``runs/<pipeline>``)::

    lineages.json           the run's seeds, parallel and config fingerprint (what a resume checks)
    pipeline.resolved.json  the effective config
    command.txt             the commands that started or resumed the run
    seed-<s>/               one lineage: a single-seed run directory (state.json, sessions, its report)
    seed-<s>.log            that lineage's console output
    report.json|md|html, learning_curve.png   the report across lineages

Each lineage is a separate process (``python -m rlpipe run --lineage <s>``): a process per lineage is what
lets two lineages use two cores, and a lineage that crashes takes no other with it. Lineage processes run in
their own session (process group), so a Ctrl-C reaches only this driver, which stops each lineage once with
SIGTERM: a lineage checkpoints and exits as it would under SageMaker's stop.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from rlpipe.config import PipelineConfig, parse_pipeline
from rlpipe.contract import COMMAND_FILE, LINEAGES_FILE, RESOLVED_FILE, STATE_FILE
from rlpipe.jsonio import read_json, write_json_atomic
from rlpipe.runner import RunDirError, load_state
from rlpipe.state import RunState

log = logging.getLogger("rlpipe.lineages")

POLL_SECONDS = 0.5
EXIT_INTERRUPTED = 143
NOT_STARTED = "not_started"


def lineage_dir(out_dir: Path, seed: int) -> Path:
    """The run directory of seed ``seed``'s lineage."""
    return out_dir / f"seed-{seed}"


@dataclass
class Lineage:
    """One seed's lineage as the driver tracks it."""

    seed: int
    directory: Path
    status: str = NOT_STARTED  # not_started | running | succeeded | failed | interrupted
    error: str | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def settled(self) -> str | None:
        """Why this lineage needs no run: it succeeded, or it ended on a ``require`` gate; None otherwise."""
        state = load_state(self.directory)
        return state.settled() if state is not None else None


def open_lineages(pipeline: PipelineConfig, out_dir: Path, resume: bool) -> list[Lineage]:
    """Check ``out_dir`` against the request; raise :class:`RunDirError` before touching anything."""
    record_path = out_dir / LINEAGES_FILE
    seeds = pipeline.seed_list()
    if record_path.exists():
        record = read_json(record_path)
        if not resume:
            raise RunDirError(f"{out_dir} already holds run {record.get('run_id')} ({len(record['seeds'])} "
                              "lineages); continue it with --resume, or pass --output for a new run")
        if record.get("config_fingerprint") != pipeline.fingerprint():
            raise RunDirError(f"the config differs from the one run {record.get('run_id')} started with; resume "
                              f"needs the same config (see {out_dir / RESOLVED_FILE}) or a new --output")
    elif (out_dir / STATE_FILE).exists():
        raise RunDirError(f"{out_dir} holds a single-seed run; choose another --output for a run with "
                          f"{len(seeds)} seeds")
    elif out_dir.exists() and any(out_dir.iterdir()):
        raise RunDirError(f"{out_dir} exists and is not an rlpipe run directory (no {LINEAGES_FILE}); "
                          "choose another --output")
    return [Lineage(seed, lineage_dir(out_dir, seed)) for seed in seeds]


class LineageRunner:
    """Runs every lineage of ``pipeline`` not yet settled, ``parallel`` at a time."""

    def __init__(self, pipeline: PipelineConfig, config: Path, out_dir: Path, resume: bool = False,
                 stop: threading.Event | None = None, echo: bool = True) -> None:
        self.pipeline = pipeline
        self.config = config
        self.out_dir = out_dir
        self.resume = resume
        self.stop = stop or threading.Event()
        self.echo = echo
        self.lineages = open_lineages(pipeline, out_dir, resume)  # raises before anything is written
        self.run_id = f"{pipeline.name}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}"

    def _say(self, text: str) -> None:
        log.info("%s", text)
        if self.echo:
            print(text, flush=True)

    def _command(self, lin: Lineage) -> list[str]:
        cmd = [sys.executable, "-m", "rlpipe", "run", str(self.config), "--output", str(lin.directory),
               "--lineage", str(lin.seed)]
        if (lin.directory / STATE_FILE).exists():
            cmd.append("--resume")
        return cmd

    def _launch(self, lin: Lineage) -> None:
        with open(self.out_dir / f"seed-{lin.seed}.log", "ab") as logfile:
            lin.process = subprocess.Popen(self._command(lin), stdout=logfile, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, start_new_session=True)
        lin.status = "running"
        self._say(f"lineage seed {lin.seed}: started (log {self.out_dir / f'seed-{lin.seed}.log'})")

    def _reap(self, lin: Lineage) -> None:
        assert lin.process is not None
        code = lin.process.returncode
        state = load_state(lin.directory)
        if code == 0 and state is not None and state.status == "succeeded":
            lin.status = "succeeded"
        elif code == EXIT_INTERRUPTED or (state is not None and state.status == "interrupted"):
            lin.status = "interrupted"
        else:
            lin.status = "failed"
            lin.error = (state.error if state is not None and state.error else
                         f"exit code {code}; see {self.out_dir / f'seed-{lin.seed}.log'}")
        self._say(f"lineage seed {lin.seed}: {lin.status}" + (f" ({lin.error})" if lin.error else ""))
        lin.process = None

    def _stop_all(self) -> None:
        for lin in self.lineages:
            if lin.process is not None and lin.process.poll() is None:
                lin.process.send_signal(signal.SIGTERM)  # once: a second signal means "stop now" to a lineage

    def run(self) -> list[Lineage]:
        """Run the lineages; returns them with their final status. Writes the report across lineages."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        record_path = self.out_dir / LINEAGES_FILE
        if record_path.exists():
            self.run_id = read_json(record_path).get("run_id", self.run_id)
        write_json_atomic(record_path, {"pipeline": self.pipeline.name, "run_id": self.run_id,
                                        "config_fingerprint": self.pipeline.fingerprint(),
                                        "seeds": self.pipeline.seed_list(), "parallel": self.pipeline.parallel})
        write_json_atomic(self.out_dir / RESOLVED_FILE, self.pipeline.resolved())
        with open(self.out_dir / COMMAND_FILE, "a") as fh:
            fh.write(shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]) + "\n")
        cores = os.cpu_count() or 1
        if self.pipeline.parallel > cores:
            self._say(f"note: parallel {self.pipeline.parallel} exceeds this machine's {cores} core(s); the "
                      "lineages share them and each trains slower")
        queue = []
        for lin in self.lineages:
            why = lin.settled()
            if why is not None:
                lin.status, lin.error = ("succeeded", None) if why == "succeeded" else ("failed", why)
                self._say(f"lineage seed {lin.seed}: {why}; not run again")
            else:
                queue.append(lin)
        stopping = False
        try:
            while queue or any(lin.process is not None for lin in self.lineages):
                if self.stop.is_set() and not stopping:
                    stopping = True
                    self._say("stopping every lineage (each checkpoints first)")
                    self._stop_all()
                running = [lin for lin in self.lineages if lin.process is not None]
                for lin in running:
                    if lin.process is not None and lin.process.poll() is not None:
                        self._reap(lin)
                        if lin.status == "failed" and self.pipeline.fail_fast and not stopping:
                            stopping = True
                            self._say(f"fail_fast: lineage seed {lin.seed} failed; stopping the others")
                            self._stop_all()
                running = [lin for lin in self.lineages if lin.process is not None]
                while queue and not stopping and len(running) < self.pipeline.parallel:
                    lin = queue.pop(0)
                    self._launch(lin)
                    running.append(lin)
                if stopping:
                    queue.clear()
                time.sleep(POLL_SECONDS)
        finally:
            self._stop_all()
            for lin in self.lineages:
                if lin.process is not None:
                    lin.process.wait()
                    self._reap(lin)
            self.write_report()
        return self.lineages

    def write_report(self) -> dict[str, Path]:
        """Build the report across lineages from each lineage's state and outcomes."""
        return write_multi_seed_report(self.out_dir)


def write_multi_seed_report(out_dir: Path) -> dict[str, Path]:
    """Write report.json/md/html and the learning curve across the lineages of the run in ``out_dir``."""
    from rlpipe.report.aggregate import multi_seed_report
    from rlpipe.report.build import build_report
    from rlpipe.report.local import read_session_outcome, write_report_files

    record = read_json(out_dir / LINEAGES_FILE)
    pipeline = parse_pipeline(read_json(out_dir / RESOLVED_FILE), source=str(out_dir / RESOLVED_FILE),
                              check_envs=False)
    lineages = []
    for seed in record["seeds"]:
        directory = lineage_dir(out_dir, seed)
        state = load_state(directory)
        if state is None:  # not started (stopped before its turn, or fail_fast): every session pending
            lineage = pipeline.lineage(seed)
            pending = build_report(RunState.new(lineage, run_id=f"{record['run_id']}-seed-{seed}"))
            lineages.append((seed, {**pending, "status": NOT_STARTED}))
            continue
        outcomes = {s.name: read_session_outcome(directory, s.name) for s in state.sessions}
        lineages.append((seed, build_report(state, outcomes)))
    report = multi_seed_report(record["pipeline"], record["run_id"], lineages, int(record.get("parallel", 1)))
    return write_report_files(out_dir, report)


def is_multi_seed_run(out_dir: Path) -> bool:
    """Whether ``out_dir`` is the directory of a run with several lineages."""
    return (out_dir / LINEAGES_FILE).is_file()

