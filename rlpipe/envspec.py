"""Observation/action space signatures of environments, for plan-time transfer checks.

Where gymnasium is installed the real environment is built; elsewhere (the AWS Lambdas) a catalog shipped
as package data answers. ``python -m rlpipe.envspec`` regenerates that catalog; a test keeps it in sync.
"""

from __future__ import annotations

import difflib
import json
import sys
from functools import lru_cache
from importlib import resources
from typing import Any

CATALOG_FILE = "env_catalog.json"


def _space_signature(space: Any) -> dict[str, Any]:
    """A JSON-able description that is equal exactly when two spaces are interchangeable for a policy."""
    kind = type(space).__name__
    sig: dict[str, Any] = {"type": kind}
    if kind == "Box":
        sig.update(shape=list(space.shape), dtype=str(space.dtype),
                   low=[float(x) for x in space.low.flatten()], high=[float(x) for x in space.high.flatten()])
    elif kind == "Discrete":
        sig.update(n=int(space.n), start=int(space.start))
    elif kind == "MultiDiscrete":
        sig.update(nvec=[int(x) for x in space.nvec.flatten()])
    elif kind == "MultiBinary":
        sig.update(n=space.n if isinstance(space.n, int) else list(space.n))
    else:
        sig.update(repr=repr(space))
    return sig


def _obs_signature(space: Any) -> dict[str, Any]:
    """Observation bounds are usually infinite and irrelevant to a policy: compare type, shape and dtype."""
    sig = _space_signature(space)
    sig.pop("low", None)
    sig.pop("high", None)
    return sig


def _gymnasium_available() -> bool:
    try:
        import gymnasium  # noqa: F401
    except ImportError:
        return False
    return True


@lru_cache(maxsize=1)
def _catalog() -> dict[str, dict[str, Any]]:
    text = resources.files("rlpipe").joinpath("data", CATALOG_FILE).read_text()
    return json.loads(text)


def _registered_ids() -> list[str]:
    import gymnasium

    import rlpipe.envs  # noqa: F401  (registers the rlpipe/* ids)

    return sorted(gymnasium.registry.keys())


def known_env_ids() -> list[str]:
    """Every env id a session may name here."""
    if _gymnasium_available():
        return _registered_ids()
    return sorted(_catalog())


def suggest_env_ids(env_id: str, n: int = 3) -> list[str]:
    """Closest known ids to a misspelt one."""
    ids = known_env_ids()
    lowered = {i.lower(): i for i in ids}
    close = difflib.get_close_matches(env_id.lower(), list(lowered), n=n, cutoff=0.5)
    return [lowered[c] for c in close]


@lru_cache(maxsize=64)
def _live_signature(env_id: str, kwargs_json: str = "{}") -> dict[str, Any]:
    import gymnasium

    import rlpipe.envs  # noqa: F401

    env = gymnasium.make(env_id, **json.loads(kwargs_json))
    try:
        return {"observation": _obs_signature(env.observation_space),
                "action": _space_signature(env.action_space)}
    finally:
        env.close()


def env_signature(env_id: str, env_kwargs: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Space signature of ``env_id`` built with ``env_kwargs``, or None if the id is unknown here.

    The shipped catalog knows only default kwargs; where it answers, kwargs that change the spaces go
    unnoticed until the session starts (``rlpipe start`` validates locally first, with gymnasium).
    """
    if _gymnasium_available():
        if env_id not in _registered_ids():
            return None
        return _live_signature(env_id, json.dumps(env_kwargs or {}, sort_keys=True))
    return _catalog().get(env_id)


def describe(sig: dict[str, Any]) -> str:
    """Short human form of a space signature, for error messages."""
    if sig["type"] == "Box":
        return f"Box{tuple(sig['shape'])} {sig['dtype']}"
    return sig.get("repr") or f"{sig['type']}({', '.join(f'{k}={v}' for k, v in sig.items() if k != 'type')})"


def build_catalog() -> dict[str, dict[str, Any]]:
    """Signatures of every registered env that builds without extra packages (rlpipe and MuJoCo first)."""
    import gymnasium

    catalog: dict[str, dict[str, Any]] = {}
    for env_id in _registered_ids():
        spec = gymnasium.spec(env_id)
        entry = str(spec.entry_point)
        if not (env_id.startswith("rlpipe/") or "mujoco" in entry or "classic_control" in entry):
            continue
        try:
            catalog[env_id] = _live_signature(env_id)
        except Exception:  # an env needing a missing extra (or deprecated) is simply not catalogued
            continue
    return catalog


if __name__ == "__main__":
    out = resources.files("rlpipe").joinpath("data", CATALOG_FILE)
    with open(str(out), "w") as fh:
        json.dump(build_catalog(), fh, indent=1, sort_keys=True)
        fh.write("\n")
    print(f"wrote {out}", file=sys.stderr)
