"""A training job's end, learnt by event: the waiting step, the job-state event, the slow reconciliation.

* :func:`await_job_end` (AwaitJobEnd, a ``.waitForTaskToken`` task after CreateTrainingJob) stores the task's
  token by job name, then describes the job once: a job that ended before the token was stored sent its
  event to nobody, so the step completes the task itself.
* :func:`job_state_changed` (EventBridge "SageMaker Training Job State Change", terminal statuses of this
  stack's jobs) completes every task waiting for the job and forgets their tokens. Duplicates and late
  events find no token, or a closed one: nothing happens twice.
* :func:`reconcile` (a scheduled rule) describes the job of every stored token: an ended job completes its
  task (an event was lost), a running one gets a heartbeat (the task's HeartbeatSeconds then only fires if
  reconciliation itself stops; the state machine then describes the job and waits again), and the previous
  job's pool is released once the running job is past its start without having taken it.

Every terminal status completes the task with success and the outcome ``{"TrainingJobStatus",
"SecondaryStatus"}``: RecordSession decides what a failed job means (a capacity shortage is retried). A job
that no longer exists fails the task (``TrainingJobMissing``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from rlpipe.cloud import jobs
from rlpipe.cloud.steps.context import Context
from rlpipe.cloud.steps.pools import STARTING_SECONDARY
from rlpipe.cloud.tokens import TokenStore, WaitingTask, complete, heartbeat
from rlpipe.config import Compute

log = logging.getLogger(__name__)

JOB_ENDED = ("Completed", "Failed", "Stopped")
JOB_STATE_CHANGE = "SageMaker Training Job State Change"
SCHEDULED_EVENT = "Scheduled Event"
# The waiting task's TimeoutSeconds beyond the job's own limits: room for provisioning and for the upload of
# /opt/ml/model after MaxRuntime stopped the job. Heartbeats from reconciliation find a lost event long before.
WAIT_MARGIN_SECONDS = 3600
MISSING_ERROR = "TrainingJobMissing"


def wait_timeout_seconds(compute: Compute) -> int:
    """The waiting task's TimeoutSeconds for a job with ``compute``'s limits (spot: MaxWaitTimeInSeconds
    counts the waiting for capacity and the training together)."""
    limit = max(compute.max_runtime_seconds, compute.max_wait_seconds or 0) if compute.spot \
        else compute.max_runtime_seconds
    return limit + WAIT_MARGIN_SECONDS


def outcome(job: Mapping[str, Any]) -> dict[str, str]:
    """What the waiting task returns (``$.status``): the job's status and secondary status."""
    status = str(job.get("TrainingJobStatus", ""))
    return {"TrainingJobStatus": status, "SecondaryStatus": str(job.get("SecondaryStatus") or status)}


def _tokens(ctx: Context) -> TokenStore:
    return TokenStore(ctx.s3, ctx.settings.bucket)


def _close(ctx: Context, tokens: TokenStore, task: WaitingTask, job: Mapping[str, Any] | None) -> bool:
    """Complete ``task`` with the job's outcome (or fail it when the job is gone), then forget the token."""
    if job is None:
        closed = complete(ctx.sfn(), task.token,
                          error=(MISSING_ERROR, f"training job {task.job_name} does not exist"))
    else:
        closed = complete(ctx.sfn(), task.token, output=outcome(job))
    tokens.remove(task)
    log.info("job %s %s: task %s", task.job_name, (job or {}).get("TrainingJobStatus", "missing"),
             "completed" if closed else "was already closed")
    return closed


def await_job_end(event: Mapping[str, Any], ctx: Context) -> dict[str, Any]:
    """Store the waiting task's token by job name; complete the task now if the job already ended.

    Event: ``{"token", "run_id", "job_name", "previous_pool": {"pending", "job_name"}}``. The task's result
    comes from whoever completes it, not from this return value (``{"job_name", "ended"}``, for the log).
    """
    job_name = str(event["job_name"])
    previous = event.get("previous_pool") or {}
    tokens = _tokens(ctx)
    task = tokens.put(job_name, str(event["token"]), str(event.get("run_id", "")),
                      str(previous.get("job_name") or "") if previous.get("pending") else "")
    job = jobs.describe_job(ctx.sagemaker, job_name)
    status = (job or {}).get("TrainingJobStatus")
    if status in JOB_ENDED:  # ended before the token was stored: its event found no token
        _close(ctx, tokens, task, job)
    return {"job_name": job_name, "ended": status in JOB_ENDED}


def job_state_changed(event: Mapping[str, Any], ctx: Context) -> dict[str, Any]:
    """EventBridge: a job of this stack reached a terminal status; complete the tasks waiting for it.

    Returns ``{"action": "completed" | "already-closed" | "none" | "ignored", "job_name"}``.
    """
    detail = event.get("detail") or {}
    job_name = str(detail.get("TrainingJobName", ""))
    status = detail.get("TrainingJobStatus")
    if not job_name.startswith(f"{ctx.settings.job_prefix}-") or status not in JOB_ENDED:
        log.warning("ignoring event for job %r with status %r", job_name, status)
        return {"action": "ignored", "job_name": job_name}
    tokens = _tokens(ctx)
    tasks = tokens.for_job(job_name)
    if not tasks:  # a duplicate, or the job ended before its token was stored (AwaitJobEnd handles that)
        return {"action": "none", "job_name": job_name}
    closed = [_close(ctx, tokens, t, detail) for t in tasks]
    return {"action": "completed" if any(closed) else "already-closed", "job_name": job_name}


def _release_unused_previous_pool(ctx: Context, task: WaitingTask, job: Mapping[str, Any]) -> None:
    """The running job is past its start: a previous pool still Available was not taken, so end it now.

    The run's state is not touched here (RecordSession may be writing it): RecordSession reads the pool's
    status (Terminated) when this job ends.
    """
    if not task.previous_job or job.get("SecondaryStatus") in STARTING_SECONDARY:
        return
    if jobs.release_pool(ctx.sagemaker, task.previous_job):
        log.info("released the unused pool of %s: %s is past its start", task.previous_job, task.job_name)


def reconcile(event: Mapping[str, Any], ctx: Context) -> dict[str, Any]:
    """Scheduled: complete the tasks of jobs that ended without a delivered event; keep the others alive.

    Returns counts: ``{"completed", "heartbeats", "forgotten"}`` (forgotten: tokens of tasks that no longer
    wait, e.g. of an aborted execution).
    """
    tokens = _tokens(ctx)
    counts = {"completed": 0, "heartbeats": 0, "forgotten": 0}
    for job_name, tasks in sorted(tokens.waiting().items()):
        job = jobs.describe_job(ctx.sagemaker, job_name)
        if job is None or job.get("TrainingJobStatus") in JOB_ENDED:
            for task in tasks:
                counts["completed" if _close(ctx, tokens, task, job) else "forgotten"] += 1
            continue
        for task in tasks:
            if heartbeat(ctx.sfn(), task.token):
                counts["heartbeats"] += 1
                _release_unused_previous_pool(ctx, task, job)
            else:
                tokens.remove(task)
                counts["forgotten"] += 1
    if any(counts.values()):
        log.info("reconciliation: %s", counts)
    return counts


def handle_job_event(event: Mapping[str, Any], ctx: Context) -> dict[str, Any]:
    """The JobEvents Lambda: a job-state event, or the reconciliation schedule's tick."""
    if event.get("detail-type") == SCHEDULED_EVENT:
        return reconcile(event, ctx)
    return job_state_changed(event, ctx)
