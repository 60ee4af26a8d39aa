"""RecordSession: a finished job's outcome, metrics and cost in the run's state, and the next cursor."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from rlpipe.cloud import jobs
from rlpipe.cloud.steps.context import Context, load_pipeline, load_plan
from rlpipe.cloud.steps.lineages import billed_cost_usd
from rlpipe.cloud.steps.loop import cursor
from rlpipe.config import PipelineConfig
from rlpipe.state import RunState, utcnow

log = logging.getLogger(__name__)

# SageMaker reports capacity shortages as a failed job; a later attempt (a new job) may get capacity.
CAPACITY_MARKERS = ("CapacityError", "InsufficientCapacity", "insufficient capacity")
# The errors a lineage ends with although its job completed (EndLineage and the report name them).
REQUIRE_GATE_FAILED = "RequireGateFailed"
COST_CEILING_EXCEEDED = "CostCeilingExceeded"  # stops every lineage, whatever fail_fast says


def _account(ledger: dict[str, Any], pipeline: PipelineConfig, state: RunState, index: int, job_name: str,
             job: Mapping[str, Any]) -> None:
    compute = pipeline.sessions[index].compute
    jobs.account_job(ledger, index, state.sessions[index], job_name, job, spot=compute.spot,
                     instance_type=compute.instance_type, instance_count=compute.instance_count)


def _check_previous_pool(ctx: Context, state: RunState, index: int, pipeline: PipelineConfig,
                         ledger: dict[str, Any]) -> None:
    """After session ``index`` ran: did it reuse the previous job's pool? Release that pool if it still idles."""
    if index == 0:
        return
    prev, st = state.sessions[index - 1], state.sessions[index]
    if not prev.job_name:
        return
    job = jobs.describe_job(ctx.sagemaker, prev.job_name)
    if not job:
        return
    pool = job.get("WarmPoolStatus") or {}
    st.reused_previous_pool = pool.get("ReusedByJob") == st.job_name
    _account(ledger, pipeline, state, index - 1, prev.job_name, job)  # the pool's idle time is billed by now
    if jobs.release_pool(ctx.sagemaker, prev.job_name, job):  # not taken: stop paying now
        prev.warm_pool_status = "Terminated"


def _stop_after(ctx: Context, parent_run_id: str, pipeline: PipelineConfig, state: RunState, index: int,
                last: bool) -> dict[str, str] | None:
    """Why the lineage (or the run) ends after session ``index`` although its job completed: a failed
    ``require`` gate, or the cost billed so far over all lineages above ``max_cost_usd``. None: go on."""
    st = state.sessions[index]
    if st.gate_failed and st.gate is not None:
        state.finish("failed", st.gate.describe(st.name))
        return {"Error": REQUIRE_GATE_FAILED, "Cause": state.error or ""}
    ceiling = pipeline.max_cost_usd
    if ceiling is None:
        return None
    billed = billed_cost_usd(ctx, parent_run_id, state)
    if billed <= ceiling:
        return None
    cause = (f"billed cost so far ${billed:.2f} exceeds max_cost_usd ${ceiling:.2f}; the run stops after "
             f"session '{st.name}'")
    if last:
        state.finish("succeeded")  # this lineage is complete; the others stop
    else:
        state.finish("failed", cause)
    return {"Error": COST_CEILING_EXCEEDED, "Cause": cause}


def record_session(event: Mapping[str, Any], ctx: Context) -> dict[str, Any]:
    """Record a finished job in the run's state and hand the bundle on; returns the next cursor.

    Event: ``{"run_id", "index", "try", "job_name", "parent_run_id"}`` (the run the lineage belongs to; itself
    when absent). The cursor's ``outcome`` is ``next`` (go on; ``done`` when no session is left), ``retry``
    (capacity shortage: a new attempt after a pause) or ``failed`` (``error`` says why: the job failed, the
    session's ``require`` gate failed, or the cost billed so far exceeds ``max_cost_usd``; the lineage then
    ends through EndLineage).
    """
    store = ctx.run_store(event["run_id"])
    index, job_name, attempt_try = int(event["index"]), str(event["job_name"]), int(event.get("try", 0))
    state = store.load_state()
    pipeline = load_pipeline(store)
    plan = load_plan(store)
    st = state.sessions[index]
    job = jobs.describe_job(ctx.sagemaker, job_name) or {}
    status = job.get("TrainingJobStatus", "Missing")
    st.job_name = job_name
    ledger = store.get_json_or_none(store.keys.jobs) or {}
    _account(ledger, pipeline, state, index, job_name, job)
    outcome = store.read_outcome(st.name)
    if outcome is not None:
        st.apply(outcome)
    st.ended_at = st.ended_at or jobs.iso(job.get("TrainingEndTime")) or utcnow()
    if st.wall_seconds is None:  # reset per attempt by prepare_session
        st.add_wall_seconds(jobs.iso(job.get("TrainingStartTime")), jobs.iso(job.get("TrainingEndTime")))
    _check_previous_pool(ctx, state, index, pipeline, ledger)
    store.put_json(store.keys.jobs, ledger)
    if st.transition_seconds is None:
        state.measure_transition(index)

    if status == "Completed":
        st.status, st.error = "completed", None
        st.bundle = (job.get("ModelArtifacts") or {}).get("S3ModelArtifacts")
        nxt = state.next_index()
        stop = _stop_after(ctx, str(event.get("parent_run_id") or state.run_id), pipeline, state, index,
                           last=nxt is None)
        store.save_state(state)
        if stop is not None:
            log.warning("session %s completed; %s", st.name, stop["Cause"])
            return cursor(state, index, attempt_try=attempt_try, outcome="failed", error=stop)
        pool = jobs.pool_status(job)
        wait = bool(nxt is not None and plan.sessions[index].keep_alive_seconds > 0
                    and not jobs.pool_settled(pool))
        log.info("session %s completed (job %s, pool %s); next: %s", st.name, job_name, pool, nxt)
        return cursor(state, nxt, wait_for_pool=wait, pool_polls_left=ctx.timing.pool_max_polls if wait else 0)

    reason = jobs.failure_reason(job, job_name)
    st.status, st.error = "failed", reason
    capacity = any(m in reason for m in CAPACITY_MARKERS)
    if capacity and attempt_try + 1 < ctx.timing.max_attempts:
        store.save_state(state)
        log.warning("session %s: no capacity (%s); retrying with a new job", st.name, reason)
        return cursor(state, index, attempt_try=attempt_try + 1, outcome="retry")
    store.save_state(state)
    error = {"Error": "TrainingJobStopped" if status == "Stopped" else "TrainingJobFailed",
             "Cause": f"session '{st.name}' failed: job {job_name} {status}: {reason}"}
    return cursor(state, index, attempt_try=attempt_try, outcome="failed", error=error)
