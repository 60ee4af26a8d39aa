"""The benchmark code runs end to end with microscopic budgets and writes well-formed results (no timings checked)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.__main__ import main

pytestmark = pytest.mark.timeout(300)

HEADLINE_KEYS = ("throughput_ratio_vs_sb3_same_settings", "throughput_ratio_vs_sb3_defaults",
                 "throughput_ratio_vs_raw_env", "transition_seconds_median", "transfer_vs_scratch_reward_ratio")


def test_bench_smoke_writes_results(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["--smoke", "--only", "throughput,transition,transfer", "--out", str(out)]) == 0

    results = json.loads((out / "results.json").read_text())
    assert results["mode"] == "smoke"
    for key in HEADLINE_KEYS:
        item = results["headline"][key]
        assert isinstance(item["value"], (int, float)), key
        assert item["unit"] and item["runs"] >= 1, key
    for case in results["throughput"]["cases"]:
        for variant in ("sb3_defaults", "sb3_same_settings", "raw_env", "rlpipe", "rlpipe_at_default_intervals"):
            fig = case["steps_per_second"][variant]
            assert fig["runs"] == 1 and fig["median"] > 0 and fig["unit"] == "env steps/s", variant
        assert case["torch_threads"]["rlpipe"] == [1] and case["torch_threads"]["sb3_same_settings"] == [1]
    arms = results["transfer"]["arms"]
    assert arms["transfer"]["final_eval_reward"]["runs"] == arms["scratch"]["final_eval_reward"]["runs"] == 2
    assert results["transition"]["cold_process"]["warm_started_session"]["spawn_to_first_step_seconds"]["runs"] == 1

    md = (out / "RESULTS.md").read_text()
    for heading in ("## Headline", "## Machine", "## 1. Training throughput", "## 2. Session transitions",
                    "## 3. Curriculum quality"):
        assert heading in md
    for png in ("throughput.png", "transfer_vs_scratch.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_smoke_gates(tmp_path: Path) -> None:
    """The gates section: both arms over the seeds, every stop on the evaluation grid, the headline and table."""
    from bench.settings import SMOKE

    out = tmp_path / "out"
    assert main(["--smoke", "--only", "gates", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    gates = results["gates"]
    sessions, seeds, every = gates["sessions"], gates["seeds"], gates["eval_every_steps"]
    assert sessions == ["height-maximize", "crush-resistance"] and seeds == list(SMOKE.transfer_seeds)
    assert every == SMOKE.gate_eval_every and gates["failed_lineages"] == {"ungated": [], "gated": []}
    assert {(p["seed"], p["session"]) for p in gates["pairs"]} == {(s, n) for s in seeds for n in sessions}
    for p in gates["pairs"]:
        budget, steps = p["budget_steps"], p["steps"]
        assert budget == SMOKE.gate_timesteps and steps["ungated"] == budget
        assert p["threshold"] == gates["stop_when"]["at_least"][p["session"]] > 0
        assert max(p["evaluated_steps"]["ungated"]) == budget
        for arm in ("ungated", "gated"):
            assert p["wall_seconds"][arm] > 0 and isinstance(p["final_eval_reward"][arm], float)
        if p["stopped_early"]:
            stop = p["stop_step"]
            assert stop == steps["gated"] < budget and stop % every == 0, p
            assert max(p["evaluated_steps"]["gated"]) == stop, p  # no evaluation past the stop
            # the gate held at the stop and the evaluation before it (for_evals 2)
            assert stop >= gates["stop_when"]["for_evals"] * every
        else:
            assert p["stop_step"] is None and steps["gated"] == budget
    # An untrained policy's reward moves by a few percent between evaluations, T is 10 % below the mean: the gate
    # stops these sessions, so the checks above on stops are exercised.
    assert any(p["stopped_early"] for p in gates["pairs"])
    summary = gates["summary"]
    total_u = sum(p["steps"]["ungated"] for p in gates["pairs"])
    total_g = sum(p["steps"]["gated"] for p in gates["pairs"])
    assert summary["steps"]["saved_fraction"] == round(1 - total_g / total_u, 3) > 0
    for key in ("gate_training_saved_fraction", "gate_wall_saved_fraction", "gate_final_reward_ratio"):
        assert isinstance(results["headline"][key]["value"], float), key
    md = (out / "RESULTS.md").read_text()
    assert "## 6. Early stopping" in md and "| **curriculum** |" in md
    assert md.count("| height-maximize |") == len(seeds) + 1  # one row per seed, one in the summary


def test_job_end_model_before_and_after() -> None:
    """The cloud section's model: polling found every length's end 720 s late; events do not wait."""
    from bench import job_end

    polling = job_end.Polling()
    assert [polling.rounds(s + polling.startup)[2] for s in job_end.SESSION_SECONDS.values()] == [720.0] * 3
    lambdas = {n: {"median_seconds": 0.05, "runs": 1}
               for n in ("job_events", "record_session", "check_pool", "prepare_session")}
    out = job_end.model(lambdas, events_per_session_after=32, transitions_fixed=3,
                        transitions_per_session_after=8, usd_per_1000=0.025)
    lengths = out["per_session_length"]
    for v in lengths.values():
        d = v["end_to_next_create_seconds"]
        assert d["before"] > 720 > job_end.GOAL_SECONDS >= d["after"] > d["after_pool_available_at_record"]
        steps = [s["step"] for s in v["paths"]["after"]["pool_available_at_first_check"]["steps"]]
        assert "WaitForPool" in steps and not any("WaitForJob" in s for s in steps)
    assert {v["history_events_per_session"]["after"] for v in lengths.values()} == {32}
    before = [v["history_events_per_session"]["before"] for v in lengths.values()]
    assert before == sorted(before) and before[-1] > 10 * before[0] / 2  # grew with the session's length
    assert out["worst_after_seconds"] <= job_end.GOAL_SECONDS
