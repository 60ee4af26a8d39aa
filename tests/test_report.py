"""Run report: data, Markdown, HTML, PNG and the local writer, on synthetic state and metrics (no training)."""

from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from rlpipe.config import parse_pipeline
from rlpipe.jsonio import read_json, write_json_atomic
from rlpipe.report import build_report, learning_curve_png, render_html, render_markdown, write_local_report
from rlpipe.state import RunState, transition_seconds

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
T0 = "2025-01-01T10:00:00.000+00:00"


def _ts(seconds: float) -> str:
    from datetime import datetime, timedelta

    return (datetime.fromisoformat(T0) + timedelta(seconds=seconds)).isoformat(timespec="milliseconds")


def _pipeline(third_session: bool = True):
    sessions: list[dict[str, Any]] = [
        {"name": "stand", "env": "rlpipe/HeightMaximize-v0", "timesteps": 4000},
        {"name": "crush", "env": "rlpipe/CrushResistance-v0", "timesteps": 4000, "use_previous_checkpoint": True,
         "handoff": {"optimizer": "carry", "vecnormalize": "reset"}},
    ]
    if third_session:
        sessions.append({"name": "fresh", "env": "Hopper-v5", "timesteps": 2000})
    raw = {"name": "curr", "defaults": {"algorithm": "ppo", "n_envs": 4}, "sessions": sessions}
    return parse_pipeline(raw, check_envs=False)


def _metrics(name: str, env: str, offset: int, steps: int, start: float, rewards: list[float],
             carried: list[str] | None = None, reset: list[str] | None = None,
             notes: list[str] | None = None) -> dict[str, Any]:
    every = steps // len(rewards)
    evals = [{"timesteps": every * (i + 1), "global_timesteps": offset + every * (i + 1), "mean_reward": r,
              "std_reward": abs(r) * 0.1, "wall_seconds": 2.0 * (i + 1)} for i, r in enumerate(rewards)]
    return {"session": name, "env": env, "algorithm": "ppo", "global_timestep_offset": offset, "timesteps": steps,
            "evaluations": evals, "best_eval_reward": max(rewards), "final_eval_reward": rewards[-1],
            "timing": {"started_at": _ts(start), "first_step_at": _ts(start + 1.5), "ended_at": _ts(start + 20),
                       "wall_seconds": 20.0, "fps": steps / 20},
            "carried": carried or [], "reset": reset or [], "notes": notes or []}


def _fill(state: RunState, name: str, start: float, **extra: Any) -> None:
    s = state.session(name)
    s.status = "completed"
    s.timesteps = s.timesteps_budget
    s.started_at, s.first_step_at, s.ended_at = _ts(start), _ts(start + 1.5), _ts(start + 20)
    s.wall_seconds = 20.0
    s.attempts = 1
    for key, value in extra.items():
        setattr(s, key, value)


@pytest.fixture
def finished() -> tuple[RunState, dict[str, Any]]:
    """Three sessions: stand, crush (warm start, 3.5 s transition as the driver recorded it), fresh (failed)."""
    state = RunState.new(_pipeline(), "run1")
    state.status = "running"
    _fill(state, "stand", 0, final_eval_reward=1.0, best_eval_reward=1.0, bundle="runs/curr/stand/model")
    # crush's first step comes 3.5 s after stand ended: 20 + 2 (start) + 1.5 (first step) - 20.
    _fill(state, "crush", 22, global_timestep_offset=4000, final_eval_reward=-99.0)
    state.session("crush").transition_seconds = transition_seconds(state.session("stand").ended_at,
                                                                   state.session("crush").first_step_at)
    fresh = state.session("fresh")
    fresh.status, fresh.attempts, fresh.global_timestep_offset = "failed", 2, 8000
    fresh.started_at, fresh.timesteps = _ts(45), 500
    fresh.error = "RuntimeError: <script>alert('x')</script> | diverged"
    state.finish("failed", "session 'fresh' failed")
    state.ended_at = _ts(50)
    metrics = {
        "stand": _metrics("stand", "rlpipe/HeightMaximize-v0", 0, 4000, 0, [1.0, 3.0, 2.5, 4.0]),
        "crush": _metrics("crush", "rlpipe/CrushResistance-v0", 4000, 4000, 22, [2.0, 5.0],
                          carried=["policy", "optimizer"], reset=["vecnormalize", "num_timesteps"],
                          notes=["vecnormalize reset by config"]),
        "fresh": None,
    }
    return state, metrics


def test_report_fields_and_values(finished) -> None:
    state, metrics = finished
    report = build_report(state, metrics)
    json.dumps(report, allow_nan=False)  # plain JSON, no NaN
    assert report["pipeline"] == "curr" and report["run_id"] == "run1"
    assert report["status"] == "failed"
    assert report["total_timesteps"] == 4000 + 4000 + 500
    names = [s["name"] for s in report["sessions"]]
    assert names == ["stand", "crush", "fresh"]
    stand, crush, fresh = report["sessions"]

    assert stand["transition_seconds"] is None
    assert crush["transition_seconds"] == pytest.approx(3.5)
    assert stand["wall_seconds"] == 20.0 and stand["bundle"] == "runs/curr/stand/model"
    # Rewards: metrics win over the state.
    assert crush["final_eval_reward"] == 5.0 and crush["best_eval_reward"] == 5.0
    assert stand["best_eval_reward"] == 4.0
    assert crush["handoff_from"] == "stand" and crush["carried"] == ["policy", "optimizer"]
    assert crush["reset"] == ["vecnormalize", "num_timesteps"]
    assert "vecnormalize reset by config" in crush["notes"]
    # Evaluations on the global axis.
    assert [e["global_timesteps"] for e in crush["evaluations"]] == [6000, 8000]
    assert crush["global_timestep_offset"] == 4000

    assert fresh["status"] == "failed" and "<script>" in fresh["error"]
    assert fresh["evaluations"] == [] and fresh["final_eval_reward"] is None and fresh["handoff_from"] is None
    assert fresh["carried"] == [] and fresh["reset"] == []
    assert report["failures"] == [{"session": "fresh", "status": "failed", "error": fresh["error"]}]
    # Local run: no AWS fields, no cost totals.
    assert report["aws"] is False and "total_cost_usd" not in report and "job_name" not in stand
    assert report["total_wall_seconds"] == pytest.approx(50.0)  # first start to the run's end
    assert report["total_session_wall_seconds"] == 40.0
    assert report["total_transition_seconds"] == pytest.approx(3.5)


def test_transition_from_state_wins_and_status_from_state(finished) -> None:
    state, metrics = finished
    state.session("crush").transition_seconds = 7.25
    state.session("crush").status = "interrupted"
    report = build_report(state, metrics)
    crush = report["sessions"][1]
    assert crush["transition_seconds"] == 7.25
    assert crush["status"] == "interrupted"  # metrics look complete, but the state decides


def test_handoff_mismatch_is_noted(finished) -> None:
    state, metrics = finished
    metrics["crush"]["carried"] = ["policy"]  # the plan said optimizer too
    crush = build_report(state, metrics)["sessions"][1]
    assert any("optimizer" in n and "not carried" in n for n in crush["notes"])


def test_aws_fields_and_totals(finished) -> None:
    state, metrics = finished
    for i, s in enumerate(state.sessions[:2]):
        s.job_name = f"curr-run1-{s.name}-1"
        s.billable_seconds, s.training_seconds, s.cost_usd = 100.0 + i, 120.0, 0.01 * (i + 1)
        s.warm_pool_status = "Reused" if i == 0 else "Terminated"
        s.reused_previous_pool = bool(i)
        s.warm_pool_idle_seconds = 12.0
    report = build_report(state, metrics)
    assert report["aws"] is True
    assert report["total_cost_usd"] == pytest.approx(0.03)
    assert report["total_billable_seconds"] == pytest.approx(201.0)
    assert report["sessions"][1]["reused_previous_pool"] is True
    assert "spot_savings" not in report["sessions"][0]
    md = render_markdown(report)
    assert "Billable s" in md and "Reused pool" in md and "Cost" in md and "curr-run1-crush-1" in md
    assert "Spot savings" not in md  # no session has it
    local_md = render_markdown(build_report(RunState.new(_pipeline(), "r"), {}))
    assert "Billable s" not in local_md and "Job" not in local_md


def test_missing_metrics_everywhere_does_not_crash() -> None:
    state = RunState.new(_pipeline(), "run2")
    report = build_report(state, {})
    assert report["status"] == "running"
    assert [s["status"] for s in report["sessions"]] == ["pending"] * 3
    assert report["total_wall_seconds"] is None and report["total_timesteps"] == 0
    # Offsets are inferred from budgets for sessions that never ran.
    assert [s["global_timestep_offset"] for s in report["sessions"]] == [0, 4000, 8000]
    # Planned handoff still shown.
    crush = report["sessions"][1]
    assert crush["handoff_source"] == "plan" and "vecnormalize" in crush["reset"]
    md = render_markdown(report)
    assert "RUNNING" in md and "has not reported its handoff yet" in md
    assert learning_curve_png(report).startswith(PNG_MAGIC)
    render_html(report, None)


def test_markdown(finished) -> None:
    state, metrics = finished
    md = render_markdown(build_report(state, metrics))
    assert "**Status: FAILED**" in md
    assert "| Session | Env | Algo | Status | Timesteps | Wall s | Transition s |" in md
    rows = [line for line in md.splitlines() if line.startswith("| crush ")]
    assert len(rows) == 1
    row = rows[0]
    assert "rlpipe/CrushResistance-v0" in row and "completed" in row and "4,000 / 4,000" in row
    assert "3.5" in row and "5.00" in row and "| stand |" in row and "policy, optimizer" in row
    assert "vecnormalize, num_timesteps" in row
    # Failures stated plainly, with the error.
    assert "## Failures" in md and "Session 'fresh' failed after 2 attempts" in md
    assert "<script>alert('x')</script> | diverged" in md
    # Carried / reset per warm-started session.
    section = md.split("## Warm starts")[1]
    assert "### crush (from stand)" in section
    assert "- **policy**" in section and "- **optimizer**" in section
    assert "- **vecnormalize**: normalisation statistics start again" in section
    assert "vecnormalize reset by config" in section
    assert "### fresh" in section and "Starts from scratch (use_previous_checkpoint is false)" in section
    assert "![Evaluation reward on the global timestep axis](learning_curve.png)" in md
    assert "runs/curr/stand/model" in md


class _Checker(HTMLParser):
    """Collects tags, data and img sources; checks that non-void elements nest and close."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.imgs: list[str] = []
        self.text: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        if tag == "img":
            self.imgs.append(dict(attrs).get("src") or "")
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> with open {self.stack[-3:]}")
        else:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_html_self_contained_and_escaped(finished) -> None:
    state, metrics = finished
    report = build_report(state, metrics)
    png = learning_curve_png(report)
    page = render_html(report, png)
    checker = _Checker()
    checker.feed(page)
    checker.close()
    assert checker.errors == [] and checker.stack == []
    assert "script" not in checker.tags  # the session error stays text
    assert "<script>" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "RuntimeError: <script>alert('x')</script> | diverged" in "".join(checker.text)
    assert len(checker.imgs) == 1 and checker.imgs[0].startswith("data:image/png;base64,")
    assert base64.b64decode(checker.imgs[0].split(",", 1)[1]) == png
    # No external resources.
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert "crush (from stand)" in page and "Carried" in page and "Reset" in page
    # Without a plot it still renders.
    assert "<img" not in render_html(report, None)


def test_png_is_a_real_png(finished) -> None:
    import io

    import matplotlib.image as mpimg

    state, metrics = finished
    png = learning_curve_png(build_report(state, metrics))
    assert png.startswith(PNG_MAGIC)
    img = mpimg.imread(io.BytesIO(png), format="png")
    assert img.shape[0] >= 400 and img.shape[1] >= 600


def _write_run(run_dir: Path, state: RunState, metrics: dict[str, Any], where: dict[str, str]) -> None:
    write_json_atomic(run_dir / "state.json", state.to_json())
    for name, m in metrics.items():
        if m is not None:
            write_json_atomic(run_dir / name / where.get(name, "model") / "metrics.json", m)


def test_write_local_report(tmp_path: Path, finished) -> None:
    state, metrics = finished
    # crush only has its checkpoint copy of metrics.json (as while a session is still running).
    _write_run(tmp_path, state, metrics, {"crush": "checkpoints"})
    paths = write_local_report(tmp_path)
    assert set(paths) == {"json", "markdown", "html", "learning_curve"}
    for p in paths.values():
        assert p.parent == tmp_path and p.stat().st_size > 0
    assert paths["learning_curve"].read_bytes().startswith(PNG_MAGIC)
    report = read_json(paths["json"])
    assert report["status"] == "failed" and report["sessions"][1]["best_eval_reward"] == 5.0
    assert "**Status: FAILED**" in paths["markdown"].read_text()
    assert not list(tmp_path.glob(".*.tmp"))  # no temp files left behind


def test_model_metrics_preferred_over_checkpoint_copy(tmp_path: Path, finished) -> None:
    state, metrics = finished
    _write_run(tmp_path, state, metrics, {})
    stale = dict(metrics["stand"], final_eval_reward=-1.0, best_eval_reward=-1.0, evaluations=[])
    write_json_atomic(tmp_path / "stand" / "checkpoints" / "metrics.json", stale)
    report = read_json(write_local_report(tmp_path)["json"])
    assert report["sessions"][0]["final_eval_reward"] == 4.0


@pytest.mark.parametrize("run_status, expected", [("running", "running"), ("failed", "failed"),
                                                  ("interrupted", "interrupted")])
def test_partial_run(tmp_path: Path, run_status: str, expected: str) -> None:
    """First session done, second pending: no crash, status from the state."""
    state = RunState.new(_pipeline(third_session=False), "run3")
    _fill(state, "stand", 0)
    state.status = run_status
    if run_status == "failed":
        state.error = "out of memory"
    metrics = {"stand": _metrics("stand", "rlpipe/HeightMaximize-v0", 0, 4000, 0, [1.0, 2.0]), "crush": None}
    _write_run(tmp_path, state, metrics, {})
    (tmp_path / "crush" / "checkpoints").mkdir(parents=True)  # created, nothing in it yet
    paths = write_local_report(tmp_path)
    report = read_json(paths["json"])
    assert report["status"] == expected
    crush = report["sessions"][1]
    assert crush["status"] == "pending" and crush["evaluations"] == [] and crush["transition_seconds"] is None
    md = paths["markdown"].read_text()
    assert "| crush | rlpipe/CrushResistance-v0 | ppo | pending |" in md
    if run_status == "failed":
        assert "The run stopped with an error." in md and "out of memory" in md


def test_zero_evaluations_plot() -> None:
    state = RunState.new(_pipeline(), "run4")
    png = learning_curve_png(build_report(state, {"stand": {"evaluations": []}}))
    assert png.startswith(PNG_MAGIC)


def test_damaged_metrics_file_is_skipped(tmp_path: Path, finished) -> None:
    state, metrics = finished
    _write_run(tmp_path, state, metrics, {})
    (tmp_path / "stand" / "model" / "metrics.json").write_text("{not json")
    report = read_json(write_local_report(tmp_path)["json"])
    assert report["sessions"][0]["evaluations"] == [] and report["sessions"][0]["final_eval_reward"] == 1.0


def test_bad_timestamps_do_not_crash(finished) -> None:
    state, metrics = finished
    state.session("crush").first_step_at = "not a time"
    state.session("stand").started_at = "2025-01-01T10:00:00"  # naive: cannot be compared with aware ones
    report = build_report(state, metrics)
    assert report["sessions"][1]["first_step_at"] == "not a time"
    assert report["sessions"][1]["transition_seconds"] == 3.5  # the driver's record stands
    render_markdown(report)


def _lineage_report(seed: int, stand_rewards: list[float], crush_rewards: list[float],
                    stand_stop: int | None = None) -> dict[str, Any]:
    """One seed's report of the two-session curriculum; ``stand_stop``: stand's stop_when ended it there."""
    pipeline = _pipeline(third_session=False)
    state = RunState.new(pipeline, f"run-seed-{seed}")
    steps = stand_stop or 4000
    gate = {"stopped_early": True, "stop_step": stand_stop} if stand_stop else {}
    _fill(state, "stand", 0, timesteps=steps, **gate)
    _fill(state, "crush", 22, global_timestep_offset=4000)
    state.finish("succeeded")
    metrics = {"stand": {**_metrics("stand", "rlpipe/HeightMaximize-v0", 0, steps, 0, stand_rewards), **gate},
               "crush": _metrics("crush", "rlpipe/CrushResistance-v0", 4000, 4000, 22, crush_rewards)}
    return build_report(state, metrics)


def test_seeds_band_ends_where_a_seed_stopped_early_on_the_global_axis() -> None:
    """With one seed's first session stopped by stop_when at 2000 of 4000 steps, the band across seeds covers
    only the steps every lineage evaluated (cut at that stop); the next session (planned offset 4000) is
    whole, on the global timestep axis."""
    from rlpipe.report.aggregate import curve_band, multi_seed_report
    from rlpipe.report.plots import seeds_curve_figure, seeds_curve_png

    lineages = [(0, _lineage_report(0, [1.0, 2.0, 3.0, 4.0], [5.0, 6.0])),
                (1, _lineage_report(1, [2.0, 4.0], [7.0, 9.0], stand_stop=2000)),
                (2, _lineage_report(2, [3.0, 3.0, 5.0, 6.0], [6.0, 6.0]))]
    report = multi_seed_report("curr", "run", lineages, parallel=2)
    stand = [lin["sessions"][0] for lin in report["lineages"]]
    assert [s["stopped_early"] for s in stand] == [False, True, False] and stand[1]["stop_step"] == 2000
    assert [e["global_timesteps"] for e in stand[1]["evaluations"]] == [1000, 2000]

    band = curve_band(report["lineages"], "stand")
    assert [b["global_timesteps"] for b in band] == [1000, 2000]
    assert [b["mean"] for b in band] == pytest.approx([2.0, 3.0])
    assert all(b["lo"] <= b["mean"] <= b["hi"] for b in band)
    assert 1.0 <= band[0]["lo"] < band[0]["mean"] < band[0]["hi"] <= 3.0  # within the seeds' values 1, 2, 3
    crush = curve_band(report["lineages"], "crush")
    assert [b["global_timesteps"] for b in crush] == [6000, 8000]
    assert [b["mean"] for b in crush] == pytest.approx([6.0, 7.0])

    fig = seeds_curve_figure(report)
    ax = fig.axes[0]
    curves = {line.get_label().split(" ")[0]: line for line in ax.lines if not line.get_label().startswith("_")}
    assert list(curves["stand"].get_xdata()) == [1000, 2000]
    assert "1/3 seeds stopped early" in curves["stand"].get_label()
    assert list(curves["crush"].get_xdata()) == [6000, 8000] and curves["crush"].get_label() == "crush"
    bands = [c.get_paths()[0].vertices[:, 0] for c in ax.collections]
    assert [(min(x), max(x)) for x in bands] == [(1000, 2000), (6000, 8000)]
    assert seeds_curve_png(report).startswith(PNG_MAGIC)
