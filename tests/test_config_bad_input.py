"""Hostile or mistaken pipeline input: each case is a named one-line error in well under a second, from
``rlpipe validate``, ``rlpipe run`` and StartRun alike, and nothing is created."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from rlpipe import yamlsafe
from rlpipe.cli import app
from rlpipe.cloud import steps
from rlpipe.config import MAX_TIMESTEPS, ConfigError, load_pipeline

from .test_cloud_steps import BUCKET, aws, start  # noqa: F401 (aws is a fixture)

FAST_SECONDS = 1.0

BASE = """\
name: tiny
defaults:
  algorithm: ppo
  n_envs: 2
  hyperparameters: {{n_steps: 64, batch_size: 64, policy_kwargs: {{net_arch: [16, 16]}}{hp}}}
  eval: {{every_steps: 128, episodes: 1}}
  checkpoint: {{every_steps: 128}}
sessions:
  - name: {name}
    env: rlpipe/HeightMaximize-v0
    timesteps: {timesteps}
{extra}"""


def pipeline(name: str = "stand", timesteps: Any = 256, hp: str = "", extra: str = "") -> str:
    """The tiny one-session pipeline as YAML text, with pieces replaced."""
    return BASE.format(name=name, timesteps=timesteps, hp=hp, extra=extra)


def laughs(levels: int = 9, mapping: bool = False) -> str:
    """A "billion laughs" flow collection: level k holds nine aliases of level k-1 (9**levels strings)."""
    items = ["&l0 [" + ", ".join(["lol"] * 9) + "]"]
    items += [f"&l{k} [" + ", ".join([f"*l{k - 1}"] * 9) + "]" for k in range(1, levels)]
    if mapping:
        return "{" + ", ".join(f"k{k}: {item}" for k, item in enumerate(items)) + "}"
    return "[" + ", ".join(items) + "]"


def expanded_size(data: Any, memo: dict[int, int] | None = None) -> int:
    """Values in ``data`` once shared objects are counted at each use (what validation would walk)."""
    memo = {} if memo is None else memo
    if not isinstance(data, (dict, list)):
        return 1
    if id(data) not in memo:
        values = data.values() if isinstance(data, dict) else data
        memo[id(data)] = 1 + sum(expanded_size(v, memo) for v in values)
    return memo[id(data)]


def write(tmp_path: Path, text: str | bytes, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def symlink_loop(tmp_path: Path, name: str) -> Path:
    a, b = tmp_path / name, tmp_path / f"{name}.other"
    a.symlink_to(b)
    b.symlink_to(a)
    return a


def _include(tmp_path: Path, target: str) -> Path:
    return write(tmp_path, pipeline(extra=f"    config: {target}\n"))


# Each case: (id, build the pipeline file in a directory -> its path, text every error report must contain;
# "…" stands for the temporary directory's path).
CASES: list[tuple[str, Callable[[Path], Path], str]] = [
    ("bomb-session-name", lambda d: write(d, pipeline(name=laughs())),
     "sessions[0].name[4]: holds more than 20,000 values"),
    ("bomb-env-kwargs", lambda d: write(d, pipeline(extra=f"    env_kwargs: {laughs(mapping=True)}\n")),
     "sessions[0].env_kwargs.k"),
    ("bomb-policy-kwargs", lambda d: write(d, pipeline().replace("net_arch: [16, 16]",
                                                                 f"net_arch: [16, 16], extra: {laughs()}")),
     "defaults.hyperparameters.policy_kwargs.extra"),
    ("recursive-alias", lambda d: write(d, pipeline(extra="    env_kwargs: &loop {self: *loop}\n")),
     "recursive alias at line 12"),
    ("include-directory", lambda d: (d.joinpath("sessions").mkdir(), _include(d, "sessions"))[1],
     "session 'stand': config: …/sessions is a directory; give a YAML file"),
    ("symlink-loop", lambda d: symlink_loop(d, "p.yaml"), "is a symlink loop"),
    ("symlink-loop-include", lambda d: (symlink_loop(d, "s.yaml"), _include(d, "s.yaml"))[1],
     "session 'stand': config: …/s.yaml is a symlink loop"),
    ("not-utf8", lambda d: write(d, pipeline().encode().replace(b"stand", b"st\xe4nd")),
     "not UTF-8 text (byte 0xe4 at line 9)"),
    ("not-utf8-include", lambda d: (write(d, b"seed: 1\nenv: H\xf6pper\n", "s.yaml"), _include(d, "s.yaml"))[1],
     "session 'stand': config: s.yaml: not UTF-8 text (byte 0xf6 at line 2)"),
    ("utf16", lambda d: write(d, pipeline().encode("utf-16")), "not UTF-8 text"),
    ("deep-flow-nesting", lambda d: write(d, pipeline(extra="    env_kwargs: {x: " + "[" * 50_000 + "}\n")),
     "nested more than 32 levels deep"),
    ("deep-block-nesting", lambda d: write(d, pipeline(extra="    env_kwargs:\n" + "".join(
        " " * (6 + 2 * i) + f"k{i}:\n" for i in range(200)))), "nested more than 32 levels deep"),
    ("learning-rate-text", lambda d: write(d, pipeline(hp=", learning_rate: abc")),
     "defaults.hyperparameters.learning_rate: not a number; expected a number from 0 (excluded) to 1"),
    ("n-steps-quoted", lambda d: write(d, pipeline(hp=', batch_size: "64"').replace("batch_size: 64, ", "")),
     "defaults.hyperparameters.batch_size: a quoted number is a string in YAML: remove the quotes"),
    ("gamma-range", lambda d: write(d, pipeline(extra="    hyperparameters: {gamma: 1.5}\n")),
     "session 'stand': hyperparameters.gamma: out of range; expected a number from 0 to 1"),
    ("learning-rate-inf", lambda d: write(d, pipeline(hp=", learning_rate: .inf")),
     "learning_rate: not a finite number"),
    ("policy-kwargs-list", lambda d: write(d, pipeline(extra="    hyperparameters: {policy_kwargs: [64]}\n")),
     "hyperparameters.policy_kwargs: not a mapping"),
    ("duplicate-session-key", lambda d: write(d, pipeline(extra="    timesteps: 512\n")),
     "sessions[0].timesteps: duplicate key (lines 11 and 12)"),
    ("duplicate-flow-key", lambda d: write(d, pipeline(hp=", n_steps: 128")),
     "defaults.hyperparameters.n_steps: duplicate key (line 5, columns 21 and 87)"),
    ("timesteps-beyond-int64", lambda d: write(d, pipeline(timesteps="1000000000000000000000000000000")),
     f"session 'stand': timesteps: Input should be less than or equal to {MAX_TIMESTEPS}"),
    ("eval-every-huge", lambda d: write(d, pipeline(extra="    eval: {every_steps: 100000000000000000000}\n")),
     f"session 'stand': eval.every_steps: Input should be less than or equal to {MAX_TIMESTEPS}"),
    ("checkpoint-every-huge", lambda d: write(d, pipeline(extra="    checkpoint: {every_steps: 99999999999999999}\n")),
     f"checkpoint.every_steps: Input should be less than or equal to {MAX_TIMESTEPS}"),
    ("number-of-5000-digits", lambda d: write(d, pipeline(timesteps="9" * 5000)),
     "cannot read the value at line 11, column 16: a number of more than 4,300 digits"),
    ("binary-tag", lambda d: write(d, pipeline(extra="    env_kwargs: {blob: !!binary AAAA}\n")),
     "the tag !!binary (line 12) has no JSON form"),
    ("seed-beyond-numpy", lambda d: write(d, pipeline(extra=f"    seed: {2**32}\n")),
     "session 'stand': seed: Input should be less than or equal to 2147483647"),
    ("volume-too-large", lambda d: write(d, pipeline(extra="    compute: {volume_size_gb: 1e9}\n")),
     "compute.volume_size_gb: Input should be less than or equal to 16384"),
    ("runtime-too-long", lambda d: write(d, pipeline(extra="    compute: {max_runtime_seconds: 99999999}\n")),
     "compute.max_runtime_seconds: Input should be less than or equal to 2419200"),
    ("file-too-large", lambda d: write(d, pipeline() + "#" * yamlsafe.MAX_BYTES + "\n"),
     "larger than 256 KiB"),
    ("fifo", lambda d: (os.mkfifo(d / "p.yaml"), d / "p.yaml")[1], "is not a regular file"),
    ("include-not-a-path", lambda d: _include(d, "[a, b]"),
     "session 'stand': config: expected a path to a YAML file of session settings (got ['a', 'b'])"),
]


@pytest.mark.parametrize("build,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_a_named_error_fast_and_creates_nothing(tmp_path: Path, build: Callable[[Path], Path],
                                                             expected: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # where `rlpipe run` would create runs/<name>
    path = build(tmp_path)
    before = sorted(os.listdir(tmp_path))
    started = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    elapsed = time.perf_counter() - started
    found = [str(p).replace(str(tmp_path), "…") for p in info.value.problems]
    assert any(expected in p for p in found), found
    assert all("\n" not in p for p in found)
    assert elapsed < FAST_SECONDS, f"{elapsed:.2f}s"

    runner = CliRunner()
    for args in (["validate", str(path)], ["run", str(path)], ["run", str(path), "--output", str(tmp_path / "o")]):
        res = runner.invoke(app, args)
        assert res.exit_code == 2, res.output
        assert expected in res.output.replace(str(tmp_path), "…"), res.output
        assert "Traceback" not in res.output
        assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert sorted(os.listdir(tmp_path)) == before  # no run directory, nothing else


def test_bombs_in_the_cases_are_real() -> None:
    """Plain PyYAML composes each bomb quickly (shared objects) but validation would walk ~9**9 values."""
    raw = yaml.safe_load(pipeline(name=laughs()))
    assert expanded_size(raw) > 9**9
    raw = yaml.safe_load(pipeline(extra=f"    env_kwargs: {laughs(mapping=True)}\n"))
    assert expanded_size(raw) > 9**9
    raw = yaml.safe_load(pipeline().replace("net_arch: [16, 16]", f"net_arch: [16, 16], extra: {laughs()}"))
    assert expanded_size(raw["defaults"]["hyperparameters"]["policy_kwargs"]) > 9**9


def test_plain_yaml_had_these_traps() -> None:
    """What the loader changes relative to PyYAML's safe_load, so the cases above test something."""
    text = pipeline(hp=", learning_rate: 3e-4, n_steps: 128")
    plain = yaml.safe_load(text)["defaults"]["hyperparameters"]
    assert plain["learning_rate"] == "3e-4" and plain["n_steps"] == 128  # a string, and the last key wins
    with pytest.raises(yamlsafe.InputError, match="duplicate key"):
        yamlsafe.loads(text)


@pytest.mark.parametrize("text,value", [
    ("3e-4", 0.0003), ("1e6", 1e6), ("-2.5E+3", -2500.0), (".5e-2", 0.005), ("1.e2", 100.0), ("0.0003", 0.0003),
    ("'3e-4'", "3e-4"), ("e5", "e5"), ("1e", "1e"), ("1_000", 1000), (".inf", float("inf")),
])
def test_exponent_floats_are_numbers(text: str, value: Any) -> None:
    assert yamlsafe.loads(f"x: {text}")["x"] == value


def test_dates_stay_text() -> None:
    """YAML 1.1 timestamps would become datetime objects, which the JSON form of a pipeline lacks."""
    assert yamlsafe.loads("a: 2025-01-01\nb: 2001-13-45\n") == {"a": "2025-01-01", "b": "2001-13-45"}


def test_exponent_hyperparameters_are_accepted_as_numbers(tmp_path: Path) -> None:
    p = load_pipeline(write(tmp_path, pipeline(hp=", learning_rate: 3e-4, gamma: 1").replace(
        "batch_size: 64", "batch_size: 6.4e1")))
    hps = p.sessions[0].hyperparameters
    assert hps["learning_rate"] == 0.0003 and isinstance(hps["learning_rate"], float)
    assert hps["batch_size"] == 64 and isinstance(hps["batch_size"], int)  # what SB3's int parameter needs
    assert p.sessions[0].timesteps == 256


def test_timesteps_at_the_bound_validate_and_report(tmp_path: Path) -> None:
    """The largest accepted budget goes through plan and report without error."""
    from rlpipe.plan import build_plan
    from rlpipe.report.local import write_local_report
    from rlpipe.state import RunState

    p = load_pipeline(write(tmp_path, pipeline(timesteps=MAX_TIMESTEPS)))
    assert build_plan(p).sessions[0].timesteps == MAX_TIMESTEPS
    run = tmp_path / "run"
    run.mkdir()
    (run / "state.json").write_text(RunState.new(p, "tiny-20250101-000000-abcdef").model_dump_json())
    res = CliRunner().invoke(app, ["report", str(run)])
    assert res.exit_code == 0, res.output
    assert json.loads((run / "report.json").read_text())["total_timesteps_budget"] == MAX_TIMESTEPS


def test_aliases_within_bounds_still_work(tmp_path: Path) -> None:
    text = pipeline(extra="    env_kwargs: &kw {}\n  - name: other\n    env: rlpipe/HeightMaximize-v0\n"
                          "    timesteps: 256\n    env_kwargs: *kw\n")
    p = load_pipeline(write(tmp_path, text))
    assert [s.name for s in p.sessions] == ["stand", "other"]


def test_merge_keys_are_not_duplicates() -> None:
    data = yamlsafe.loads("base: &b {x: 1, y: 2}\nd:\n  <<: *b\n  x: 3\n")
    assert data["d"] == {"x": 3, "y": 2}


def test_yaml_syntax_error_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_pipeline(write(tmp_path, "name: x\nsessions: [\n"))
    (problem,) = info.value.problems
    assert "not valid YAML" in str(problem) and "(line 3, column 1)" in str(problem) and "\n" not in str(problem)


@pytest.mark.parametrize("data,expected", [
    ({"name": "x", "sessions": [{"env_kwargs": {"a": json.loads("[" * 34 + "]" * 34)}}]},
     "nested more than 32 levels deep"),
    ({"name": "x", "sessions": [{"env_kwargs": {str(i): i for i in range(30_000)}}]}, "more than 20,000 values"),
])
def test_parsed_input_is_bounded_too(data: dict[str, Any], expected: str) -> None:
    from rlpipe.config import parse_pipeline

    with pytest.raises(ConfigError, match=expected.replace("(", r"\(")):
        parse_pipeline(data)


def test_cycle_in_parsed_input_is_refused() -> None:
    from rlpipe.config import parse_pipeline

    kwargs: dict[str, Any] = {}
    kwargs["self"] = kwargs
    with pytest.raises(ConfigError, match="contains itself"):
        parse_pipeline({"name": "x", "sessions": [{"name": "a", "env": "Hopper-v5", "timesteps": 4,
                                                   "env_kwargs": kwargs}]})


# ---- StartRun: the same loader and checks for pipelines from S3 and inline ------------------------------------

def _no_run_created(aws: dict[str, Any]) -> None:  # noqa: F811
    keys = [o["Key"] for o in aws["s3"].list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    assert all(k.startswith("configs/") for k in keys), keys


@pytest.mark.parametrize("body,expected", [
    (pipeline(name=laughs()), "sessions[0].name[4]: holds more than 20,000 values"),
    (pipeline(extra=f"    env_kwargs: {laughs(mapping=True)}\n"), "holds more than 20,000 values"),
    (pipeline(extra="    timesteps: 512\n"), "sessions[0].timesteps: duplicate key (lines 11 and 12)"),
    ('{"name": "x", "name": "y", "sessions": []}', "name: duplicate key (line 1, columns 2 and 15)"),
    (pipeline().encode("latin-1") + b"# \xff\n", "not UTF-8 text"),
    (pipeline(hp=", learning_rate: abc"), "defaults.hyperparameters.learning_rate: not a number"),
    ("[" * 100_000, "nested more than 32 levels deep"),
    (b"#" * (4 * 1024 * 1024), "larger than 256 KiB"),  # read only up to the bound
])
def test_start_run_refuses_bad_pipeline_objects(aws: dict[str, Any], body: str | bytes,  # noqa: F811
                                                expected: str) -> None:
    aws["s3"].put_object(Bucket=BUCKET, Key="configs/p.yaml", Body=body)
    started = time.perf_counter()
    with pytest.raises(steps.InvalidInput) as err:
        start(aws["ctx"], {"pipeline_s3_uri": f"s3://{BUCKET}/configs/p.yaml"})
    assert time.perf_counter() - started < FAST_SECONDS
    assert expected in str(err.value), str(err.value)
    assert str(err.value).startswith("pipeline_s3_uri: ")
    _no_run_created(aws)


@pytest.mark.parametrize("pipeline_,expected", [
    ({"name": "x", "sessions": [{"name": "a", "env": "Hopper-v5", "timesteps": 8,
                                 "env_kwargs": {"k": json.loads("[" * 40 + "]" * 40)}}]},
     "nested more than 32 levels deep"),
    ({"name": "x", "sessions": [{"name": "a", "env": "Hopper-v5", "timesteps": 10**30}]},
     f"timesteps: Input should be less than or equal to {MAX_TIMESTEPS}"),
    ({"name": "x", "sessions": [{"name": "a", "env": "Hopper-v5", "timesteps": 8, "n_envs": 1,
                                 "hyperparameters": {"n_steps": "2048"}}]},
     "session 'a': hyperparameters.n_steps: a quoted number is a string"),
])
def test_start_run_refuses_bad_inline_pipelines(aws: dict[str, Any], pipeline_: dict[str, Any],  # noqa: F811
                                                expected: str) -> None:
    with pytest.raises(steps.InvalidInput) as err:
        start(aws["ctx"], {"pipeline": pipeline_})
    assert expected in str(err.value), str(err.value)
    _no_run_created(aws)


def test_wrong_values_are_shown_short() -> None:
    """A wrong value within the bounds can still be large; the error line quotes only its start."""
    from rlpipe.config import parse_pipeline

    with pytest.raises(ConfigError) as info:
        parse_pipeline({"name": "x", "sessions": [{"name": "a", "env": "Hopper-v5", "timesteps": list(range(5000)),
                                                   "n_envs": 1}]})
    (problem,) = [str(p) for p in info.value.problems]
    assert problem.startswith("session 'a': timesteps: Input should be a valid integer (got [0, 1, 2, 3,")
    assert len(problem) < 200
