"""The type and range of every hyperparameter a config may give, as SB3's and SBX's constructors take them.

Plain data like :mod:`rlpipe.algorithms` (the AWS Lambdas validate configs without SB3 or SBX);
``tests/test_hyperparameters.py`` checks each entry against the annotation and default of the real
constructors of both backends. Ranges are what SB3 and torch accept and what fits in memory on one training instance; a value
outside them would fail (or hang) only once the run has started.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic_core import InitErrorDetails, PydanticCustomError, ValidationError

from rlpipe.algorithms import algorithm_info

Kind = Literal["int", "float", "bool", "kwargs", "float_or_auto", "train_freq"]

MAX_STEPS = 10**12  # also rlpipe's bound on timesteps: exact in a JSON double (Step Functions), years of training
MAX_BUFFER = 10**8  # replay transitions: ~9 GB of float32 for a 10-dim observation


@dataclass(frozen=True)
class Spec:
    """What one hyperparameter accepts from a config: its kind, range and whether null (SB3's None) is allowed.

    ``float`` also takes SB3 schedules (``Callable[[float], float]``), which a config file cannot express, so
    only the constant form is accepted; ``float_or_auto`` is SB3's ``str | float`` ("auto", "auto_0.1");
    ``train_freq`` is SB3's ``int | tuple[int, str]``, of which a config gives the step count.
    """

    kind: Kind
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself is excluded
    optional: bool = False
    example: str = ""

    def describe(self) -> str:
        """What is valid, in words."""
        what = {"int": "an integer", "float": "a number", "bool": "true or false",
                "kwargs": "a mapping of keyword arguments", "float_or_auto": "'auto' or a number",
                "train_freq": "an integer number of steps"}[self.kind]
        if self.low is not None and self.high is not None:
            rng = f" from {_num(self.low)} (excluded) to {_num(self.high)}" if self.low_open else \
                f" from {_num(self.low)} to {_num(self.high)}"
        elif self.low is not None:
            rng = f" {'>' if self.low_open else '>='} {_num(self.low)}"
        else:
            rng = ""
        return what + rng + (" or null" if self.optional else "") + (f", e.g. {self.example}" if self.example else "")


def _num(x: float) -> str:
    return f"{int(x):,}" if float(x).is_integer() and abs(x) >= 1000 else f"{x:g}"


def _int(low: int, high: int, example: str = "") -> Spec:
    return Spec("int", low, high, example=example)


def _float(low: float, high: float | None = None, low_open: bool = False, optional: bool = False,
           example: str = "") -> Spec:
    return Spec("float", low, high, low_open=low_open, optional=optional, example=example)


_BOOL = Spec("bool")
_KWARGS = Spec("kwargs", optional=True, example="{net_arch: [64, 64]}")

# Per name; _BY_ALGORITHM overrides where one name means something else for one algorithm.
SPECS: dict[str, Spec] = {
    "learning_rate": _float(0, 1, low_open=True, example="3e-4"),
    "n_steps": _int(1, 1_000_000, example="2048"),
    "batch_size": _int(1, 1_000_000, example="64"),
    "n_epochs": _int(1, 1000, example="10"),
    "gamma": _float(0, 1, example="0.99"),
    "gae_lambda": _float(0, 1, example="0.95"),
    "clip_range": _float(0, 1, low_open=True, example="0.2"),
    "clip_range_vf": _float(0, None, low_open=True, optional=True, example="0.2"),
    "normalize_advantage": _BOOL,
    "ent_coef": _float(0, 1e3, example="0.01"),
    "vf_coef": _float(0, 1e3, example="0.5"),
    "max_grad_norm": _float(0, None, low_open=True, example="0.5"),
    "use_sde": _BOOL,
    "sde_sample_freq": _int(-1, MAX_STEPS, example="-1 (only at the start of each rollout)"),
    "rollout_buffer_kwargs": _KWARGS,
    "target_kl": _float(0, None, low_open=True, optional=True, example="0.02"),
    "stats_window_size": _int(1, 1_000_000, example="100"),
    "policy_kwargs": _KWARGS,
    "rms_prop_eps": _float(0, 1, low_open=True, example="1e-5"),
    "use_rms_prop": _BOOL,
    "buffer_size": _int(1, MAX_BUFFER, example="1000000"),
    "learning_starts": _int(0, MAX_STEPS, example="100"),
    "tau": _float(0, 1, example="0.005"),
    "train_freq": Spec("train_freq", 1, 1_000_000, example="1"),
    "gradient_steps": _int(-1, 1_000_000, example="1 (-1: as many as environment steps)"),
    "replay_buffer_kwargs": _KWARGS,
    "optimize_memory_usage": _BOOL,
    "target_update_interval": _int(1, MAX_STEPS, example="1"),
    "target_entropy": Spec("float_or_auto", example="'auto' or -3.0"),
    "use_sde_at_warmup": _BOOL,
    "policy_delay": _int(1, 1_000_000, example="2"),
    "target_policy_noise": _float(0, 1e3, example="0.2"),
    "target_noise_clip": _float(0, 1e3, example="0.5"),
    # SBX only
    "qf_learning_rate": _float(0, 1, low_open=True, optional=True, example="1e-3 (null: learning_rate)"),
    "top_quantiles_to_drop_per_net": _int(0, 1000, example="2"),
}
_ENTROPY_COEF = Spec("float_or_auto", 0, 1e3, example="'auto', 'auto_0.1' or 0.01")
_N_STEP_RETURNS = _int(1, 1000, example="1")  # n-step returns, not a rollout length
_BY_ALGORITHM: dict[tuple[str, str], Spec] = {
    ("ppo", "batch_size"): _int(2, 1_000_000, example="64"),  # SB3 asserts batch_size > 1
    **{(a, "ent_coef"): _ENTROPY_COEF for a in ("sac", "tqc", "crossq")},
    **{(a, "n_steps"): _N_STEP_RETURNS for a in ("sac", "td3", "tqc", "crossq")},
}


def spec(algorithm: str, name: str, backend: str = "sb3") -> Spec:
    """The spec of hyperparameter ``name`` for ``algorithm`` on ``backend`` (KeyError when it does not take it)."""
    if name not in algorithm_info(algorithm, backend).hyperparameters:
        raise KeyError(name)
    return _BY_ALGORITHM.get((algorithm, name)) or SPECS[name]


_AUTO = re.compile(r"^auto(_.*)?$")


def check(s: Spec, value: Any, name: str = "") -> tuple[Any, str | None]:
    """``(value as SB3 takes it, None)`` or ``(value, what is wrong; what is valid)``.

    Integral floats become ints (``buffer_size: 1e6``); nothing else is converted: a quoted ``"2048"`` is a
    string in YAML, and passing it on would fail inside SB3.
    """
    def bad(why: str) -> tuple[Any, str]:
        return value, f"{why}; expected {s.describe()}"

    if value is None:
        return (None, None) if s.optional else bad("null is not allowed")
    if s.kind == "bool":
        return (value, None) if isinstance(value, bool) else bad("not a boolean")
    if s.kind == "kwargs":
        if not isinstance(value, dict):
            return bad("not a mapping")
        keys = [k for k in value if not isinstance(k, str)]
        return (value, None) if not keys else bad(f"keys must be names (got {keys[0]!r})")
    if isinstance(value, str):
        if s.kind == "float_or_auto" and _AUTO.match(value):
            if name == "target_entropy" and value != "auto":
                return bad("only 'auto' takes no initial value here")
            if value != "auto":
                try:
                    float(value[5:])
                except ValueError:
                    return bad("the value after 'auto_' is not a number")
            return value, None
        try:
            float(value)
            return bad("a quoted number is a string in YAML: remove the quotes")
        except ValueError:
            return bad("not a number")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return bad(f"not a number ({type(value).__name__})")
    if s.kind in ("int", "train_freq"):
        if isinstance(value, float):
            if not value.is_integer():
                return bad("not a whole number")
            value = int(value)
    elif not math.isfinite(value):
        return bad("not a finite number")
    if s.low is not None and (value < s.low or (s.low_open and value == s.low)):
        return bad("out of range")
    if s.high is not None and value > s.high:
        return bad("out of range")
    return value, None


def check_all(algorithm: str, hyperparameters: dict[str, Any], backend: str = "sb3") -> dict[str, Any]:
    """``hyperparameters`` as the backend takes them; raises a pydantic ``ValidationError`` with one error per
    bad key.

    Names the algorithm does not take are left to the caller (they get their own did-you-mean message).
    """
    out = dict(hyperparameters)
    errors: list[InitErrorDetails] = []
    for name, value in hyperparameters.items():
        try:
            s = spec(algorithm, name, backend)
        except KeyError:
            continue
        out[name], problem = check(s, value, name)
        if backend == "sbx" and not problem and s.kind in ("float", "float_or_auto") and type(out[name]) is int:
            out[name] = float(out[name])  # SBX asserts floats (ent_coef: 1 would fail inside its constructor)
        if problem:
            errors.append(InitErrorDetails(type=PydanticCustomError("hyperparameter", problem), loc=(name,),
                                           input=value))
    if errors:
        raise ValidationError.from_exception_data("hyperparameters", errors)
    return out
