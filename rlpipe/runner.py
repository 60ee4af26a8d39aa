"""The local driver: runs a pipeline's sessions in order on this machine, one contract root per session.

Layout of a run directory (default ``runs/<pipeline>``)::

    state.json              the run state, rewritten atomically after every change
    pipeline.resolved.json  the effective config (defaults applied, includes inlined)
    command.txt             the command that started or resumed the run
    run.log                 log of every attempt
    <session>/              a container-contract root: input/, model/ (the bundle), checkpoints/, output/
    report.json|md|html, learning_curve.png
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from rlpipe.config import PipelineConfig
from rlpipe.contract import COMMAND_FILE, LOG_FILE, RESOLVED_FILE, STATE_FILE, ContainerPaths, session_document
from rlpipe.integrity import DamagedFile, check_run_dir, parse_checked
from rlpipe.jsonio import read_json, remove_stale_temp_files, write_json_atomic
from rlpipe.rundir_lock import LOCK_FILE, RunDirBusy, RunDirLock
from rlpipe.state import RunState, utcnow
from rlpipe.write_errors import SpaceReserve

log = logging.getLogger("rlpipe.runner")


class RunDirError(RuntimeError):
    """The output directory cannot be used for this run as asked (nothing was changed)."""


@dataclass
class SessionHooks:
    """Callbacks a front end (progress bars, plain logs) receives; all optional."""

    session_started: Callable[[int, str, int, int], None] | None = None  # index, name, done steps, budget
    session_progress: Callable[[int, int], None] | None = None  # steps, budget
    session_finished: Callable[[int, str, str], None] | None = None  # index, name, status


def default_output(pipeline: PipelineConfig) -> Path:
    """``runs/<pipeline name>`` under the working directory."""
    return Path("runs") / pipeline.name


def load_state(out_dir: Path) -> RunState | None:
    """The run state in ``out_dir``, or None if there is none."""
    path = out_dir / STATE_FILE
    if not path.exists():
        return None
    return parse_checked(path, RunState, "restore it from a copy, or start a new run with another --output "
                                         "(the sessions' bundles and checkpoints here are not touched)")


def _foreign(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds files but no run (the lock file alone is a run directory's)."""
    return (out_dir.is_dir() and not (out_dir / STATE_FILE).exists()
            and any(p.name != LOCK_FILE for p in out_dir.iterdir()))


def open_run(pipeline: PipelineConfig, out_dir: Path, resume: bool, repair: bool = False) -> RunState:
    """Check ``out_dir`` against the request and return the state to continue; raise before touching anything
    (with ``repair``, damaged files that can safely be set aside or rebuilt are, and the run continues)."""
    try:
        existing = load_state(out_dir)
    except DamagedFile as exc:
        raise RunDirError(str(exc)) from None
    if existing is None:
        if _foreign(out_dir):
            raise RunDirError(f"{out_dir} exists and is not an rlpipe run directory (no {STATE_FILE}); "
                              "choose another --output")
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        return RunState.new(pipeline, run_id=f"{pipeline.name}-{stamp}")
    if not resume:
        raise RunDirError(f"{out_dir} already holds run {existing.run_id} ({existing.status}); "
                          "continue it with --resume, or pass --output for a new run")
    if existing.config_fingerprint != pipeline.fingerprint():
        raise RunDirError(f"the config differs from the one run {existing.run_id} started with "
                          f"({pipeline.fingerprint()} != {existing.config_fingerprint}); resume needs the same "
                          f"config (see {out_dir / RESOLVED_FILE}) or a new --output")
    damaged = check_run_dir(out_dir, existing)
    if damaged and not (repair and all(fix for _, fix in damaged)):
        problem = next(p for p, fix in damaged if not repair or fix is None)
        others = f" ({len(damaged) - 1} more damaged file(s))" if len(damaged) > 1 else ""
        raise RunDirError(f"{problem}{others}")
    for problem, fix in damaged:
        log.warning("repairing %s (%s): %s", problem.path, problem.problem, fix.what)  # type: ignore[union-attr]
        fix.apply()  # type: ignore[union-attr]
    return existing


class LocalRunner:
    """Runs ``pipeline`` into ``out_dir``; in-process, so a session transition costs no interpreter start."""

    def __init__(self, pipeline: PipelineConfig, out_dir: Path, resume: bool = False,
                 hooks: SessionHooks | None = None, stop: threading.Event | None = None,
                 repair: bool = False) -> None:
        self.pipeline = pipeline
        self.out_dir = out_dir
        self.hooks = hooks or SessionHooks()
        self.stop = stop or threading.Event()
        self._lock = RunDirLock(out_dir)
        self._reserve = SpaceReserve(out_dir)
        try:
            if not _foreign(out_dir):  # a foreign directory gets no lock file: open_run refuses it
                self._lock.acquire()
            self.state = open_run(pipeline, out_dir, resume, repair)  # raises before anything is written
        except RunDirBusy as exc:
            raise RunDirError(str(exc)) from None
        except BaseException:
            self._lock.release()
            raise

    def _save(self) -> None:
        self.state.touch()
        # On a full disk the reserve makes room, so the state can still say what failed and where.
        self._reserve.write_with_room(lambda: write_json_atomic(self.out_dir / STATE_FILE, self.state.to_json()))

    def _attach_log(self) -> logging.Handler:
        handler = logging.FileHandler(self.out_dir / LOG_FILE)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger("rlpipe").addHandler(handler)
        return handler

    def _prepare_session(self, index: int) -> ContainerPaths:
        cfg = self.pipeline.sessions[index]
        paths = ContainerPaths(self.out_dir / cfg.name)
        st = self.state.sessions[index]
        write_json_atomic(paths.session_file, session_document(
            self.pipeline.name, self.state.run_id, index, cfg.model_dump(mode="json"), st.handoff_from,
            st.global_timestep_offset))
        if cfg.use_previous_checkpoint:
            prev = ContainerPaths(self.out_dir / self.pipeline.sessions[index - 1].name).model
            link = paths.previous
            link.parent.mkdir(parents=True, exist_ok=True)
            if link.is_symlink() or link.exists():
                link.unlink()
            # A relative link keeps the run directory movable; the trainer reads the bundle in place.
            link.symlink_to(os.path.relpath(prev, link.parent), target_is_directory=True)
        return paths

    def _run_session(self, index: int, after_previous: bool) -> str:
        """Run session ``index``; ``after_previous`` when the previous session ended in this invocation."""
        from rlpipe.trainer.session import SessionTrainer

        st = self.state.sessions[index]
        attempt_start = utcnow()
        st.status, st.attempts, st.error = "running", st.attempts + 1, None
        st.started_at = st.started_at or attempt_start
        self._save()
        if self.hooks.session_started:
            self.hooks.session_started(index, st.name, st.timesteps, st.timesteps_budget)
        try:
            paths = self._prepare_session(index)
            trainer = SessionTrainer(paths, stop=self.stop, progress=self.hooks.session_progress,
                                     started_at=attempt_start)
            result = trainer.run()
        except BaseException as exc:
            st.status, st.error = "failed", f"{type(exc).__name__}: {exc}"
            if isinstance(exc, KeyboardInterrupt):
                st.status, st.error = "interrupted", "stopped by a second interrupt before a checkpoint"
            st.add_wall_seconds(attempt_start, utcnow())
            self._save()
            raise
        st.timesteps = result.timesteps
        if result.resumed_from is not None:
            st.resumed_from_timesteps = result.resumed_from
        st.add_wall_seconds(attempt_start, utcnow())
        if result.status == "completed" and result.outcome is not None:
            st.apply(result.outcome)
            st.status = "completed"
            st.bundle = str(paths.model.relative_to(self.out_dir))
            # Only a session that started fresh right after the previous one measures a hand-over; after a
            # resume the gap would include downtime and earlier training.
            if after_previous and st.attempts == 1:
                self.state.measure_transition(index)
        else:
            st.status = "interrupted"
        self._save()
        if self.hooks.session_finished:
            self.hooks.session_finished(index, st.name, st.status)
        return st.status

    def run(self) -> RunState:
        """Run every session not yet completed; returns the final state (also on disk)."""
        if self.out_dir.is_dir():  # under the lock: any temp file here is a killed process's
            for stale in remove_stale_temp_files(self.out_dir):
                log.info("removed %s, left by an interrupted write", stale)
        if self.state.status == "succeeded" and self.state.next_index() is None:
            log.info("run %s already succeeded; report rebuilt", self.state.run_id)
            self._write_report()
            self._lock.release()
            return self.state
        gated = self.state.failed_gate()
        if gated is not None:  # the lineage ended on a require gate: a resume does not train past it
            log.info("run %s ended at session %s's require gate; not run again", self.state.run_id, gated.name)
            self._write_report()
            self._lock.release()
            return self.state
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.out_dir / RESOLVED_FILE, self.pipeline.resolved())
        with open(self.out_dir / COMMAND_FILE, "a") as fh:
            fh.write(shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]) + "\n")
        handler = self._attach_log()
        self.state.status, self.state.ended_at, self.state.error = "running", None, None
        self._save()
        self._reserve.ensure()
        try:
            after_previous = False
            for index, st in enumerate(self.state.sessions):
                if st.status == "completed":
                    log.info("session %s: already completed, not run again", st.name)
                    continue
                if self.stop.is_set() or self._run_session(index, after_previous) == "interrupted":
                    self.state.finish("interrupted", f"stopped during session '{st.name}'; "
                                                     "continue with --resume")
                    break
                if st.gate_failed and st.gate is not None:
                    self.state.finish("failed", st.gate.describe(st.name))
                    log.warning("%s; the sessions after it do not run", self.state.error)
                    break
                after_previous = True
            else:
                self.state.finish("succeeded")
        except BaseException as exc:
            failed = next((s.name for s in self.state.sessions if s.status in ("failed", "interrupted")), "?")
            interrupted = isinstance(exc, KeyboardInterrupt)
            self.state.finish("interrupted" if interrupted else "failed", f"session '{failed}': {exc}")
            raise
        finally:
            self._save()
            self._write_report()
            logging.getLogger("rlpipe").removeHandler(handler)
            handler.close()
            self._lock.release()
        return self.state

    def _write_report(self) -> None:
        try:
            from rlpipe.report.local import write_local_report

            write_local_report(self.out_dir)
        except Exception as exc:  # the run's outcome is in state.json either way
            log.warning("report not written: %s", exc)
