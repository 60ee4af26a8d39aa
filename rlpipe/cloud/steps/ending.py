"""The end of a lineage (EndLineage) and of a run: FinishRun, FailRun (the failure path) and the cleanup of
executions that ended abnormally."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from rlpipe.cloud import jobs, naming
from rlpipe.cloud.steps.context import Context, load_pipeline, sns_subject
from rlpipe.cloud.steps.pools import release_run_pools
from rlpipe.cloud.steps.lineages import (close_lineage, lineages_of, run_exists, run_status,
                                         started_lineages)
from rlpipe.cloud.steps.record import COST_CEILING_EXCEEDED
from rlpipe.cloud.steps.reporting import console_links, summary_message, write_report, write_run_report
from rlpipe.cloud.store import execution_key
from rlpipe.state import utcnow

log = logging.getLogger(__name__)

LINEAGE_CAUSE_MAX = 1000  # characters of a lineage's error cause in the execution's payload


def _finalize(ctx: Context, execution: str | None, **fields: Any) -> None:
    if not execution:
        return
    key = execution_key(execution)
    record = ctx.store.get_json_or_none(key) or {"execution": execution}
    record.update(fields, finalized=True, finalized_at=utcnow())
    ctx.store.put_json(key, record)


def _record(ctx: Context, execution: str | None) -> dict[str, Any]:
    return (ctx.store.get_json_or_none(execution_key(execution)) if execution else None) or {}


def _error_of(results: Any) -> dict[str, str] | None:
    """The first lineage error among the Map's results (EndLineage's outputs)."""
    for result in results if isinstance(results, list) else []:
        if isinstance(result, Mapping) and result.get("error"):
            return {"Error": str(result["error"]), "Cause": str(result.get("cause") or result["error"])}
    return None


def finish_run(event: Mapping[str, Any], ctx: Context) -> dict[str, Any]:
    """After the lineages: the run's status from theirs; when every lineage succeeded, the report.

    Event: ``{"run_id", "execution", "execution_arn", "lineages": [<EndLineage result>, ...]}``. Returns
    ``{"status", "error", "subject", "message", "report"}``. ``succeeded``: the state machine publishes the
    summary (if that publish fails, the execution fails and the cleanup Lambda sends it: the record is not
    marked ``notified`` here). Otherwise ``error`` names the first lineage's error and the failure path
    writes the report and alerts.
    """
    run_id = str(event["run_id"])
    # Every lineage ended in EndLineage (which released its pools), now or in an earlier execution.
    status = run_status([state.status for _, state in started_lineages(ctx, run_id)])
    if status != "succeeded":
        error = _error_of(event.get("lineages")) or {"Error": "RunFailed", "Cause": f"run {run_id} {status}"}
        return {"status": status, "error": error, "subject": "", "message": "", "report": ""}
    report = write_run_report(ctx, run_id)
    links = console_links(ctx, run_id, event.get("execution_arn"))
    subject, message = summary_message(report, links)
    _finalize(ctx, event.get("execution"), run_id=run_id, status=status)
    return {"status": status, "error": {"Error": "", "Cause": ""}, "subject": subject, "message": message,
            "report": links["report"]}


def end_lineage(event: Mapping[str, Any], ctx: Context) -> dict[str, Any]:
    """The end of one lineage (the last state of its Map iteration), whether it completed or failed.

    Event: ``{"state": <the lineage's payload>}``: ``run`` (its ``run_id``, ``parent_run_id``, ``seed``),
    ``cursor`` and, after a Catch, ``error``. Completed: the lineage succeeded. Failed (a Catch, a failed job,
    a failed ``require`` gate, the cost ceiling): its job is stopped, the lineage is marked failed. Either way
    its pools are released and, in a run with several seeds, its own report is written. No alert: the run's
    end sends one for all lineages. Returns ``{"run_id", "seed", "status", "error", "cause", "stop_run"}``;
    ``stop_run`` (``fail_fast``, or the cost ceiling) ends every other lineage.
    """
    payload = event.get("state") or {}
    run = payload.get("run") or {}
    run_id = str(run["run_id"])
    parent = str(run.get("parent_run_id") or run_id)
    cursor = payload.get("cursor") or {}
    error_doc = payload.get("error") or (cursor.get("error") if cursor.get("outcome") == "failed" else None)
    store = ctx.run_store(run_id)
    state = store.load_state()
    name = cause = ""
    if error_doc is None:
        if state.status not in ("succeeded", "failed", "interrupted"):
            pending = [s.name for s in state.sessions if s.status != "completed"]
            state.finish("failed" if pending else "succeeded",
                         f"sessions not completed: {', '.join(pending)}" if pending else None)
        release_run_pools(ctx, state)
        store.save_state(state)
    else:
        name, cause = readable_error(error_doc)
        close_lineage(ctx, store, state, "failed", cause)
    if run_id != parent:
        write_report(ctx, store, state)
    stop_run = bool(name) and (name == COST_CEILING_EXCEEDED or load_pipeline(ctx.run_store(parent)).fail_fast)
    log.info("lineage %s ended %s%s", run_id, state.status, f" ({name}: {cause})" if name else "")
    # Each lineage's result stays in the execution's payload (256 KB at most): the full cause is in the state.
    return {"run_id": run_id, "seed": run.get("seed"), "status": state.status, "error": name[:256],
            "cause": cause[:LINEAGE_CAUSE_MAX], "stop_run": stop_run}


def readable_error(error: Mapping[str, Any] | None) -> tuple[str, str]:
    """(error name, cause) from a Catch's ``{"Error", "Cause"}``; a Lambda's JSON cause becomes its message."""
    error = error or {}
    name = str(error.get("Error") or "RunFailed")
    cause = str(error.get("Cause") or "")
    try:
        parsed = json.loads(cause)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and parsed.get("errorMessage"):
        name = str(parsed.get("errorType") or name)
        cause = str(parsed["errorMessage"])
    if name.startswith("States."):  # reserved: a Fail state may not raise a "States." error itself
        name = "RunFailed." + name
    return name, cause or name


def _run_id_of(ctx: Context, payload: Mapping[str, Any], execution: str | None) -> str | None:
    run = payload.get("run") if isinstance(payload.get("run"), Mapping) else None
    if run and run.get("run_id"):
        return str(run["run_id"])
    return _record(ctx, execution).get("run_id")


def _close_run(ctx: Context, run_id: str, status: str, cause: str) -> dict[str, Any]:
    """Close every lineage of the run (stop its job, mark it, release its pools) and write the (partial)
    report."""
    for lin, state in started_lineages(ctx, run_id):
        close_lineage(ctx, lin.store, state, status, cause)
    return write_run_report(ctx, run_id)


def _no_run_message(ctx: Context, execution: str | None, execution_arn: str | None, ended: str, text: str
                    ) -> tuple[str, str]:
    """Subject and body for an execution that ended before it started a run (names go in the body)."""
    message = f"Execution {execution} {ended} before a run started.\n\n{text}\n\nNo training job was started."
    links = console_links(ctx, "-", execution_arn)
    if links.get("execution"):
        message += f"\nExecution: {links['execution']}"
    return sns_subject(f"rlpipe: an execution {ended} before a run started"), message


def fail_run(event: Mapping[str, Any], ctx: Context) -> dict[str, Any]:
    """The state machine's failure path: stop the job, release pools, partial report, and the alert.

    Event: ``{"state": <the state's payload>, "execution", "execution_arn"}``, the payload holding the error
    either in ``error`` (a Catch) or in ``cursor.error`` (a failed training job). Publishes the alert itself
    and marks the execution ``notified`` only once that succeeded: if the publish fails, or this step fails
    before it (the execution then ends through ``FailureHandlingFailed``), the cleanup Lambda, seeing no
    ``notified`` when the FAILED execution is reported, closes the run and alerts. Returns ``{"error",
    "cause", "subject", "message"}``: the Fail state's Error and Cause, and the alert.
    """
    payload = event.get("state") or {}
    execution = event.get("execution")
    summary_error = (payload.get("summary") or {}).get("error") or {}
    error_doc = (payload.get("error") or (summary_error if summary_error.get("Error") else None)
                 or (payload.get("cursor") or {}).get("error"))
    name, cause = readable_error(error_doc)
    run_id = _run_id_of(ctx, payload, execution)
    if run_id and run_exists(ctx, run_id):
        report = _close_run(ctx, run_id, "failed", cause)
        subject, message = summary_message(report, console_links(ctx, run_id, event.get("execution_arn")))
    else:
        subject, message = _no_run_message(ctx, execution, event.get("execution_arn"), "failed", f"{name}: {cause}")
    notified = bool(_record(ctx, execution).get("notified"))  # a retry of this step after its publish
    if not notified:
        try:
            notified = ctx.publish(subject, message)
        except Exception as err:  # the Fail state still gets the real cause; the cleanup Lambda alerts
            log.error("failure alert not sent (the cleanup Lambda will send it): %s", err)
    _finalize(ctx, execution, run_id=run_id, status="failed", error=name, notified=notified)
    return {"error": name[:256], "cause": cause[:32000], "subject": subject, "message": message}


_EVENT_STATUS = {"ABORTED": "interrupted", "TIMED_OUT": "failed", "FAILED": "failed"}


def _jobs_of_execution(ctx: Context, run_id: str, execution: str) -> set[str]:
    """Names of the jobs ``execution`` created in ``run_id`` (from the attempt numbers it was handed)."""
    names: set[str] = set()
    for lin in lineages_of(ctx, run_id):
        attempts = lin.store.get_json_or_none(lin.store.keys.attempts) or {}
        sessions = [s.name for s in load_pipeline(lin.store).sessions] if attempts else []
        names |= {naming.job_name(ctx.settings.job_prefix, lin.run_id, int(index), sessions[int(index)],
                                  int(attempt))
                  for index, given in attempts.items() for key, attempt in given.items()
                  if key.rsplit("#", 1)[0] == execution}
    return names


def _clean_up_after_takeover(ctx: Context, run_id: str, execution: str) -> dict[str, Any]:
    """``execution`` no longer owns ``run_id``: touch only its own jobs (stop, release), not the run."""
    mine = _jobs_of_execution(ctx, run_id, execution)
    for job_name in sorted(mine):
        jobs.close_job(ctx.sagemaker, job_name)
    released = []
    for lin, state in started_lineages(ctx, run_id):
        freed = release_run_pools(ctx, state, only=mine)
        if freed:
            lin.store.save_state(state)
            released += freed
    log.info("execution %s no longer drives run %s: released %s", execution, run_id, released or "nothing")
    return {"action": "released", "execution": execution, "run_id": run_id, "released": released}


def cleanup_execution(event: Mapping[str, Any], ctx: Context) -> dict[str, Any]:
    """EventBridge target for executions that FAILED, TIMED_OUT or were ABORTED.

    Nothing stops a SageMaker job when an execution ends abnormally, so: stop the run's job, release its
    pools, write the partial report and alert, unless the state machine's own failure path already did all
    that and sent its alert (a FAILED execution whose record says ``notified``). A run that had already
    succeeded (the execution ended abnormally while notifying) keeps its status; its pools are released and
    the summary is sent. A run that a newer execution has taken over is left alone but for the jobs this
    execution created.
    """
    detail = event.get("detail") or {}
    execution, status = detail.get("name"), str(detail.get("status", "FAILED"))
    record = _record(ctx, execution)
    if record.get("cleaned_up") or (record.get("notified") and status == "FAILED"):
        log.info("execution %s: its end was handled already", execution)
        return {"action": "none", "execution": execution}
    run_id = record.get("run_id")
    cause = f"execution {execution} {status}"
    if detail.get("cause") or detail.get("error"):
        cause += f": {detail.get('error') or ''} {detail.get('cause') or ''}".rstrip()
    links = console_links(ctx, run_id or "-", detail.get("executionArn"))
    if run_id and execution and run_exists(ctx, run_id):
        store = ctx.run_store(run_id)
        owner = (store.get_json_or_none(store.keys.owner) or {}).get("execution")
        if owner not in (None, execution):
            out = _clean_up_after_takeover(ctx, run_id, execution)
            _finalize(ctx, execution, cleaned_up=True, status=status.lower())
            return out
        states = list(started_lineages(ctx, run_id))
        if run_status([state.status for _, state in states]) == "succeeded":
            for lin, state in states:
                release_run_pools(ctx, state)
                lin.store.save_state(state)
            report = write_run_report(ctx, run_id)
        else:
            report = _close_run(ctx, run_id, _EVENT_STATUS.get(status, "failed"), cause)
        subject, message = summary_message(report, links)
        message = f"The execution {execution} ended as {status}.\n\n" + message
    else:
        subject, message = _no_run_message(ctx, execution, detail.get("executionArn"), status.lower().replace("_", " "),
                                           cause)
    notified = ctx.publish(subject, message)
    _finalize(ctx, execution, run_id=run_id, status="failed" if status == "FAILED" else status.lower(),
              cleaned_up=True, notified=notified)  # EventBridge delivers at least once
    return {"action": "cleaned", "execution": execution, "run_id": run_id}
