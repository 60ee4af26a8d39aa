"""Across seeds: per-session mean, interquartile mean and a 95 % bootstrap interval, and the report of a run
with several lineages (one whole curriculum per seed).

The interval is a percentile bootstrap stratified by session (each session's seeds are resampled on their
own), as rliable computes it. It is written here in plain Python because this module belongs to the core
that the report Lambda imports, which carries only pydantic and PyYAML: scipy (in a training environment at
most as a dependency of something else) or rliable (scipy, pandas, seaborn, arch) would add tens of MB to every
Lambda bundle for twenty lines of arithmetic. Resampling uses a fixed seed, so a report is reproducible.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Any

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
AGGREGATED = ("final_eval_reward", "best_eval_reward")


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean of a non-empty sequence."""
    return sum(values) / len(values)


def iqm(values: Sequence[float]) -> float:
    """Interquartile mean: the mean of the middle half, a quarter cut from each end (scipy's
    ``trim_mean(x, 0.25)``, rliable's IQM); robust to one lucky or failed seed, less noisy than the median."""
    ordered = sorted(values)
    cut = int(0.25 * len(ordered))
    kept = ordered[cut: len(ordered) - cut]
    return mean(kept)


def _percentile(ordered: list[float], q: float) -> float:
    """Linear-interpolated ``q``-quantile of sorted values (numpy's default method)."""
    pos = q * (len(ordered) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def stratified_bootstrap_ci(strata: Sequence[Sequence[float]], statistic: Callable[[Sequence[float]], float],
                            resamples: int = BOOTSTRAP_RESAMPLES, confidence: float = CONFIDENCE,
                            seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile interval of ``statistic`` over the pooled values, resampling each stratum with replacement
    on its own (so every stratum keeps its size)."""
    rng = random.Random(seed)
    stats = []
    for _ in range(resamples):
        pooled = [v for stratum in strata for v in rng.choices(stratum, k=len(stratum))]
        stats.append(statistic(pooled))
    stats.sort()
    alpha = (1 - confidence) / 2
    return _percentile(stats, alpha), _percentile(stats, 1 - alpha)


def summarize(values: Sequence[float]) -> dict[str, Any] | None:
    """``{mean, iqm, ci95: [lo, hi]}`` of one session's values across seeds (the interval of the mean);
    None without values."""
    if not values:
        return None
    lo, hi = stratified_bootstrap_ci([values], mean)
    return {"mean": round(mean(values), 6), "iqm": round(iqm(values), 6), "ci95": [round(lo, 6), round(hi, 6)]}


def aggregate_sessions(lineages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per session (in curriculum order): how many lineages completed it (``n``) and the summary of each of
    :data:`AGGREGATED` over those lineages."""
    names = [s["name"] for s in lineages[0]["sessions"]] if lineages else []
    out = []
    for name in names:
        done = [s for lin in lineages for s in lin["sessions"] if s["name"] == name and s["status"] == "completed"]
        entry: dict[str, Any] = {"name": name, "n": len(done)}
        for key in AGGREGATED:
            entry[key] = summarize([s[key] for s in done if s.get(key) is not None])
        out.append(entry)
    return out


def curve_band(lineages: list[dict[str, Any]], session: str) -> list[dict[str, float]]:
    """A session's learning curve across seeds on the run's timestep axis: at each evaluated step that every
    lineage reached, the mean reward and a 95 % bootstrap band of the mean."""
    per_seed = []
    for lin in lineages:
        s = next((x for x in lin["sessions"] if x["name"] == session), None)
        if s is not None and s["evaluations"]:
            per_seed.append({e["global_timesteps"]: e["mean_reward"] for e in s["evaluations"]})
    if not per_seed:
        return []
    common = sorted(set.intersection(*(set(d) for d in per_seed)))
    band = []
    for step in common:
        values = [d[step] for d in per_seed]
        lo, hi = stratified_bootstrap_ci([values], mean, resamples=500)
        band.append({"global_timesteps": step, "mean": mean(values), "lo": lo, "hi": hi})
    return band


def multi_seed_report(pipeline: str, run_id: str, lineages: list[tuple[int, dict[str, Any]]],
                      parallel: int) -> dict[str, Any]:
    """``report.json`` of a run with several lineages: each lineage's own report under ``lineages`` (with its
    ``seed``), the per-session aggregate, and the run-level keys of a single-seed report. ``sessions`` holds
    the first seed's lineage, so a reader of single-seed reports finds the same shape."""
    reports = [{"seed": seed, **rep} for seed, rep in lineages]
    statuses = [r["status"] for r in reports]
    status = ("interrupted" if "interrupted" in statuses else "running" if "running" in statuses
              else "failed" if "failed" in statuses else "interrupted" if "not_started" in statuses
              else "succeeded")
    first = reports[0]
    report = {k: v for k, v in first.items() if k not in ("seed", "lineages")}
    failures = [{"seed": r["seed"], **f} for r in reports for f in r.get("failures", [])]
    summed = ("sessions_total", "sessions_completed", "total_timesteps", "total_timesteps_budget",
              "total_session_wall_seconds", "total_transition_seconds", "total_cost_usd", "total_billable_seconds",
              "total_training_seconds", "total_warm_pool_idle_seconds")
    for key in summed:
        values = [r[key] for r in reports if r.get(key) is not None]
        if values:
            report[key] = round(sum(values), 6)
    spans = [r["total_wall_seconds"] for r in reports if r.get("total_wall_seconds") is not None]
    report.update({
        "run_id": run_id, "pipeline": pipeline, "status": status, "state_status": status,
        "error": "; ".join(f"seed {r['seed']}: {r['error']}" for r in reports if r.get("error")) or None,
        "failures": failures,
        # Lineages run side by side: the run lasts as long as its longest lineage at most.
        "total_wall_seconds": max(spans) if spans else None,
        "seeds": [r["seed"] for r in reports],
        "parallel": parallel,
        "lineages": [{"seed": r["seed"], "status": r["status"], "run_id": r["run_id"], "error": r.get("error"),
                      "sessions": r["sessions"]} for r in reports],
        "aggregate": {"sessions": aggregate_sessions(reports),
                      "interval": f"{int(CONFIDENCE * 100)}% percentile bootstrap of the mean, stratified by "
                                  f"session, {BOOTSTRAP_RESAMPLES} resamples"},
    })
    return report
