"""From a training job's end to the next CreateTrainingJob on AWS: polling (before) against events (after).

Modelled from the state machine's definition and the step code, no AWS: every Wait state and every task on
the path between the job's end and the next ``CreateTrainingJob`` is counted, the Lambda tasks at the
handler durations measured locally (``tests/sfn_harness.py`` runs the real handlers against moto), the waits
at their configured lengths, and what cannot be measured here (EventBridge delivery, a SageMaker API call, a
Step Functions transition, a Lambda's invoke overhead) at stated assumptions.

Before: the Describe loop that waited 60 s doubling to 900 s (``rlpipe.cloud.pacing.Timing`` before job ends
came by event), so a job was found ended at the next poll. After: the job-state event's Lambda completes the
waiting task.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rlpipe.cloud.pacing import Timing

SESSION_SECONDS = {"15min": 900, "1h": 3600, "24h": 86_400}
GOAL_SECONDS = 20.0
# Assumptions for what a local run cannot measure (each one named in the results).
ASSUMED = {
    "event_delivery_seconds": (1.0, "SageMaker -> EventBridge -> Lambda: 'near real time' (SageMaker guide, "
                                    "automating-sagemaker-with-eventbridge); assumed 1 s"),
    "sdk_call_seconds": (0.3, "one SageMaker API call from an aws-sdk task or a Lambda; assumed"),
    "state_transition_seconds": (0.05, "Step Functions Standard: per state entered; assumed"),
    "lambda_invoke_overhead_seconds": (0.1, "a warm Lambda invoke beyond its handler's own time; assumed"),
}
# The previous design's constants (history events per session, per poll round, per change of the wait).
BEFORE_EVENTS_PER_SESSION = 45
BEFORE_EVENTS_PER_POLL = 9       # WaitForJob, DescribeTrainingJob, JobEnded?
BEFORE_EVENTS_PER_GROWTH = 2     # the Pass state that doubled (or capped) the wait
BEFORE_TRANSITIONS_PER_POLL = 3  # the same three states entered
BEFORE_TRANSITIONS_PER_GROWTH = 1


@dataclass(frozen=True)
class Polling:
    """The Describe loop of the previous design: waits from ``first`` doubling up to ``cap``; a job's
    duration on AWS is its training plus ``startup`` (the previous pacing's own assumption, 180 s)."""

    first: int = 60
    cap: int = 900
    startup: int = 180

    def _next(self, wait: int) -> int:
        return wait if wait >= self.cap else (self.cap if wait > self.cap // 2 else wait * 2)

    def rounds(self, job_seconds: float) -> tuple[int, int, float]:
        """(Describe rounds, changes of the wait, seconds from the job's end to the poll that sees it)."""
        wait, waited, polls, changes = self.first, 0.0, 0, 0
        while waited < job_seconds:
            waited += wait
            polls += 1
            nxt = self._next(wait)
            changes += nxt != wait
            wait = nxt
        return polls, changes, waited - job_seconds


def lambda_durations(samples: Sequence[tuple[str, float]]) -> dict[str, dict[str, float]]:
    """Median and count of the measured handler seconds, per function."""
    by: dict[str, list[float]] = {}
    for name, seconds in samples:
        by.setdefault(name, []).append(seconds)
    return {n: {"median_seconds": round(statistics.median(v), 4), "runs": len(v)} for n, v in sorted(by.items())}


def _path(steps: list[tuple[str, str, float]]) -> dict[str, Any]:
    return {"seconds": round(sum(s for _, _, s in steps), 2),
            "steps": [{"step": n, "kind": k, "seconds": round(s, 3)} for n, k, s in steps]}


def delay_paths(lambdas: Mapping[str, Mapping[str, float]], timing: Timing, pool_wait: bool,
                polling_delay: float | None) -> dict[str, Any]:
    """The path from a job's end to the next CreateTrainingJob, step by step.

    ``polling_delay`` None: after (events); else before, with that many seconds until the poll that sees the
    end. ``pool_wait``: the pool reads Available at the first CheckPool (one WaitForPool on the path); else at
    RecordSession's own describe.
    """
    a = {k: v[0] for k, v in ASSUMED.items()}
    t, sdk = a["state_transition_seconds"], a["sdk_call_seconds"]

    def fn(name: str) -> float:
        return lambdas[name]["median_seconds"] + a["lambda_invoke_overhead_seconds"] + t

    steps: list[tuple[str, str, float]] = []
    if polling_delay is None:
        steps += [("EventBridge delivers the job-state event", "assumed", a["event_delivery_seconds"]),
                  ("JobEvents Lambda (SendTaskSuccess)", "lambda", fn("job_events")),
                  ("AwaitJobEnd completes", "transition", t)]
    else:
        steps += [("WaitForJob until the next poll", "wait", polling_delay),
                  ("DescribeTrainingJob", "sdk", sdk + t), ("JobEnded?", "choice", t)]
    steps += [("RecordSession", "lambda", fn("record_session")), ("NextStep?", "choice", t)]
    if pool_wait:
        steps += [("WaitForPool", "wait", float(timing.pool_poll_seconds) + t),
                  ("CheckPool", "lambda", fn("check_pool")), ("NextStep?", "choice", t)]
    steps += [("PrepareSession", "lambda", fn("prepare_session")), ("CreateTrainingJob", "sdk", sdk + t)]
    return _path(steps)


def model(lambdas: Mapping[str, Mapping[str, float]], events_per_session_after: float,
          transitions_fixed: float, transitions_per_session_after: float, usd_per_1000: float,
          sessions_in_run: int = 10) -> dict[str, Any]:
    """Before/after per session length: delay to the next create, history events, Step Functions cost."""
    timing, polling = Timing(), Polling()
    per_length: dict[str, Any] = {}
    for label, seconds in SESSION_SECONDS.items():
        polls, changes, late = polling.rounds(seconds + polling.startup)
        before = {"pool_available_at_first_check": delay_paths(lambdas, timing, True, late),
                  "pool_available_at_record": delay_paths(lambdas, timing, False, late)}
        after = {"pool_available_at_first_check": delay_paths(lambdas, timing, True, None),
                 "pool_available_at_record": delay_paths(lambdas, timing, False, None)}
        events_before = BEFORE_EVENTS_PER_SESSION + BEFORE_EVENTS_PER_POLL * polls + BEFORE_EVENTS_PER_GROWTH * changes
        # Before: the loop's states replace AwaitJobEnd (one state) in each session.
        tr_before = transitions_per_session_after - 1 + BEFORE_TRANSITIONS_PER_POLL * polls \
            + BEFORE_TRANSITIONS_PER_GROWTH * changes
        run_before = transitions_fixed + sessions_in_run * tr_before
        run_after = transitions_fixed + sessions_in_run * transitions_per_session_after
        per_length[label] = {
            "session_seconds": seconds, "job_seconds_before_model": seconds + polling.startup,
            "end_found_late_by_polling_seconds": late, "describe_rounds_before": polls,
            "end_to_next_create_seconds": {
                "before": before["pool_available_at_first_check"]["seconds"],
                "after": after["pool_available_at_first_check"]["seconds"],
                "before_pool_available_at_record": before["pool_available_at_record"]["seconds"],
                "after_pool_available_at_record": after["pool_available_at_record"]["seconds"]},
            "paths": {"before": before, "after": after},
            "history_events_per_session": {"before": events_before, "after": round(events_per_session_after, 1)},
            f"step_functions_usd_{sessions_in_run}_sessions": {
                "before": round(run_before * usd_per_1000 / 1000, 5),
                "after": round(run_after * usd_per_1000 / 1000, 5),
                "transitions_before": round(run_before), "transitions_after": round(run_after)},
        }
    worst = max(per_length, key=lambda k: per_length[k]["end_to_next_create_seconds"]["after"])
    return {
        "per_session_length": per_length, "worst_length_after": worst,
        "worst_after_seconds": per_length[worst]["end_to_next_create_seconds"]["after"],
        "goal_seconds": GOAL_SECONDS, "lambda_handler_seconds_measured": dict(lambdas),
        "assumptions": {k: {"value": v, "why": why} for k, (v, why) in ASSUMED.items()},
        "pool_poll_seconds": timing.pool_poll_seconds,
        "before_pacing": {"first_wait_seconds": polling.first, "max_wait_seconds": polling.cap,
                          "startup_seconds": polling.startup},
        "sessions_in_run": sessions_in_run,
    }
