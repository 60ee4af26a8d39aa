"""The run's SageMaker training jobs as the steps see them: describe one, stop the active one."""

from __future__ import annotations

from typing import Any

from rlpipe.cloud import jobs
from rlpipe.cloud.steps.context import Context
from rlpipe.state import RunState

ACTIVE_JOB_STATUSES = ("InProgress", "Stopping")


def describe_job(ctx: Context, job_name: str) -> dict[str, Any] | None:
    """DescribeTrainingJob, or None when there is no such job."""
    return jobs.describe_job(ctx.sagemaker, job_name)


def close_active_job(ctx: Context, state: RunState) -> str | None:
    """Stop the run's training job if one is still running, so that it keeps no pool. Returns its name."""
    for st in state.sessions:
        if st.status == "running" and st.job_name and jobs.close_job(ctx.sagemaker, st.job_name):
            return st.job_name
    return None
