"""Env signatures: the shipped catalog (used where gymnasium is absent, e.g. the Lambdas) matches the real envs."""

from __future__ import annotations

from typing import Any

import pytest

from rlpipe import envspec
from rlpipe.config import ConfigError, parse_pipeline


@pytest.mark.parametrize("env_id", ["rlpipe/HeightMaximize-v0", "rlpipe/CrushResistance-v0", "Hopper-v5",
                                    "Pendulum-v1"])
def test_catalog_matches_live_env(env_id: str) -> None:
    assert envspec._catalog()[env_id] == envspec._live_signature(env_id)


def test_validation_without_gymnasium_uses_catalog(monkeypatch: pytest.MonkeyPatch,
                                                   tiny_raw: dict[str, Any]) -> None:
    monkeypatch.setattr(envspec, "_gymnasium_available", lambda: False)
    assert parse_pipeline(tiny_raw).sessions[1].env == "rlpipe/CrushResistance-v0"
    tiny_raw["sessions"][1]["env"] = "Hopper-v5"
    with pytest.raises(ConfigError, match="observation space of Hopper-v5"):
        parse_pipeline(tiny_raw)
    tiny_raw["sessions"][1]["env"] = "rlpipe/CrushResistanse-v0"
    with pytest.raises(ConfigError, match="did you mean 'rlpipe/CrushResistance-v0'"):
        parse_pipeline(tiny_raw)
