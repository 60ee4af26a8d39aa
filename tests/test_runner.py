"""Local runner: whole pipeline, resume without re-running completed sessions, refusal to clobber, failures."""

from __future__ import annotations

import copy
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from rlpipe.config import parse_pipeline
from rlpipe.jsonio import read_json
from rlpipe.runner import LocalRunner, RunDirError, SessionHooks
from rlpipe.trainer.entrypoint import EXIT_INTERRUPTED


def test_runs_pipeline_and_writes_report(tmp_path: Path, tiny_raw: dict[str, Any]) -> None:
    out = tmp_path / "run"
    state = LocalRunner(parse_pipeline(tiny_raw), out).run()
    assert state.status == "succeeded"
    a, b = state.sessions
    assert (a.status, b.status) == ("completed", "completed")
    assert a.timesteps == b.timesteps == 256
    assert b.handoff_from == "stand" and b.carried == ["policy", "optimizer", "vecnormalize"]
    assert b.transition_seconds is not None and 0 <= b.transition_seconds < 30
    assert (out / b.bundle / "model.zip").exists()
    assert (out / "hold" / "input" / "data" / "previous").resolve() == (out / "stand" / "model").resolve()
    report = read_json(out / "report.json")
    assert report["status"] == "succeeded"
    assert [s["name"] for s in report["sessions"]] == ["stand", "hold"]
    for key in ("timesteps", "wall_seconds", "transition_seconds", "final_eval_reward", "best_eval_reward",
                "handoff_from", "carried", "bundle"):
        assert key in report["sessions"][1]
    assert report["sessions"][1]["evaluations"][0]["global_timesteps"] == 256  # transfer, before training
    for name in ("report.md", "report.html", "learning_curve.png", "pipeline.resolved.json", "command.txt"):
        assert (out / name).exists(), name
    assert read_json(out / "pipeline.resolved.json")["sessions"][1]["use_previous_checkpoint"] is True


def test_resume_skips_completed_session(tmp_path: Path, tiny_raw: dict[str, Any]) -> None:
    out = tmp_path / "run"
    pipeline = parse_pipeline(tiny_raw)
    stop = threading.Event()
    # Stop as soon as the first session is done: the second does not start.
    hooks = SessionHooks(session_finished=lambda i, name, status: stop.set())
    state = LocalRunner(pipeline, out, hooks=hooks, stop=stop).run()
    assert state.status == "interrupted"
    assert [s.status for s in state.sessions] == ["completed", "pending"]
    first_bundle = out / "stand" / "model" / "model.zip"
    mtime = first_bundle.stat().st_mtime_ns

    state = LocalRunner(pipeline, out, resume=True).run()
    assert state.status == "succeeded"
    assert state.sessions[0].attempts == 1  # not re-run
    assert first_bundle.stat().st_mtime_ns == mtime
    assert state.sessions[1].attempts == 1 and state.sessions[1].timesteps == 256
    assert state.sessions[1].transition_seconds is None  # not measured across invocations

    # Running a finished run again changes nothing but the report.
    before = (out / "state.json").read_bytes()
    state = LocalRunner(pipeline, out, resume=True).run()
    assert state.status == "succeeded" and (out / "state.json").read_bytes() == before


def test_existing_run_is_not_clobbered(tmp_path: Path, tiny_raw: dict[str, Any]) -> None:
    out = tmp_path / "run"
    LocalRunner(parse_pipeline(tiny_raw), out).run()
    before = (out / "state.json").read_bytes()
    with pytest.raises(RunDirError, match="already holds run .* --resume"):
        LocalRunner(parse_pipeline(tiny_raw), out)
    changed = copy.deepcopy(tiny_raw)
    changed["sessions"][1]["timesteps"] = 512
    with pytest.raises(RunDirError, match="config differs"):
        LocalRunner(parse_pipeline(changed), out, resume=True)
    assert (out / "state.json").read_bytes() == before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="not an rlpipe run directory"):
        LocalRunner(parse_pipeline(tiny_raw), tmp_path / "other")


def test_failed_session_recorded_with_reason(tmp_path: Path, tiny_raw: dict[str, Any],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from rlpipe.trainer.session import SessionTrainer

    original = SessionTrainer._warm_start

    def broken_bundle(self: SessionTrainer, model: Any, prev: Any) -> None:
        raise RuntimeError("no_such_kwarg in the bundle")  # a failure only running the session can reveal

    monkeypatch.setattr(SessionTrainer, "_warm_start", broken_bundle)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError):
        LocalRunner(parse_pipeline(tiny_raw), out).run()
    monkeypatch.setattr(SessionTrainer, "_warm_start", original)
    state = read_json(out / "state.json")
    assert state["status"] == "failed"
    assert state["sessions"][0]["status"] == "completed"
    assert state["sessions"][1]["status"] == "failed"
    assert "no_such_kwarg" in state["sessions"][1]["error"]
    report = read_json(out / "report.json")
    assert report["status"] == "failed"
    assert "no_such_kwarg" in (out / "report.md").read_text()


def test_cli_sigint_stops_cleanly_then_resume(tmp_path: Path, tiny_raw: dict[str, Any]) -> None:
    tiny_raw["sessions"][0]["timesteps"] = 6000
    tiny_raw["defaults"]["eval"]["every_steps"] = 3000
    config = tmp_path / "p.yaml"
    config.write_text(yaml.safe_dump(tiny_raw))
    out = tmp_path / "run"
    rlpipe = [sys.executable, "-c", "from rlpipe.cli import app; app()"]
    proc = subprocess.Popen([*rlpipe, "run", str(config), "--output", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list((out / "stand" / "checkpoints").glob("step-*")) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_INTERRUPTED, err
    assert "--resume" in err and "Traceback" not in err
    state = read_json(out / "state.json")
    assert state["status"] == "interrupted" and state["sessions"][0]["status"] == "interrupted"
    done = state["sessions"][0]["timesteps"]
    assert 0 < done < 6000

    proc = subprocess.run([*rlpipe, "run", str(config), "--output", str(out), "--resume"], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    state = read_json(out / "state.json")
    assert state["status"] == "succeeded"
    assert state["sessions"][0]["resumed_from_timesteps"] == done
    assert state["sessions"][0]["timesteps"] == 6000
