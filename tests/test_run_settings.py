"""Run settings and gates in the config: named validation errors, the schema, the plan's lineages and the cost
ceiling (refused by plan, run, start and StartRun before anything is written)."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from rlpipe.config import ConfigError, json_schema, parse_pipeline
from rlpipe.plan import CostCeilingError, build_plan, check_cost_ceiling
from rlpipe.report.aggregate import iqm, stratified_bootstrap_ci, summarize

from .test_cloud_steps import aws, start  # noqa: F401  (the moto fixture and StartRun helper)

RLPIPE = [sys.executable, "-m", "rlpipe"]


def problems(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_pipeline(raw, check_envs=False)
    return [str(p) for p in exc.value.problems]


@pytest.mark.parametrize(("change", "expected"), [
    ({"seeds": [0, 1], "parallel": 3}, "parallel: 3 lineages at once, but there are only 2 seed(s)"),
    ({"parallel": 2}, "parallel: 2 lineages at once, but there is only 1 seed(s)"),
    ({"seeds": [1, 1]}, "seeds: each seed once; repeated: 1"),
    ({"seeds": []}, "seeds: List should have at least 1 item"),
    ({"max_cost_usd": 0}, "max_cost_usd: Input should be greater than 0"),
    ({"fail_fats": True}, "fail_fats: unknown key; did you mean 'fail_fast'?"),
])
def test_run_settings_errors_are_named(tiny_raw: dict[str, Any], change: dict[str, Any], expected: str) -> None:
    tiny_raw.update(change)
    assert any(p.startswith(expected) for p in problems(tiny_raw)), problems(tiny_raw)


@pytest.mark.parametrize(("session", "expected"), [
    ({"stop_when": {"metric": "eval_mean_rewrd", "at_least": 1}},
     "session 'stand': stop_when.metric: unknown metric 'eval_mean_rewrd'; did you mean 'eval_mean_reward'?"),
    ({"stop_when": {"metric": "final_eval_reward", "at_least": 1}},
     "session 'stand': stop_when.metric: unknown metric 'final_eval_reward'"),
    ({"require": {"metric": "fps", "at_least": 1}}, "session 'stand': require.metric: unknown metric 'fps'"),
    ({"stop_when": {"metric": "eval_mean_reward", "at_least": 1}, "eval": {"every_steps": 256}},
     "session 'stand': stop_when: the session never evaluates before its end"),
    ({"stop_when": {"metric": "eval_mean_reward", "at_least": 1, "for_evals": 2}},
     "session 'stand': stop_when.for_evals: 2 evaluations in a row can never happen before the end"),
    ({"stop_when": {"metric": "eval_mean_reward", "at_least": 1, "for_evals": 0}},
     "session 'stand': stop_when.for_evals: Input should be greater than or equal to 1"),
    ({"handoff": {"checkpoint": "newest"}}, "session 'stand': handoff.checkpoint: Input should be 'last' or 'best'"),
])
def test_gate_errors_are_named(tiny_raw: dict[str, Any], session: dict[str, Any], expected: str) -> None:
    tiny_raw["sessions"][0].update(session)
    assert any(p.startswith(expected) for p in problems(tiny_raw)), problems(tiny_raw)


def test_gates_in_defaults_apply_to_every_session_and_validate(tiny_raw: dict[str, Any]) -> None:
    tiny_raw["defaults"]["require"] = {"metric": "best_eval_reward", "at_least": 3}
    tiny_raw["defaults"]["stop_when"] = {"metric": "evals_since_best", "at_least": 1}
    tiny_raw.update(seeds=[3, 4, 5], parallel=2, max_cost_usd=10, fail_fast=True)
    p = parse_pipeline(tiny_raw, check_envs=False)
    assert all(s.require is not None and s.require.at_least == 3 for s in p.sessions)
    assert p.seed_list() == [3, 4, 5] and p.parallel == 2 and p.fail_fast
    assert [s.seed for s in p.lineage(4).sessions] == [4, 4]
    plan = build_plan(p)
    assert plan.waves() == [[3, 4], [5]]
    assert plan.estimated_cost_all_seeds_usd == pytest.approx(3 * plan.estimated_cost_usd, abs=1e-3)
    schema = json_schema()
    assert {"seeds", "parallel", "max_cost_usd", "fail_fast"} <= set(schema["properties"])
    assert {"stop_when", "require"} <= set(schema["properties"]["defaults"]["properties"])


def _ceiling_config(tmp_path: Path, raw: dict[str, Any]) -> tuple[Path, float]:
    per_lineage = build_plan(parse_pipeline(raw, check_envs=False)).estimated_cost_usd
    raw = copy.deepcopy(raw)
    raw.update(seeds=[0, 1, 2], max_cost_usd=round(per_lineage * 2.5, 4))  # one lineage fits, three do not
    config = tmp_path / "p.yaml"
    config.write_text(yaml.safe_dump(raw))
    return config, per_lineage


def test_cost_ceiling_refused_by_plan_and_run_before_anything_is_written(tmp_path: Path,
                                                                        tiny_raw: dict[str, Any]) -> None:
    config, _ = _ceiling_config(tmp_path, tiny_raw)
    with pytest.raises(CostCeilingError, match=r"max_cost_usd: estimated \$[0-9.]+ for 3 lineage\(s\)"):
        check_cost_ceiling(build_plan(parse_pipeline(yaml.safe_load(config.read_text()), check_envs=False)))
    planned = subprocess.run([*RLPIPE, "plan", str(config)], capture_output=True, text=True, timeout=120)
    assert planned.returncode == 2 and "exceeds the ceiling" in planned.stderr
    assert "lineages: 3 (seeds 0, 1, 2), 1 at once" in planned.stdout
    out = tmp_path / "run"
    ran = subprocess.run([*RLPIPE, "run", str(config), "--output", str(out)], capture_output=True, text=True,
                         timeout=120)
    assert ran.returncode == 2 and "max_cost_usd" in ran.stderr and not out.exists()


def test_cost_ceiling_without_a_price_refuses(tiny_raw: dict[str, Any]) -> None:
    tiny_raw["defaults"]["compute"] = {"instance_type": "ml.unknown.large"}
    tiny_raw["max_cost_usd"] = 100
    with pytest.raises(CostCeilingError, match="cannot be checked: no price for ml.unknown.large"):
        check_cost_ceiling(build_plan(parse_pipeline(tiny_raw, check_envs=False)))


def test_start_run_refuses_over_the_ceiling(aws: dict[str, Any], tiny_raw: dict[str, Any]) -> None:  # noqa: F811
    from rlpipe.cloud import steps

    tiny_raw.update(seeds=[0, 1], max_cost_usd=0.0001)
    with pytest.raises(steps.InvalidInput, match="exceeds the ceiling"):
        start(aws["ctx"], {"pipeline": tiny_raw}, "too-dear")
    assert not aws["s3"].list_objects_v2(Bucket=aws["ctx"].settings.bucket, Prefix="runs/").get("Contents")


def test_aggregate_statistics() -> None:
    assert iqm([1, 2, 3, 4, 100]) == 3.0  # 1 and 100 cut, as scipy.stats.trim_mean(x, 0.25)
    assert iqm([1, 2, 3, 10]) == 2.5
    lo, hi = stratified_bootstrap_ci([[1.0, 2.0, 3.0, 10.0]], lambda v: sum(v) / len(v))
    assert 1.0 <= lo < 4.0 < hi <= 10.0
    assert summarize([5.0, 5.0]) == {"mean": 5.0, "iqm": 5.0, "ci95": [5.0, 5.0]}
    assert summarize([]) is None
    # Stratified: each stratum keeps its size, so a constant stratum never shifts the pooled mean.
    lo, hi = stratified_bootstrap_ci([[0.0, 0.0], [10.0, 10.0]], lambda v: sum(v) / len(v))
    assert lo == hi == 5.0
