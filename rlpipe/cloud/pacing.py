"""How often the state machine polls a training job, and how many history events an execution will need.

The wait starts at ``min_poll_seconds`` and doubles each round up to ``max_poll_seconds``, so a job longer
than planned costs a few more rounds and the history estimate does not hang on the throughput guess. The cap
is not raised for long runs (a job found ended late leaves its pool idling, billed); a run whose history would
not fit is refused. :meth:`Timing.next_wait` is the rule the state machine's Choice and Pass states implement
(carried in ``$.job.poll``) and :meth:`Timing.polls_for` counts with it.
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
# Per session outside the Describe loop: PrepareSession, CreateTrainingJob, RecordSession, NextStep?, one
# warm-pool check and one unused-pool check (tests/test_state_machine.py measures the real count).
EVENTS_PER_SESSION = 45
EVENTS_PER_POLL = 9    # WaitForJob, DescribeTrainingJob, JobEnded?
EVENTS_PER_GROWTH = 2  # the Pass state that doubles (or caps) the wait
STARTUP_SECONDS = 180  # a cold start; polls happen during it too
NOMINAL_POLLS = 3      # zero waits (tests): as many rounds as the job takes; count a few


@dataclass(frozen=True)
class Timing:
    """Polling and retry pacing, from the Lambdas' environment so tests (and impatient users) can shrink it."""

    min_poll_seconds: int = 60
    max_poll_seconds: int = 900
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

    @property
    def first_wait(self) -> int:
        """The first wait of a job; at least 1 s unless every wait is 0 (doubling 0 never grows)."""
        if self.max_poll_seconds <= 0:
            return 0
        return min(max(self.min_poll_seconds, 1), self.max_poll_seconds)

    def poll(self) -> dict[str, int]:
        """The ``$.job.poll`` object a job starts with: the current wait, the cap, and the largest wait that
        may still be doubled without passing the cap (a larger one is set to the cap instead)."""
        return {"seconds": self.first_wait, "max": self.max_poll_seconds, "double_up_to": self.max_poll_seconds // 2}

    def next_wait(self, seconds: int) -> int:
        """The wait after one of ``seconds``: doubled, capped at ``max_poll_seconds``."""
        if seconds >= self.max_poll_seconds:
            return seconds
        return self.max_poll_seconds if seconds > self.max_poll_seconds // 2 else seconds * 2

    def polls_for(self, job_seconds: float) -> tuple[int, int]:
        """(Describe rounds, rounds that changed the wait) for a job that takes ``job_seconds`` to end."""
        wait = self.first_wait
        if wait <= 0:
            return NOMINAL_POLLS, 0
        waited, polls, changes = 0.0, 0, 0
        while waited < job_seconds:
            waited += wait
            polls += 1
            nxt = self.next_wait(wait)
            changes += nxt != wait
            wait = nxt
        return max(polls, 1), changes

    def job_events(self, train_seconds: float) -> int:
        """History events of one session whose job trains about ``train_seconds`` (startup included)."""
        polls, changes = self.polls_for(train_seconds + STARTUP_SECONDS)
        return EVENTS_PER_SESSION + EVENTS_PER_POLL * polls + EVENTS_PER_GROWTH * changes


ENV_NAMES = {"min_poll_seconds": "RLPIPE_MIN_POLL_SECONDS", "max_poll_seconds": "RLPIPE_MAX_POLL_SECONDS",
             "pool_poll_seconds": "RLPIPE_POOL_POLL_SECONDS", "pool_max_polls": "RLPIPE_POOL_MAX_POLLS",
             "retry_wait_seconds": "RLPIPE_RETRY_WAIT_SECONDS", "max_attempts": "RLPIPE_MAX_ATTEMPTS"}


def environment(timing: Timing) -> dict[str, str]:
    """The ``RLPIPE_*`` variables that :meth:`Timing.from_env` reads back."""
    return {v: str(getattr(timing, f)) for f, v in ENV_NAMES.items()}


def estimated_history_events(plan: Plan, timing: Timing) -> int:
    """About how many history events an execution of ``plan`` produces with ``timing``."""
    return EVENTS_FIXED + sum(timing.job_events(s.estimated_train_seconds) for s in plan.sessions)
