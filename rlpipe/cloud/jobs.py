"""SageMaker training jobs as the Lambdas see them: describe, end a warm pool, stop, and account for a job's
time and cost in the run's job ledger (``runs/<run_id>/jobs.json``).

A session may take several attempts (several jobs); its reported training, billable and idle seconds and its
cost are the sums over its jobs, so the ledger keeps each job's numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from rlpipe.cloud.requests import release_pool_request, stop_request
from rlpipe.plan import price_table
from rlpipe.state import SessionState

log = logging.getLogger(__name__)

ACTIVE_JOB_STATUSES = ("InProgress", "Stopping")
# WarmPoolStatus values of a pool that no longer serves a next job (taken by one, or ended).
POOL_GONE = ("Reused", "Terminated")


def describe_job(sagemaker: Any, job_name: str) -> dict[str, Any] | None:
    """DescribeTrainingJob, or None when there is no such job."""
    try:
        return sagemaker.describe_training_job(TrainingJobName=job_name)
    except Exception as err:
        text = str(err)
        if "ValidationException" in text and ("not find" in text or "not found" in text.lower()):
            return None
        if getattr(err, "response", {}).get("Error", {}).get("Code") == "ResourceNotFound":
            return None
        raise


def pool_status(job: Mapping[str, Any] | None) -> str | None:
    """``WarmPoolStatus.Status`` of a description (None when SageMaker reports no pool)."""
    return ((job or {}).get("WarmPoolStatus") or {}).get("Status")


def pool_settled(status: str | None) -> bool:
    """Whether a pool has stopped changing on its own: waiting for the next job (Available) or gone."""
    return status == "Available" or status in POOL_GONE


def release_pool(sagemaker: Any, job_name: str, job: Mapping[str, Any] | None = None) -> bool:
    """End ``job_name``'s warm pool if it is still waiting (Available). Returns whether it released one.

    ``job`` is a fresh description of the job when the caller has one (else it is described here).
    """
    if job is None:
        job = describe_job(sagemaker, job_name)
    if pool_status(job) != "Available":
        return False
    try:
        sagemaker.update_training_job(**release_pool_request(job_name))
    except Exception as err:  # a pool that expired or got reused meanwhile: nothing left to release
        log.warning("could not release the pool of %s: %s", job_name, err)
        return False
    log.info("released the warm pool of %s", job_name)
    return True


def close_job(sagemaker: Any, job_name: str) -> bool:
    """Stop a running job so that it keeps no warm pool. Returns whether the job was still active.

    A job stopped with a keep-alive set would leave a pool that is not Available until the job has finished
    stopping, too late for the caller to release it. So the keep-alive is set to 0 first, then the job is
    stopped. Assumption, unproven without an AWS account: UpdateTrainingJob accepts a ResourceConfig change
    on an InProgress job (the API reference says it changes "warm pool retention length" without limiting
    it to finished jobs). If it refuses (ValidationException), the stop goes ahead and the pool, if any, is
    released by whoever next calls :func:`release_pool` for this job, or expires after its keep-alive.
    """
    job = describe_job(sagemaker, job_name)
    status = (job or {}).get("TrainingJobStatus")
    if status not in ACTIVE_JOB_STATUSES:
        return False
    if (job or {}).get("ResourceConfig", {}).get("KeepAlivePeriodInSeconds"):
        try:
            sagemaker.update_training_job(**release_pool_request(job_name))
        except Exception as err:
            log.warning("could not drop the keep-alive of running job %s: %s", job_name, err)
    if status == "InProgress":
        sagemaker.stop_training_job(**stop_request(job_name))
    log.info("stopped job %s", job_name)
    return True


def failure_reason(job: Mapping[str, Any], job_name: str) -> str:
    """Why a job did not complete. A job SageMaker stopped itself (MaxRuntimeExceeded, MaxWaitTimeExceeded)
    has no FailureReason; its SecondaryStatus and last status message say what happened."""
    status = job.get("TrainingJobStatus", "Missing")
    if job.get("FailureReason"):
        return str(job["FailureReason"])
    if status == "Missing":
        return f"training job {job_name} not found"
    reason = f"training job {job_name} was stopped" if status == "Stopped" else \
        f"training job {job_name} ended as {status}"
    secondary = job.get("SecondaryStatus")
    if secondary and secondary != status:
        reason += f" ({secondary})"
    transitions = job.get("SecondaryStatusTransitions") or []
    message = (transitions[-1] or {}).get("StatusMessage") if transitions else None
    if message:
        reason += f": {message}"
    return reason


def iso(value: Any) -> str | None:
    """A timestamp from a description as ISO-8601 text."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.isoformat(timespec="milliseconds")
    return str(value)


def session_cost(st: SessionState, instance_type: str, instance_count: int) -> float | None:
    """USD for the session's billable seconds plus its pools' billed idle time (price table rates)."""
    rate = price_table()["usd_per_hour"].get(instance_type)
    if rate is None or st.billable_seconds is None:
        return None
    seconds = st.billable_seconds + (st.warm_pool_idle_seconds or 0)
    return round(rate / 3600 * instance_count * seconds, 6)


def account_job(ledger: dict[str, Any], index: int, st: SessionState, job_name: str, job: Mapping[str, Any],
                *, spot: bool, instance_type: str, instance_count: int) -> None:
    """Put the job's times in ``ledger`` (job name -> numbers) and set the session's sums over its jobs.

    Training, billable and warm-pool idle seconds, spot savings and cost add up across the session's attempts;
    the pool status is the latest job's.
    """
    entry = ledger.setdefault(job_name, {"index": index})
    for key, name in (("TrainingTimeInSeconds", "training"), ("BillableTimeInSeconds", "billable")):
        if job.get(key) is not None:
            entry[name] = float(job[key])
    pool = job.get("WarmPoolStatus") or {}
    if pool.get("ResourceRetainedBillableTimeInSeconds") is not None:
        entry["idle"] = float(pool["ResourceRetainedBillableTimeInSeconds"])
    if pool.get("Status") and job_name == st.job_name:
        st.warm_pool_status = pool["Status"]
    mine = [e for e in ledger.values() if e.get("index") == index]

    def total(name: str) -> float | None:
        values = [e[name] for e in mine if e.get(name) is not None]
        return float(sum(values)) if values else None

    st.training_seconds = total("training")
    st.billable_seconds = total("billable")
    st.warm_pool_idle_seconds = total("idle")
    if spot and st.training_seconds and st.billable_seconds is not None:
        st.spot_savings = round(1 - st.billable_seconds / st.training_seconds, 4)
    st.cost_usd = session_cost(st, instance_type, instance_count)
