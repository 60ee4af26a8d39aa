"""Several seeds locally: one lineage per seed in its own process, parallel at a time; a failed require gate
ends its lineage (not rerun on resume); Ctrl-C stops every lineage and --resume continues them; the report
across seeds."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from rlpipe.config import parse_pipeline
from rlpipe.jsonio import read_json
from rlpipe.runner import LocalRunner
from rlpipe.trainer.entrypoint import EXIT_INTERRUPTED

RLPIPE = [sys.executable, "-m", "rlpipe"]


def write_config(tmp_path: Path, raw: dict[str, Any]) -> Path:
    config = tmp_path / "p.yaml"
    config.write_text(yaml.safe_dump(raw))
    return config


def rewards(run_dir: Path) -> list[list[tuple[int, float]]]:
    state = read_json(run_dir / "state.json")
    return [[(e["timesteps"], e["mean_reward"]) for e in s["evaluations"]] for s in state["sessions"]]


def test_two_seeds_differ_and_each_equals_a_single_seed_run(tmp_path: Path, tiny_raw: dict[str, Any]) -> None:
    tiny_raw.update(seeds=[0, 1], parallel=2)
    config = write_config(tmp_path, tiny_raw)
    out = tmp_path / "run"
    done = subprocess.run([*RLPIPE, "run", str(config), "--output", str(out)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr + done.stdout
    seed0, seed1 = rewards(out / "seed-0"), rewards(out / "seed-1")
    assert seed0 != seed1
    assert read_json(out / "seed-1" / "state.json")["status"] == "succeeded"

    single = {k: v for k, v in tiny_raw.items() if k not in ("seeds", "parallel")}
    single["defaults"] = dict(tiny_raw["defaults"], seed=1)
    LocalRunner(parse_pipeline(single), tmp_path / "single").run()
    assert rewards(tmp_path / "single") == seed1

    report = read_json(out / "report.json")
    assert report["seeds"] == [0, 1] and report["status"] == "succeeded"
    assert [(lin["seed"], lin["status"]) for lin in report["lineages"]] == [(0, "succeeded"), (1, "succeeded")]
    agg = {a["name"]: a for a in report["aggregate"]["sessions"]}
    finals = [lin["sessions"][1]["final_eval_reward"] for lin in report["lineages"]]
    hold = agg["hold"]["final_eval_reward"]
    assert agg["hold"]["n"] == 2 and abs(hold["mean"] - sum(finals) / 2) < 1e-5
    assert min(finals) - 1e-5 <= hold["ci95"][0] <= hold["mean"] <= hold["ci95"][1] <= max(finals) + 1e-5
    html = (out / "report.html").read_text()
    assert "Across seeds" in html and "Lineages" in html
    assert (out / "learning_curve.png").stat().st_size > 1000
    # One seed: the report of today, no lineage keys.
    assert "lineages" not in read_json(tmp_path / "single" / "report.json")


def run_unreachable_gate(tmp_path: Path, raw: dict[str, Any], out: Path, **settings: Any
                         ) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """``rlpipe run`` of seeds 0 and 1, one at a time, whose first session requires a reward never reached;
    the config written and the finished command."""
    raw.update(seeds=[0, 1], parallel=1, **settings)
    raw["sessions"][0]["require"] = {"metric": "final_eval_reward", "at_least": 1e9}
    config = write_config(tmp_path, raw)
    return config, subprocess.run([*RLPIPE, "run", str(config), "--output", str(out)], capture_output=True,
                                  text=True, timeout=600)


def test_failed_require_ends_the_lineage_and_resume_does_not_rerun_it(tmp_path: Path,
                                                                      tiny_raw: dict[str, Any]) -> None:
    out = tmp_path / "run"
    config, done = run_unreachable_gate(tmp_path, tiny_raw, out)
    assert done.returncode == 1, done.stderr
    for seed in (0, 1):
        state = read_json(out / f"seed-{seed}" / "state.json")
        stand, hold = state["sessions"]
        assert state["status"] == "failed" and "stand' failed its require gate: final_eval_reward" in state["error"]
        assert stand["status"] == "completed" and stand["gate"]["passed"] is False
        assert stand["gate"]["value"] == stand["final_eval_reward"]
        assert hold["status"] == "pending"  # the lineage stopped there
    report = read_json(out / "report.json")
    assert report["status"] == "failed"
    assert {(f["seed"], f["session"], f["status"]) for f in report["failures"]} == {
        (0, "stand", "gate_failed"), (1, "stand", "gate_failed")}
    assert report["lineages"][0]["sessions"][0]["gate"]["passed"] is False
    log_size = (out / "seed-0.log").stat().st_size
    again = subprocess.run([*RLPIPE, "run", str(config), "--output", str(out), "--resume"], capture_output=True,
                           text=True, timeout=600)
    assert "require gate; not run again" in again.stdout
    assert (out / "seed-0.log").stat().st_size == log_size  # no process was started for it
    assert read_json(out / "seed-0" / "state.json")["sessions"][0]["attempts"] == 1


def test_ctrl_c_stops_every_lineage_and_resume_finishes_them(tmp_path: Path, tiny_raw: dict[str, Any]) -> None:
    tiny_raw.update(seeds=[0, 1], parallel=2)
    tiny_raw["sessions"][0]["timesteps"] = 3000
    tiny_raw["defaults"]["eval"]["every_steps"] = 1500
    config = write_config(tmp_path, tiny_raw)
    out = tmp_path / "run"
    proc = subprocess.Popen([*RLPIPE, "run", str(config), "--output", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not all(
            list((out / f"seed-{s}" / "stand" / "checkpoints").glob("step-*")) for s in (0, 1)):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_INTERRUPTED, err + stdout
    assert "Traceback" not in err
    done = {}
    for seed in (0, 1):
        state = read_json(out / f"seed-{seed}" / "state.json")
        assert state["status"] == "interrupted", state
        done[seed] = state["sessions"][0]["timesteps"]
        assert 0 < done[seed] < 3000
    resumed = subprocess.run([*RLPIPE, "run", str(config), "--output", str(out), "--resume"], capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    for seed in (0, 1):
        state = read_json(out / f"seed-{seed}" / "state.json")
        assert state["status"] == "succeeded"
        assert state["sessions"][0]["resumed_from_timesteps"] == done[seed]


def test_fail_fast_starts_no_further_lineage(tmp_path: Path, tiny_raw: dict[str, Any]) -> None:
    out = tmp_path / "run"
    _, done = run_unreachable_gate(tmp_path, tiny_raw, out, fail_fast=True)
    assert done.returncode == 1, done.stderr
    assert "fail_fast: lineage seed 0 failed" in done.stdout
    assert not (out / "seed-1").exists()
    report = read_json(out / "report.json")
    assert report["seeds"] == [0, 1] and report["status"] == "failed"
    assert [(lin["seed"], lin["status"]) for lin in report["lineages"]] == [(0, "failed"), (1, "not_started")]
    assert [s["status"] for s in report["lineages"][1]["sessions"]] == ["pending", "pending"]
