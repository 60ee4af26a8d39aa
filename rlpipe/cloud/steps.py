"""The logic behind each Lambda of the state machine; the handlers in ``lambdas/`` only call these.

The state machine carries pointers (run id, session index, job name, small counters); everything that grows
with the run lives in S3 (:mod:`rlpipe.cloud.store`). Every step is safe to run twice with the same input:
Step Functions retries Lambda invocations. Job names are fixed per attempt (``attempts.json`` hands each
(execution, try) one attempt number once), state writes replace whole documents, and the report overwrites
the same keys. A failed run is continued by a new execution with ``{"resume_run_id": ...}``, not by Step
Functions' redrive: every error is caught and routed to the failure path, which ends in a Fail state, so a
redrive would restart at that Fail state.

Errors a caller should see are raised as :class:`InvalidInput` (bad execution input: nothing was created)
or :class:`RunConflict`; Step Functions names the error after the exception class.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from rlpipe.cloud import jobs, naming
from rlpipe.cloud.pacing import HISTORY_EVENT_LIMIT, Timing, estimated_history_events
from rlpipe.cloud.requests import StackSettings, create_training_job_request
from rlpipe.cloud.store import CONFIGS_PREFIX, RunKeys, RunStore, S3Store, execution_key, is_missing, parse_s3_uri
from rlpipe.config import ConfigError, PipelineConfig, parse_pipeline
from rlpipe.contract import session_document
from rlpipe.plan import Plan, build_plan
from rlpipe.state import RunState, SessionState, seconds_between, transition_seconds, utcnow

__all__ = ["HISTORY_EVENT_LIMIT", "Timing", "estimated_history_events"]  # re-exported for callers of steps

log = logging.getLogger(__name__)

INPUT_FIELDS = ("pipeline_s3_uri", "pipeline", "resume_run_id")
_INPUT_HELP = ('expected {} (the default pipeline), {"pipeline_s3_uri": "s3://<bucket>/configs/..."}, '
               '{"pipeline": {...}} or {"resume_run_id": "..."}')
# SageMaker reports capacity shortages as a failed job; a later attempt (a new job) may get capacity.
CAPACITY_MARKERS = ("CapacityError", "InsufficientCapacity", "insufficient capacity")
ACTIVE_JOB_STATUSES = ("InProgress", "Stopping")
# SecondaryStatus values of a job that may still be taking over the previous job's pool.
STARTING_SECONDARY = ("Starting", "Pending", "LaunchingMLInstances", "PreparingTrainingStack")
_MESSAGE_ROWS = 40  # sessions listed in the alert e-mail; the report has them all
# SNS: a Subject is ASCII without line breaks and shorter than 100 characters.
SUBJECT_MAX = 99
# A Completed job whose description still shows no WarmPoolStatus after this many pool checks kept none:
# with the default warm-pool service quota (0) SageMaker silently keeps no pool.
NO_POOL_CHECKS = 3
NO_POOL_STATUS = "none kept (check the warm-pool service quota)"


class InvalidInput(Exception):
    """The execution input cannot start a run; nothing was created."""


class RunConflict(Exception):
    """The run is being driven by another execution."""


_CLIENTS: dict[str, Any] = {}


def client(service: str) -> Any:
    """A cached boto3 client (created once per Lambda container)."""
    if service not in _CLIENTS:
        import boto3

        _CLIENTS[service] = boto3.client(service)
    return _CLIENTS[service]


def reset_clients() -> None:
    """Forget cached clients and documents (tests start a fresh mocked AWS)."""
    _CLIENTS.clear()
    _PIPELINES.clear()


@dataclass
class Context:
    """What a step needs from its environment."""

    settings: StackSettings
    timing: Timing
    s3: Any
    sagemaker: Any
    sns: Any = None
    topic_arn: str | None = None
    default_pipeline_key: str | None = None
    region: str | None = None
    stepfunctions: Any = None

    @classmethod
    def from_env(cls) -> Context:
        """Settings from ``RLPIPE_*`` variables, boto3 clients from the runtime's credentials."""
        topic = os.environ.get("RLPIPE_TOPIC_ARN") or None
        return cls(settings=StackSettings.from_env(), timing=Timing.from_env(), s3=client("s3"),
                   sagemaker=client("sagemaker"), sns=client("sns") if topic else None, topic_arn=topic,
                   default_pipeline_key=os.environ.get("RLPIPE_DEFAULT_PIPELINE_KEY") or None,
                   region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"))

    def sfn(self) -> Any:
        """The Step Functions client (created on first use: only StartRun needs it)."""
        if self.stepfunctions is None:
            self.stepfunctions = client("stepfunctions")
        return self.stepfunctions

    def publish(self, subject: str, message: str) -> bool:
        """Publish to the alert topic; False when this step has no topic configured."""
        if self.sns is None or not self.topic_arn:
            return False
        self.sns.publish(TopicArn=self.topic_arn, Subject=sns_subject(subject), Message=message)
        return True

    def run_store(self, run_id: str) -> RunStore:
        return RunStore(self.s3, self.settings.bucket, run_id)

    @property
    def store(self) -> S3Store:
        return S3Store(self.s3, self.settings.bucket)


def sns_subject(text: str) -> str:
    """``text`` as an SNS Subject: printable ASCII on one line, at most ``SUBJECT_MAX`` characters."""
    clean = "".join(c if " " <= c <= "~" else "?" for c in " ".join(text.split()))
    return clean[:SUBJECT_MAX].rstrip() or "rlpipe"


# ---- execution input -------------------------------------------------------------------------------------

def _unknown_field_message(key: str) -> str:
    close = difflib.get_close_matches(key, INPUT_FIELDS, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown input field '{key}'{hint}; {_INPUT_HELP}"


def _read_pipeline_object(ctx: Context, key: str, field: str) -> Any:
    uri = ctx.store.uri(key)
    try:
        body = ctx.store.get_bytes(key)
    except Exception as err:
        if is_missing(err):
            raise InvalidInput(f"{field}: no such object {uri}") from None
        raise
    try:
        return yaml.safe_load(body)  # JSON is YAML too
    except yaml.YAMLError as err:
        raise InvalidInput(f"{field}: {uri} is not valid YAML or JSON: {err}") from None


def _validate(raw: Any, source: str, field: str) -> PipelineConfig:
    try:
        return parse_pipeline(raw, base_dir=None, source=source)
    except ConfigError as err:
        raise InvalidInput(f"{field}: {err}") from None


def read_input(ctx: Context, given: Any) -> tuple[str, PipelineConfig | None, str | None]:
    """Check the execution input. Returns (source, pipeline, resume_run_id); exactly one of the last two."""
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise InvalidInput(f"execution input must be a JSON object; {_INPUT_HELP}")
    unknown = [k for k in given if k not in INPUT_FIELDS]
    if unknown:
        raise InvalidInput(_unknown_field_message(unknown[0]))
    if len(given) > 1:
        raise InvalidInput(f"give at most one of {', '.join(INPUT_FIELDS)} (got {', '.join(given)})")
    bucket = ctx.settings.bucket
    if not given:
        if not ctx.default_pipeline_key:
            raise InvalidInput("no default pipeline is configured for this stack; " + _INPUT_HELP)
        source = ctx.store.uri(ctx.default_pipeline_key)
        raw = _read_pipeline_object(ctx, ctx.default_pipeline_key, "default pipeline")
        return source, _validate(raw, source, "default pipeline"), None
    field, value = next(iter(given.items()))
    if field == "pipeline_s3_uri":
        if not isinstance(value, str):
            raise InvalidInput("pipeline_s3_uri: expected a string s3://<bucket>/configs/...")
        try:
            uri_bucket, key = parse_s3_uri(value)
        except ValueError as err:
            raise InvalidInput(f"pipeline_s3_uri: {err}") from None
        if uri_bucket != bucket:
            raise InvalidInput(f"pipeline_s3_uri: must be in this stack's bucket s3://{bucket}/ "
                               f"(got bucket '{uri_bucket}'); upload it with `rlpipe start`")
        if not key.startswith(CONFIGS_PREFIX) and key != ctx.default_pipeline_key:
            raise InvalidInput(f"pipeline_s3_uri: must be under s3://{bucket}/{CONFIGS_PREFIX} (got {value})")
        raw = _read_pipeline_object(ctx, key, field)
        return value, _validate(raw, value, field), None
    if field == "pipeline":
        if not isinstance(value, dict):
            raise InvalidInput("pipeline: expected an object with name, defaults, sessions")
        return "inline", _validate(value, "inline pipeline", field), None
    if not isinstance(value, str) or not naming.is_valid_run_id(value):
        raise InvalidInput(f"resume_run_id: expected a run id such as 'robot-curriculum-20250101-120000-"
                           f"abc123' (got {value!r})")
    return f"resume of {value}", None, value


# ---- cursor: the pointer payload the state machine loops on ------------------------------------------------

def cursor(state: RunState, index: int | None, *, attempt_try: int = 0, outcome: str = "next",
           wait_for_pool: bool = False, pool_polls_left: int = 0, error: dict[str, str] | None = None
           ) -> dict[str, Any]:
    """Where the loop stands. Every field is always present: Choice states read them by path."""
    done = index is None
    return {"index": -1 if done else index, "done": done, "try": attempt_try, "outcome": outcome,
            "wait_for_pool": wait_for_pool, "pool_polls_left": pool_polls_left,
            "error": error or {"Error": "", "Cause": ""}}


_PIPELINES: dict[tuple[str, str], PipelineConfig] = {}


def _load_pipeline(store: RunStore) -> PipelineConfig:
    """The run's resolved pipeline (written once at start, never changed: cached per Lambda container).

    Validated at start; re-reading the resolved form skips the env checks (they need no repeating).
    """
    key = (store.bucket, store.run_id)
    if key not in _PIPELINES:
        if len(_PIPELINES) > 16:
            _PIPELINES.clear()
        _PIPELINES[key] = PipelineConfig.model_validate(store.get_json(store.keys.pipeline))
    return _PIPELINES[key]


# ---- start -------------------------------------------------------------------------------------------------

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
        return _loop_payload(ctx, ctx.run_store(record["run_id"]).load_state())

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
        pipeline = _load_pipeline(store)
        if pipeline.fingerprint() != state.config_fingerprint:
            raise InvalidInput(f"resume_run_id: the stored pipeline of '{resume_id}' no longer matches its state")
        log.info("resuming run %s at session %s", resume_id, state.next_index())
    else:
        assert pipeline is not None
        plan = build_plan(pipeline)
        events = estimated_history_events(plan, ctx.timing)
        if events > HISTORY_EVENT_LIMIT:
            raise InvalidInput(f"pipeline '{pipeline.name}' is too long for one execution: about {events} history "
                               f"events expected, Step Functions allows {HISTORY_EVENT_LIMIT}; split it into "
                               "shorter pipelines")
        run_id = naming.new_run_id(pipeline.name, event.get("started_at") or utcnow(), execution)
        store = ctx.run_store(run_id)
        state = store.load_state() if store.exists_run() else RunState.new(pipeline, run_id)
        store.put_json(store.keys.pipeline, pipeline.resolved())
        store.put_json(store.keys.plan, {"source": source, "estimated_history_events": events,
                                         "poll": ctx.timing.poll(), **plan.to_dict()})
        log.info("new run %s of %s (%d sessions) from %s", run_id, pipeline.name, len(pipeline.sessions), source)
    state.status, state.ended_at, state.error = "running", None, None
    store.save_state(state)
    store.put_json(store.keys.owner, {"execution": execution, "execution_arn": event.get("execution_arn")})
    ctx.store.put_json(record_key, {"run_id": state.run_id, "execution": execution,
                                    "execution_arn": event.get("execution_arn"), "source": source,
                                    "started_at": event.get("started_at"), "finalized": False})
    return _loop_payload(ctx, state)


def _loop_payload(ctx: Context, state: RunState) -> dict[str, Any]:
    t = ctx.timing
    return {"run": {"run_id": state.run_id, "sessions": len(state.sessions),
                    "pool_poll_seconds": t.pool_poll_seconds, "retry_wait_seconds": t.retry_wait_seconds},
            "cursor": cursor(state, state.next_index())}


# ---- prepare ------------------------------------------------------------------------------------------------

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
                   and prev.warm_pool_status not in ("Reused", "Terminated", NO_POOL_STATUS))
    return {"pending": pending, "job_name": prev.job_name if prev is not None and prev.job_name else ""}


def prepare_session(event: Mapping[str, Any], ctx: Context) -> dict[str, Any]:
    """Write session.json and build the CreateTrainingJob request of the session's next attempt.

    Event: ``{"run_id", "index", "try", "execution"}``. Returns ``{"job_name", "attempt", "poll",
    "previous_pool", "request"}``; the request goes unchanged to ``aws-sdk:sagemaker:createTrainingJob``,
    ``poll`` paces the Describe loop (:mod:`rlpipe.cloud.pacing`).
    """
    store = ctx.run_store(event["run_id"])
    index = int(event["index"])
    state = store.load_state()
    pipeline = _load_pipeline(store)
    plan: Plan = build_plan(pipeline)
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
                                          attempt=attempt, previous_bundle=previous_bundle)
    if st.job_name != name:  # a new attempt (not a retry of this step): forget the last attempt's end and time
        st.started_at = st.started_at or utcnow()
        st.ended_at, st.wall_seconds = None, None
    st.status, st.job_name, st.attempts, st.error = "running", name, attempt, None
    st.global_timestep_offset = offset
    state.status = "running"
    store.save_state(state)
    log.info("session %s: job %s (attempt %d, keep-alive %ss)", session.name, name, attempt,
             planned.keep_alive_seconds)
    return {"job_name": name, "attempt": attempt, "poll": ctx.timing.poll(),
            "previous_pool": _previous_pool(plan, state, index), "request": request}


# ---- record -------------------------------------------------------------------------------------------------

def describe_job(ctx: Context, job_name: str) -> dict[str, Any] | None:
    """DescribeTrainingJob, or None when there is no such job."""
    return jobs.describe_job(ctx.sagemaker, job_name)


def release_pool(ctx: Context, job_name: str) -> bool:
    """End ``job_name``'s warm pool if it is still waiting (Available). Returns whether it released one."""
    return jobs.release_pool(ctx.sagemaker, job_name)


def _apply_metrics(st: SessionState, metrics: Mapping[str, Any] | None) -> float | None:
    """Copy the trainer's metrics.json into the session; returns its transfer-evaluation seconds."""
    if not metrics:
        return None
    timing = metrics.get("timing") or {}
    if metrics.get("timesteps") is not None:
        st.timesteps = int(metrics["timesteps"])
    st.final_eval_reward = metrics.get("final_eval_reward", st.final_eval_reward)
    st.best_eval_reward = metrics.get("best_eval_reward", st.best_eval_reward)
    st.first_step_at = st.first_step_at or timing.get("first_step_at")
    if timing.get("wall_seconds") is not None:
        st.wall_seconds = float(timing["wall_seconds"])
    if timing.get("ended_at"):
        st.ended_at = timing["ended_at"]
    if "carried" in metrics:
        st.carried, st.reset = list(metrics.get("carried") or []), list(metrics.get("reset") or [])
    return timing.get("transfer_eval_seconds")


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
    job = describe_job(ctx, prev.job_name)
    if not job:
        return
    pool = job.get("WarmPoolStatus") or {}
    st.reused_previous_pool = pool.get("ReusedByJob") == st.job_name
    _account(ledger, pipeline, state, index - 1, prev.job_name, job)  # the pool's idle time is billed by now
    if pool.get("Status") == "Available" and release_pool(ctx, prev.job_name):  # not taken: stop paying now
        prev.warm_pool_status = "Terminated"


def record_session(event: Mapping[str, Any], ctx: Context) -> dict[str, Any]:
    """Record a finished job in the run's state and hand the bundle on; returns the next cursor.

    Event: ``{"run_id", "index", "try", "job_name"}``. The cursor's ``outcome`` is ``next`` (go on; ``done``
    when no session is left), ``retry`` (capacity shortage: a new attempt after a pause) or ``failed``
    (``error`` says why; the state machine then runs the failure path).
    """
    store = ctx.run_store(event["run_id"])
    index, job_name, attempt_try = int(event["index"]), str(event["job_name"]), int(event.get("try", 0))
    state = store.load_state()
    pipeline = _load_pipeline(store)
    plan = build_plan(pipeline)
    st = state.sessions[index]
    job = describe_job(ctx, job_name) or {}
    status = job.get("TrainingJobStatus", "Missing")
    st.job_name = job_name
    ledger = store.get_json_or_none(store.keys.jobs) or {}
    _account(ledger, pipeline, state, index, job_name, job)
    transfer_eval = _apply_metrics(st, store.read_metrics(st.name))
    st.ended_at = st.ended_at or jobs.iso(job.get("TrainingEndTime")) or utcnow()
    if st.wall_seconds is None:  # reset per attempt by prepare_session
        st.wall_seconds = seconds_between(jobs.iso(job.get("TrainingStartTime")), jobs.iso(job.get("TrainingEndTime")))
    _check_previous_pool(ctx, state, index, pipeline, ledger)
    store.put_json(store.keys.jobs, ledger)
    prev = state.sessions[index - 1] if index else None
    if prev is not None and st.transition_seconds is None:
        st.transition_seconds = transition_seconds(prev.ended_at, st.first_step_at, transfer_eval)

    if status == "Completed":
        st.status, st.error = "completed", None
        st.bundle = (job.get("ModelArtifacts") or {}).get("S3ModelArtifacts")
        store.save_state(state)
        nxt = state.next_index()
        pool = jobs.pool_status(job)
        wait = bool(nxt is not None and plan.sessions[index].keep_alive_seconds > 0
                    and pool not in ("Available", "Terminated", "Reused"))
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
    job = describe_job(ctx, job_name) or {}
    status = jobs.pool_status(job)
    left = int(out.get("pool_polls_left", 0)) - 1
    out["pool_polls_left"] = max(left, 0)
    polls_done = ctx.timing.pool_max_polls - left
    no_pool = status is None and job.get("TrainingJobStatus") == "Completed" and polls_done >= NO_POOL_CHECKS
    if status in ("Available", "Terminated", "Reused") or left <= 0 or no_pool:
        out["wait_for_pool"] = False
        if no_pool:
            log.warning("job %s kept no warm pool; check the warm-pool service quota of its instance type",
                        job_name)
            _set_pool_status(ctx, event.get("run_id"), job_name, NO_POOL_STATUS)
        elif status != "Available":
            log.warning("pool of %s is %s; the next job may start cold", job_name, status)
    return out


def release_unused_pool(event: Mapping[str, Any], ctx: Context) -> dict[str, Any]:
    """The running job is past its start: if the previous job's pool still idles, this job did not take it.

    Called once the Describe loop sees the job InProgress beyond ``Starting`` (SecondaryStatus), so an unused
    pool stops billing now instead of when this job ends. Assumption (not provable without AWS): by then
    SageMaker has moved a pool the job reused to ``Reused``; a pool still ``InUse`` is checked again on the
    next round. Event: ``{"run_id", "job_name"}`` (the previous job). Returns ``$.job.previous_pool``.
    """
    job_name = str(event["job_name"])
    status = jobs.pool_status(describe_job(ctx, job_name))
    if status == "Available" and release_pool(ctx, job_name):
        _set_pool_status(ctx, event.get("run_id"), job_name, "Terminated")
    return {"pending": status == "InUse", "job_name": job_name}


# ---- end of a run -------------------------------------------------------------------------------------------

def release_run_pools(ctx: Context, state: RunState, only: set[str] | None = None) -> list[str]:
    """Release every pool of the run (or of the jobs in ``only``) still waiting for a job."""
    released = []
    for st in state.sessions:
        if st.job_name and (only is None or st.job_name in only) and release_pool(ctx, st.job_name):
            st.warm_pool_status = "Terminated"
            released.append(st.job_name)
    return released


def close_active_job(ctx: Context, state: RunState) -> str | None:
    """Stop the run's training job if one is still running, so that it keeps no pool. Returns its name."""
    for st in state.sessions:
        if st.status == "running" and st.job_name and jobs.close_job(ctx.sagemaker, st.job_name):
            return st.job_name
    return None


def write_report(ctx: Context, store: RunStore, state: RunState) -> dict[str, Any]:
    """Build the report with the same code as the local runner and write report.json/.md/.html (+ PNG)."""
    from rlpipe.report import build_report, render_html, render_markdown

    metrics = {s.name: (store.read_metrics(s.name) if s.job_name else None) for s in state.sessions}
    report = build_report(state, metrics)
    png: bytes | None = None
    try:
        from rlpipe.report import learning_curve_png

        png = learning_curve_png(report)
    except Exception as err:  # the report must still come out without its plot
        log.warning("learning curve not drawn: %s", err)
    store.put_report("json", json.dumps(report, indent=1).encode())
    if png:
        store.put_report("png", png)
    store.put_report("md", render_markdown(report, curve_image="learning_curve.png" if png else None).encode())
    store.put_report("html", render_html(report, png).encode())
    return report


def console_links(ctx: Context, run_id: str, execution_arn: str | None) -> dict[str, str]:
    """Links for the message: the report in the S3 console and the execution in the Step Functions console."""
    region = ctx.region or "us-east-1"
    key = RunKeys(run_id).report("html")
    links = {"report": ctx.store.uri(key),
             "report_console": f"https://{region}.console.aws.amazon.com/s3/object/{ctx.settings.bucket}"
                               f"?region={region}&prefix={key}"}
    if execution_arn:
        links["execution"] = (f"https://{region}.console.aws.amazon.com/states/home?region={region}"
                              f"#/v2/executions/details/{execution_arn}")
    return links


def summary_message(report: Mapping[str, Any], links: Mapping[str, str]) -> tuple[str, str]:
    """(subject, body) of the e-mail: status, totals, a table of sessions (capped) and links."""
    from rlpipe.report.render import failure_sentences, session_columns, summary_lines

    status = str(report.get("status", "?")).upper()
    done, total = report.get("sessions_completed", 0), report.get("sessions_total", 0)
    cost = report.get("total_cost_usd")
    cost_text = f", ${cost:.2f}" if isinstance(cost, (int, float)) else ""
    subject = sns_subject(f"rlpipe {report.get('pipeline')}: {status} ({done}/{total} sessions{cost_text})")
    lines = [f"Run {report.get('run_id')} {status}.", ""]
    lines += [f"{label}: {value}" for label, value in summary_lines(report)]
    failures = failure_sentences(report)
    if failures:
        lines += ["", "Failures:"]
        lines += [f"  {sentence}" + (f"\n    {error}" if error else "") for sentence, error in failures]
    wanted = ("Session", "Status", "Timesteps", "Final reward", "Job", "Billable s", "Reused pool",
              "Pool idle s", "Cost")
    columns = [(h, f) for h, f in session_columns(dict(report)) if h in wanted]
    sessions = list(report.get("sessions") or [])
    lines += ["", "Sessions:", "  " + " | ".join(h for h, _ in columns)]
    lines += ["  " + " | ".join(f(s) for _, f in columns) for s in sessions[:_MESSAGE_ROWS]]
    if len(sessions) > _MESSAGE_ROWS:
        lines.append(f"  ... and {len(sessions) - _MESSAGE_ROWS} more sessions in the report")
    lines += ["", f"Report: {links.get('report_console', links.get('report'))}", f"  ({links.get('report')})"]
    if links.get("execution"):
        lines.append(f"Execution: {links['execution']}")
    return subject, "\n".join(lines)


def _finalize(ctx: Context, execution: str | None, **fields: Any) -> None:
    if not execution:
        return
    key = execution_key(execution)
    record = ctx.store.get_json_or_none(key) or {"execution": execution}
    record.update(fields, finalized=True, finalized_at=utcnow())
    ctx.store.put_json(key, record)


def _record(ctx: Context, execution: str | None) -> dict[str, Any]:
    return (ctx.store.get_json_or_none(execution_key(execution)) if execution else None) or {}


def finish_run(event: Mapping[str, Any], ctx: Context) -> dict[str, Any]:
    """After the last session: mark the run succeeded, release pools, write the report.

    Event: ``{"run_id", "execution", "execution_arn"}``. Returns ``{"subject", "message", "report"}`` for the
    SNS notification the state machine publishes (if that publish fails, the execution fails and the cleanup
    Lambda sends the summary: the record is not marked ``notified`` here).
    """
    store = ctx.run_store(event["run_id"])
    state = store.load_state()
    pending = [s.name for s in state.sessions if s.status != "completed"]
    if pending:
        state.finish("failed", f"sessions not completed: {', '.join(pending)}")
    elif state.status != "succeeded":
        state.finish("succeeded")
    release_run_pools(ctx, state)
    store.save_state(state)
    report = write_report(ctx, store, state)
    links = console_links(ctx, state.run_id, event.get("execution_arn"))
    subject, message = summary_message(report, links)
    _finalize(ctx, event.get("execution"), run_id=state.run_id, status=state.status)
    return {"subject": subject, "message": message, "report": links["report"], "status": state.status}


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


def _close_run(ctx: Context, run_id: str, status: str, cause: str) -> tuple[RunState, dict[str, Any]]:
    """Stop the active job (keep-alive dropped first), mark the session and run, release pools, write the
    (partial) report."""
    store = ctx.run_store(run_id)
    state = store.load_state()
    close_active_job(ctx, state)
    for st in state.sessions:
        if st.status == "running":
            st.status = "interrupted" if status == "interrupted" else "failed"
            st.error = st.error or cause
            st.ended_at = st.ended_at or utcnow()
    if state.status not in ("failed", "interrupted", "succeeded"):  # every session done stays a success
        state.finish(status, cause)  # type: ignore[arg-type]
    release_run_pools(ctx, state)
    store.save_state(state)
    return state, write_report(ctx, store, state)


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
    error_doc = payload.get("error") or (payload.get("cursor") or {}).get("error")
    name, cause = readable_error(error_doc)
    run_id = _run_id_of(ctx, payload, execution)
    if run_id and ctx.run_store(run_id).exists_run():
        state, report = _close_run(ctx, run_id, "failed", cause)
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
    store = ctx.run_store(run_id)
    attempts = store.get_json_or_none(store.keys.attempts) or {}
    names = [s.name for s in _load_pipeline(store).sessions]
    return {naming.job_name(ctx.settings.job_prefix, run_id, int(index), names[int(index)], int(attempt))
            for index, given in attempts.items() for key, attempt in given.items()
            if key.rsplit("#", 1)[0] == execution}


def _clean_up_after_takeover(ctx: Context, run_id: str, execution: str) -> dict[str, Any]:
    """``execution`` no longer owns ``run_id``: touch only its own jobs (stop, release), not the run."""
    mine = _jobs_of_execution(ctx, run_id, execution)
    for job_name in sorted(mine):
        jobs.close_job(ctx.sagemaker, job_name)
    store = ctx.run_store(run_id)
    state = store.load_state()
    released = release_run_pools(ctx, state, only=mine)
    if released:
        store.save_state(state)
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
    if run_id and execution and ctx.run_store(run_id).exists_run():
        store = ctx.run_store(run_id)
        owner = (store.get_json_or_none(store.keys.owner) or {}).get("execution")
        if owner not in (None, execution):
            out = _clean_up_after_takeover(ctx, run_id, execution)
            _finalize(ctx, execution, cleaned_up=True, status=status.lower())
            return out
        if store.load_state().status == "succeeded":
            state = store.load_state()
            release_run_pools(ctx, state)
            store.save_state(state)
            report = write_report(ctx, store, state)
        else:
            _, report = _close_run(ctx, run_id, _EVENT_STATUS.get(status, "failed"), cause)
        subject, message = summary_message(report, links)
        message = f"The execution {execution} ended as {status}.\n\n" + message
    else:
        subject, message = _no_run_message(ctx, execution, detail.get("executionArn"), status.lower().replace("_", " "),
                                           cause)
    notified = ctx.publish(subject, message)
    _finalize(ctx, execution, run_id=run_id, status="failed" if status == "FAILED" else status.lower(),
              cleaned_up=True, notified=notified)  # EventBridge delivers at least once
    return {"action": "cleaned", "execution": execution, "run_id": run_id}
