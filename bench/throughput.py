"""Trainer throughput against plain stable-baselines3 and raw env stepping, interleaved, in fresh processes.

Order of runs: for each repetition, for each env, for each algorithm: SB3 defaults (a), SB3 with rlpipe's
settings (b), raw env (c; once per env and repetition, it does not depend on the algorithm), rlpipe. Neighbouring
runs see the same background load, so the ratios hold on a shared machine even when absolute rates drift.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.figures import figure, ratio
from bench.sessions import REPO, default_session_dict, throughput_session
from bench.settings import Budgets

log = logging.getLogger("bench.throughput")

VARIANTS = ("sb3_defaults", "sb3_same_settings", "raw_env", "rlpipe", "rlpipe_in_process")
RLPIPE_VARIANTS = ("rlpipe", "rlpipe_in_process")
LABELS = {"sb3_defaults": "(a) SB3 defaults", "sb3_same_settings": "(b) SB3, rlpipe's settings",
          "raw_env": "(c) raw env, random actions", "rlpipe": "rlpipe trainer",
          "rlpipe_in_process": "rlpipe, in-process evaluation"}
UNIT = "env steps/s"
# Variables that would pin torch's thread count in the children: SB3's defaults must see torch's own default.
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
LEARNING_STARTS_SB3 = 100  # off-policy windows open after this many steps (SB3's default learning_starts)
# rlpipe's rate with its periodic work priced three ways (see amortize_periodic); the ratios use HEADLINE_RATE.
OURS_RATES = ("training_only", "at_default_intervals", "steady_state")
HEADLINE_RATE = "steady_state"


def child_env() -> dict[str, str]:
    """Environment for measurement processes: the repo importable, no thread pinning, no GUI backends."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.setdefault("MPLBACKEND", "Agg")
    return env


def run_child(module: str, args: list[str], timeout: float, log_path: Path) -> subprocess.CompletedProcess[str]:
    """Run ``python -m module args`` in a fresh interpreter from the repo root; output goes to ``log_path``."""
    with open(log_path, "a") as out:
        return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=child_env(), stdout=out,
                              stderr=subprocess.STDOUT, text=True, timeout=timeout, check=False)


def measurement_spec(variant: str, algorithm: str, env_id: str, budgets: Budgets) -> dict[str, Any]:
    """What one child measures: window length, the rlpipe session's budget and intervals, the time cap."""
    if variant == "raw_env":
        return {"variant": variant, "env": env_id, "window": budgets.raw_window, "max_seconds": budgets.max_seconds}
    window = budgets.ppo_window if algorithm == "ppo" else budgets.sac_window
    opens_after = 0 if algorithm in ("ppo", "a2c") else LEARNING_STARTS_SB3
    timesteps = opens_after + window
    spec: dict[str, Any] = {"variant": variant, "algorithm": algorithm, "env": env_id, "window": window,
                            "timesteps": timesteps}
    if variant in RLPIPE_VARIANTS:
        # The default intervals when the window spans three; otherwise an evaluation and a checkpoint every
        # third of the window, priced back to the default interval (see amortize_periodic). Background
        # evaluations then run while the window trains, and eval.background's default (at least two
        # evaluations before the end) chooses as it does for a default-length session.
        defaults = default_session_dict(0)
        if window < 3 * min(defaults["eval"]["every_steps"], defaults["checkpoint"]["every_steps"]):
            spec["interval"] = window // 3
        if variant == "rlpipe_in_process":
            spec["background_eval"] = False
    else:
        # Baselines only: rlpipe's window must hold its evaluation and checkpoint, so it is never cut short.
        spec["max_seconds"] = budgets.max_seconds
    return spec


def measure_once(spec: dict[str, Any], workdir: Path, timeout: float = 1800) -> dict[str, Any]:
    """One measurement in a fresh process; a failure is recorded, not raised."""
    out = workdir / f"m{time.monotonic_ns()}.json"
    started = time.perf_counter()
    try:
        proc = run_child("bench.throughput_variants", [json.dumps(spec), str(out)], timeout, workdir / "children.log")
        ok = proc.returncode == 0 and out.exists()
    except subprocess.TimeoutExpired:
        ok = False
    if not ok:
        log.error("measurement failed: %s (see %s)", spec, workdir / "children.log")
        return {**spec, "error": "child failed", "steps_per_second": None}
    result = json.loads(out.read_text())
    result["wall_seconds_with_startup"] = round(time.perf_counter() - started, 3)
    result["load_average_1min"] = os.getloadavg()[0]
    return result


def amortize_periodic(run: dict[str, Any], eval_every: int, checkpoint_every: int,
                      eval_episodes: int) -> dict[str, float | None]:
    """rlpipe's rate three ways, from the time its window spent training, evaluating and checkpointing.

    - ``training_only``: evaluation and checkpoint time taken out;
    - ``at_default_intervals``: one evaluation (as measured in the window) and one checkpoint per default interval;
    - ``steady_state``: as above, but every evaluation episode runs to the time limit, as they do once a
      policy survives (evaluation time = episodes x max episode steps / measured evaluation steps per second).
      With background evaluation the training loop only hands over a snapshot and records the result, whatever
      the episodes' length, so steady state is ``at_default_intervals`` provided the worker keeps up: a
      full-length evaluation must take less than training one interval (``worker_keeps_up``). The worker's
      evaluations ran beside the measured training, every third of the window: more often than by default.
    """
    steps, seconds = run.get("steps"), run.get("seconds")
    none = {"training_only": None, "at_default_intervals": None, "steady_state": None,
            "eval_steps_per_second": None, "eval_seconds_on_loop": None, "worker_keeps_up": None}
    if not steps or not seconds:
        return none
    evals, ckpts = run.get("eval_seconds", []), run.get("checkpoint_seconds", [])
    background = bool(run.get("background_eval"))
    loop_eval = sum(evals) + (sum(run.get("record_seconds", [])) if background else 0.0)
    train = seconds - loop_eval - sum(ckpts)
    if train <= 0:
        return none
    per_eval = loop_eval / len(evals) if evals else 0.0
    per_ckpt = sum(ckpts) / len(ckpts) if ckpts else 0.0
    ckpt_time = per_ckpt * steps / checkpoint_every
    at_default = train + per_eval * steps / eval_every + ckpt_time
    worker_seconds = sum(run.get("worker_eval_seconds", []))
    if background:
        eval_steps = sum(run.get("worker_eval_env_steps", []))
        eval_rate = eval_steps / worker_seconds if worker_seconds and eval_steps else None
    else:
        eval_steps = sum(run.get("eval_env_steps", []))
        eval_rate = eval_steps / sum(evals) if evals and eval_steps else None
    steady, keeps_up = None, None
    if background:
        steady = round(steps / at_default, 2)
        if eval_rate and run.get("max_episode_steps"):
            keeps_up = eval_episodes * run["max_episode_steps"] / eval_rate < eval_every * train / steps
    elif eval_rate and run.get("max_episode_steps"):
        full_eval = eval_episodes * run["max_episode_steps"] / eval_rate
        steady = round(steps / (train + full_eval * steps / eval_every + ckpt_time), 2)
    return {"training_only": round(steps / train, 2), "at_default_intervals": round(steps / at_default, 2),
            "steady_state": steady, "eval_steps_per_second": round(eval_rate, 1) if eval_rate else None,
            "eval_seconds_on_loop": round(per_eval, 4), "worker_keeps_up": keeps_up}


def plan_runs(budgets: Budgets) -> list[dict[str, Any]]:
    """All measurements in the interleaved order they run in."""
    specs = []
    for rep in range(budgets.repetitions):
        for env_id in budgets.envs:
            for i, algorithm in enumerate(budgets.algorithms):
                for variant in VARIANTS:
                    if variant == "raw_env" and i > 0:
                        continue
                    specs.append({**measurement_spec(variant, algorithm, env_id, budgets), "repetition": rep})
    return specs


def summarize(runs: list[dict[str, Any]], budgets: Budgets) -> dict[str, Any]:
    """Medians per (algorithm, env, variant), ratios of medians, and ratios paired within a repetition."""
    defaults = default_session_dict(0)
    eval_every, ckpt_every = defaults["eval"]["every_steps"], defaults["checkpoint"]["every_steps"]
    eval_episodes = defaults["eval"]["episodes"]
    cases = []
    for env_id in budgets.envs:
        raw = [r for r in runs if r["variant"] == "raw_env" and r["env"] == env_id]
        for algorithm in budgets.algorithms:
            pick = {v: [r for r in runs if r["variant"] == v and r["env"] == env_id and r.get("algorithm") == algorithm]
                    for v in VARIANTS if v != "raw_env"}
            pick["raw_env"] = raw
            for r in (*pick["rlpipe"], *pick["rlpipe_in_process"]):
                r.update(amortize_periodic(r, eval_every, ckpt_every, eval_episodes))
            rates = {v: figure([r.get("steps_per_second") for r in rs], UNIT, 1) for v, rs in pick.items()}
            for key in OURS_RATES:
                rates[f"rlpipe_{key}"] = figure([r.get(key) for r in pick["rlpipe"]], UNIT, 1)
            rates["rlpipe_in_process_steady_state"] = figure(
                [r.get(HEADLINE_RATE) for r in pick["rlpipe_in_process"]], UNIT, 1)
            ours = rates[f"rlpipe_{HEADLINE_RATE}"]["median"]
            paired = {}
            for base in ("sb3_defaults", "sb3_same_settings", "raw_env"):
                by_rep = {r["repetition"]: r.get("steps_per_second") for r in pick[base]}
                paired[base] = figure([ratio(r.get(HEADLINE_RATE), by_rep.get(r["repetition"]))
                                       for r in pick["rlpipe"]], "ratio", 3)
            session = throughput_session(algorithm, env_id, 1000 if algorithm != "ppo" else budgets.ppo_window)
            rl = pick["rlpipe"]
            cases.append({
                "algorithm": algorithm, "env": env_id,
                "rlpipe_settings": {"n_envs": session.n_envs, "hyperparameters": session.hyperparameters,
                                    "torch_threads": session.torch_threads, "normalize": session.normalize,
                                    "eval_every_steps": eval_every, "eval_episodes": defaults["eval"]["episodes"],
                                    "checkpoint_every_steps": ckpt_every},
                "window_steps": budgets.ppo_window if algorithm == "ppo" else budgets.sac_window,
                "steps_per_second": rates,
                "rlpipe_eval_seconds_each": figure([x for r in rl for x in r.get("eval_seconds", [])], "s", 3),
                "rlpipe_eval_env_steps_each": figure(
                    [x for r in rl for x in r.get("worker_eval_env_steps" if r.get("background_eval")
                                                  else "eval_env_steps", [])], "env steps", 0),
                "rlpipe_worker_eval_seconds_each": figure([x for r in rl for x in r.get("worker_eval_seconds", [])],
                                                          "s", 3),
                "rlpipe_eval_steps_per_second": figure([r.get("eval_steps_per_second") for r in rl], UNIT, 1),
                "max_episode_steps": next((r.get("max_episode_steps") for r in rl), None),
                "rlpipe_checkpoint_seconds_each": figure([x for r in rl for x in r.get("checkpoint_seconds", [])],
                                                         "s", 3),
                "update_share": {v: figure([r.get("update_share") for r in rs], "fraction of the window", 3)
                                 for v, rs in pick.items() if v != "raw_env"},
                "rlpipe_background_eval": any(r.get("background_eval") for r in rl),
                "rlpipe_eval_seconds_on_loop": figure([r.get("eval_seconds_on_loop") for r in rl], "s", 4),
                "rlpipe_worker_keeps_up": [r.get("worker_keeps_up") for r in rl],
                "torch_threads": {v: sorted({r.get("torch_threads") for r in rs if r.get("torch_threads")})
                                  for v, rs in pick.items()},
                "capped_runs": {v: sum(1 for r in rs if r.get("capped")) for v, rs in pick.items()},
                "ratios": {
                    "vs_sb3_defaults": ratio(ours, rates["sb3_defaults"]["median"]),
                    "vs_sb3_same_settings": ratio(ours, rates["sb3_same_settings"]["median"]),
                    "vs_raw_env": ratio(ours, rates["raw_env"]["median"]),
                    "training_only_vs_sb3_same_settings": ratio(rates["rlpipe_training_only"]["median"],
                                                                rates["sb3_same_settings"]["median"]),
                    "measured_eval_vs_sb3_same_settings": ratio(rates["rlpipe_at_default_intervals"]["median"],
                                                                rates["sb3_same_settings"]["median"]),
                    "in_process_eval_vs_sb3_same_settings": ratio(
                        rates["rlpipe_in_process_steady_state"]["median"], rates["sb3_same_settings"]["median"]),
                    "unit": f"ratio of medians (rlpipe {HEADLINE_RATE.replace('_', ' ')} / baseline)",
                },
                "paired_ratios": paired,
            })
    return {"unit": UNIT, "repetitions": budgets.repetitions, "order": "interleaved: a b c rlpipe "
            "rlpipe-in-process per env, algorithm and repetition; each run a fresh process", "cases": cases}


def run(budgets: Budgets, workdir: Path | None = None) -> dict[str, Any]:
    """Run every measurement (sequentially: they must not compete with each other) and summarize."""
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp:
        wd = workdir or Path(tmp)
        wd.mkdir(parents=True, exist_ok=True)
        specs = plan_runs(budgets)
        runs = []
        for i, spec in enumerate(specs, 1):
            result = measure_once(spec, wd)
            result["repetition"] = spec["repetition"]
            runs.append(result)
            log.info("throughput %d/%d: %s %s %s -> %s steps/s", i, len(specs), spec["variant"],
                     spec.get("algorithm", "-"), spec["env"], result.get("steps_per_second"))
        summary = summarize(runs, budgets)
        summary["runs"] = runs
        return summary
