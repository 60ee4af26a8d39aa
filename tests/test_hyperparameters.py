"""The hyperparameter table (usable without SB3) agrees with the annotations and defaults of SB3's constructors,
and its checks accept what SB3 takes and refuse what would fail inside it."""

from __future__ import annotations

import importlib
import inspect
import types
import typing
from collections.abc import Callable
from typing import Any

import pytest
import stable_baselines3
from pydantic import ValidationError

from rlpipe import hyperparameters as H
from rlpipe.algorithms import ALGORITHMS, BACKEND_PACKAGES, BACKENDS, algorithm_info, algorithms_of

TRIPLES = [(b, algo, name) for b in BACKENDS for algo in sorted(algorithms_of(b))
           for name in sorted(algorithms_of(b)[algo].hyperparameters)]


def _parts(annotation: Any) -> tuple[set[Any], bool]:
    """The members of a union annotation (None removed) and whether None was one of them."""
    members = set(typing.get_args(annotation)) if isinstance(annotation, types.UnionType) or \
        typing.get_origin(annotation) is typing.Union else {annotation}
    optional = type(None) in members
    return members - {type(None)}, optional


def _kind_of(annotation: Any) -> str:
    """The config kind SB3's annotation allows (callables, which YAML cannot give, are left out)."""
    members, _ = _parts(annotation)
    members = {m for m in members if typing.get_origin(m) is not Callable and m is not Callable}
    origins = {typing.get_origin(m) or m for m in members}
    if origins == {int}:
        return "int"
    if origins == {float}:
        return "float"
    if origins == {bool}:
        return "bool"
    if origins == {dict}:
        return "kwargs"
    if origins in ({str, float}, {typing.Literal, float}):  # SBX spells "auto" as Literal["auto"]
        return "float_or_auto"
    if origins == {int, tuple}:
        return "train_freq"
    raise AssertionError(f"no config kind for {annotation}")


def _parameter(backend: str, algo: str, name: str) -> inspect.Parameter:
    cls = getattr(importlib.import_module(BACKEND_PACKAGES[backend]), algorithm_info(algo, backend).sb3_class)
    return inspect.signature(cls.__init__).parameters[name]


@pytest.mark.parametrize("backend,algo,name", TRIPLES, ids=[f"{b}-{a}-{n}" for b, a, n in TRIPLES])
def test_spec_matches_the_backend_annotation_and_default(backend: str, algo: str, name: str) -> None:
    param = _parameter(backend, algo, name)
    spec = H.spec(algo, name, backend)
    assert spec.kind == _kind_of(param.annotation)
    assert spec.optional == _parts(param.annotation)[1] or (spec.kind == "kwargs" and param.default is None)
    value, problem = H.check(spec, param.default, name)
    assert problem is None, f"SB3's default {param.default!r} refused: {problem}"
    assert value == param.default


def test_every_name_has_a_spec() -> None:
    assert {n for _, _, n in TRIPLES} == set(H.SPECS)


@pytest.mark.parametrize("algo,hps,expected", [
    ("ppo", {"learning_rate": "abc"}, {"learning_rate": "not a number"}),
    ("ppo", {"n_steps": "2048"}, {"n_steps": "a quoted number is a string in YAML: remove the quotes"}),
    ("ppo", {"n_steps": 2048.5}, {"n_steps": "not a whole number"}),
    ("ppo", {"n_steps": True}, {"n_steps": "not a number (bool)"}),
    ("ppo", {"n_steps": 0}, {"n_steps": "out of range; expected an integer from 1 to 1,000,000"}),
    ("ppo", {"batch_size": 1}, {"batch_size": "out of range; expected an integer from 2"}),
    ("ppo", {"gamma": float("nan")}, {"gamma": "not a finite number"}),
    ("ppo", {"learning_rate": 0}, {"learning_rate": "out of range"}),
    ("ppo", {"ent_coef": "auto"}, {"ent_coef": "not a number"}),
    ("ppo", {"use_sde": "yes"}, {"use_sde": "not a boolean; expected true or false"}),
    ("ppo", {"policy_kwargs": {1: 2}}, {"policy_kwargs": "keys must be names"}),
    ("ppo", {"target_kl": None, "clip_range_vf": None, "policy_kwargs": None}, {}),
    ("ppo", {"n_epochs": 10**30}, {"n_epochs": "out of range"}),
    ("sac", {"ent_coef": "auto_0.1", "target_entropy": -3, "train_freq": 4}, {}),
    ("sac", {"ent_coef": "auto_x"}, {"ent_coef": "the value after 'auto_' is not a number"}),
    ("sac", {"ent_coef": -1}, {"ent_coef": "out of range"}),
    ("sac", {"target_entropy": "auto_0.5"}, {"target_entropy": "only 'auto'"}),
    ("sac", {"train_freq": [1, "episode"]}, {"train_freq": "not a number (list)"}),
    ("sac", {"buffer_size": 1e6, "learning_starts": 0}, {}),
    ("sac", {"buffer_size": 10**9}, {"buffer_size": "out of range"}),
    ("td3", {"n_steps": 2048, "policy_delay": 0}, {"n_steps": "out of range", "policy_delay": "out of range"}),
    ("a2c", {"rms_prop_eps": 0, "use_rms_prop": 1}, {"rms_prop_eps": "out of range", "use_rms_prop": "not a boolean"}),
])
def test_check_all(algo: str, hps: dict[str, Any], expected: dict[str, str]) -> None:
    if not expected:
        out = H.check_all(algo, hps)
        assert out == hps and all(type(out[k]) is type(hps[k]) or k == "buffer_size" for k in hps)
        return
    with pytest.raises(ValidationError) as info:
        H.check_all(algo, hps)
    got = {e["loc"][0]: e["msg"] for e in info.value.errors()}
    assert set(got) == set(expected)
    for name, text in expected.items():
        assert text in got[name], got[name]


def test_integral_floats_become_ints() -> None:
    out = H.check_all("sac", {"buffer_size": 1e6, "batch_size": 256.0, "tau": 1})
    assert out == {"buffer_size": 1_000_000, "batch_size": 256, "tau": 1}
    assert type(out["buffer_size"]) is int and type(out["batch_size"]) is int


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_checked_values_construct_the_sb3_model(algo: str) -> None:
    """Values the checks accept, at the edges of their ranges, are what SB3's constructor takes."""
    import gymnasium as gym

    hps: dict[str, Any] = {"learning_rate": 1, "gamma": 1, "policy_kwargs": {"net_arch": [8]}}
    if algo == "ppo":
        hps.update(n_steps=4, batch_size=2, n_epochs=1, clip_range=1, target_kl=1e-9)
    elif algo == "a2c":
        hps.update(n_steps=1, rms_prop_eps=1e-12)
    else:
        hps.update(buffer_size=1e3, learning_starts=0, batch_size=1, tau=0, train_freq=1, gradient_steps=-1,
                   n_steps=3)
        hps.update({"ent_coef": "auto_0.5"} if algo == "sac" else {"policy_delay": 1})
    hps = H.check_all(algo, hps)
    cls = getattr(stable_baselines3, ALGORITHMS[algo].sb3_class)
    model = cls("MlpPolicy", gym.make("Pendulum-v1"), device="cpu", **hps)
    model.learn(8)
    assert model.num_timesteps >= 8


@pytest.mark.parametrize("algo", sorted(algorithms_of("sbx")))
def test_checked_values_construct_the_sbx_model(algo: str) -> None:
    """The same for SBX; whole numbers given for float hyperparameters reach SBX as floats (it asserts them)."""
    import gymnasium as gym
    import sbx

    hps: dict[str, Any] = {"learning_rate": 1, "gamma": 1, "policy_kwargs": {"net_arch": [8]}}
    if algo == "ppo":
        hps.update(n_steps=4, batch_size=2, n_epochs=1, clip_range=1, target_kl=1e-9, ent_coef=0)
    else:
        hps.update(buffer_size=1e3, learning_starts=0, batch_size=1, train_freq=1, gradient_steps=-1,
                   n_steps=3, policy_delay=1, qf_learning_rate=1)
        if algo != "crossq":
            hps["tau"] = 0
        if algo in ("sac", "tqc", "crossq"):
            hps["ent_coef"] = 1
    hps = H.check_all(algo, hps, "sbx")
    assert all(type(hps[k]) is float for k in ("learning_rate", "gamma") + (("ent_coef",) if "ent_coef" in hps else ()))
    cls = getattr(sbx, algorithm_info(algo, "sbx").sb3_class)
    model = cls("MlpPolicy", gym.make("Pendulum-v1"), device="cpu", **hps)
    model.learn(8)
    assert model.num_timesteps >= 8


def test_sbx_names_are_checked_per_backend() -> None:
    with pytest.raises(ValidationError) as info:
        H.check_all("sac", {"qf_learning_rate": 0, "top_quantiles_to_drop_per_net": -1}, "sbx")
    assert {e["loc"][0] for e in info.value.errors()} == {"qf_learning_rate"}  # sac does not take the second
    with pytest.raises(ValidationError) as info:
        H.check_all("tqc", {"top_quantiles_to_drop_per_net": -1}, "sbx")
    assert "out of range" in info.value.errors()[0]["msg"]
    with pytest.raises(KeyError):
        H.spec("sac", "optimize_memory_usage", "sbx")
