"""Pacing of the state machine's waits, and how many history events an execution will need.

A job's end arrives by event (:mod:`rlpipe.cloud.steps.job_events`): the state machine waits in one
``.waitForTaskToken`` task however long the job runs, so a session's history events do not depend on its
length, and a run is refused for its number of sessions only. What is still paced here: the bounded poll for
the previous job's warm pool (the job-state event carries no ``WarmPoolStatus``) and the pause before a new
attempt after a capacity shortage.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from rlpipe.plan import Plan

# Step Functions keeps at most 25,000 history events per execution.
HISTORY_EVENT_LIMIT = 25_000
HISTORY_EVENT_BUDGET = 20_000
EVENTS_FIXED = 25
# Per session: PrepareSession, CreateTrainingJob, AwaitJobEnd, RecordSession, NextStep? and one warm-pool
# check. Measured: 23 without a pool check (tests/test_state_machine.py, 200 sessions), 32 with one (bench,
# orchestration section); the rest is room for further pool checks and a capacity retry.
EVENTS_PER_SESSION = 40
# Per lineage: its Map iteration, EndLineage and the Choice after it (a single-seed run has one lineage too).
EVENTS_PER_LINEAGE = 15


@dataclass(frozen=True)
class Timing:
    """Warm-pool polling and retry pacing, from the Lambdas' environment so tests can shrink it."""

    pool_poll_seconds: int = 15
    pool_max_polls: int = 40
    retry_wait_seconds: int = 300
    max_attempts: int = 3

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Timing:
        """Read the ``RLPIPE_*`` pacing variables (see :func:`environment`)."""
        env = os.environ if env is None else env
        values = {f: int(env[v]) for f, v in ENV_NAMES.items() if env.get(v, "").strip()}
        return cls(**values)


ENV_NAMES = {"pool_poll_seconds": "RLPIPE_POOL_POLL_SECONDS", "pool_max_polls": "RLPIPE_POOL_MAX_POLLS",
             "retry_wait_seconds": "RLPIPE_RETRY_WAIT_SECONDS", "max_attempts": "RLPIPE_MAX_ATTEMPTS"}


def environment(timing: Timing) -> dict[str, str]:
    """The ``RLPIPE_*`` variables that :meth:`Timing.from_env` reads back."""
    return {v: str(getattr(timing, f)) for f, v in ENV_NAMES.items()}


def estimated_history_events(plan: Plan) -> int:
    """About how many history events an execution of ``plan`` produces: a constant per session of each lineage.

    The lineages share the execution's history (an inline Map state: see the state machine's module).
    """
    return EVENTS_FIXED + (EVENTS_PER_LINEAGE + EVENTS_PER_SESSION * len(plan.sessions)) * len(plan.seeds)
