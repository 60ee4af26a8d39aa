"""The sbx backend against SB3's defaults and against a plain SBX script with rlpipe's exact settings.

Per repetition (seed = repetition index), per env, interleaved in fresh processes: (a) SB3 SAC with SB3's
defaults, then per algorithm (SAC, and CrossQ where the installed SBX has it) the plain SBX script with rlpipe's
settings (b-sbx) and rlpipe's trainer on the sbx backend. Steps/s are timed as in the throughput section
(window after ``learning_starts``; rlpipe's periodic work priced to the default intervals by
:func:`bench.throughput.amortize_periodic`). Every run ends with the same evaluation (5 deterministic episodes,
the trainer's evaluation recipe and seed), so speed is compared at equal steps with the reward reached.
"""

from __future__ import annotations

import logging
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench.figures import figure, ratio
from bench.sessions import default_session_dict
from bench.settings import Budgets
from bench.throughput import LEARNING_STARTS_SB3, amortize_periodic, measure_once

log = logging.getLogger("bench.sbx")

UNIT = "env steps/s"
VARIANTS = ("sb3_defaults", "sbx_same_settings", "rlpipe_sbx", "rlpipe_sbx_xla_multi")
LABELS = {"sb3_defaults": "(a) SB3 SAC, SB3 defaults", "sbx_same_settings": "(b-sbx) plain SBX, rlpipe's settings",
          "rlpipe_sbx": "rlpipe, backend sbx", "rlpipe_sbx_xla_multi": "rlpipe, backend sbx, XLA's default threads"}
# Steps after learning_starts before the window opens: SBX compiles its update on the first gradient step
# (tens of seconds on a busy 2-core machine, once per process); every variant waits the same.
WARMUP = 100


def sbx_algorithms() -> tuple[str, ...]:
    """SAC, and CrossQ when the installed SBX offers it."""
    from rlpipe.algorithms import SBX_ALGORITHMS

    return tuple(a for a in ("sac", "crossq") if a in SBX_ALGORITHMS)


def spec_for(variant: str, algorithm: str, env_id: str, seed: int, budgets: Budgets) -> dict[str, Any]:
    """What one child measures (the baseline (a) is SB3's SAC whatever the SBX algorithm)."""
    window = budgets.sac_window
    warmup = WARMUP if budgets.mode != "smoke" else 0
    spec: dict[str, Any] = {"variant": variant, "algorithm": "sac" if variant == "sb3_defaults" else algorithm,
                            "env": env_id, "window": window, "timesteps": LEARNING_STARTS_SB3 + warmup + window,
                            "seed": seed, "final_reward": True, "warmup": warmup}
    if variant == "sb3_defaults":
        # Cut off as in section 1 (its rate stays exact); its final reward then comes from fewer steps and is
        # left out of the equal-steps comparison. Plain SBX runs to the end: its reward is the comparison.
        spec["max_seconds"] = budgets.max_seconds
    if variant != "sb3_defaults":
        spec["backend"] = "sbx"
    if variant == "rlpipe_sbx_xla_multi":
        spec["xla_multi_thread"] = True
    if variant.startswith("rlpipe_sbx"):
        defaults = default_session_dict(0)
        if window < 3 * min(defaults["eval"]["every_steps"], defaults["checkpoint"]["every_steps"]):
            spec["interval"] = window // 3
    return spec


SEEDS = (0, 1, 2)
# CrossQ and the XLA thread comparison run on the first seed only: each SBX process spends most of a minute
# importing JAX and compiling its update before the window opens on a busy 2-core machine.
EXTRA_SEEDS = (0,)


def plan_runs(budgets: Budgets) -> list[dict[str, Any]]:
    """All measurements in the interleaved order they run in."""
    specs = []
    for seed in SEEDS[:budgets.repetitions]:
        for env_id in budgets.envs:
            specs.append(spec_for("sb3_defaults", "sac", env_id, seed, budgets))
            for algorithm in sbx_algorithms():
                if algorithm != "sac" and seed not in EXTRA_SEEDS:
                    continue
                variants = ["sbx_same_settings", "rlpipe_sbx"]
                if algorithm == "sac" and seed in EXTRA_SEEDS:
                    variants.append("rlpipe_sbx_xla_multi")
                specs.extend(spec_for(v, algorithm, env_id, seed, budgets) for v in variants)
    return specs


def _rate(run: dict[str, Any]) -> float | None:
    if not str(run.get("variant")).startswith("rlpipe_sbx"):
        return run.get("steps_per_second")
    defaults = default_session_dict(0)
    return amortize_periodic(run, defaults["eval"]["every_steps"], defaults["checkpoint"]["every_steps"],
                             defaults["eval"]["episodes"])["steady_state"]


def summarize(runs: list[dict[str, Any]], budgets: Budgets) -> list[dict[str, Any]]:
    """One case per (algorithm, env): rates, paired ratios, final rewards, update shares."""
    cases = []
    for algorithm in sbx_algorithms():
        for env_id in budgets.envs:
            def pick(variant: str) -> list[dict[str, Any]]:
                algo = "sac" if variant == "sb3_defaults" else algorithm
                return [r for r in runs if r.get("variant") == variant and r.get("env") == env_id
                        and r.get("algorithm") == algo]

            by = {v: pick(v) for v in VARIANTS}
            rates = {v: [_rate(r) for r in by[v]] for v in VARIANTS}
            seeds = {v: {r.get("seed"): _rate(r) for r in by[v]} for v in VARIANTS}
            paired_a = [ratio(seeds["rlpipe_sbx"].get(k), seeds["sb3_defaults"].get(k)) for k in seeds["rlpipe_sbx"]]
            paired_b = [ratio(seeds["rlpipe_sbx"].get(k), seeds["sbx_same_settings"].get(k))
                        for k in seeds["rlpipe_sbx"]]
            med = {v: figure(rates[v], UNIT, 2) for v in VARIANTS}
            cases.append({
                "algorithm": algorithm, "env": env_id,
                "rates": med,
                "ratio_vs_sb3_defaults": ratio(med["rlpipe_sbx"]["median"], med["sb3_defaults"]["median"]),
                "ratio_vs_sbx_same_settings": ratio(med["rlpipe_sbx"]["median"],
                                                    med["sbx_same_settings"]["median"]),
                # paired: only the seeds that ran both thread settings
                "xla_single_same_seeds": figure([seeds["rlpipe_sbx"].get(k) for k in seeds["rlpipe_sbx_xla_multi"]],
                                                UNIT, 2),
                "ratio_xla_multi_vs_single": ratio(
                    med["rlpipe_sbx_xla_multi"]["median"],
                    median_or_none([seeds["rlpipe_sbx"].get(k) for k in seeds["rlpipe_sbx_xla_multi"]])),
                "paired_ratio_vs_sb3_defaults": figure([x for x in paired_a if x is not None], "ratio", 3),
                "paired_ratio_vs_sbx_same_settings": figure([x for x in paired_b if x is not None], "ratio", 3),
                "final_reward": {v: figure([r.get("final_reward") for r in by[v] if not r.get("capped")],
                                           "mean episode reward", 1) for v in VARIANTS},
                "capped_runs": {v: sum(1 for r in by[v] if r.get("capped")) for v in VARIANTS},
                "update_share": {v: figure([r.get("update_share") for r in by[v]], "share", 3) for v in VARIANTS},
                "background_eval": [bool(r.get("background_eval")) for r in by["rlpipe_sbx"]],
                "xla_flags": sorted({str(r.get("xla_flags")) for r in by["rlpipe_sbx"]}),
                "load_average_1min": figure([r.get("load_average_1min") for v in VARIANTS for r in by[v]], "load",
                                            2),
                "failed_runs": sum(1 for v in VARIANTS for r in by[v] if r.get("error")),
            })
    return cases


def run(budgets: Budgets, workdir: Path | None = None) -> dict[str, Any]:
    """Measure every planned run in order and summarize."""
    specs = plan_runs(budgets)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="rlpipe-bench-sbx-") as tmp:
        where = workdir or Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        for i, spec in enumerate(specs):
            log.info("sbx %d/%d: %s %s %s seed %s", i + 1, len(specs), spec["variant"], spec["algorithm"],
                     spec["env"], spec["seed"])
            result = measure_once(spec, where)
            result.setdefault("seed", spec["seed"])
            runs.append(result)
    import sbx  # noqa: F401  (version of what was measured)
    import jax

    return {"window_steps": budgets.sac_window, "warmup_steps": specs[0]["warmup"], "seeds": sorted({s["seed"] for s in specs}),
            "order": "per seed, per env: (a), then per algorithm (b-sbx), rlpipe",
            "versions": {"sbx": sbx.__version__, "jax": jax.__version__},
            "cpu_count": os.cpu_count(), "cases": summarize(runs, budgets), "runs": runs,
            "labels": LABELS}


def worst(cases: list[dict[str, Any]], key: str, algorithm: str = "sac") -> tuple[float | None, str | None]:
    """The smallest ``key`` over envs for ``algorithm`` and which env it is."""
    found = [(c[key], c["env"]) for c in cases if c["algorithm"] == algorithm and c.get(key) is not None]
    if not found:
        return None, None
    value, env_id = min(found)
    return value, env_id


def median_or_none(values: list[float]) -> float | None:
    """Median of the values that exist."""
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None
