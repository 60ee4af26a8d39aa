"""Damaged run state, missing bundles and two processes on one run directory: refused in one line, exit 2,
nothing changed; ``--repair`` sets damaged files aside and rebuilds a bundle from its final checkpoint."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from rlpipe.config import parse_pipeline
from rlpipe.integrity import DamagedFile, check_bundle
from rlpipe.jsonio import read_json
from rlpipe.rundir_lock import LOCK_FILE, RunDirLock
from rlpipe.runner import LocalRunner, RunDirError, SessionHooks

from .conftest import TINY


def _interrupted_run(out: Path) -> None:
    """``stand`` completed, ``hold`` stopped after its first checkpoint (so it has manifests and metrics)."""
    stop = threading.Event()
    current = {"index": 0}

    def started(index: int, name: str, done: int, budget: int) -> None:
        current["index"] = index

    def progress(steps: int, budget: int) -> None:
        if current["index"] == 1 and steps >= 128:
            stop.set()

    LocalRunner(parse_pipeline(TINY), out, hooks=SessionHooks(started, progress), stop=stop).run()


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("integrity") / "run"
    _interrupted_run(out)
    state = read_json(out / "state.json")
    assert [s["status"] for s in state["sessions"]] == ["completed", "interrupted"]
    assert list((out / "hold" / "checkpoints").glob("step-*/manifest.json"))
    return out


@pytest.fixture
def run_copy(interrupted: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(interrupted, out, symlinks=True)
    return out


def _tree(root: Path) -> dict[str, str]:
    """Every file's digest; the lock file only names the newest holder's PID."""
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(root.rglob("*")) if not p.is_symlink() and p.name != LOCK_FILE}


def _first_manifest(out: Path) -> Path:
    return sorted((out / "hold" / "checkpoints").glob("step-*/manifest.json"))[0]


Damage = Callable[[Path], Path]


def _write(rel: str, text: str) -> Damage:
    def damage(out: Path) -> Path:
        (out / rel).write_text(text)
        return out / rel
    return damage


def _truncate(rel: str) -> Damage:
    def damage(out: Path) -> Path:
        p = out / rel
        p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
        return p
    return damage


def _delete(rel: str) -> Damage:
    def damage(out: Path) -> Path:
        (out / rel).unlink()
        return out / rel
    return damage


def _manifest(text: str) -> Damage:
    def damage(out: Path) -> Path:
        p = _first_manifest(out)
        p.write_text(text)
        return p
    return damage


DAMAGES: dict[str, Damage] = {
    "state-empty": _write("state.json", ""),
    "state-truncated": _truncate("state.json"),
    "state-list": _write("state.json", "[]"),
    "state-wrong-field": _write("state.json", '{"pipeline": "tiny", "run_id": "x", "config_fingerprint": "f", '
                                              '"sessions": [{"name": "stand"}]}'),
    "bundle-json-truncated": _truncate("stand/model/bundle.json"),
    "bundle-json-wrong-shape": _write("stand/model/bundle.json", '{"format_version": 1}'),
    "bundle-model-missing": _delete("stand/model/model.zip"),
    "bundle-model-truncated": _truncate("stand/model/model.zip"),
    "bundle-metrics-empty": _write("stand/model/metrics.json", ""),
    "bundle-metrics-wrong-shape": _write("stand/model/metrics.json", '{"evaluations": [1, 2]}'),
    "manifest-empty": _manifest(""),
    "manifest-wrong-shape": _manifest('{"timesteps": "many", "files": []}'),
    "checkpoint-metrics-truncated": _truncate("hold/checkpoints/metrics.json"),
}


@pytest.mark.parametrize("case", sorted(DAMAGES))
def test_damaged_run_state_is_refused_naming_the_file_and_nothing_changes(run_copy: Path, case: str) -> None:
    damaged = DAMAGES[case](run_copy)
    before = _tree(run_copy)
    with pytest.raises(RunDirError) as info:
        LocalRunner(parse_pipeline(TINY), run_copy, resume=True)
    message = str(info.value)
    assert str(damaged) in message and "\n" not in message
    assert any(word in message for word in ("restore", "--repair", "--output")), message
    assert _tree(run_copy) == before


def test_cli_damaged_state_is_one_line_exit_2(run_copy: Path, tmp_path: Path) -> None:
    (run_copy / "state.json").write_text((run_copy / "state.json").read_text()[:40])
    config = tmp_path / "p.yaml"
    config.write_text(yaml.safe_dump(TINY))
    before = _tree(run_copy)
    proc = subprocess.run([sys.executable, "-c", "from rlpipe.cli import app; app()", "run", str(config),
                           "--output", str(run_copy), "--resume"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "state.json" in proc.stderr and "not valid JSON" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert _tree(run_copy) == before


def test_a_finished_run_with_a_missing_bundle_is_not_reported_as_success(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert LocalRunner(parse_pipeline(TINY), out).run().status == "succeeded"
    (out / "stand" / "model" / "model.zip").unlink()
    with pytest.raises(RunDirError, match=r"stand/model/model.zip: missing, though bundle.json lists it.*--repair"):
        LocalRunner(parse_pipeline(TINY), out, resume=True)
    # --repair rebuilds it from the session's final checkpoint; the later session is not trained again.
    hold_bundle = (out / "hold" / "model" / "model.zip").read_bytes()
    state = LocalRunner(parse_pipeline(TINY), out, resume=True, repair=True).run()
    assert state.status == "succeeded"
    check_bundle(out / "stand" / "model")
    assert [s.attempts for s in state.sessions] == [2, 1]
    assert state.sessions[0].timesteps == 256
    assert (out / "hold" / "model" / "model.zip").read_bytes() == hold_bundle


def test_repair_sets_a_damaged_checkpoint_aside_and_resumes(run_copy: Path) -> None:
    manifest = _first_manifest(run_copy)
    manifest.write_text("{")
    state = LocalRunner(parse_pipeline(TINY), run_copy, resume=True, repair=True).run()
    assert state.status == "succeeded" and state.sessions[1].timesteps == 256
    assert (manifest.parent.parent / f"damaged-{manifest.parent.name}" / "manifest.json").read_text() == "{"


def test_damaged_session_document_fails_the_trainer_in_one_line(tmp_path: Path) -> None:
    from rlpipe.contract import ContainerPaths
    from rlpipe.trainer.entrypoint import EXIT_DAMAGED, main
    from rlpipe.trainer.session import SessionTrainer

    paths = ContainerPaths(tmp_path)
    paths.session_file.parent.mkdir(parents=True)
    paths.session_file.write_text('{"pipeline": "tiny"')
    with pytest.raises(DamagedFile, match="session.json: is not valid JSON"):
        SessionTrainer(paths)
    paths.session_file.write_text('{"pipeline": "tiny", "run_id": "r", "index": "first", "session": {}}')
    assert main(["--root", str(tmp_path)]) == EXIT_DAMAGED
    assert "session.json: wrongly shaped: field index" in paths.failure.read_text()


def test_a_second_runner_on_the_same_run_directory_is_refused_naming_the_holder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = LocalRunner(parse_pipeline(TINY), out)  # holds the lock until its run ends
    with pytest.raises(RunDirError, match=rf"in use by another rlpipe process \(PID {os.getpid()}"):
        LocalRunner(parse_pipeline(TINY), out, resume=True)
    assert first.run().status == "succeeded"
    LocalRunner(parse_pipeline(TINY), out, resume=True).run()  # free again once the run ended


def test_run_directory_lock_dies_with_its_process(tmp_path: Path) -> None:
    script = (f"import time; from rlpipe.rundir_lock import RunDirLock; lock = RunDirLock({str(tmp_path)!r}).acquire(); "
              "print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(RuntimeError, match=rf"PID {holder.pid}\b"):
            RunDirLock(tmp_path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    deadline = time.time() + 5
    while True:  # the kernel releases the lock as the process is reaped
        try:
            lock = RunDirLock(tmp_path).acquire()
            break
        except RuntimeError:
            assert time.time() < deadline
            time.sleep(0.05)
    assert lock.held and (tmp_path / LOCK_FILE).read_text().strip() == str(os.getpid())
    lock.release()




def test_temp_files_of_a_killed_write_are_removed_on_resume(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert LocalRunner(parse_pipeline(TINY), out).run().status == "succeeded"
    stale = out / "stand" / "model" / ".bundle.json.x1y2z3.tmp"  # as a SIGKILL between write and rename leaves
    stale.write_text('{"format_')
    keep = out / "stand" / "notes.tmp"  # not an atomic write's
    keep.write_text("mine")
    LocalRunner(parse_pipeline(TINY), out, resume=True).run()
    assert not stale.exists() and keep.exists()
