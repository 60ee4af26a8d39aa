"""Session gates in the trainer: stop_when ends early on the evaluation grid (also after a resume), require is a
named outcome, handoff.checkpoint: best hands over the best evaluation's weights."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from rlpipe.integrity import bundle_problem
from rlpipe.jsonio import read_json
from rlpipe.trainer.gates import BEST_DIR, first_stop
from rlpipe.trainer.session import SessionTrainer

from .test_trainer import assert_same_weights, policy_state
from .trainer_utils import pipeline_raw, session_root

BUDGET = 640  # evaluations at 128, 256, 384, 512 before the end


def gated(**session: Any) -> dict[str, Any]:
    raw = pipeline_raw(timesteps=BUDGET, eval={"every_steps": 128, "episodes": 1, "background": False})
    raw["sessions"][0].update(session)
    return raw


def ungated_rewards(tmp_path: Path) -> list[tuple[int, float]]:
    SessionTrainer(session_root(tmp_path / "ref", gated(), 0)).run()
    evals = read_json(tmp_path / "ref" / "model" / "metrics.json")["evaluations"]
    return [(e["timesteps"], e["mean_reward"]) for e in evals]


def test_stop_when_ends_at_the_first_evaluation_that_meets_it(tmp_path: Path) -> None:
    ref = ungated_rewards(tmp_path)
    before_end = [r for r in ref if r[0] < BUDGET]
    # The threshold the second-best mid-session evaluation reaches: the first step at or above it is known.
    threshold = sorted(r for _, r in before_end)[-2]
    expected = next(step for step, r in before_end if r >= threshold)
    raw = gated(stop_when={"metric": "eval_mean_reward", "at_least": threshold})
    result = SessionTrainer(session_root(tmp_path / "g", raw, 0)).run()
    assert result.status == "completed" and result.timesteps == expected < BUDGET
    out = read_json(tmp_path / "g" / "model" / "metrics.json")
    assert out["stopped_early"] is True and out["stop_step"] == expected
    assert out["stop_step"] % 128 == 0
    # Same seed, same evaluations up to the stop: the gate changed nothing before it acted.
    assert [(e["timesteps"], e["mean_reward"]) for e in out["evaluations"]] == [r for r in ref if r[0] <= expected]
    assert read_json(tmp_path / "g" / "model" / "bundle.json")["timesteps"] == expected
    assert (tmp_path / "g" / "checkpoints" / f"step-{expected:012d}").is_dir()


def test_for_evals_counts_evaluations_in_a_row_and_a_resume_stops_at_the_same_step(tmp_path: Path) -> None:
    raw = gated(stop_when={"metric": "eval_mean_reward", "at_least": -1e12, "for_evals": 3})
    stop = threading.Event()

    def progress(steps: int, budget: int) -> None:
        if steps >= 200:  # a kill between the first and the second evaluation
            stop.set()

    paths = session_root(tmp_path, raw, 0)
    first = SessionTrainer(paths, stop=stop, progress=progress).run()
    assert first.status == "interrupted" and first.timesteps < 384
    again = SessionTrainer(paths).run()
    assert again.status == "completed" and again.timesteps == 384 and again.resumed_from == first.timesteps
    out = read_json(tmp_path / "model" / "metrics.json")
    assert (out["stopped_early"], out["stop_step"]) == (True, 384)
    # Killed after the stop, before the bundle: the resumed session already met the condition and trains no step.
    (tmp_path / "model" / "model.zip").unlink()
    third = SessionTrainer(paths).run()
    assert third.status == "completed" and third.timesteps == 384 and third.resumed_from == 384
    assert read_json(tmp_path / "model" / "metrics.json")["stop_step"] == 384


def test_first_stop_skips_the_step_zero_evaluation_of_a_warm_start() -> None:
    raw = gated(stop_when={"metric": "best_eval_reward", "at_least": 5.0, "for_evals": 2})
    from rlpipe.config import parse_pipeline

    s = parse_pipeline(raw, check_envs=False).sessions[0]
    history = [{"timesteps": 0, "mean_reward": 9.0}, {"timesteps": 128, "mean_reward": 1.0},
               {"timesteps": 256, "mean_reward": 2.0}]
    assert first_stop(s, history) is None  # 9 was the previous session's policy, before any training here
    history[1]["mean_reward"] = 6.0
    assert first_stop(s, history) == 256  # best 6 at 128 and still at 256: two evaluations in a row


def test_failing_require_is_a_named_outcome(tmp_path: Path) -> None:
    raw = gated(require={"metric": "final_eval_reward", "at_least": 1e9})
    result = SessionTrainer(session_root(tmp_path, raw, 0)).run()
    assert result.status == "completed"
    out = read_json(tmp_path / "model" / "metrics.json")
    gate = out["gate"]
    assert gate["metric"] == "final_eval_reward" and gate["at_least"] == 1e9 and gate["passed"] is False
    assert gate["value"] == out["final_eval_reward"]
    passing = gated(require={"metric": "best_eval_reward", "at_least": -1e9})
    SessionTrainer(session_root(tmp_path / "p", passing, 0)).run()
    assert read_json(tmp_path / "p" / "model" / "metrics.json")["gate"]["passed"] is True


def test_checkpoint_best_hands_over_the_best_evaluation(tmp_path: Path) -> None:
    raw = gated(handoff={"checkpoint": "best"}, checkpoint={"every_steps": 128, "keep": 1})
    SessionTrainer(session_root(tmp_path, raw, 0)).run()
    out = read_json(tmp_path / "model" / "metrics.json")
    evals = out["evaluations"]
    best = max(evals, key=lambda e: e["mean_reward"])  # first of equal maxima, as the gate keeps it
    best_step = next(e["timesteps"] for e in evals if e["mean_reward"] == best["mean_reward"])
    meta = read_json(tmp_path / "model" / "bundle.json")
    assert meta["checkpoint"] == {"kind": "best", "timesteps": best_step, "mean_reward": best["mean_reward"]}
    kept = tmp_path / "checkpoints" / BEST_DIR
    assert_same_weights(policy_state(tmp_path / "model" / "model.zip"), policy_state(kept / "model.zip"))
    # keep: 1 rotated every other step-* away, the best stays.
    assert [p.name for p in (tmp_path / "checkpoints").glob("step-*")] == [f"step-{BUDGET:012d}"]
    assert any(n.startswith(f"hands over the checkpoint of its best evaluation ({best_step} steps")
               for n in out["notes"])
    # The manifest describes the files handed over, so a resume that verifies bundles accepts it.
    assert bundle_problem(tmp_path / "model") is None


def test_best_checkpoint_is_the_best_evaluation_not_the_last(tmp_path: Path) -> None:
    """The gate keeps the state written at the best evaluation and puts it in the bundle in place of the last."""
    from rlpipe.config import parse_pipeline
    from rlpipe.jsonio import write_json_atomic
    from rlpipe.outcome import SessionOutcome
    from rlpipe.trainer.gates import SessionGates

    session = parse_pipeline(gated(handoff={"checkpoint": "best"}), check_envs=False).sessions[0]
    current = {"step": 0}

    def save_state(into: Path) -> None:  # stands for the model's files at the current step
        for name in ("model.zip", "vecnormalize.pkl"):
            (into / name).write_text(f"{name} at {current['step']}")

    gates = SessionGates(session, tmp_path / "checkpoints", save_state)
    history: list[dict[str, Any]] = []
    for step, reward in ((128, 1.0), (256, 3.0), (384, 2.0), (512, 3.0), (640, 0.5)):
        current["step"] = step
        history.append({"timesteps": step, "mean_reward": reward})
        gates.after_evaluation(step, history)
    bundle = tmp_path / "model"
    bundle.mkdir()
    save_state(bundle)  # the bundle as written at the end: the last step's state
    write_json_atomic(bundle / "bundle.json", {"timesteps": 640})
    gates.hand_over_best(bundle)
    assert (bundle / "model.zip").read_text() == "model.zip at 256"  # the first of the equal best rewards
    assert (bundle / "vecnormalize.pkl").read_text() == "vecnormalize.pkl at 256"
    assert read_json(bundle / "bundle.json")["checkpoint"] == {"kind": "best", "timesteps": 256, "mean_reward": 3.0}
    done = gates.conclude(SessionOutcome(session="stand"))
    assert "hands over the checkpoint of its best evaluation (256 steps, reward 3)" in done.notes
    # A resume from a checkpoint before the best step drops it: that stretch is trained again.
    again = SessionGates(session, tmp_path / "checkpoints", save_state)
    again.restore(history[:1], resumed_at=128)
    assert not (tmp_path / "checkpoints" / BEST_DIR).exists()


def test_runner_records_gates_in_state_and_report(tmp_path: Path) -> None:
    from rlpipe.config import parse_pipeline
    from rlpipe.runner import LocalRunner

    raw = gated(stop_when={"metric": "eval_mean_reward", "at_least": -1e12, "for_evals": 2},
                require={"metric": "best_eval_reward", "at_least": -1e12})
    state = LocalRunner(parse_pipeline(raw), tmp_path / "run").run()
    assert state.status == "succeeded"
    stand = state.sessions[0]
    assert (stand.stopped_early, stand.stop_step, stand.timesteps) == (True, 256, 256)
    assert stand.gate is not None and stand.gate.passed
    report = read_json(tmp_path / "run" / "report.json")
    entry = report["sessions"][0]
    assert (entry["stopped_early"], entry["stop_step"]) == (True, 256)
    assert entry["gate"] == {"metric": "best_eval_reward", "at_least": -1e12, "value": stand.best_eval_reward,
                             "passed": True}
    assert report["sessions"][1]["stopped_early"] is False and report["sessions"][1]["gate"] is None
    assert "stopped early at 256" in (tmp_path / "run" / "report.html").read_text()
