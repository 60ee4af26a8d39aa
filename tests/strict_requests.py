"""Validate API requests against botocore's service model as strictly as the service does.

botocore's ``ParamValidator`` checks types, required members and *minimum* lengths/values only (it leaves
maxima, enums and patterns to the server). This walks the same shape model and checks every constraint it
states: required members, unknown members, string min/max length, enum, pattern, numeric min/max, list
lengths and map sizes, member types.

Patterns in AWS models are Java regular expressions matched against the whole value (the service's messages
read "Value ... failed to satisfy constraint: Member must satisfy regular expression pattern"). Java differs from
Python in ways that matter here, translated by :func:`java_pattern`:

* ``.`` does not match any line terminator (``\\n``, ``\\r``, ``\\u0085``, ``\\u2028``, ``\\u2029``);
* ``\\d``, ``\\w``, ``\\s`` are ASCII-only unless UNICODE_CHARACTER_CLASS is set (it is not);
* ``\\p{Alnum}``, ``\\p{Alpha}``, ``\\p{Digit}``, ... are US-ASCII POSIX classes;
* ``\\p{L}``, ``\\p{N}``, ``\\p{Z}`` are Unicode categories (Python's ``re`` lacks them: the ``regex`` package).
"""

from __future__ import annotations

import datetime
from functools import lru_cache
from typing import Any

import botocore.session
import regex

_POSIX = {"Lower": "a-z", "Upper": "A-Z", "ASCII": "\\x00-\\x7F", "Alpha": "a-zA-Z", "Digit": "0-9",
          "Alnum": "a-zA-Z0-9", "Punct": "!-/:-@\\[-`{-~", "Graph": "!-~", "Print": " -~", "Blank": " \\t",
          "Cntrl": "\\x00-\\x1F\\x7F", "XDigit": "0-9a-fA-F", "Space": " \\t\\n\\x0B\\f\\r"}
_JAVA_DOT = "[^\\n\\r\\u0085\\u2028\\u2029]"
_ASCII_CLASSES = {"d": "0-9", "w": "a-zA-Z0-9_", "s": " \\t\\n\\x0B\\f\\r"}


@lru_cache(maxsize=None)
def java_pattern(pattern: str) -> regex.Pattern[str]:
    """A compiled equivalent of Java's ``Pattern.compile(pattern)`` for whole-value matching."""
    out: list[str] = []
    i, in_class = 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            nxt = pattern[i + 1]
            if nxt in "pP" and i + 2 < len(pattern) and pattern[i + 2] == "{":
                end = pattern.index("}", i)
                name = pattern[i + 3:end]
                if name in _POSIX:
                    ranges = _POSIX[name]
                    negate = nxt == "P"
                    out.append(ranges if in_class and not negate else f"[{'^' if negate else ''}{ranges}]")
                else:  # a Unicode category: the same in the regex package
                    out.append(pattern[i:end + 1])
                i = end + 1
                continue
            if nxt in _ASCII_CLASSES:  # Java's \d \w \s are ASCII
                ranges = _ASCII_CLASSES[nxt]
                out.append(ranges if in_class else f"[{ranges}]")
            elif nxt.lower() in _ASCII_CLASSES and not in_class:
                out.append(f"[^{_ASCII_CLASSES[nxt.lower()]}]")
            else:  # \D \W \S inside a class: as Python reads them (differs only on non-ASCII space/digits)
                out.append(c + nxt)
            i += 2
            continue
        if in_class:
            if c == "]":
                in_class = False
            out.append(c)
        elif c == "[":
            in_class = True
            out.append(c)
            if pattern[i + 1:i + 2] == "^":
                out.append("^")
                i += 1
            if pattern[i + 1:i + 2] == "]":  # a literal ] first in a class
                out.append("\\]")
                i += 1
        elif c == ".":
            out.append(_JAVA_DOT)
        else:
            out.append(c)
        i += 1
    return regex.compile("".join(out), regex.V0)


@lru_cache(maxsize=None)
def _model(service: str) -> Any:
    return botocore.session.get_session().get_service_model(service)


def validate(service: str, operation: str, params: dict[str, Any]) -> list[str]:
    """Every violation of ``operation``'s input shape by ``params`` (empty when valid)."""
    shape = _model(service).operation_model(operation).input_shape
    errors: list[str] = []
    _check(shape, params, operation, errors)
    return errors


def assert_valid(service: str, operation: str, params: dict[str, Any]) -> None:
    """Raise AssertionError naming each violation."""
    errors = validate(service, operation, params)
    if errors:
        raise AssertionError(f"{service}:{operation} request invalid:\n  " + "\n  ".join(errors))


def _check(shape: Any, value: Any, path: str, errors: list[str]) -> None:
    kind = shape.type_name
    meta = shape.metadata
    if kind == "structure":
        if not isinstance(value, dict):
            errors.append(f"{path}: expected an object, got {type(value).__name__}")
            return
        for name in shape.required_members:
            if name not in value:
                errors.append(f"{path}.{name}: required")
        for name, item in value.items():
            if name not in shape.members:
                errors.append(f"{path}.{name}: unknown member of {shape.name}")
            else:
                _check(shape.members[name], item, f"{path}.{name}", errors)
    elif kind == "list":
        if not isinstance(value, list):
            errors.append(f"{path}: expected a list, got {type(value).__name__}")
            return
        _bounds(len(value), meta, path, errors, "items")
        for i, item in enumerate(value):
            _check(shape.member, item, f"{path}[{i}]", errors)
    elif kind == "map":
        if not isinstance(value, dict):
            errors.append(f"{path}: expected a map, got {type(value).__name__}")
            return
        _bounds(len(value), meta, path, errors, "entries")
        for k, v in value.items():
            _check(shape.key, k, f"{path} key {k!r}", errors)
            _check(shape.value, v, f"{path}[{k!r}]", errors)
    elif kind == "string":
        if not isinstance(value, str):
            errors.append(f"{path}: expected a string, got {type(value).__name__}")
            return
        _bounds(len(value), meta, path, errors, "characters")
        if shape.enum and value not in shape.enum:
            errors.append(f"{path}: {value!r} is not one of {sorted(shape.enum)}")
        pattern = meta.get("pattern")
        if pattern is not None and not java_pattern(pattern).fullmatch(value):
            errors.append(f"{path}: {value!r} does not match the pattern {pattern!r}")
    elif kind in ("integer", "long"):
        if not isinstance(value, int) or isinstance(value, bool):
            errors.append(f"{path}: expected an integer, got {value!r}")
            return
        _range(value, meta, path, errors)
    elif kind in ("float", "double"):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            errors.append(f"{path}: expected a number, got {value!r}")
            return
        _range(value, meta, path, errors)
    elif kind == "boolean":
        if not isinstance(value, bool):
            errors.append(f"{path}: expected a boolean, got {value!r}")
    elif kind == "timestamp":
        if not isinstance(value, (datetime.datetime, str, int, float)):
            errors.append(f"{path}: expected a timestamp, got {value!r}")
    elif kind == "blob":
        if not isinstance(value, (bytes, bytearray, str)):
            errors.append(f"{path}: expected bytes, got {type(value).__name__}")
    else:
        errors.append(f"{path}: shape type {kind} not handled by tests/strict_requests.py")


def _bounds(n: int, meta: dict[str, Any], path: str, errors: list[str], unit: str) -> None:
    if "min" in meta and n < meta["min"]:
        errors.append(f"{path}: {n} {unit}, fewer than the minimum {meta['min']}")
    if "max" in meta and n > meta["max"]:
        errors.append(f"{path}: {n} {unit}, more than the maximum {meta['max']}")


def _range(v: float, meta: dict[str, Any], path: str, errors: list[str]) -> None:
    if "min" in meta and v < meta["min"]:
        errors.append(f"{path}: {v} is below the minimum {meta['min']}")
    if "max" in meta and v > meta["max"]:
        errors.append(f"{path}: {v} is above the maximum {meta['max']}")


# The SageMaker calls every local execution is checked for (tests/sfn_harness.py, when the harness stops).
TRAINING_JOB_CALLS = ("CreateTrainingJob", "UpdateTrainingJob", "StopTrainingJob")


def check_calls(calls: list[Any]) -> int:
    """Validate every recorded SageMaker training-job request (``tests.aws_iam.Call``); returns how many."""
    sent = [c for c in calls if c.service == "sagemaker" and c.operation in TRAINING_JOB_CALLS]
    for call in sent:
        assert_valid("sagemaker", call.operation, call.params)
    return len(sent)
