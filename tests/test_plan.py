"""Plan: warm-pool reuse follows SageMaker's matching rules; keep-alive only when the next session reuses."""

from __future__ import annotations

from typing import Any

from typer.testing import CliRunner

from rlpipe.cli import app
from rlpipe.config import parse_pipeline
from rlpipe.plan import build_plan, price_table

from .conftest import REPO


def test_pool_kept_only_when_next_session_reuses(tiny_raw: dict[str, Any]) -> None:
    plan = build_plan(parse_pipeline(tiny_raw))
    first, second = plan.sessions
    assert second.reuses_previous_pool and first.keep_alive_seconds == 1800
    assert second.keep_alive_seconds == 0  # last session: nothing to reuse its pool
    assert second.handoff_from == "stand" and second.carried == ["policy", "optimizer", "vecnormalize"]


def test_different_instance_breaks_reuse(tiny_raw: dict[str, Any]) -> None:
    tiny_raw["sessions"][1]["compute"] = {"instance_type": "ml.c5.xlarge"}
    first, second = build_plan(parse_pipeline(tiny_raw)).sessions
    assert not second.reuses_previous_pool and "instance type" in second.reuse_reason
    assert first.keep_alive_seconds == 0
    assert "next session cannot reuse" in first.notes[0]


def test_spot_sessions_never_use_pools(tiny_raw: dict[str, Any]) -> None:
    tiny_raw["sessions"][1]["compute"] = {"spot": True, "warm_pool": {"enabled": False},
                                          "max_wait_seconds": 90000}
    first, second = build_plan(parse_pipeline(tiny_raw)).sessions
    assert not second.reuses_previous_pool and first.keep_alive_seconds == 0


def test_cost_estimate_uses_price_table(tiny_raw: dict[str, Any]) -> None:
    plan = build_plan(parse_pipeline(tiny_raw))
    rate = price_table()["usd_per_hour"]["ml.c6i.2xlarge"]
    assert plan.estimated_cost_usd is not None and plan.estimated_cost_usd > 0
    # A warm start costs less than a cold one at equal budget.
    assert plan.sessions[1].estimated_cost_usd < plan.sessions[0].estimated_cost_usd
    assert plan.sessions[0].estimated_cost_usd > rate / 3600 * price_table()["startup_seconds"]["cold"] * 0.99
    tiny_raw["defaults"]["compute"] = {"instance_type": "ml.zz9.huge"}
    plan = build_plan(parse_pipeline(tiny_raw))
    assert plan.estimated_cost_usd is None and "no price" in plan.sessions[0].notes[0]


def test_plan_command_prints_table() -> None:
    res = CliRunner().invoke(app, ["plan", str(REPO / "configs" / "pipeline.yaml")])
    assert res.exit_code == 0, res.output
    assert "height-maximize" in res.output and "crush-resistance" in res.output
    assert "estimated AWS cost $" in res.output and "us-east-1" in res.output
    res = CliRunner().invoke(app, ["plan", "--json", str(REPO / "configs" / "pipeline.yaml")])
    assert '"reuses_previous_pool": true' in res.output
