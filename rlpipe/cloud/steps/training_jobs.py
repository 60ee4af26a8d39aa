"""Stop the run's active training job."""

from __future__ import annotations

from rlpipe.cloud import jobs
from rlpipe.cloud.steps.context import Context
from rlpipe.state import RunState


def close_active_job(ctx: Context, state: RunState) -> str | None:
    """Stop the run's training job if one is still running, so that it keeps no pool. Returns its name."""
    for st in state.sessions:
        if st.status == "running" and st.job_name and jobs.close_job(ctx.sagemaker, st.job_name):
            return st.job_name
    return None
