"""StartRun: check the execution input, plan, and create the run in S3 (or take up the run to resume)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from rlpipe.cloud import naming
from rlpipe.cloud.pacing import HISTORY_EVENT_LIMIT, estimated_history_events
from rlpipe.cloud.steps.context import Context, InvalidInput, RunConflict, load_pipeline
from rlpipe.cloud.steps.inputs import read_input
from rlpipe.cloud.steps.lineages import (Lineage, close_lineage, is_multi_seed, lineage_record, lineage_run_id,
                                         lineages_of, read_lineage_record, run_exists)
from rlpipe.cloud.steps.loop import loop_payload, run_payload
from rlpipe.cloud.store import RunStore, execution_key
from rlpipe.config import PipelineConfig
from rlpipe.plan import CostCeilingError, Plan, build_plan, check_cost_ceiling
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


def _take_over(ctx: Context, lineage: Lineage, state: RunState, owner: Mapping[str, Any]) -> None:
    """The lineage's last execution ended without its cleanup (the state still says running): stop what it
    left."""
    log.warning("run %s: execution %s is no longer running; taking the run over", state.run_id,
                owner.get("execution"))
    close_lineage(ctx, lineage.store, state, "interrupted", f"execution {owner.get('execution')} ended")


def _check_history(pipeline: PipelineConfig, plan: Plan) -> int:
    events = estimated_history_events(plan)
    if events > HISTORY_EVENT_LIMIT:
        raise InvalidInput(f"pipeline '{pipeline.name}' is too long for one execution: about {events} history "
                           f"events expected ({len(plan.seeds)} lineage(s) of {len(plan.sessions)} sessions), "
                           f"Step Functions allows {HISTORY_EVENT_LIMIT}; split it into shorter pipelines or "
                           "list fewer seeds")
    return events


def _create_lineage(store: RunStore, pipeline: PipelineConfig, plan_fields: dict[str, Any]) -> RunState:
    """Write a lineage's pipeline and plan (with ``plan_fields``), and its state unless a retry of this step
    already did."""
    plan = build_plan(pipeline)
    store.put_json(store.keys.pipeline, pipeline.resolved())
    store.put_json(store.keys.plan, {**plan_fields, **plan.to_dict()})
    return store.load_state() if store.exists_run() else RunState.new(pipeline, store.run_id, plan)


def _new_run(ctx: Context, event: Mapping[str, Any], source: str, pipeline: PipelineConfig
             ) -> tuple[str, list[tuple[Lineage, RunState]]]:
    """Check the ceiling and the history, then create the run and its lineages in S3."""
    plan = build_plan(pipeline)
    try:
        check_cost_ceiling(plan)
    except CostCeilingError as exc:
        raise InvalidInput(str(exc)) from None
    events = _check_history(pipeline, plan)
    run_id = naming.new_run_id(pipeline.name, event.get("started_at") or utcnow(), str(event["execution"]))
    store = ctx.run_store(run_id)
    seeds = pipeline.seed_list()
    run_fields = {"source": source, "estimated_history_events": events}
    if not is_multi_seed(pipeline):  # the run is its own lineage, with its seed
        single = pipeline.lineage(seeds[0]) if pipeline.seeds else pipeline
        lineages = [(Lineage(None, 0, store), _create_lineage(store, single, run_fields))]
    else:
        store.put_json(store.keys.pipeline, pipeline.resolved())
        store.put_json(store.keys.plan, {**run_fields, **plan.to_dict()})
        store.put_json(store.keys.lineages, lineage_record(pipeline, run_id))
        lineages = []
        for i, seed in enumerate(seeds):
            lineage_store = ctx.run_store(lineage_run_id(run_id, seed))
            lineages.append((Lineage(seed, i, lineage_store),
                             _create_lineage(lineage_store, pipeline.lineage(seed), {"source": source})))
    log.info("new run %s of %s (%d sessions, seeds %s) from %s", run_id, pipeline.name, len(pipeline.sessions),
             seeds, source)
    return run_id, lineages


def _resume(ctx: Context, run_id: str, execution: str) -> list[tuple[Lineage, RunState]]:
    """Take up ``run_id``: the lineages still to run (a lineage that succeeded or ended on a ``require`` gate
    is not run again), each taken over from a dead execution when its state says running."""
    store = ctx.run_store(run_id)
    if not run_exists(ctx, run_id):
        raise InvalidInput(f"resume_run_id: no run '{run_id}' in s3://{ctx.settings.bucket}/runs/")
    record = read_lineage_record(store)
    owner = store.get_json_or_none(store.keys.owner) or {}
    states = [(lin, lin.store.load_state()) for lin in lineages_of(ctx, run_id)]
    running = any(state.status == "running" for _, state in states)
    if running and owner.get("execution") not in (None, execution):
        if execution_is_running(ctx, owner.get("execution_arn")):
            raise RunConflict(f"run '{run_id}' is still running under execution '{owner['execution']}'; "
                              "stop it first (`rlpipe stop`)")
        for lin, state in states:
            if state.status == "running":
                _take_over(ctx, lin, state, owner)
    if record is not None and load_pipeline(store).fingerprint() != record.get("config_fingerprint"):
        raise InvalidInput(f"resume_run_id: the stored pipeline of '{run_id}' no longer matches its lineages")
    for lin, state in states:
        if load_pipeline(lin.store).fingerprint() != state.config_fingerprint:
            raise InvalidInput(f"resume_run_id: the stored pipeline of '{lin.run_id}' no longer matches its state")
    todo = [(lin, state) for lin, state in states if state.settled() is None]
    log.info("resuming run %s: %s", run_id, ", ".join(f"{lin.run_id} at session {state.next_index()}"
                                                        for lin, state in todo) or "nothing left to run")
    return todo


def start_run(event: Mapping[str, Any], ctx: Context) -> dict[str, Any]:
    """Validate the execution input, plan, and create (or take up, on resume) the run and its lineages in S3.

    Event: ``{"input": <execution input>, "execution": name, "execution_arn": arn, "started_at": iso}``.
    Returns ``{"run": {"run_id", "parallel", "fail_fast", "lineages"}, "lineages": [<loop payload>, ...]}``:
    the lineages still to run, each the payload its session loop starts from.
    """
    execution = str(event["execution"])
    record_key = execution_key(execution)
    record = ctx.store.get_json_or_none(record_key)
    retried = bool(record and record.get("run_id"))
    if retried:  # a retry of this step: the run already exists
        run_id, source = str(record["run_id"]), str(record.get("source"))
        todo = [(lin, lin.store.load_state()) for lin in lineages_of(ctx, run_id)]
        todo = [(lin, state) for lin, state in todo if state.settled() is None]
    else:
        source, pipeline, resume_id = read_input(ctx, event.get("input"))
        if resume_id is not None:
            run_id, todo = resume_id, _resume(ctx, resume_id, execution)
        else:
            assert pipeline is not None
            run_id, todo = _new_run(ctx, event, source, pipeline)
    owner = {"execution": execution, "execution_arn": event.get("execution_arn")}
    for lin, state in todo:
        state.status, state.ended_at, state.error = "running", None, None
        lin.store.save_state(state)
        if lin.run_id != run_id:
            lin.store.put_json(lin.store.keys.owner, owner)
    ctx.run_store(run_id).put_json(ctx.run_store(run_id).keys.owner, owner)
    if not retried:
        ctx.store.put_json(record_key, {"run_id": run_id, **owner, "source": source,
                                        "started_at": event.get("started_at"), "finalized": False})
    pipeline = load_pipeline(ctx.run_store(run_id))
    return run_payload(run_id, pipeline.parallel, pipeline.fail_fast,
                       [loop_payload(ctx, state, parent_run_id=run_id, lineage=lin.position, seed=lin.seed)
                        for lin, state in todo])
