"""PrepareSession: session.json and the CreateTrainingJob request of a session's next attempt."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from rlpipe.cloud import jobs, naming
from rlpipe.cloud.requests import create_training_job_request
from rlpipe.cloud.steps.context import Context, load_pipeline, load_plan
from rlpipe.cloud.steps.job_events import wait_timeout_seconds
from rlpipe.cloud.steps.pools import NO_POOL_STATUS
from rlpipe.cloud.store import RunStore
from rlpipe.contract import session_document
from rlpipe.plan import Plan
from rlpipe.state import RunState, utcnow

log = logging.getLogger(__name__)


def _attempt_number(store: RunStore, index: int, key: str, floor: int) -> int:
    """The attempt number of (execution, try) for session ``index``: stable across retries of this step."""
    attempts = store.get_json_or_none(store.keys.attempts) or {}
    given = attempts.setdefault(str(index), {})
    if key not in given:
        given[key] = max([floor, *given.values()]) + 1
        store.put_json(store.keys.attempts, attempts)
    return int(given[key])


def _previous_pool(plan: Plan, state: RunState, index: int) -> dict[str, Any]:
    """``$.job.previous_pool``: whether the previous job kept a pool that this job may not take over."""
    prev = state.sessions[index - 1] if index else None
    pending = bool(prev is not None and prev.job_name and plan.sessions[index - 1].keep_alive_seconds > 0
                   and prev.warm_pool_status not in (*jobs.POOL_GONE, NO_POOL_STATUS))
    return {"pending": pending, "job_name": prev.job_name if prev is not None and prev.job_name else ""}


def prepare_session(event: Mapping[str, Any], ctx: Context) -> dict[str, Any]:
    """Write session.json and build the CreateTrainingJob request of the session's next attempt.

    Event: ``{"run_id", "index", "try", "execution", "lineage"}`` (``lineage``: the lineage's position in the
    run's seeds, which keeps its warm pools its own: :func:`~rlpipe.cloud.requests.lineage_volume_gb`).
    Returns ``{"job_name", "attempt", "timeout_seconds",
    "previous_pool", "request"}``; the request goes unchanged to ``aws-sdk:sagemaker:createTrainingJob``,
    ``timeout_seconds`` bounds the wait for the job's end (:func:`~rlpipe.cloud.steps.job_events.wait_timeout_seconds`).
    """
    store = ctx.run_store(event["run_id"])
    index = int(event["index"])
    state = store.load_state()
    pipeline = load_pipeline(store)
    plan = load_plan(store)
    session, planned, st = pipeline.sessions[index], plan.sessions[index], state.sessions[index]
    attempt = _attempt_number(store, index, f"{event['execution']}#{int(event.get('try', 0))}", st.attempts)
    name = naming.job_name(ctx.settings.job_prefix, state.run_id, index, session.name, attempt)

    previous_bundle = state.sessions[index - 1].bundle if index and session.use_previous_checkpoint else None
    offset = planned.global_timestep_offset
    doc = session_document(pipeline.name, state.run_id, index, session.model_dump(mode="json"),
                           planned.handoff_from, offset)
    store.put_json(store.keys.session_file(index, session.name), doc)
    request = create_training_job_request(ctx.settings, run_id=state.run_id, pipeline=pipeline.name,
                                          index=index, session=session, planned=planned, job_name=name,
                                          attempt=attempt, previous_bundle=previous_bundle,
                                          lineage=int(event.get("lineage") or 0))
    if st.job_name != name:  # a new attempt (not a retry of this step): forget the last attempt's end and time
        st.started_at = st.started_at or utcnow()
        st.ended_at, st.wall_seconds = None, None
    st.status, st.job_name, st.attempts, st.error = "running", name, attempt, None
    st.global_timestep_offset = offset
    state.status = "running"
    store.save_state(state)
    log.info("session %s: job %s (attempt %d, keep-alive %ss)", session.name, name, attempt,
             planned.keep_alive_seconds)
    return {"job_name": name, "attempt": attempt, "timeout_seconds": wait_timeout_seconds(session.compute),
            "previous_pool": _previous_pool(plan, state, index), "request": request}
