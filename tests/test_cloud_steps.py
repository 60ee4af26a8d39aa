"""The Lambdas' logic (rlpipe.cloud.steps) against moto's S3 and SNS and a scripted SageMaker."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import boto3
import pytest
from moto import mock_aws

from rlpipe.cloud import jobs, steps
from rlpipe.cloud.pacing import HISTORY_EVENT_LIMIT, Timing, estimated_history_events
from rlpipe.cloud.requests import StackSettings
from rlpipe.cloud.store import RunKeys, RunStore, execution_key
from rlpipe.config import parse_pipeline
from rlpipe.state import RunState

BUCKET = "rlpipe-bucket"
DEFAULT_KEY = "configs/default/pipeline.json"
FAST = Timing(pool_poll_seconds=0, pool_max_polls=3, retry_wait_seconds=0, max_attempts=3)


class ScriptedSageMaker:
    """Describe answers set by the test; Update and Stop recorded."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.updates: list[dict[str, Any]] = []
        self.stops: list[str] = []
        self.calls: list[tuple[str, str]] = []  # (update|stop, job), in order

    def describe_training_job(self, TrainingJobName: str) -> dict[str, Any]:  # noqa: N803 (boto3's names)
        if TrainingJobName not in self.jobs:
            raise RuntimeError(f"An error occurred (ValidationException): Could not find training job "
                               f"'{TrainingJobName}'")
        return self.jobs[TrainingJobName]

    def update_training_job(self, **request: Any) -> dict[str, Any]:
        self.updates.append(request)
        self.calls.append(("update", request["TrainingJobName"]))
        job = self.jobs[request["TrainingJobName"]]
        if job["TrainingJobStatus"] == "InProgress":  # keep-alive changed before the job ends: no pool later
            job["ResourceConfig"]["KeepAlivePeriodInSeconds"] = request["ResourceConfig"]["KeepAlivePeriodInSeconds"]
        else:
            job.setdefault("WarmPoolStatus", {})["Status"] = "Terminated"
        return {}

    def stop_training_job(self, TrainingJobName: str) -> dict[str, Any]:  # noqa: N803
        self.stops.append(TrainingJobName)
        self.calls.append(("stop", TrainingJobName))
        self.jobs[TrainingJobName]["TrainingJobStatus"] = "Stopping"
        return {}

    def completed(self, name: str, output: str, pool: str | None = None, reused_by: str | None = None) -> None:
        t0 = datetime(2025, 1, 1, 12, 0, tzinfo=timezone.utc)
        job: dict[str, Any] = {"TrainingJobStatus": "Completed", "TrainingStartTime": t0,
                               "TrainingEndTime": t0.replace(minute=10), "TrainingTimeInSeconds": 600,
                               "BillableTimeInSeconds": 600,
                               "ModelArtifacts": {"S3ModelArtifacts": f"{output}{name}/output/model.tar.gz"}}
        if pool:
            job["WarmPoolStatus"] = {"Status": pool, "ResourceRetainedBillableTimeInSeconds": 30,
                                     **({"ReusedByJob": reused_by} if reused_by else {})}
        self.jobs[name] = job


@pytest.fixture
def aws() -> Iterator[dict[str, Any]]:
    with mock_aws():
        steps.reset_clients()
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        sns = boto3.client("sns", region_name="us-east-1")
        topic = sns.create_topic(Name="alerts")["TopicArn"]
        sqs = boto3.client("sqs", region_name="us-east-1")
        queue = sqs.create_queue(QueueName="q")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)
        sagemaker = ScriptedSageMaker()
        ctx = steps.Context(settings=StackSettings(bucket=BUCKET, role_arn="arn:aws:iam::123456789012:role/r",
                                                   image_uri="img"),
                            timing=FAST, s3=s3, sagemaker=sagemaker, sns=sns, topic_arn=topic,
                            default_pipeline_key=DEFAULT_KEY, region="us-east-1")
        yield {"ctx": ctx, "s3": s3, "sagemaker": sagemaker, "sqs": sqs, "queue": queue}
        steps.reset_clients()


def start(ctx: steps.Context, given: Any, execution: str = "exec-1") -> dict[str, Any]:
    return steps.start_run({"input": given, "execution": execution, "execution_arn": f"arn:x:{execution}",
                            "started_at": "2025-01-01T12:00:00.000Z"}, ctx)


def messages(aws: dict[str, Any]) -> list[dict[str, Any]]:
    got = aws["sqs"].receive_message(QueueUrl=aws["queue"], MaxNumberOfMessages=10).get("Messages", [])
    return [json.loads(m["Body"]) for m in got]


# ---- input ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("given,expected", [
    ({"pipeline_uri": "s3://x/y"}, "unknown input field 'pipeline_uri' (did you mean 'pipeline_s3_uri'?)"),
    ({"pipeline": {}, "resume_run_id": "x"}, "give at most one of"),
    ({"pipeline_s3_uri": "https://example.com/p.yaml"}, "pipeline_s3_uri: not an S3 object URI"),
    ({"pipeline_s3_uri": "s3://other/configs/p.yaml"}, "must be in this stack's bucket s3://rlpipe-bucket/"),
    ({"pipeline_s3_uri": f"s3://{BUCKET}/runs/x/state.json"}, "must be under s3://rlpipe-bucket/configs/"),
    ({"pipeline_s3_uri": f"s3://{BUCKET}/configs/missing.yaml"}, "no such object"),
    ({"pipeline": "name: x"}, "pipeline: expected an object"),
    ({"pipeline": {"name": "p", "sessions": [{"name": "a", "env": "Nope-v0", "timesteps": 8}]}},
     "unknown environment id 'Nope-v0'"),
    ({"resume_run_id": "../etc"}, "resume_run_id: expected a run id"),
    ({"resume_run_id": "gone-20250101-000000-abcdef"}, "no run 'gone-20250101-000000-abcdef'"),
    ("text", "execution input must be a JSON object"),
    ({}, "no such object"),  # the default pipeline was never uploaded
])
def test_bad_input_names_the_field(aws: dict[str, Any], given: Any, expected: str) -> None:
    with pytest.raises(steps.InvalidInput, match=None) as err:
        start(aws["ctx"], given)
    assert expected in str(err.value)
    assert not list(aws["s3"].list_objects_v2(Bucket=BUCKET, Prefix="runs/").get("Contents", []))


def test_inputs_that_start_a_run(aws: dict[str, Any], tiny_raw: dict[str, Any]) -> None:
    ctx, s3 = aws["ctx"], aws["s3"]
    s3.put_object(Bucket=BUCKET, Key=DEFAULT_KEY, Body=json.dumps(tiny_raw))
    yaml_text = f"name: from-yaml\nsessions: {json.dumps(tiny_raw['sessions'])}"
    s3.put_object(Bucket=BUCKET, Key="configs/p.yaml", Body=yaml_text)
    for i, given in enumerate([{}, {"pipeline_s3_uri": f"s3://{BUCKET}/configs/p.yaml"}, {"pipeline": tiny_raw}]):
        out = start(ctx, given, f"exec-{i}")
        assert out["run"] == {"run_id": out["run"]["run_id"], "parallel": 1, "fail_fast": False, "lineages": 1}
        (lineage,) = out["lineages"]  # one seed: the run is its own lineage
        assert lineage["cursor"] == steps.cursor(RunState.model_validate({"pipeline": "x", "run_id": "x",
                                                                          "config_fingerprint": "x",
                                                                          "sessions": []}), 0)
        assert lineage["run"]["run_id"] == lineage["run"]["parent_run_id"] == out["run"]["run_id"]
        assert lineage["run"]["sessions"] == 2 and lineage["run"]["pool_poll_seconds"] == 0
        store = RunStore(s3, BUCKET, out["run"]["run_id"])
        assert store.load_state().status == "running"
        plan = store.get_json(store.keys.plan)
        assert plan["estimated_history_events"] < 1000 and len(plan["sessions"]) == 2


def test_start_is_idempotent(aws: dict[str, Any], tiny_raw: dict[str, Any]) -> None:
    ctx = aws["ctx"]
    first = start(ctx, {"pipeline": tiny_raw})
    state = ctx.run_store(first["run"]["run_id"]).load_state()
    again = start(ctx, {"pipeline": tiny_raw})  # Step Functions retried the Lambda
    assert again == first
    assert ctx.run_store(first["run"]["run_id"]).load_state().created_at == state.created_at


def test_too_long_a_pipeline_is_refused_before_anything_runs(aws: dict[str, Any]) -> None:
    """Only the number of sessions counts: 100 sessions of days each start, 700 short ones do not."""
    from rlpipe.cloud.pacing import EVENTS_FIXED, EVENTS_PER_LINEAGE, EVENTS_PER_SESSION

    ctx = aws["ctx"]
    ctx.timing = Timing()  # real pacing

    def pipeline(sessions: int, timesteps: int) -> dict[str, Any]:
        return {"name": f"huge-{sessions}", "defaults": {"algorithm": "ppo", "n_envs": 2},
                "sessions": [{"name": f"s{i}", "env": "rlpipe/HeightMaximize-v0", "timesteps": timesteps}
                             for i in range(sessions)]}

    long_run = start(ctx, {"pipeline": pipeline(100, 40_000_000)}, "long-sessions")
    assert long_run["lineages"][0]["run"]["sessions"] == 100
    too_many = (HISTORY_EVENT_LIMIT - EVENTS_FIXED - EVENTS_PER_LINEAGE) // EVENTS_PER_SESSION + 1
    with pytest.raises(steps.InvalidInput, match="too long for one execution"):
        start(ctx, {"pipeline": pipeline(too_many, 256)}, "many-sessions")


def _real_execution(name: str) -> str:
    """A RUNNING execution in moto (which does not run the definition unless asked to)."""
    sfn = boto3.client("stepfunctions", region_name="us-east-1")
    machines = sfn.list_state_machines()["stateMachines"]
    arn = machines[0]["stateMachineArn"] if machines else sfn.create_state_machine(
        name="runs", definition=json.dumps({"StartAt": "W", "States": {"W": {"Type": "Wait", "Seconds": 9,
                                                                             "End": True}}}),
        roleArn="arn:aws:iam::123456789012:role/sfn")["stateMachineArn"]
    return sfn.start_execution(stateMachineArn=arn, name=name)["executionArn"]


def test_resume_refuses_a_run_another_execution_drives(aws: dict[str, Any], tiny_raw: dict[str, Any]) -> None:
    ctx = aws["ctx"]
    arn = _real_execution("first")
    run_id = steps.start_run({"input": {"pipeline": tiny_raw}, "execution": "first", "execution_arn": arn,
                              "started_at": "2025-01-01T12:00:00.000Z"}, ctx)["run"]["run_id"]
    with pytest.raises(steps.RunConflict, match="still running under execution 'first'"):
        start(ctx, {"resume_run_id": run_id}, "second")
    store = ctx.run_store(run_id)
    state = store.load_state()
    state.finish("failed", "boom")
    store.save_state(state)
    out = start(ctx, {"resume_run_id": run_id}, "second")
    assert out["run"]["run_id"] == run_id and store.load_state().status == "running"


def test_resume_takes_over_a_run_whose_execution_died(aws: dict[str, Any], tiny_raw: dict[str, Any]) -> None:
    """The state says running but its execution ended without cleanup: a resume stops its job and goes on."""
    ctx, sm = aws["ctx"], aws["sagemaker"]
    arn = _real_execution("dead")
    run_id = steps.start_run({"input": {"pipeline": tiny_raw}, "execution": "dead", "execution_arn": arn,
                              "started_at": "2025-01-01T12:00:00.000Z"}, ctx)["run"]["run_id"]
    job = steps.prepare_session({"run_id": run_id, "index": 0, "try": 0, "execution": "dead"}, ctx)["job_name"]
    sm.jobs[job] = {"TrainingJobStatus": "InProgress", "ResourceConfig": {"KeepAlivePeriodInSeconds": 600}}
    boto3.client("stepfunctions", region_name="us-east-1").stop_execution(executionArn=arn)
    out = start(ctx, {"resume_run_id": run_id}, "second")
    assert out["run"]["run_id"] == run_id and out["lineages"][0]["cursor"]["index"] == 0
    assert sm.calls == [("update", job), ("stop", job)]
    store = ctx.run_store(run_id)
    assert store.get_json(store.keys.owner)["execution"] == "second"
    assert store.load_state().sessions[0].status == "interrupted"


class RecordingSageMaker:
    """Wraps a client and records the API name of every call (``describe_training_job`` ->
    ``DescribeTrainingJob``)."""

    def __init__(self, inner: Any) -> None:
        self._inner, self.operations = inner, set()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._inner, name)

        def call(**kwargs: Any) -> Any:
            self.operations.add("".join(part.capitalize() for part in name.split("_")))
            return method(**kwargs)
        return call


def test_take_over_calls_only_sagemaker_actions_the_start_run_role_holds(aws: dict[str, Any],
                                                                           tiny_raw: dict[str, Any]) -> None:
    """Taking over a dead execution's run stops its job and releases pools from StartRun: its role must hold
    every SageMaker action that path calls (moto enforces no IAM, so this compares with the grants)."""
    from stacks.orchestration.functions import SPECS

    ctx, sm = aws["ctx"], aws["sagemaker"]
    arn = _real_execution("dead")
    run_id = steps.start_run({"input": {"pipeline": tiny_raw}, "execution": "dead", "execution_arn": arn,
                              "started_at": "2025-01-01T12:00:00.000Z"}, ctx)["run"]["run_id"]
    first = steps.prepare_session({"run_id": run_id, "index": 0, "try": 0, "execution": "dead"}, ctx)["job_name"]
    sm.completed(first, f"s3://{BUCKET}/runs/{run_id}/output/", pool="Available")
    steps.record_session({"run_id": run_id, "index": 0, "try": 0, "job_name": first}, ctx)
    second = steps.prepare_session({"run_id": run_id, "index": 1, "try": 0, "execution": "dead"}, ctx)["job_name"]
    sm.jobs[second] = {"TrainingJobStatus": "InProgress", "ResourceConfig": {"KeepAlivePeriodInSeconds": 600}}
    boto3.client("stepfunctions", region_name="us-east-1").stop_execution(executionArn=arn)
    ctx.sagemaker = recorder = RecordingSageMaker(sm)
    start(ctx, {"resume_run_id": run_id}, "second")
    assert recorder.operations == {"DescribeTrainingJob", "UpdateTrainingJob", "StopTrainingJob"}
    assert recorder.operations <= set(SPECS["start_run"].sagemaker)
    assert ("stop", second) in sm.calls and sm.jobs[first]["WarmPoolStatus"]["Status"] == "Terminated"


# ---- one session ------------------------------------------------------------------------------------------------

def test_prepare_is_idempotent_per_try_and_writes_session_json(aws: dict[str, Any], tiny_raw: dict[str, Any]) -> None:
    ctx = aws["ctx"]
    run_id = start(ctx, {"pipeline": tiny_raw})["run"]["run_id"]
    event = {"run_id": run_id, "index": 0, "try": 0, "execution": "exec-1"}
    a, b = steps.prepare_session(event, ctx), steps.prepare_session(event, ctx)
    assert a == b and a["attempt"] == 1 and a["job_name"].endswith("-000-stand-1")
    c = steps.prepare_session({**event, "try": 1}, ctx)
    assert c["attempt"] == 2 and c["job_name"].endswith("-000-stand-2")
    store = ctx.run_store(run_id)
    doc = store.get_json(RunKeys(run_id).session_file(0, "stand"))
    assert doc["session"]["name"] == "stand" and doc["run_id"] == run_id and doc["global_timestep_offset"] == 0
    st = store.load_state().sessions[0]
    assert (st.status, st.job_name, st.attempts) == ("running", c["job_name"], 2)


def _through_first_session(aws: dict[str, Any], tiny_raw: dict[str, Any], pool: str = "InUse") -> tuple[str, str]:
    ctx, sm = aws["ctx"], aws["sagemaker"]
    run_id = start(ctx, {"pipeline": tiny_raw})["run"]["run_id"]
    job = steps.prepare_session({"run_id": run_id, "index": 0, "try": 0, "execution": "exec-1"}, ctx)["job_name"]
    sm.completed(job, f"s3://{BUCKET}/runs/{run_id}/output/", pool=pool)
    metrics = {"timesteps": 256, "final_eval_reward": 3.5, "best_eval_reward": 4.0, "carried": [], "reset": [],
               "timing": {"started_at": "2025-01-01T12:00:01+00:00", "first_step_at": "2025-01-01T12:00:30+00:00",
                          "ended_at": "2025-01-01T12:09:50+00:00", "wall_seconds": 560.0}}
    aws["s3"].put_object(Bucket=BUCKET, Key=RunKeys(run_id).metrics("stand"), Body=json.dumps(metrics))
    return run_id, job


def test_record_completed_session_hands_the_bundle_on(aws: dict[str, Any], tiny_raw: dict[str, Any]) -> None:
    ctx = aws["ctx"]
    run_id, job = _through_first_session(aws, tiny_raw)
    out = steps.record_session({"run_id": run_id, "index": 0, "try": 0, "job_name": job}, ctx)
    assert out["outcome"] == "next" and out["index"] == 1 and not out["done"]
    assert out["wait_for_pool"] is True and out["pool_polls_left"] == 3  # pool not Available yet
    st = ctx.run_store(run_id).load_state().sessions[0]
    assert st.status == "completed" and st.bundle.endswith(f"/output/{job}/output/model.tar.gz")
    assert (st.timesteps, st.final_eval_reward, st.wall_seconds) == (256, 3.5, 560.0)
    assert st.billable_seconds == 600 and st.cost_usd is not None and st.warm_pool_status == "InUse"
    # The next session's request carries that bundle.
    request = steps.prepare_session({"run_id": run_id, "index": 1, "try": 0, "execution": "exec-1"}, ctx)["request"]
    previous = [c for c in request["InputDataConfig"] if c["ChannelName"] == "previous"]
    assert previous[0]["DataSource"]["S3DataSource"]["S3Uri"] == st.bundle


def test_check_pool_is_bounded(aws: dict[str, Any], tiny_raw: dict[str, Any]) -> None:
    ctx, sm = aws["ctx"], aws["sagemaker"]
    _, job = _through_first_session(aws, tiny_raw)
    cur = {"index": 1, "done": False, "try": 0, "outcome": "next", "wait_for_pool": True, "pool_polls_left": 2}
    cur = steps.check_pool({"job_name": job, "cursor": cur}, ctx)
    assert cur["wait_for_pool"] is True and cur["pool_polls_left"] == 1
    cur = steps.check_pool({"job_name": job, "cursor": cur}, ctx)
    assert cur["wait_for_pool"] is False  # gave up waiting; the next job starts anyway
    sm.jobs[job]["WarmPoolStatus"]["Status"] = "Available"
    cur = steps.check_pool({"job_name": job, "cursor": {**cur, "wait_for_pool": True, "pool_polls_left": 5}}, ctx)
    assert cur["wait_for_pool"] is False and cur["pool_polls_left"] == 4


def test_an_unreused_pool_is_released_when_the_next_session_ends(aws: dict[str, Any], tiny_raw: dict[str, Any]) -> None:
    ctx, sm = aws["ctx"], aws["sagemaker"]
    run_id, first = _through_first_session(aws, tiny_raw, pool="Available")
    steps.record_session({"run_id": run_id, "index": 0, "try": 0, "job_name": first}, ctx)
    second = steps.prepare_session({"run_id": run_id, "index": 1, "try": 0, "execution": "exec-1"}, ctx)["job_name"]
    sm.completed(second, f"s3://{BUCKET}/runs/{run_id}/output/")
    out = steps.record_session({"run_id": run_id, "index": 1, "try": 0, "job_name": second}, ctx)
    assert out["done"] is True
    assert sm.updates == [{"TrainingJobName": first, "ResourceConfig": {"KeepAlivePeriodInSeconds": 0}}]
    state = ctx.run_store(run_id).load_state()
    assert state.sessions[1].reused_previous_pool is False and state.sessions[0].warm_pool_idle_seconds == 30


def test_record_failures(aws: dict[str, Any], tiny_raw: dict[str, Any]) -> None:
    ctx, sm = aws["ctx"], aws["sagemaker"]
    run_id = start(ctx, {"pipeline": tiny_raw})["run"]["run_id"]
    job = steps.prepare_session({"run_id": run_id, "index": 0, "try": 0, "execution": "e"}, ctx)["job_name"]
    sm.jobs[job] = {"TrainingJobStatus": "Failed", "FailureReason": "CapacityError: Unable to provision requested "
                                                                  "ML compute capacity."}
    out = steps.record_session({"run_id": run_id, "index": 0, "try": 0, "job_name": job}, ctx)
    assert (out["outcome"], out["index"], out["try"]) == ("retry", 0, 1)
    out = steps.record_session({"run_id": run_id, "index": 0, "try": 2, "job_name": job}, ctx)
    assert out["outcome"] == "failed"  # out of attempts
    sm.jobs[job] = {"TrainingJobStatus": "Failed", "FailureReason": "AlgorithmError: ValueError: bad"}
    out = steps.record_session({"run_id": run_id, "index": 0, "try": 0, "job_name": job}, ctx)
    assert out["outcome"] == "failed" and out["error"]["Error"] == "TrainingJobFailed"
    assert "session 'stand' failed" in out["error"]["Cause"] and "ValueError: bad" in out["error"]["Cause"]
    assert ctx.run_store(run_id).load_state().sessions[0].status == "failed"


# ---- end of a run -------------------------------------------------------------------------------------------

def _end_lineage(ctx: Any, run_id: str, cursor: dict[str, Any]) -> dict[str, Any]:
    """EndLineage as the state machine calls it for a single-seed run (its own lineage)."""
    return steps.end_lineage({"state": {"run": {"run_id": run_id, "parent_run_id": run_id, "seed": None},
                                        "cursor": cursor}}, ctx)


def test_end_lineage_releases_pools_then_finish_writes_report(aws: dict[str, Any], tiny_raw: dict[str, Any]) -> None:
    ctx, sm = aws["ctx"], aws["sagemaker"]
    run_id, first = _through_first_session(aws, tiny_raw, pool="Reused")
    steps.record_session({"run_id": run_id, "index": 0, "try": 0, "job_name": first}, ctx)
    second = steps.prepare_session({"run_id": run_id, "index": 1, "try": 0, "execution": "exec-1"}, ctx)["job_name"]
    sm.completed(second, f"s3://{BUCKET}/runs/{run_id}/output/", pool="Available")  # left idling somehow
    cursor = steps.record_session({"run_id": run_id, "index": 1, "try": 0, "job_name": second}, ctx)
    ended = _end_lineage(ctx, run_id, cursor)
    assert ended == {"run_id": run_id, "seed": None, "status": "succeeded", "error": "", "cause": "",
                     "stop_run": False}
    assert [u["TrainingJobName"] for u in sm.updates] == [second]
    out = steps.finish_run({"run_id": run_id, "execution": "exec-1", "execution_arn": "arn:x",
                            "lineages": [ended]}, ctx)
    assert out["status"] == "succeeded" and "SUCCEEDED" in out["subject"] and run_id in out["message"]
    assert [u["TrainingJobName"] for u in sm.updates] == [second]  # FinishRun calls no SageMaker action
    report = ctx.store.get_json(RunKeys(run_id).report("json"))
    assert report["status"] == "succeeded" and report["sessions"][0]["final_eval_reward"] == 3.5
    assert ctx.store.get_json(execution_key("exec-1"))["finalized"] is True
    again = steps.finish_run({"run_id": run_id, "execution": "exec-1", "execution_arn": "arn:x"}, ctx)
    assert again["status"] == "succeeded"  # a retry rewrites the same report; no second run end
    assert not messages(aws)  # the state machine publishes, not this step


def test_fail_run_reads_lambda_errors_and_stops_the_job(aws: dict[str, Any], tiny_raw: dict[str, Any]) -> None:
    ctx, sm = aws["ctx"], aws["sagemaker"]
    run_id = start(ctx, {"pipeline": tiny_raw})["run"]["run_id"]
    job = steps.prepare_session({"run_id": run_id, "index": 0, "try": 0, "execution": "exec-1"}, ctx)["job_name"]
    sm.jobs[job] = {"TrainingJobStatus": "InProgress"}
    cause = json.dumps({"errorType": "KeyError", "errorMessage": "'x'", "stackTrace": []})
    payload = {"run": {"run_id": run_id}, "cursor": {"index": 0}, "error": {"Error": "KeyError", "Cause": cause}}
    out = steps.fail_run({"state": payload, "execution": "exec-1", "execution_arn": "arn:x"}, ctx)
    assert (out["error"], out["cause"]) == ("KeyError", "'x'") and "FAILED" in out["subject"]
    assert sm.stops == [job]
    state = ctx.run_store(run_id).load_state()
    assert state.status == "failed" and state.sessions[0].status == "failed" and state.sessions[0].error == "'x'"
    assert ctx.store.get_json(RunKeys(run_id).report("json"))["failures"][0]["session"] == "stand"


def test_fail_run_before_a_run_exists(aws: dict[str, Any]) -> None:
    ctx = aws["ctx"]
    cause = json.dumps({"errorType": "InvalidInput", "errorMessage": "unknown input field 'x'"})
    out = steps.fail_run({"state": {"input": {"x": 1}, "error": {"Error": "InvalidInput", "Cause": cause}},
                          "execution": "bad", "execution_arn": "arn:x"}, ctx)
    assert out["error"] == "InvalidInput" and out["cause"] == "unknown input field 'x'"
    assert "No training job was started" in out["message"]
    assert steps.readable_error({"Error": "States.Runtime", "Cause": "x"}) == ("RunFailed.States.Runtime", "x")


def test_cleanup_after_an_abort_stops_releases_reports_and_alerts_once(aws: dict[str, Any],
                                                                       tiny_raw: dict[str, Any]) -> None:
    ctx, sm = aws["ctx"], aws["sagemaker"]
    run_id, first = _through_first_session(aws, tiny_raw, pool="Available")
    steps.record_session({"run_id": run_id, "index": 0, "try": 0, "job_name": first}, ctx)
    second = steps.prepare_session({"run_id": run_id, "index": 1, "try": 0, "execution": "exec-1"}, ctx)["job_name"]
    sm.jobs[second] = {"TrainingJobStatus": "InProgress"}
    event = {"detail-type": "Step Functions Execution Status Change",
             "detail": {"name": "exec-1", "status": "ABORTED", "executionArn": "arn:x:exec-1"}}
    assert steps.cleanup_execution(event, ctx)["action"] == "cleaned"
    assert sm.stops == [second] and [u["TrainingJobName"] for u in sm.updates] == [first]
    state = ctx.run_store(run_id).load_state()
    assert state.status == "interrupted" and state.sessions[1].status == "interrupted"
    assert ctx.store.get_json(RunKeys(run_id).report("json"))["status"] == "interrupted"
    assert steps.cleanup_execution(event, ctx)["action"] == "none"  # EventBridge may deliver twice
    sent = messages(aws)
    assert len(sent) == 1 and "INTERRUPTED" in sent[0]["Subject"]


def test_cleanup_of_an_execution_that_never_started_a_run(aws: dict[str, Any]) -> None:
    event = {"detail": {"name": "early", "status": "TIMED_OUT", "executionArn": "arn:x:early"}}
    assert steps.cleanup_execution(event, aws["ctx"])["run_id"] is None
    assert "before a run started" in messages(aws)[0]["Subject"]


# ---- pacing ---------------------------------------------------------------------------------------------------

def test_timing_from_env() -> None:
    t = Timing.from_env({"RLPIPE_POOL_POLL_SECONDS": "5", "RLPIPE_POOL_MAX_POLLS": "7"})
    assert (t.pool_poll_seconds, t.pool_max_polls, t.retry_wait_seconds) == (5, 7, Timing.retry_wait_seconds)


def test_prepare_bounds_the_wait_by_the_jobs_own_limits(aws: dict[str, Any], tiny_raw: dict[str, Any]) -> None:
    ctx = aws["ctx"]
    raw = copy.deepcopy(tiny_raw)
    raw["sessions"][0]["compute"] = {"max_runtime_seconds": 7200}
    run_id = start(ctx, {"pipeline": raw})["run"]["run_id"]
    out = steps.prepare_session({"run_id": run_id, "index": 0, "try": 0, "execution": "exec-1"}, ctx)
    assert out["timeout_seconds"] == 7200 + steps.job_events.WAIT_MARGIN_SECONDS
    assert out["previous_pool"] == {"pending": False, "job_name": ""}
    spot = parse_pipeline({**raw, "sessions": [{**raw["sessions"][0], "compute": {
        "spot": True, "warm_pool": {"enabled": False}, "max_runtime_seconds": 3600, "max_wait_seconds": 10_800}}]})
    assert steps.wait_timeout_seconds(spot.sessions[0].compute) == 10_800 + steps.job_events.WAIT_MARGIN_SECONDS


def test_history_estimate_depends_on_session_count_not_length(tiny_raw: dict[str, Any]) -> None:
    from rlpipe.cloud.pacing import EVENTS_PER_SESSION
    from rlpipe.plan import build_plan

    def estimate(sessions: int, timesteps: int) -> int:
        raw = copy.deepcopy(tiny_raw)
        raw["sessions"] = [dict(raw["sessions"][0], name=f"s{i}", timesteps=timesteps) for i in range(sessions)]
        return estimated_history_events(build_plan(parse_pipeline(raw)))

    short, long = estimate(10, 256), estimate(10, 40_000_000)  # minutes against days per session
    assert short == long
    assert estimate(11, 256) - short == EVENTS_PER_SESSION
    assert estimate(100, 256) < HISTORY_EVENT_LIMIT


def test_cleanup_keeps_a_succeeded_run_succeeded(aws: dict[str, Any], tiny_raw: dict[str, Any]) -> None:
    ctx, sm = aws["ctx"], aws["sagemaker"]
    run_id, first = _through_first_session(aws, tiny_raw, pool="Reused")
    steps.record_session({"run_id": run_id, "index": 0, "try": 0, "job_name": first}, ctx)
    second = steps.prepare_session({"run_id": run_id, "index": 1, "try": 0, "execution": "exec-1"}, ctx)["job_name"]
    sm.completed(second, f"s3://{BUCKET}/runs/{run_id}/output/")
    cursor = steps.record_session({"run_id": run_id, "index": 1, "try": 0, "job_name": second}, ctx)
    _end_lineage(ctx, run_id, cursor)
    steps.finish_run({"run_id": run_id, "execution": "exec-1", "execution_arn": "arn:x"}, ctx)
    # The execution then fails while publishing the summary: the run stays succeeded, the summary goes out.
    event = {"detail": {"name": "exec-1", "status": "FAILED", "executionArn": "arn:x:exec-1"}}
    assert steps.cleanup_execution(event, ctx)["action"] == "cleaned"
    assert ctx.run_store(run_id).load_state().status == "succeeded"
    (sent,) = messages(aws)
    assert "SUCCEEDED" in sent["Subject"] and "ended as FAILED" in sent["Message"]


# ---- review fixes: stop without a leaked pool, alerts, pools, ownership, attempts ---------------------------

def test_closing_a_run_drops_the_keep_alive_before_stopping(aws: dict[str, Any], tiny_raw: dict[str, Any]) -> None:
    """A job stopped with a keep-alive would leave a pool after it finishes stopping, too late to release."""
    ctx, sm = aws["ctx"], aws["sagemaker"]
    run_id = start(ctx, {"pipeline": tiny_raw})["run"]["run_id"]
    job = steps.prepare_session({"run_id": run_id, "index": 0, "try": 0, "execution": "exec-1"}, ctx)["job_name"]
    sm.jobs[job] = {"TrainingJobStatus": "InProgress", "ResourceConfig": {"KeepAlivePeriodInSeconds": 1800}}
    event = {"detail": {"name": "exec-1", "status": "ABORTED", "executionArn": "arn:x:exec-1"}}
    steps.cleanup_execution(event, ctx)
    assert sm.calls == [("update", job), ("stop", job)]
    assert sm.updates[0] == {"TrainingJobName": job, "ResourceConfig": {"KeepAlivePeriodInSeconds": 0}}
    assert sm.jobs[job]["ResourceConfig"]["KeepAlivePeriodInSeconds"] == 0


def test_close_job_stops_even_if_the_keep_alive_update_is_refused(aws: dict[str, Any]) -> None:
    sm = aws["sagemaker"]
    sm.jobs["rlpipe-x"] = {"TrainingJobStatus": "InProgress", "ResourceConfig": {"KeepAlivePeriodInSeconds": 60}}

    def refuse(**request: Any) -> None:
        raise RuntimeError("An error occurred (ValidationException): not allowed for an InProgress job")

    sm.update_training_job = refuse  # type: ignore[method-assign]
    assert jobs.close_job(sm, "rlpipe-x") is True and sm.stops == ["rlpipe-x"]


LONGEST_EXECUTION = "e" * 80  # Step Functions' maximum execution name length


def test_alert_subjects_fit_sns_and_keep_execution_names_in_the_body(aws: dict[str, Any],
                                                                     tiny_raw: dict[str, Any]) -> None:
    ctx = aws["ctx"]
    out = steps.fail_run({"state": {"error": {"Error": "InvalidInput", "Cause": "bad"}},
                          "execution": LONGEST_EXECUTION, "execution_arn": "arn:x"}, ctx)
    assert len(out["subject"]) < 100 and LONGEST_EXECUTION not in out["subject"]
    assert LONGEST_EXECUTION in out["message"]
    event = {"detail": {"name": LONGEST_EXECUTION + "x", "status": "TIMED_OUT", "executionArn": "arn:x"}}
    steps.cleanup_execution(event, ctx)
    long_name = dict(tiny_raw, name="p" * 40)  # the longest pipeline name
    run_id = start(ctx, {"pipeline": long_name}, "long")["run"]["run_id"]
    report = steps.write_report(ctx, ctx.run_store(run_id), ctx.run_store(run_id).load_state())
    subject, _ = steps.summary_message(report, {"report": "s3://x/y"})
    assert len(subject) <= steps.SUBJECT_MAX
    sent = messages(aws)  # moto's SNS accepted each subject
    assert len(sent) == 2 and all(len(m["Subject"]) < 100 and "eeee" not in m["Subject"] for m in sent)
    assert steps.sns_subject("a\nb\tc é " + "x" * 200) == ("a b c ? " + "x" * 200)[:99]


class FailingSNS:
    def publish(self, **kwargs: Any) -> None:
        raise RuntimeError("An error occurred (KMSAccessDenied) when calling the Publish operation")


def test_a_failed_alert_is_sent_by_the_cleanup(aws: dict[str, Any], tiny_raw: dict[str, Any]) -> None:
    ctx = aws["ctx"]
    run_id = start(ctx, {"pipeline": tiny_raw})["run"]["run_id"]
    payload = {"run": {"run_id": run_id}, "error": {"Error": "KeyError", "Cause": "boom"}}
    good_sns, ctx.sns = ctx.sns, FailingSNS()
    out = steps.fail_run({"state": payload, "execution": "exec-1", "execution_arn": "arn:x"}, ctx)
    assert out["cause"] == "boom"  # the Fail state still gets the real cause
    assert ctx.store.get_json(execution_key("exec-1"))["notified"] is False
    ctx.sns = good_sns
    event = {"detail": {"name": "exec-1", "status": "FAILED", "executionArn": "arn:x:exec-1"}}
    assert steps.cleanup_execution(event, ctx)["action"] == "cleaned"
    (sent,) = messages(aws)
    assert "FAILED" in sent["Subject"]
    assert steps.cleanup_execution(event, ctx)["action"] == "none"


def test_fail_run_alerts_once_and_the_cleanup_then_stays_quiet(aws: dict[str, Any], tiny_raw: dict[str, Any]) -> None:
    ctx = aws["ctx"]
    run_id = start(ctx, {"pipeline": tiny_raw})["run"]["run_id"]
    payload = {"run": {"run_id": run_id}, "error": {"Error": "KeyError", "Cause": "boom"}}
    steps.fail_run({"state": payload, "execution": "exec-1", "execution_arn": "arn:x"}, ctx)
    steps.fail_run({"state": payload, "execution": "exec-1", "execution_arn": "arn:x"}, ctx)  # a retry
    assert ctx.store.get_json(execution_key("exec-1"))["notified"] is True
    event = {"detail": {"name": "exec-1", "status": "FAILED", "executionArn": "arn:x:exec-1"}}
    assert steps.cleanup_execution(event, ctx)["action"] == "none"
    assert len(messages(aws)) == 1


def test_check_pool_stops_waiting_when_no_pool_was_kept(aws: dict[str, Any], tiny_raw: dict[str, Any]) -> None:
    """Warm-pool quota 0: SageMaker keeps no pool and reports no WarmPoolStatus at all."""
    ctx = aws["ctx"]
    ctx.timing = Timing(pool_max_polls=40)
    run_id, job = _through_first_session(aws, tiny_raw, pool=None)
    cur = steps.record_session({"run_id": run_id, "index": 0, "try": 0, "job_name": job}, ctx)
    assert cur["wait_for_pool"] is True
    polls = 0
    while cur["wait_for_pool"]:
        cur = steps.check_pool({"run_id": run_id, "job_name": job, "cursor": cur}, ctx)
        polls += 1
    assert polls == steps.NO_POOL_CHECKS  # not 40
    state = ctx.run_store(run_id).load_state()
    assert state.sessions[0].warm_pool_status == steps.NO_POOL_STATUS
    request = steps.prepare_session({"run_id": run_id, "index": 1, "try": 0, "execution": "exec-1"}, ctx)
    assert request["previous_pool"]["pending"] is False


def test_an_unused_pool_is_released_while_the_next_job_runs(aws: dict[str, Any], tiny_raw: dict[str, Any]) -> None:
    """Reconciliation sees session 2's job past its start while session 1's pool still idles: it ends the pool,
    and RecordSession then records it as Terminated."""
    ctx, sm = aws["ctx"], aws["sagemaker"]
    ctx.stepfunctions = RecordingStepFunctions()
    run_id, first = _through_first_session(aws, tiny_raw, pool="Available")
    steps.record_session({"run_id": run_id, "index": 0, "try": 0, "job_name": first}, ctx)
    job = steps.prepare_session({"run_id": run_id, "index": 1, "try": 0, "execution": "exec-1"}, ctx)
    assert job["previous_pool"] == {"pending": True, "job_name": first}
    second = job["job_name"]
    sm.jobs[second] = {"TrainingJobStatus": "InProgress", "SecondaryStatus": "Starting"}
    steps.await_job_end({"token": "t", "run_id": run_id, "job_name": second, "previous_pool": job["previous_pool"]},
                        ctx)
    assert steps.reconcile({}, ctx)["heartbeats"] == 1 and sm.updates == []  # may still take the pool
    sm.jobs[second]["SecondaryStatus"] = "Training"
    steps.reconcile({}, ctx)
    assert sm.updates == [{"TrainingJobName": first, "ResourceConfig": {"KeepAlivePeriodInSeconds": 0}}]
    steps.reconcile({}, ctx)  # released once
    assert len(sm.updates) == 1
    sm.completed(second, f"s3://{BUCKET}/runs/{run_id}/output/")
    steps.record_session({"run_id": run_id, "index": 1, "try": 0, "job_name": second}, ctx)
    assert ctx.run_store(run_id).load_state().sessions[0].warm_pool_status == "Terminated"


def test_cleanup_of_a_taken_over_run_touches_only_its_own_jobs(aws: dict[str, Any], tiny_raw: dict[str, Any]) -> None:
    ctx, sm = aws["ctx"], aws["sagemaker"]
    run_id, first = _through_first_session(aws, tiny_raw, pool="Available")  # created by exec-1
    steps.record_session({"run_id": run_id, "index": 0, "try": 0, "job_name": first}, ctx)
    store = ctx.run_store(run_id)
    state = store.load_state()
    state.finish("failed", "x")
    store.save_state(state)
    start(ctx, {"resume_run_id": run_id}, "exec-2")  # the run now belongs to exec-2
    second = steps.prepare_session({"run_id": run_id, "index": 1, "try": 0, "execution": "exec-2"}, ctx)["job_name"]
    sm.jobs[second] = {"TrainingJobStatus": "InProgress", "ResourceConfig": {}}
    # exec-1's late ABORTED event: its pool is released; exec-2's job, the state and the report are untouched.
    out = steps.cleanup_execution({"detail": {"name": "exec-1", "status": "ABORTED", "executionArn": "arn"}}, ctx)
    assert out["action"] == "released" and out["released"] == [first]
    assert sm.stops == [] and [u["TrainingJobName"] for u in sm.updates] == [first]
    state = store.load_state()
    assert state.status == "running" and state.sessions[1].status == "running"
    assert not store.exists(store.keys.report("json")) and not messages(aws)


def test_attempts_add_up_and_wall_time_is_the_last_attempts(aws: dict[str, Any], tiny_raw: dict[str, Any]) -> None:
    ctx, sm = aws["ctx"], aws["sagemaker"]
    run_id = start(ctx, {"pipeline": tiny_raw})["run"]["run_id"]
    first = steps.prepare_session({"run_id": run_id, "index": 0, "try": 0, "execution": "e"}, ctx)["job_name"]
    t0 = datetime(2025, 1, 1, 12, 0, tzinfo=timezone.utc)
    sm.jobs[first] = {"TrainingJobStatus": "Failed", "FailureReason": "CapacityError: none left",
                      "TrainingStartTime": t0, "TrainingEndTime": t0.replace(minute=2),
                      "TrainingTimeInSeconds": 120, "BillableTimeInSeconds": 100}
    assert steps.record_session({"run_id": run_id, "index": 0, "try": 0, "job_name": first}, ctx)["outcome"] == "retry"
    assert ctx.run_store(run_id).load_state().sessions[0].wall_seconds == 120
    second = steps.prepare_session({"run_id": run_id, "index": 0, "try": 1, "execution": "e"}, ctx)["job_name"]
    assert ctx.run_store(run_id).load_state().sessions[0].wall_seconds is None  # reset for the new attempt
    sm.completed(second, f"s3://{BUCKET}/runs/{run_id}/output/")
    steps.record_session({"run_id": run_id, "index": 0, "try": 1, "job_name": second}, ctx)
    st = ctx.run_store(run_id).load_state().sessions[0]
    assert (st.billable_seconds, st.training_seconds, st.wall_seconds) == (700, 720, 600)
    one = jobs.session_cost(st.model_copy(update={"billable_seconds": 600.0}), "ml.c5.xlarge", 1)
    assert st.cost_usd is not None and one is not None and st.cost_usd > one


def test_a_job_sagemaker_stopped_says_why(aws: dict[str, Any], tiny_raw: dict[str, Any]) -> None:
    ctx, sm = aws["ctx"], aws["sagemaker"]
    run_id = start(ctx, {"pipeline": tiny_raw})["run"]["run_id"]
    job = steps.prepare_session({"run_id": run_id, "index": 0, "try": 0, "execution": "e"}, ctx)["job_name"]
    sm.jobs[job] = {"TrainingJobStatus": "Stopped", "SecondaryStatus": "MaxRuntimeExceeded",
                    "SecondaryStatusTransitions": [
                        {"Status": "Training", "StatusMessage": "Training image download completed."},
                        {"Status": "MaxRuntimeExceeded", "StatusMessage": "Job stopped: MaxRuntimeInSeconds reached"}]}
    out = steps.record_session({"run_id": run_id, "index": 0, "try": 0, "job_name": job}, ctx)
    assert out["error"]["Error"] == "TrainingJobStopped"
    assert "MaxRuntimeExceeded" in out["error"]["Cause"] and "MaxRuntimeInSeconds reached" in out["error"]["Cause"]


def test_transition_leaves_out_the_transfer_evaluation(aws: dict[str, Any], tiny_raw: dict[str, Any]) -> None:
    ctx, sm = aws["ctx"], aws["sagemaker"]
    run_id, first = _through_first_session(aws, tiny_raw, pool="Reused")
    steps.record_session({"run_id": run_id, "index": 0, "try": 0, "job_name": first}, ctx)
    out = steps.prepare_session({"run_id": run_id, "index": 1, "try": 0, "execution": "exec-1"}, ctx)
    doc = ctx.store.get_json(RunKeys(run_id).session_file(1, "hold"))
    assert doc["global_timestep_offset"] == tiny_raw["sessions"][0]["timesteps"]
    sm.completed(out["job_name"], f"s3://{BUCKET}/runs/{run_id}/output/")
    metrics = {"timesteps": 256, "timing": {"first_step_at": "2025-01-01T12:10:50+00:00", "wall_seconds": 60.0,
                                            "ended_at": "2025-01-01T12:11:50+00:00", "transfer_eval_seconds": 20.0}}
    aws["s3"].put_object(Bucket=BUCKET, Key=RunKeys(run_id).metrics("hold"), Body=json.dumps(metrics))
    steps.record_session({"run_id": run_id, "index": 1, "try": 0, "job_name": out["job_name"]}, ctx)
    # session 1 ended 12:09:50; 60 s to the first step, 20 of them the warm-started policy's evaluation
    assert ctx.run_store(run_id).load_state().sessions[1].transition_seconds == 40.0


# ---- a job's end by event: tokens, duplicates, closed tasks, reconciliation ----------------------------------

class RecordingStepFunctions:
    """SendTask* calls recorded; tokens in ``closed`` answer as Step Functions does for a closed task."""

    def __init__(self, closed: set[str] | None = None) -> None:
        self.closed, self.calls = closed or set(), []

    def _call(self, action: str, taskToken: str, **kwargs: Any) -> dict[str, Any]:  # noqa: N803 (boto3's names)
        from botocore.exceptions import ClientError

        self.calls.append((action, taskToken, kwargs))
        if taskToken in self.closed:
            raise ClientError({"Error": {"Code": "TaskTimedOut", "Message": "Task Timed Out"}}, action)
        return {}

    def send_task_success(self, **kw: Any) -> dict[str, Any]:
        return self._call("success", **kw)

    def send_task_failure(self, **kw: Any) -> dict[str, Any]:
        return self._call("failure", **kw)

    def send_task_heartbeat(self, **kw: Any) -> dict[str, Any]:
        return self._call("heartbeat", **kw)


def _job_event(name: str, status: str) -> dict[str, Any]:
    return {"detail-type": "SageMaker Training Job State Change", "source": "aws.sagemaker",
            "detail": {"TrainingJobName": name, "TrainingJobStatus": status, "SecondaryStatus": status}}


def test_job_end_events_complete_the_wait_once(aws: dict[str, Any]) -> None:
    ctx, sm = aws["ctx"], aws["sagemaker"]
    ctx.stepfunctions = sfn = RecordingStepFunctions()
    job = "rlpipe-0123abcd-000-stand-1"
    sm.jobs[job] = {"TrainingJobStatus": "InProgress", "SecondaryStatus": "Training"}
    out = steps.await_job_end({"token": "tok-1", "run_id": "r", "job_name": job,
                               "previous_pool": {"pending": False, "job_name": ""}}, ctx)
    assert out == {"job_name": job, "ended": False} and sfn.calls == []
    assert steps.job_state_changed(_job_event(job, "InProgress"), ctx)["action"] == "ignored"
    assert steps.job_state_changed(_job_event("other-0123abcd-000-x-1", "Completed"), ctx)["action"] == "ignored"
    assert steps.handle_job_event(_job_event(job, "Failed"), ctx)["action"] == "completed"
    assert sfn.calls == [("success", "tok-1", {"output": json.dumps({"TrainingJobStatus": "Failed",
                                                                      "SecondaryStatus": "Failed"})})]
    assert steps.job_state_changed(_job_event(job, "Failed"), ctx)["action"] == "none"  # the duplicate
    assert len(sfn.calls) == 1


def test_a_task_closed_before_counts_as_done_and_its_token_is_forgotten(aws: dict[str, Any]) -> None:
    """The waiting step and the event race, or the execution ended: TaskTimedOut means already done."""
    from rlpipe.cloud.tokens import TokenStore

    ctx, sm = aws["ctx"], aws["sagemaker"]
    ctx.stepfunctions = RecordingStepFunctions(closed={"tok-old"})
    job = "rlpipe-0123abcd-000-stand-1"
    sm.jobs[job] = {"TrainingJobStatus": "InProgress", "SecondaryStatus": "Training"}
    TokenStore(aws["s3"], BUCKET).put(job, "tok-old", "r")
    assert steps.job_state_changed(_job_event(job, "Completed"), ctx)["action"] == "already-closed"
    assert TokenStore(aws["s3"], BUCKET).waiting() == {}
    # Ended before the token was stored: the waiting step completes its own task.
    sm.jobs[job]["TrainingJobStatus"] = "Completed"
    assert steps.await_job_end({"token": "tok-new", "run_id": "r", "job_name": job}, ctx)["ended"] is True
    assert ctx.stepfunctions.calls[-1][:2] == ("success", "tok-new") and TokenStore(aws["s3"], BUCKET).waiting() == {}


def test_reconciliation_completes_ended_jobs_heartbeats_running_ones_and_fails_missing_ones(
        aws: dict[str, Any]) -> None:
    from rlpipe.cloud.tokens import TokenStore

    ctx, sm = aws["ctx"], aws["sagemaker"]
    ctx.stepfunctions = sfn = RecordingStepFunctions(closed={"tok-gone"})
    tokens = TokenStore(aws["s3"], BUCKET)
    sm.jobs["rlpipe-0123abcd-000-a-1"] = {"TrainingJobStatus": "Completed", "SecondaryStatus": "Completed"}
    sm.jobs["rlpipe-0123abcd-001-b-1"] = {"TrainingJobStatus": "InProgress", "SecondaryStatus": "Training"}
    tokens.put("rlpipe-0123abcd-000-a-1", "tok-ended", "r")
    tokens.put("rlpipe-0123abcd-001-b-1", "tok-running", "r")
    tokens.put("rlpipe-0123abcd-001-b-1", "tok-gone", "r")      # an earlier wait whose execution is gone
    tokens.put("rlpipe-0123abcd-002-c-1", "tok-missing", "r")   # no such job
    assert steps.handle_job_event({"detail-type": "Scheduled Event", "detail": {}}, ctx) == \
        {"completed": 2, "heartbeats": 1, "forgotten": 1}
    by_token = {c[1]: c[0] for c in sfn.calls}
    assert by_token == {"tok-ended": "success", "tok-running": "heartbeat", "tok-gone": "heartbeat",
                        "tok-missing": "failure"}
    failure = next(c for c in sfn.calls if c[1] == "tok-missing")[2]
    assert failure["error"] == "TrainingJobMissing"
    assert [t.token for ts in tokens.waiting().values() for t in ts] == ["tok-running"]
