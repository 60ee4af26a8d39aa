"""Warm pools: wait for the previous job's pool before the next submission, release pools nobody takes.

A pool the next job did not take is released while that job runs by reconciliation
(:mod:`rlpipe.cloud.steps.job_events`), and at the latest when it ends (RecordSession).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from rlpipe.cloud import jobs
from rlpipe.cloud.steps.context import Context
from rlpipe.state import RunState

log = logging.getLogger(__name__)

# SecondaryStatus values of a job that may still be taking over the previous job's pool.
STARTING_SECONDARY = ("Starting", "Pending", "LaunchingMLInstances", "PreparingTrainingStack")
# A Completed job whose description still shows no WarmPoolStatus after this many pool checks kept none:
# with the default warm-pool service quota (0) SageMaker silently keeps no pool.
NO_POOL_CHECKS = 3
NO_POOL_STATUS = "none kept (check the warm-pool service quota)"


def release_run_pools(ctx: Context, state: RunState, only: set[str] | None = None) -> list[str]:
    """Release every pool of the run (or of the jobs in ``only``) still waiting for a job."""
    released = []
    for st in state.sessions:
        if st.job_name and (only is None or st.job_name in only) and jobs.release_pool(ctx.sagemaker, st.job_name):
            st.warm_pool_status = "Terminated"
            released.append(st.job_name)
    return released


def _set_pool_status(ctx: Context, run_id: str | None, job_name: str, status: str) -> None:
    """Record a pool finding on the session whose job is ``job_name``."""
    if not run_id:
        return
    store = ctx.run_store(run_id)
    state = store.load_state()
    for st in state.sessions:
        if st.job_name == job_name and st.warm_pool_status != status:
            st.warm_pool_status = status
            store.save_state(state)
            return


def check_pool(event: Mapping[str, Any], ctx: Context) -> dict[str, Any]:
    """One poll of the previous job's warm pool before the next session is submitted.

    Submitted before the pool is ``Available``, the next job would cold-start. Event: ``{"run_id",
    "job_name", "cursor"}``; returns the cursor with ``wait_for_pool`` false once the pool is Available, gone,
    or the bounded wait is used up (then the next job starts anyway, perhaps cold). A completed job that
    still reports no pool at all after ``NO_POOL_CHECKS`` polls kept none (warm-pool quota 0): no more
    waiting, and the session's pool status says so.
    """
    out = dict(event["cursor"])
    job_name = str(event["job_name"])
    job = jobs.describe_job(ctx.sagemaker, job_name) or {}
    status = jobs.pool_status(job)
    left = int(out.get("pool_polls_left", 0)) - 1
    out["pool_polls_left"] = max(left, 0)
    polls_done = ctx.timing.pool_max_polls - left
    no_pool = status is None and job.get("TrainingJobStatus") == "Completed" and polls_done >= NO_POOL_CHECKS
    if jobs.pool_settled(status) or left <= 0 or no_pool:
        out["wait_for_pool"] = False
        if no_pool:
            log.warning("job %s kept no warm pool; check the warm-pool service quota of its instance type",
                        job_name)
            _set_pool_status(ctx, event.get("run_id"), job_name, NO_POOL_STATUS)
        elif status != "Available":
            log.warning("pool of %s is %s; the next job may start cold", job_name, status)
    return out
