"""Curriculum quality: the default curriculum's second session warm-started from the first, against the same
session trained from scratch, at equal budget, over several seeds.

Per seed, two local runs (each a fresh interpreter running ``LocalRunner``): the whole default curriculum with
that seed in every session (its second session is the "transfer" arm), and the second session alone with the
warm start turned off ("scratch"). Both arms see the same env, budget, evaluation settings and seed. Runs go two
at a time (the trainer uses one torch thread and one process per run).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.figures import figure, ratio
from bench.sessions import curriculum
from bench.settings import Budgets
from bench.throughput import run_child
from rlpipe.contract import METRICS_FILE, STATE_FILE
from rlpipe.jsonio import read_json

log = logging.getLogger("bench.transfer")

# CrushResistance pays ~1 per step for surviving and up to 1 more for torso height (0 in the start crouch,
# 1 fully extended), over 1000-step episodes. 1500 means: survives the whole episode under the growing load
# while holding the torso, on average, at least half-way from the crouch to full extension.
THRESHOLD = 1500.0
THRESHOLD_MEANING = ("mean evaluation reward >= 1500: survives the 1000-step episode under the growing load with "
                     "the torso on average at least half-way from the crouch to full extension")


def steps_to(evaluations: list[dict[str, Any]], threshold: float) -> int | None:
    """First evaluated session step at which the mean reward reaches ``threshold`` (None: never)."""
    for e in sorted(evaluations, key=lambda e: e["timesteps"]):
        if e["mean_reward"] >= threshold:
            return int(e["timesteps"])
    return None


def _task(kind: str, seed: int, budgets: Budgets, workdir: Path) -> dict[str, Any]:
    scratch = kind == "scratch"
    pipeline = curriculum(seed=seed, timesteps=budgets.transfer_timesteps, eval_every=budgets.transfer_eval_every,
                          eval_episodes=budgets.transfer_eval_episodes,
                          sessions=slice(1, 2) if scratch else slice(None), scratch=scratch,
                          name=f"{kind}-s{seed}")
    spec = workdir / f"{pipeline.name}.json"
    spec.write_text(json.dumps(pipeline.resolved()))
    out = workdir / pipeline.name
    started = time.perf_counter()
    proc = run_child("bench.pipeline_run", [str(spec), str(out)], 6 * 3600, workdir / f"{pipeline.name}.log")
    wall = round(time.perf_counter() - started, 1)
    if proc.returncode != 0:
        log.error("%s failed (see %s)", pipeline.name, workdir / f"{pipeline.name}.log")
        return {"kind": kind, "seed": seed, "error": "run failed", "wall_seconds": wall}
    state = read_json(out / STATE_FILE)
    target = pipeline.sessions[-1]
    metrics = read_json(out / target.name / "model" / METRICS_FILE)
    row: dict[str, Any] = {
        "kind": kind, "seed": seed, "session": target.name, "env": target.env, "timesteps": metrics["timesteps"],
        "final_eval_reward": metrics["final_eval_reward"], "best_eval_reward": metrics["best_eval_reward"],
        "steps_to_threshold": steps_to(metrics["evaluations"], THRESHOLD),
        "curve": [[e["timesteps"], e["mean_reward"]] for e in sorted(metrics["evaluations"],
                                                                      key=lambda e: e["timesteps"])],
        "fps": metrics["timing"].get("fps"), "wall_seconds": wall, "carried": metrics.get("carried", []),
    }
    if not scratch:
        first = state["sessions"][0]
        row["first_session"] = {"name": first["name"], "timesteps": first["timesteps"],
                                "final_eval_reward": first["final_eval_reward"]}
        row["transition_seconds"] = state["sessions"][1].get("transition_seconds")
        row["transfer_eval_seconds"] = metrics["timing"].get("transfer_eval_seconds")
    log.info("%s: final eval reward %.1f, steps to %g: %s (%.0f s)", pipeline.name, row["final_eval_reward"],
             THRESHOLD, row["steps_to_threshold"], wall)
    return row


def plot(rows: list[dict[str, Any]], path: Path, threshold: float) -> None:
    """Mean ± std of the evaluation reward over seeds, per arm, against session steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    for kind, colour, label in (("transfer", "tab:blue", "warm-started from session 1 (curriculum)"),
                                ("scratch", "tab:orange", "from scratch")):
        runs = [r for r in rows if r["kind"] == kind and "curve" in r]
        if not runs:
            continue
        grid = sorted({t for r in runs for t, _ in r["curve"]})
        # Runs share the evaluation grid; a point missing in one run is left out of that run's mean.
        vals = [[dict(map(tuple, r["curve"])).get(t) for r in runs] for t in grid]  # type: ignore[arg-type]
        mean = np.array([np.mean([v for v in col if v is not None]) for col in vals])
        std = np.array([np.std([v for v in col if v is not None]) for col in vals])
        x = np.array(grid) / 1000.0
        ax.plot(x, mean, color=colour, marker="o", markersize=3, label=f"{label} (n={len(runs)})")
        ax.fill_between(x, mean - std, mean + std, color=colour, alpha=0.2)
    ax.axhline(threshold, color="grey", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
    env = next((r["env"] for r in rows if "env" in r), "")
    ax.set_xlabel("steps in the session (thousands)")
    ax.set_ylabel("evaluation reward (mean over episodes)")
    ax.set_title(f"{env}: transfer vs scratch, mean ± std over seeds")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run(budgets: Budgets, plot_path: Path | None = None, workdir: Path | None = None) -> dict[str, Any]:
    """Run both arms for every seed (``budgets.workers`` at a time), summarize, and draw the plot."""
    with tempfile.TemporaryDirectory(prefix="bench-transfer-") as tmp:
        wd = workdir or Path(tmp)
        wd.mkdir(parents=True, exist_ok=True)
        # Longest first: whole curricula, then the single scratch sessions.
        tasks = [("transfer", s) for s in budgets.transfer_seeds] + [("scratch", s) for s in budgets.transfer_seeds]
        with ThreadPoolExecutor(max_workers=budgets.workers) as pool:
            rows = list(pool.map(lambda t: _task(t[0], t[1], budgets, wd), tasks))
    ok = [r for r in rows if "error" not in r]
    arms: dict[str, Any] = {}
    for kind in ("transfer", "scratch"):
        rs = [r for r in ok if r["kind"] == kind]
        reached = [r["steps_to_threshold"] for r in rs if r["steps_to_threshold"] is not None]
        arms[kind] = {
            "final_eval_reward": figure([r["final_eval_reward"] for r in rs], "reward (mean over eval episodes)", 1),
            "best_eval_reward": figure([r["best_eval_reward"] for r in rs], "reward (mean over eval episodes)", 1),
            "steps_to_threshold": figure(reached, "env steps", 0),
            "reached_threshold": f"{len(reached)}/{len(rs)}",
            "seeds": [r["seed"] for r in rs],
        }
    transfer_runs = [r for r in ok if r["kind"] == "transfer"]
    if transfer_runs:
        arms["transfer"]["reward_at_step_0"] = figure(
            [r["curve"][0][1] for r in transfer_runs if r["curve"] and r["curve"][0][0] == 0], "reward", 1)
        arms["transfer"]["first_session_final_eval_reward"] = figure(
            [r["first_session"]["final_eval_reward"] for r in transfer_runs], "reward", 1)
        arms["transfer"]["transition_seconds_full_budget"] = figure(
            [r.get("transition_seconds") for r in transfer_runs], "s")
        arms["transfer"]["step_0_evaluation_seconds"] = figure(
            [r.get("transfer_eval_seconds") for r in transfer_runs], "s")
    first_budget = curriculum(0, budgets.transfer_timesteps).sessions[0].timesteps
    target = curriculum(0, budgets.transfer_timesteps, budgets.transfer_eval_every,
                        budgets.transfer_eval_episodes).sessions[1]
    result = {
        "session": target.name, "env": target.env, "algorithm": target.algorithm,
        "budget_steps": target.timesteps, "first_session_budget_steps": first_budget,
        "eval_every_steps": target.eval.every_steps, "eval_episodes": target.eval.episodes,
        "handoff": target.handoff.model_dump(), "threshold": THRESHOLD, "threshold_meaning": THRESHOLD_MEANING,
        "seeds": list(budgets.transfer_seeds), "arms": arms,
        "reward_ratio_transfer_vs_scratch": ratio(arms["transfer"]["final_eval_reward"]["mean"],
                                                  arms["scratch"]["final_eval_reward"]["mean"]),
        "runs": rows,
    }
    if plot_path is not None and ok:
        plot(ok, plot_path, THRESHOLD)
        result["plot"] = plot_path.name
    return result
