"""Config validation: every invalid config is rejected with the session, the field and what is valid."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from rlpipe.cli import app
from rlpipe.config import ConfigError, load_pipeline, parse_pipeline

from .conftest import REPO, TINY


def problems(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_pipeline(raw)
    return [str(p) for p in info.value.problems]


def with_(path: str, value: Any, raw: dict[str, Any] | None = None) -> dict[str, Any]:
    """TINY with ``value`` set at a dotted path (integers index lists)."""
    raw = copy.deepcopy(raw or TINY)
    node: Any = raw
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    node[int(parts[-1]) if parts[-1].isdigit() else parts[-1]] = value
    return raw


@pytest.mark.parametrize("path,value,expected", [
    ("sessions.0.timestep", 5, "session 'stand': timestep: unknown key; did you mean 'timesteps'?"),
    ("defaults.evl", {}, "defaults.evl: unknown key; did you mean 'eval'?"),
    ("sessions.1.handoff.vecnorm", "carry", "session 'hold': handoff.vecnorm: unknown key; did you mean 'vecnormalize'?"),
    ("sessions.1.name", "stand", "session 'stand': name: duplicate session name"),
    ("sessions.0.name", "bad_name", "session 'bad_name': name: String should match pattern"),
    ("sessions.0.name", "a" * 30, "name: String should have at most 24 characters"),
    ("sessions.0.env", "rlpipe/HeightMaximise-v0", "session 'stand': env: unknown environment id "
                                                    "'rlpipe/HeightMaximise-v0'; did you mean 'rlpipe/HeightMaximize-v0'"),
    ("sessions.0.env", "Hoper-v5", "did you mean 'Hopper-v5'"),
    ("sessions.0.algorithm", "dqn", "session 'stand': algorithm: Input should be 'ppo', 'sac', 'td3', 'a2c', 'tqc' or 'crossq'"),
    ("sessions.0.use_previous_checkpoint", True, "session 'stand': use_previous_checkpoint: the first session has "
                                                 "no previous session"),
    ("sessions.1.env", "Hopper-v5", "session 'hold': env: observation space of Hopper-v5"),
    ("sessions.1.algorithm", "a2c", "session 'hold': hyperparameters: unknown for a2c: 'batch_size'"),
    ("sessions.1.hyperparameters", {"policy_kwargs": {"net_arch": [8]}}, "session 'hold': "
                                                                          "hyperparameters.policy_kwargs: must equal"),
    ("sessions.1.handoff.replay_buffer", "carry", "session 'hold': handoff.replay_buffer: ppo is on-policy"),
    ("sessions.0.timesteps", 0, "session 'stand': timesteps: Input should be greater than 0"),
    ("sessions.0.timesteps", -5, "session 'stand': timesteps: Input should be greater than 0"),
    ("sessions.0.timesteps", 255, "session 'stand': timesteps: must be a multiple of n_envs (2), e.g. 256"),
    ("defaults.eval.every_steps", 0, "defaults.eval.every_steps: Input should be greater than 0"),
    ("defaults.checkpoint.every_steps", -1, "defaults.checkpoint.every_steps: Input should be greater than 0"),
    ("defaults.hyperparameters.learning_rat", 0.1, "defaults.hyperparameters: unknown for ppo: 'learning_rat' "
                                                   "(did you mean 'learning_rate'?)"),
    ("defaults.compute.spot", True, "defaults.compute.spot: spot cannot be combined with a warm pool"),
    ("defaults.compute.warm_pool.keep_alive_seconds", 21_601, "defaults.compute.warm_pool.keep_alive_seconds: "
                                                              "Input should be less than or equal to 21600"),
    ("defaults.compute.warm_pool.keep_alive_seconds", -1, "keep_alive_seconds: Input should be greater than or "
                                                          "equal to 0"),
    ("defaults.compute.instance_type", "c5.xlarge", "defaults.compute.instance_type: String should match pattern"),
    ("defaults.compute.instance_count", 0, "defaults.compute.instance_count: Input should be greater than or equal "
                                           "to 1"),
    ("defaults.compute.instance_count", 2, "defaults.compute.instance_count: Input should be less than or equal to 1"),
    ("name", "my pipeline", "name: String should match pattern"),
    ("sesions", [], "sesions: unknown key; did you mean 'sessions'?"),
])
def test_invalid_config_names_session_field_and_fix(path: str, value: Any, expected: str) -> None:
    assert any(expected in p for p in problems(with_(path, value))), problems(with_(path, value))


def test_spot_needs_max_wait_at_least_runtime() -> None:
    raw = with_("defaults.compute", {"spot": True, "warm_pool": {"enabled": False}, "max_runtime_seconds": 3600,
                                     "max_wait_seconds": 1800})
    assert any("defaults.compute.max_wait_seconds: spot needs max_wait_seconds >= max_runtime_seconds (3600)" in p
               for p in problems(raw))
    raw = with_("defaults.compute", {"spot": True, "warm_pool": {"enabled": False}})
    assert any("max_wait_seconds" in p for p in problems(raw))
    raw["defaults"]["compute"]["max_wait_seconds"] = 90000
    assert parse_pipeline(raw).sessions[0].compute.spot is True


def test_transfer_needs_same_algorithm() -> None:
    raw = with_("sessions.1.algorithm", "a2c")
    raw["sessions"][1]["hyperparameters"] = {"n_steps": 64, "policy_kwargs": {"net_arch": [16, 16]}}
    raw["defaults"]["hyperparameters"] = {}
    raw["sessions"][0]["hyperparameters"] = {"n_steps": 64, "policy_kwargs": {"net_arch": [16, 16]}}
    assert any("session 'hold': algorithm: cannot warm-start a2c from 'stand' trained with ppo" in p
               for p in problems(raw))


@pytest.mark.parametrize("session_changes,expected", [
    ({"normalize": False}, "session 'hold': normalize: must equal 'stand''s (True)"),
    ({"hyperparameters": {"n_steps": 64, "batch_size": 64, "use_sde": True,
                          "policy_kwargs": {"net_arch": [16, 16]}}}, "session 'hold': hyperparameters.use_sde"),
    ({"env_kwargs": {"max_load_newtons": "x"}}, "session 'hold': env_kwargs: rlpipe/CrushResistance-v0 cannot be "
                                                "built"),
])
def test_transfer_rules(session_changes: dict[str, Any], expected: str) -> None:
    raw = copy.deepcopy(TINY)
    raw["sessions"][1].update(session_changes)
    assert any(expected in p for p in problems(raw)), problems(raw)


def test_env_kwargs_that_change_spaces_break_transfer() -> None:
    raw = {"name": "h", "sessions": [
        {"name": "a", "env": "Hopper-v5", "timesteps": 100, "n_envs": 1},
        {"name": "b", "env": "Hopper-v5", "timesteps": 100, "n_envs": 1, "use_previous_checkpoint": True,
         "env_kwargs": {"exclude_current_positions_from_observation": False}}]}
    assert any("session 'b': env: observation space of Hopper-v5 (Box(12,) float64) differs" in p
               for p in problems(raw))


def test_sac_transfer_rules() -> None:
    base = {"env": "Hopper-v5", "timesteps": 100, "algorithm": "sac"}
    raw = {"name": "s", "sessions": [
        {"name": "a", **base, "n_envs": 2, "hyperparameters": {"ent_coef": 0.1}},
        {"name": "b", **base, "n_envs": 1, "use_previous_checkpoint": True, "handoff": {"replay_buffer": "carry"}}]}
    found = problems(raw)
    assert any("session 'b': handoff.replay_buffer: carrying the replay buffer needs n_envs equal" in p for p in found)
    assert any("session 'b': hyperparameters.ent_coef: a learned ('auto') and a fixed" in p for p in found)


def test_cross_session_problems_reported_with_field_problems() -> None:
    raw = with_("sessions.0.use_previous_checkpoint", True, with_("sessions.1.timestep", 5))
    found = problems(raw)
    assert any("session 'hold': timestep: unknown key" in p for p in found)
    assert any("use_previous_checkpoint: the first session" in p for p in found)


def test_sac_needs_box_actions() -> None:
    raw = with_("sessions", [{"name": "cart", "env": "CartPole-v1", "timesteps": 100, "algorithm": "sac",
                              "n_envs": 1, "hyperparameters": {}}])
    assert any("session 'cart': algorithm: sac needs a continuous (Box) action space" in p for p in problems(raw))


def test_every_problem_reported_at_once() -> None:
    raw = with_("sessions.0.timestep", 5, with_("sessions.1.algorithm", "dqn", with_("defaults.evl", 1)))
    found = problems(raw)
    assert len(found) >= 3
    assert all("\n" not in p for p in found)


def test_defaults_problem_reported_once_not_per_session() -> None:
    found = problems(with_("defaults.eval.every_steps", 0))
    assert sum("every_steps" in p for p in found) == 1


def test_defaults_merge_and_session_override(tiny_raw: dict[str, Any]) -> None:
    tiny_raw["sessions"][1]["eval"] = {"episodes": 3}
    p = parse_pipeline(tiny_raw)
    assert p.sessions[1].eval.episodes == 3 and p.sessions[1].eval.every_steps == 128  # deep merge
    assert p.sessions[0].eval.episodes == 1
    assert p.sessions[0].hyperparameters["n_steps"] == 64


def test_algorithm_default_n_envs() -> None:
    raw = {"name": "s", "sessions": [{"name": "a", "env": "Hopper-v5", "timesteps": 100, "algorithm": "sac"}]}
    assert parse_pipeline(raw).sessions[0].n_envs == 1


def test_session_include_resolved_relative_to_pipeline(tmp_path: Path) -> None:
    (tmp_path / "sessions").mkdir()
    (tmp_path / "sessions" / "a.yaml").write_text("env: Hopper-v5\nseed: 7\n")
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(
        {"name": "inc", "sessions": [{"name": "a", "config": "sessions/a.yaml", "timesteps": 400}]}))
    p = load_pipeline(tmp_path / "p.yaml")
    assert p.sessions[0].env == "Hopper-v5" and p.sessions[0].seed == 7
    assert "config" not in p.resolved()["sessions"][0]


def test_missing_include_and_inline_include_are_clear(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(
        {"name": "inc", "sessions": [{"name": "a", "config": "nope.yaml", "timesteps": 400}]}))
    with pytest.raises(ConfigError, match="file not found"):
        load_pipeline(tmp_path / "p.yaml")
    raw = {"name": "inc", "sessions": [{"name": "a", "config": "x.yaml", "timesteps": 400}]}
    assert any("includes need a pipeline file" in p for p in problems(raw))


def test_shipped_configs_are_valid() -> None:
    for name in ("pipeline.yaml", "quickstart.yaml"):
        p = load_pipeline(REPO / "configs" / name)
        assert [s.name for s in p.sessions] == ["height-maximize", "crush-resistance"]
        assert p.sessions[1].use_previous_checkpoint


def test_fingerprint_tracks_resolved_content(tiny_raw: dict[str, Any]) -> None:
    a = parse_pipeline(tiny_raw).fingerprint()
    tiny_raw["sessions"][0]["timesteps"] = 512
    assert parse_pipeline(tiny_raw).fingerprint() != a


def test_cli_validate_exit_codes_and_nothing_written(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(TINY))
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(with_("sessions.0.timestep", 5)))
    runner = CliRunner()
    ok = runner.invoke(app, ["validate", str(good)])
    assert ok.exit_code == 0, ok.output
    before = sorted(tmp_path.rglob("*"))
    res = runner.invoke(app, ["validate", str(bad)])
    assert res.exit_code != 0
    assert "session 'stand': timestep: unknown key" in res.output
    run = runner.invoke(app, ["run", str(bad), "--output", str(tmp_path / "out")])
    assert run.exit_code == 2
    assert sorted(tmp_path.rglob("*")) == before  # a failed validation creates nothing


def test_cli_reports_yaml_syntax_error(tmp_path: Path) -> None:
    f = tmp_path / "broken.yaml"
    f.write_text("name: x\nsessions: [\n")
    res = CliRunner().invoke(app, ["validate", str(f)])
    assert res.exit_code == 2 and "not valid YAML" in res.output


def test_schema_is_json_schema() -> None:
    res = CliRunner().invoke(app, ["schema"])
    schema = json.loads(res.output)
    assert schema["properties"]["sessions"]["items"]["properties"]["timesteps"]["type"] == "integer"
    assert "config" in schema["properties"]["sessions"]["items"]["properties"]


SBX_PAIR = {"name": "x", "defaults": {"algorithm": "sac", "backend": "sbx", "eval": {"every_steps": 100}},
            "sessions": [{"name": "a", "env": "Hopper-v5", "timesteps": 100},
                         {"name": "b", "env": "Hopper-v5", "timesteps": 100, "use_previous_checkpoint": True}]}


def test_backend_from_defaults_or_per_session() -> None:
    p = parse_pipeline(copy.deepcopy(SBX_PAIR))
    assert [s.backend for s in p.sessions] == ["sbx", "sbx"]
    raw = with_("sessions.0.backend", "sb3", SBX_PAIR)
    raw["sessions"][1]["use_previous_checkpoint"] = False
    assert [s.backend for s in parse_pipeline(raw).sessions] == ["sb3", "sbx"]
    assert [s.backend for s in parse_pipeline(copy.deepcopy(TINY)).sessions] == ["sb3", "sb3"]


def test_cross_backend_warm_start_is_refused() -> None:
    found = problems(with_("sessions.1.backend", "sb3", SBX_PAIR))
    assert found == ["session 'b': backend: cross-backend warm start refused: 'a' trains with backend sbx and this "
                     "session with sb3; their policies and optimizer states are stored differently. Use backend sbx "
                     "or set use_previous_checkpoint: false"]


@pytest.mark.parametrize("changes,expected", [
    ({"defaults.backend": "jax"}, "defaults.backend: Input should be 'sb3' or 'sbx' (got 'jax')"),
    ({"defaults.algorithm": "tqc", "defaults.backend": "sb3"},
     "defaults.algorithm: tqc is not offered by backend sb3; use backend sbx or another algorithm "
     "(sb3: a2c, ppo, sac, td3; sbx: crossq, ppo, sac, td3, tqc) (got 'tqc')"),
    ({"defaults.algorithm": "a2c"}, "defaults.algorithm: a2c is not offered by backend sbx; use backend sb3"),
    ({"sessions.0.hyperparameters": {"optimize_memory_usage": True}},
     "session 'a': hyperparameters: unknown for sac on backend sbx: 'optimize_memory_usage'"),
    ({"sessions.0.hyperparameters": {"qf_learning_rate": 2}},
     "session 'a': hyperparameters.qf_learning_rate: out of range"),
    ({"defaults.algorithm": "crossq", "sessions.0.hyperparameters": {"tau": 0.01}},
     "session 'a': hyperparameters: unknown for crossq on backend sbx: 'tau'"),
])
def test_backend_problems_name_field_and_what_is_valid(changes: dict[str, Any], expected: str) -> None:
    raw = copy.deepcopy(SBX_PAIR)
    for path, value in changes.items():
        raw = with_(path, value, raw)
    found = problems(raw)
    assert any(expected in p for p in found), found


def test_sbx_only_algorithms_validate_and_plan() -> None:
    from rlpipe.plan import build_plan

    for algo in ("tqc", "crossq", "td3", "ppo"):
        raw = with_("defaults.algorithm", algo, SBX_PAIR)
        p = parse_pipeline(raw)
        assert p.sessions[1].info.sb3_class.lower() == algo
        assert build_plan(p).sessions[0].estimated_train_seconds > 0


def test_schema_and_validate_list_the_backends(tmp_path: Path) -> None:
    schema = json.loads(CliRunner().invoke(app, ["schema"]).output)
    props = schema["properties"]["defaults"]["properties"]
    assert props["backend"]["enum"] == ["sb3", "sbx"]
    assert set(props["algorithm"]["enum"]) == {"ppo", "sac", "td3", "a2c", "tqc", "crossq"}
    assert "sbx: crossq, ppo, sac, td3, tqc" in props["algorithm"]["description"]
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(SBX_PAIR))
    res = CliRunner().invoke(app, ["validate", str(f)])
    assert res.exit_code == 0, res.output
    assert "b: sac on backend sbx" in res.output and "sbx: crossq, ppo, sac, td3, tqc" in res.output
