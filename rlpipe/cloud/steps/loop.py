"""The pointer payload the state machine loops on: ``{"run": {...}, "cursor": {...}}``."""

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


def loop_payload(ctx: Context, state: RunState) -> dict[str, Any]:
    """The payload the loop starts from: the run's constants and the cursor at its next session."""
    t = ctx.timing
    return {"run": {"run_id": state.run_id, "sessions": len(state.sessions),
                    "pool_poll_seconds": t.pool_poll_seconds, "retry_wait_seconds": t.retry_wait_seconds},
            "cursor": cursor(state, state.next_index())}
