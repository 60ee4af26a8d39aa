"""StartRun: check the execution input, plan, and create the run in S3 (or take up the run to resume)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from rlpipe.cloud import naming
from rlpipe.cloud.pacing import HISTORY_EVENT_LIMIT, estimated_history_events
from rlpipe.cloud.steps.context import Context, InvalidInput, RunConflict, load_pipeline
from rlpipe.cloud.steps.inputs import read_input
from rlpipe.cloud.steps.loop import loop_payload
from rlpipe.cloud.steps.pools import release_run_pools
from rlpipe.cloud.steps.training_jobs import close_active_job
from rlpipe.cloud.store import RunStore, execution_key
from rlpipe.plan import CostCeilingError, build_plan, check_cost_ceiling, single_lineage_problem
from rlpipe.state import RunState, utcnow

log = logging.getLogger(__name__)


def execution_is_running(ctx: Context, execution_arn: str | None) -> bool:
    """Whether the execution is still RUNNING. An execution Step Functions no longer knows is not running."""
    if not execution_arn:
        return True  # nothing to ask about: assume the owner is alive
    try:
        return ctx.sfn().describe_execution(executionArn=execution_arn)["status"] == "RUNNING"
    except Exception as err:
        code = getattr(err, "response", {}).get("Error", {}).get("Code")
        if code == "ExecutionDoesNotExist":
            return False
        raise


def _take_over(ctx: Context, store: RunStore, state: RunState, owner: Mapping[str, Any]) -> None:
    """The run's last execution ended without its cleanup (the state still says running): stop what it left."""
    log.warning("run %s: execution %s is no longer running; taking the run over", state.run_id,
                owner.get("execution"))
    close_active_job(ctx, state)
    for st in state.sessions:
        if st.status == "running":
            st.status, st.error = "interrupted", st.error or f"execution {owner.get('execution')} ended"
            st.ended_at = st.ended_at or utcnow()
    release_run_pools(ctx, state)


def start_run(event: Mapping[str, Any], ctx: Context) -> dict[str, Any]:
    """Validate the execution input, plan, and create (or take up, on resume) the run in S3.

    Event: ``{"input": <execution input>, "execution": name, "execution_arn": arn, "started_at": iso}``.
    Returns the loop's payload ``{"run": {...}, "cursor": {...}}``.
    """
    execution = str(event["execution"])
    record_key = execution_key(execution)
    record = ctx.store.get_json_or_none(record_key)
    if record and record.get("run_id"):  # a retry of this step: the run already exists
        return loop_payload(ctx, ctx.run_store(record["run_id"]).load_state())

    source, pipeline, resume_id = read_input(ctx, event.get("input"))
    if resume_id is not None:
        store = ctx.run_store(resume_id)
        if not store.exists_run():
            raise InvalidInput(f"resume_run_id: no run '{resume_id}' in s3://{ctx.settings.bucket}/runs/")
        state = store.load_state()
        owner = store.get_json_or_none(store.keys.owner) or {}
        if state.status == "running" and owner.get("execution") not in (None, execution):
            if execution_is_running(ctx, owner.get("execution_arn")):
                raise RunConflict(f"run '{resume_id}' is still running under execution '{owner['execution']}'; "
                                  "stop it first (`rlpipe stop`)")
            _take_over(ctx, store, state, owner)
        pipeline = load_pipeline(store)
        if pipeline.fingerprint() != state.config_fingerprint:
            raise InvalidInput(f"resume_run_id: the stored pipeline of '{resume_id}' no longer matches its state")
        log.info("resuming run %s at session %s", resume_id, state.next_index())
    else:
        assert pipeline is not None
        plan = build_plan(pipeline)
        try:
            check_cost_ceiling(plan)
        except CostCeilingError as exc:
            raise InvalidInput(str(exc)) from None
        several = single_lineage_problem(pipeline)
        if several is not None:
            raise InvalidInput(several)
        events = estimated_history_events(plan)
        if events > HISTORY_EVENT_LIMIT:
            raise InvalidInput(f"pipeline '{pipeline.name}' is too long for one execution: about {events} history "
                               f"events expected, Step Functions allows {HISTORY_EVENT_LIMIT}; split it into "
                               "shorter pipelines")
        run_id = naming.new_run_id(pipeline.name, event.get("started_at") or utcnow(), execution)
        store = ctx.run_store(run_id)
        state = store.load_state() if store.exists_run() else RunState.new(pipeline, run_id, plan)
        store.put_json(store.keys.pipeline, pipeline.resolved())
        store.put_json(store.keys.plan, {"source": source, "estimated_history_events": events,
                                         **plan.to_dict()})
        log.info("new run %s of %s (%d sessions) from %s", run_id, pipeline.name, len(pipeline.sessions), source)
    state.status, state.ended_at, state.error = "running", None, None
    store.save_state(state)
    store.put_json(store.keys.owner, {"execution": execution, "execution_arn": event.get("execution_arn")})
    ctx.store.put_json(record_key, {"run_id": state.run_id, "execution": execution,
                                    "execution_arn": event.get("execution_arn"), "source": source,
                                    "started_at": event.get("started_at"), "finalized": False})
    return loop_payload(ctx, state)
