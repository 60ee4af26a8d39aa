"""Early stopping: how much training a ``stop_when`` gate saves on the quickstart curriculum, over seeds.

Two arms, each the quickstart curriculum (``configs/quickstart.yaml``) as one run with several seeds, driven by
the local lineage driver (:class:`rlpipe.lineages.LineageRunner`: one process per seed's lineage, ``parallel``
at a time), in the same conditions:

- **ungated**: every session trains its whole budget;
- **gated**: every session also has ``stop_when: {metric: eval_mean_reward, at_least: T, for_evals: 2}``.

Both arms evaluate on the same grid, finer than the quickstart's (a gate can only act where there is an
evaluation), in the training process (a gated session always does; the ungated arm is set to match, so the
evaluations cost the same in both), and record no video. The threshold ``T`` of a session is a fixed fraction
of the ungated arm's mean final evaluation reward of that session over the seeds: the level a user who has run
the quickstart once would call good enough. The ungated arm therefore runs first.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.figures import figure, ratio
from bench.sessions import REPO
from bench.settings import Budgets
from rlpipe.config import PipelineConfig, load_pipeline, parse_pipeline
from rlpipe.lineages import LineageRunner, lineage_dir
from rlpipe.runner import load_state

log = logging.getLogger("bench.gates")

QUICKSTART = REPO / "configs" / "quickstart.yaml"
METRIC = "eval_mean_reward"
ARMS = ("ungated", "gated")


def quickstart_pipeline(budgets: Budgets, thresholds: dict[str, float] | None = None) -> PipelineConfig:
    """The quickstart curriculum as the section runs it: ``budgets``' seeds, lineages and evaluation grid, in-process
    evaluation, no video; with ``thresholds`` (session name to reward) a ``stop_when`` on each of those sessions."""
    raw = copy.deepcopy(load_pipeline(QUICKSTART).resolved())
    raw.update(seeds=list(budgets.transfer_seeds), parallel=min(budgets.gate_parallel, len(budgets.transfer_seeds)))
    for s in raw["sessions"]:
        if budgets.gate_timesteps is not None:
            s["timesteps"] = budgets.gate_timesteps
            s["checkpoint"]["every_steps"] = budgets.gate_eval_every
        s["eval"]["every_steps"] = budgets.gate_eval_every
        if budgets.gate_eval_episodes is not None:
            s["eval"]["episodes"] = budgets.gate_eval_episodes
        s["eval"]["background"] = False
        s["eval"]["video"] = {"enabled": False}
        if thresholds is not None and s["name"] in thresholds:
            s["stop_when"] = {"metric": METRIC, "at_least": thresholds[s["name"]], "for_evals": budgets.gate_for_evals}
    return parse_pipeline(raw, source=f"{QUICKSTART} (benchmarked)")


def threshold_for(ungated_finals: list[float], fraction: float) -> float:
    """``fraction`` of the mean of ``ungated_finals``, rounded down to three significant digits (a level as a
    user would write it, e.g. 1750).

    Rewards of both quickstart tasks are sums of non-negative per-step terms, so a fraction of the reached
    reward is a lower level of the same task; a non-positive mean has no such meaning and is refused."""
    if not ungated_finals:
        raise ValueError("no ungated final evaluation reward to derive a threshold from")
    reached = sum(ungated_finals) / len(ungated_finals)
    if reached <= 0:
        raise ValueError(f"the ungated mean final evaluation reward is {reached:g}: a fraction of it is no "
                         "lower level of the task")
    level = fraction * reached
    unit = 10.0 ** (math.floor(math.log10(level)) - 2)
    return round(math.floor(level / unit) * unit, 6)


def _run_arm(arm: str, pipeline: PipelineConfig, workdir: Path) -> dict[str, Any]:
    """Run ``pipeline``'s lineages with the project's lineage driver; per seed and session what was trained."""
    config = workdir / f"{arm}.yaml"
    config.write_text(json.dumps(pipeline.resolved(), indent=1))  # JSON is YAML: the lineages re-read it
    out = workdir / arm
    started = time.perf_counter()
    lineages = LineageRunner(pipeline, config, out, echo=False).run()
    wall = round(time.perf_counter() - started, 1)
    rows: list[dict[str, Any]] = []
    failed = []
    for lin in lineages:
        state = load_state(lineage_dir(out, lin.seed))
        if lin.status != "succeeded" or state is None:
            failed.append({"seed": lin.seed, "status": lin.status, "error": lin.error})
            log.error("%s seed %d: %s (%s); see %s", arm, lin.seed, lin.status, lin.error, out)
            continue
        for cfg, st in zip(pipeline.sessions, state.sessions):
            evaluated = sorted(e.timesteps for e in st.evaluations if e.timesteps is not None)
            rows.append({
                "arm": arm, "seed": lin.seed, "session": st.name, "env": st.env,
                "budget_steps": st.timesteps_budget, "steps": st.timesteps,
                "stopped_early": st.stopped_early, "stop_step": st.stop_step,
                "threshold": cfg.stop_when.at_least if cfg.stop_when else None,
                "wall_seconds": st.wall_seconds, "fps": st.fps,
                "final_eval_reward": st.final_eval_reward, "best_eval_reward": st.best_eval_reward,
                "evaluated_steps": evaluated,
                # A warm start's step-0 evaluation: the handed-over policy on this session's task.
                "step0_eval_reward": next((e.mean_reward for e in st.evaluations if e.timesteps == 0), None),
            })
        log.info("%s seed %d: %s", arm, lin.seed, ", ".join(
            f"{r['session']} {r['steps']:,}/{r['budget_steps']:,} steps, final {r['final_eval_reward']:.1f}"
            for r in rows if r["seed"] == lin.seed))
    return {"wall_seconds": wall, "rows": rows, "failed": failed}


def _total(rows: list[dict[str, Any]], key: str) -> float:
    return sum(float(r[key] or 0.0) for r in rows)


def _paired(ungated: list[dict[str, Any]], gated: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
    """One entry per (seed, session) that both arms completed, the two arms side by side."""
    by_key = {(r["seed"], r["session"]): r for r in ungated}
    out = []
    for g in gated:
        u = by_key.get((g["seed"], g["session"]))
        if u is None:
            continue
        out.append({
            "seed": g["seed"], "session": g["session"], "budget_steps": u["budget_steps"],
            "steps": {"ungated": u["steps"], "gated": g["steps"]},
            "stopped_early": g["stopped_early"], "stop_step": g["stop_step"], "threshold": g["threshold"],
            "wall_seconds": {"ungated": u["wall_seconds"], "gated": g["wall_seconds"]},
            "fps": {"ungated": u["fps"], "gated": g["fps"]},
            "final_eval_reward": {"ungated": u["final_eval_reward"], "gated": g["final_eval_reward"]},
            "best_eval_reward": {"ungated": u["best_eval_reward"], "gated": g["best_eval_reward"]},
            "evaluated_steps": {"ungated": u["evaluated_steps"], "gated": g["evaluated_steps"]},
            "step0_eval_reward": {"ungated": u["step0_eval_reward"], "gated": g["step0_eval_reward"]},
        })
    return sorted(out, key=lambda p: (p["seed"], names.index(p["session"])))


def summarize(pairs: list[dict[str, Any]], sessions: list[str]) -> dict[str, Any]:
    """Steps and wall time saved (fractions of the ungated arm's) and the reward each arm ended with."""
    def saved(key: str, subset: list[dict[str, Any]]) -> dict[str, Any]:
        u = sum(float(p[key]["ungated"] or 0.0) for p in subset)
        g = sum(float(p[key]["gated"] or 0.0) for p in subset)
        return {"ungated": round(u, 1), "gated": round(g, 1),
                "saved_fraction": round(1.0 - g / u, 3) if u > 0 else None}

    per_session = {}
    for name in sessions:
        ps = [p for p in pairs if p["session"] == name]
        per_session[name] = {
            "steps": saved("steps", ps), "wall_seconds": saved("wall_seconds", ps),
            "stopped_early": f"{sum(p['stopped_early'] for p in ps)}/{len(ps)}",
            "stop_step": figure([p["stop_step"] for p in ps if p["stopped_early"]], "env steps", 0),
            "final_eval_reward": {arm: figure([p["final_eval_reward"][arm] for p in ps], "reward", 1)
                                  for arm in ARMS},
            "step0_eval_reward": {arm: figure([p["step0_eval_reward"][arm] for p in ps], "reward", 1)
                                  for arm in ARMS},
        }
        fe = per_session[name]["final_eval_reward"]
        per_session[name]["final_reward_ratio_gated_vs_ungated"] = ratio(fe["gated"]["mean"], fe["ungated"]["mean"])
    last = sessions[-1] if sessions else None
    return {
        "steps": saved("steps", pairs), "wall_seconds": saved("wall_seconds", pairs),
        "stopped_early": f"{sum(p['stopped_early'] for p in pairs)}/{len(pairs)}",
        "per_session": per_session,
        # The curriculum's result is its last session's policy: what the saving cost there.
        "last_session": last,
        "last_session_final_reward_ratio": per_session[last]["final_reward_ratio_gated_vs_ungated"] if last else None,
    }


def run(budgets: Budgets, workdir: Path | None = None) -> dict[str, Any]:
    """Run the ungated arm, derive each session's threshold from it, run the gated arm, and compare."""
    with tempfile.TemporaryDirectory(prefix="bench-gates-") as tmp:
        wd = workdir or Path(tmp)
        wd.mkdir(parents=True, exist_ok=True)
        plain = quickstart_pipeline(budgets)
        names = [s.name for s in plain.sessions]
        ungated = _run_arm("ungated", plain, wd)
        thresholds = {}
        for name in names:
            finals = [r["final_eval_reward"] for r in ungated["rows"]
                      if r["session"] == name and r["final_eval_reward"] is not None]
            thresholds[name] = threshold_for(finals, budgets.gate_fraction)
        log.info("thresholds (%g of the ungated mean final eval reward): %s", budgets.gate_fraction, thresholds)
        gated = _run_arm("gated", quickstart_pipeline(budgets, thresholds), wd)
    first = plain.sessions[0]
    pairs = _paired(ungated["rows"], gated["rows"], names)
    return {
        "config": str(QUICKSTART.relative_to(REPO)), "pipeline": plain.name, "sessions": names,
        "seeds": list(budgets.transfer_seeds), "parallel": plain.parallel,
        "budget_steps": {s.name: s.timesteps for s in plain.sessions},
        "eval_every_steps": first.eval.every_steps, "eval_episodes": first.eval.episodes,
        "quickstart_eval_every_steps": load_pipeline(QUICKSTART).sessions[0].eval.every_steps,
        "stop_when": {"metric": METRIC, "for_evals": budgets.gate_for_evals, "at_least": thresholds},
        "threshold_rule": (f"{budgets.gate_fraction:g} × the ungated arm's mean final evaluation reward of the "
                           "session over the seeds, rounded down to three significant digits"),
        "threshold_fraction": budgets.gate_fraction,
        # The arms' wall time also holds each lineage's process start and the queueing of lineages.
        "arm_wall_seconds": {"ungated": ungated["wall_seconds"], "gated": gated["wall_seconds"],
                             "saved_fraction": (round(1.0 - gated["wall_seconds"] / ungated["wall_seconds"], 3)
                                                if ungated["wall_seconds"] else None)},
        "failed_lineages": {"ungated": ungated["failed"], "gated": gated["failed"]},
        "summary": summarize(pairs, names),
        "pairs": pairs,
    }
