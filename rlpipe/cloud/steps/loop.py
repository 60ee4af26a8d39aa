"""The pointer payloads of the state machine: the run's (``{"run": {...}, "lineages": [...]}``, what StartRun
returns) and each lineage's, the one its session loop runs on (``{"run": {...}, "cursor": {...}}``)."""

from __future__ import annotations

from typing import Any

from rlpipe.cloud.steps.context import Context
from rlpipe.state import RunState


def cursor(state: RunState, index: int | None, *, attempt_try: int = 0, outcome: str = "next",
           wait_for_pool: bool = False, pool_polls_left: int = 0, error: dict[str, str] | None = None
           ) -> dict[str, Any]:
    """Where the loop stands. Every field is always present: Choice states read them by path."""
    done = index is None
    return {"index": -1 if done else index, "done": done, "try": attempt_try, "outcome": outcome,
            "wait_for_pool": wait_for_pool, "pool_polls_left": pool_polls_left,
            "error": error or {"Error": "", "Cause": ""}}


def loop_payload(ctx: Context, state: RunState, *, parent_run_id: str | None = None, lineage: int = 0,
                 seed: int | None = None) -> dict[str, Any]:
    """The payload a lineage's loop starts from: its constants and the cursor at its next session.

    ``parent_run_id`` is the run the lineage belongs to (itself for a single-seed run), ``lineage`` its
    position in the run's seeds and ``seed`` its seed (None for a single-seed run).
    """
    t = ctx.timing
    return {"run": {"run_id": state.run_id, "parent_run_id": parent_run_id or state.run_id, "lineage": lineage,
                    "seed": seed, "sessions": len(state.sessions),
                    "pool_poll_seconds": t.pool_poll_seconds, "retry_wait_seconds": t.retry_wait_seconds},
            "cursor": cursor(state, state.next_index())}


def run_payload(run_id: str, parallel: int, fail_fast: bool, lineages: list[dict[str, Any]]) -> dict[str, Any]:
    """StartRun's result: the run's constants and the loop payload of each lineage still to run.

    ``parallel`` is the Map state's MaxConcurrencyPath: at most that many lineages (so training jobs) at once.
    """
    return {"run": {"run_id": run_id, "parallel": max(1, min(parallel, len(lineages) or 1)),
                    "fail_fast": fail_fast, "lineages": len(lineages)},
            "lineages": lineages}
