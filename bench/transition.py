"""Session transition time: last training step of session N to first training step of session N+1.

Two measurements, each repeated and summarized by its median:
- ``runner``: the local runner (in-process sessions) on the default curriculum with tiny budgets, each run in a
  fresh interpreter as ``rlpipe run`` starts one; read from ``state.json`` (``ended_at`` of N, ``started_at``
  and ``first_step_at`` of N+1; ``transition_seconds`` is the runner's own figure);
- ``cold_process``: ``python -m rlpipe.trainer --root DIR`` started for each session, as a process-per-session
  driver (SageMaker's container, minus provisioning) does: process start to the first step, and the whole
  handover (process of N exits after its last step, process of N+1 starts and steps).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.figures import figure
from bench.sessions import curriculum, write_session_root
from bench.settings import Budgets
from bench.throughput import run_child
from rlpipe.contract import METRICS_FILE, STATE_FILE
from rlpipe.jsonio import read_json
from rlpipe.state import seconds_between

log = logging.getLogger("bench.transition")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds")


def runner_transitions(budgets: Budgets, workdir: Path) -> dict[str, Any]:
    """Transitions inside ``LocalRunner`` runs of the default curriculum (tiny budgets)."""
    rows = []
    for i in range(budgets.transition_runs):
        pipeline = curriculum(seed=i, timesteps=budgets.transition_timesteps, name=f"transition-{i}")
        spec = workdir / f"transition-{i}.json"
        spec.write_text(json.dumps(pipeline.resolved()))
        out = workdir / f"transition-{i}"
        proc = run_child("bench.pipeline_run", [str(spec), str(out)], 1800, workdir / "children.log")
        if proc.returncode != 0:
            log.error("transition run %d failed (see %s)", i, workdir / "children.log")
            continue
        state = read_json(out / STATE_FILE)
        prev, nxt = state["sessions"][0], state["sessions"][1]
        rows.append({
            "transition_seconds": nxt["transition_seconds"],
            "finish_previous_seconds": seconds_between(prev["ended_at"], nxt["started_at"]),
            "start_next_seconds": seconds_between(nxt["started_at"], nxt["first_step_at"]),
        })
        log.info("transition run %d: %.3f s", i, nxt["transition_seconds"])
    return {
        "what": "LocalRunner, default curriculum, session 1 -> 2 (warm start), each run a fresh interpreter",
        "timesteps_per_session": budgets.transition_timesteps,
        "transition_seconds": figure([r["transition_seconds"] for r in rows], "s"),
        "finish_previous_seconds": figure([r["finish_previous_seconds"] for r in rows], "s"),
        "start_next_seconds": figure([r["start_next_seconds"] for r in rows], "s"),
        "breakdown": "finish_previous = previous session's ended_at to next session's started_at (bundle, "
                     "checkpoint, learning-curve plot, state); start_next = started_at to first step (env, model, "
                     "bundle load, learn setup)",
        "runs": rows,
    }


def _cold_run(root: Path, workdir: Path) -> dict[str, Any]:
    spawn = time.time()
    proc = run_child("rlpipe.trainer", ["--root", str(root)], 1800, workdir / "children.log")
    exit_ = time.time()
    if proc.returncode != 0:
        raise RuntimeError(f"trainer failed in {root} (see {workdir / 'children.log'})")
    timing = read_json(root / "model" / METRICS_FILE)["timing"]
    return {
        "spawn_to_main_seconds": seconds_between(_iso(spawn), timing["started_at"]),
        "main_to_first_step_seconds": seconds_between(timing["started_at"], timing["first_step_at"]),
        "spawn_to_first_step_seconds": seconds_between(_iso(spawn), timing["first_step_at"]),
        "last_step_to_exit_seconds": seconds_between(timing["ended_at"], _iso(exit_)),
    }


def cold_process(budgets: Budgets, workdir: Path) -> dict[str, Any]:
    """Each session in its own ``python -m rlpipe.trainer`` process, as a per-session container runs it."""
    rows = []
    for i in range(budgets.cold_runs):
        pipeline = curriculum(seed=i, timesteps=budgets.transition_timesteps, name=f"cold-{i}")
        first = write_session_root(workdir / f"cold-{i}" / "a", pipeline.sessions[0], pipeline_name=pipeline.name)
        try:
            a = _cold_run(first.root, workdir)
            second = write_session_root(workdir / f"cold-{i}" / "b", pipeline.sessions[1], previous=first.model,
                                        index=1, pipeline_name=pipeline.name)
            b = _cold_run(second.root, workdir)
        except RuntimeError as exc:
            log.error("%s", exc)
            continue
        rows.append({"first_session": a, "warm_started_session": b,
                     "transition_seconds": round(a["last_step_to_exit_seconds"] + b["spawn_to_first_step_seconds"], 3)})
        log.info("cold process run %d: first step after %.3f s (warm start %.3f s)", i,
                 a["spawn_to_first_step_seconds"], b["spawn_to_first_step_seconds"])

    def col(which: str, key: str) -> dict[str, Any]:
        return figure([r[which][key] for r in rows], "s")

    return {
        "what": "python -m rlpipe.trainer --root DIR per session; clock from just before the process is spawned",
        "first_session": {k: col("first_session", k) for k in ("spawn_to_main_seconds", "main_to_first_step_seconds",
                                                               "spawn_to_first_step_seconds",
                                                               "last_step_to_exit_seconds")},
        "warm_started_session": {k: col("warm_started_session", k)
                                 for k in ("spawn_to_main_seconds", "main_to_first_step_seconds",
                                           "spawn_to_first_step_seconds")},
        "transition_seconds": figure([r["transition_seconds"] for r in rows], "s"),
        "transition_definition": "session 1's last step to its process exit, plus session 2's process spawn to "
                                 "its first step",
        "runs": rows,
    }


def run(budgets: Budgets, workdir: Path | None = None) -> dict[str, Any]:
    """Both transition measurements."""
    with tempfile.TemporaryDirectory(prefix="bench-transition-") as tmp:
        wd = workdir or Path(tmp)
        wd.mkdir(parents=True, exist_ok=True)
        return {"runner": runner_transitions(budgets, wd), "cold_process": cold_process(budgets, wd)}
