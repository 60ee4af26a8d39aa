"""The synthesized state machine on two independent ASL interpreters: moto's (derived from LocalStack's) and
aws-local-stepfunctions (npm, tests/asl_local/). Both run the same definition with the same Python steps
against the same moto account; each scenario must take the same path (states entered, in order) and end with
the same output or the same error and cause, up to identifiers and clock readings (:func:`normalized`).
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from moto import mock_aws

from rlpipe.cloud.steps.job_events import WAIT_MARGIN_SECONDS
from tests.asl_local.bridge import RUN, TIMEOUT_KEY, LocalExecution, LocalInterpreter, local_definition, run_local
from tests.conftest import THREE, TINY
from tests.sfn_harness import MOCK_CONFIG, REGION, Execution, Harness
from tests.sfn_scenarios import reconcile_on_wait, reconcile_while_running, run_id_of

pytestmark = pytest.mark.timeout(300)

BAD_INPUTS = {
    "unknown field": {"pipelin": TINY},
    "not an object": [1, 2],
    "session without timesteps": {"pipeline": {**TINY, "sessions": [{"name": "x", "env": "rlpipe/HeightMaximize-v0"}]}},
}


@pytest.fixture(scope="module")
def synthesized(fast_machine) -> tuple[dict[str, Any], dict[str, Any]]:
    return fast_machine


def normalized(value: Any, executions: tuple[str, ...]) -> Any:
    """``value`` with what differs between two executions of the same input replaced: execution names, run
    ids and the job names built from them, timestamps, measured durations, request ids."""
    text = json.dumps(value, sort_keys=True)
    for name in executions:
        text = re.sub(rf"\b{re.escape(name)}\b", "<execution>", text)
    text = re.sub(r"\b[a-z0-9][a-z0-9-]*-\d{8}-\d{6}-[0-9a-f]{6}\b", "<run-id>", text)
    text = re.sub(r"\brlpipe-[0-9a-f]{8}-", "rlpipe-<run>-", text)
    text = re.sub(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})?", "<time>", text)
    text = re.sub(r"\b\d+\.\d+ s\b", "<n> s", text)
    text = re.sub(r"Request ID: [^,)\\]+", "Request ID: <id>", text)
    return json.loads(text)


def outcome(ex: Execution | LocalExecution, names: tuple[str, ...]) -> dict[str, Any]:
    if isinstance(ex, Execution):
        failure = ex.failure()
        return normalized({"status": ex.status, "output": ex.output, "error": failure.get("error"),
                           "cause": failure.get("cause")}, names)
    return normalized({"status": ex.status, "output": ex.output, "error": ex.error, "cause": ex.cause}, names)


def both(h: Harness, local: LocalInterpreter, execution_input: Any, name: str, before: Any = None,
         while_running: Any = None) -> tuple[Execution, LocalExecution]:
    """The same input on moto then on aws-local-stepfunctions (``before()`` sets up each run alike,
    ``while_running()`` runs once each has started)."""
    if before:
        before()
    arn = h.start(execution_input, f"{name}-moto")
    if while_running:
        while_running()
    on_moto = h.wait(arn)
    if before:
        before()
    run = local.start(execution_input, f"{name}-local")
    if while_running:
        while_running()
    on_local = run.wait()
    local.deliveries_done()
    return on_moto, on_local


def moto_paths(ex: Execution) -> dict[str | int, list[str]]:
    """The states an execution on moto entered at the top level (key ``RUN``) and in each Map iteration (its
    index), each in order. Iterations interleave in the history; each event names the one before it in its own
    thread (``previousEventId``), back to its iteration's MapIterationStarted. The Map state's own events
    (``MapState*``), and those after them, are the top level's again."""
    owner: dict[int, int | None] = {}  # event id -> iteration index (None: top level)
    paths: dict[str | int, list[str]] = {RUN: []}
    for event in ex.events:
        if event["type"] == "MapIterationStarted":
            index: int | None = event["mapIterationStartedEventDetails"]["index"]
        elif event["type"].startswith("MapState"):
            index = None
        else:
            index = owner.get(event.get("previousEventId", 0))
        owner[event["id"]] = index
        if "stateEnteredEventDetails" in event:
            paths.setdefault(RUN if index is None else index, []).append(event["stateEnteredEventDetails"]["name"])
    return paths


def assert_same(on_moto: Execution, on_local: LocalExecution, name: str) -> None:
    """Same states entered (at the top level and within each lineage, in order; with one lineage, the whole
    path in order) and the same end. With several, lineages interleave differently on each interpreter."""
    assert on_local.paths() == moto_paths(on_moto), f"{name}: the interpreters took different paths"
    if len(on_local.paths()) <= 2:  # one lineage: nothing interleaves, the whole path in order is the same
        assert on_local.path == on_moto.states_entered(), f"{name}: the interpreters took different paths"
    names = (f"{name}-moto", f"{name}-local")
    assert outcome(on_local, names) == outcome(on_moto, names)


def test_both_interpreters_take_the_same_path_to_the_same_end(synthesized, tmp_path: Path) -> None:
    template, ids = synthesized
    h = Harness(template, ids, tmp_path, mode="instant")
    with h.running(), LocalInterpreter(h).running() as local:
        assert local.rewritten == {"StartRun": "ResultPath", "AwaitJobEnd": "TimeoutSecondsPath"}

        # Every job ends by its "SageMaker Training Job State Change" event (the harness delivers it for both).
        ok = both(h, local, {"pipeline": THREE}, "three")
        assert ok[0].status == "SUCCEEDED" and ok[0].states_entered().count("RecordSession") == 3
        assert "DescribeTrainingJob" not in ok[0].states_entered()
        assert_same(*ok, "three")
        waits = [t for s, t in local.timeouts if s == "AwaitJobEnd"]
        assert len(waits) == 3 and all(isinstance(t, int) and t > WAIT_MARGIN_SECONDS for t in waits)

        def hold_fails_once() -> None:
            h.sagemaker.fail = {"hold": 1}
        failed = both(h, local, {"pipeline": THREE}, "fails", before=hold_fails_once)
        assert failed[0].status == "FAILED" and failed[0].failure()["error"] == "TrainingJobFailed"
        assert_same(*failed, "fails")

        # Each interpreter resumes the run it failed.
        moto_run = run_id_of(failed[0])
        local_run = run_id_from_record(h, "fails-local")
        on_moto = h.execute({"resume_run_id": moto_run}, "resume-moto")
        on_local = local.execute({"resume_run_id": local_run}, "resume-local")
        assert on_moto.status == "SUCCEEDED" and "StartRun" in on_moto.states_entered()
        assert_same(on_moto, on_local, "resume")

        # Each event twice, with a late InProgress one between: the first ends the wait, the others change nothing.
        h.job_events = "twice"
        twice = both(h, local, {"pipeline": TINY}, "twice")
        assert twice[0].status == "SUCCEEDED"
        assert_same(*twice, "twice")
        assert sorted({d["answer"]["action"] for d in h.delivered}) == ["completed", "ignored", "none"]

        # Every event lost: the reconciliation schedule finds each job ended and completes its wait.
        h.job_events = "lost"
        arn = h.start({"pipeline": TINY}, "lost-moto")
        moto_ticks = reconcile_while_running(h, arn)
        lost_moto = h.wait(arn)
        local.on_wait = reconcile_on_wait(h)
        lost_local = local.execute({"pipeline": TINY}, "lost-local")
        local.on_wait = None
        h.job_events = "once"
        assert lost_moto.status == "SUCCEEDED" and sum(t["completed"] for t in moto_ticks) == 2
        assert_same(lost_moto, lost_local, "lost")

        def throttle_once() -> None:
            h.sagemaker.throttle_creates = 1
        throttled = both(h, local, {"pipeline": TINY}, "throttled", before=throttle_once)
        assert throttled[0].status == "SUCCEEDED"
        assert_same(*throttled, "throttled")

        for i, (what, given) in enumerate(BAD_INPUTS.items()):
            bad = both(h, local, given, f"bad-{i}")
            assert bad[0].status == "FAILED" and bad[0].failure()["error"] == "InvalidInput", what
            assert_same(*bad, f"bad-{i}")


def run_id_from_record(h: Harness, execution: str) -> str:
    """The run an execution created, from its record in S3 (a failed or aborted execution has no output)."""
    return h.get_json(f"executions/{execution}.json")["run_id"]


# ---- where the interpreters differ ----------------------------------------------------------------------------

def test_result_path_dollar_is_mishandled_by_aws_local_stepfunctions_3_0_0() -> None:
    """The ASL specification: "ResultPath": "$" makes the state's result its whole output. moto follows it;
    aws-local-stepfunctions 3.0.0 writes the result into a key named "$" and keeps the input. The bridge drops
    such ResultPath fields (the default is "$"); this shows why, and fails once the package is fixed."""
    definition = {"StartAt": "Replace", "States": {
        "Replace": {"Type": "Pass", "Result": {"replaced": True}, "ResultPath": "$", "End": True}}}
    given = {"kept": True}
    as_is = run_local(definition, given, {})
    assert as_is.output == {"kept": True, "$": {"replaced": True}}  # the bug
    fixed, changed = local_definition(definition)
    assert changed == {"Replace": "ResultPath"} and run_local(fixed, given, {}).output == {"replaced": True}
    with mock_aws(config=MOCK_CONFIG):
        import boto3

        sfn = boto3.client("stepfunctions", region_name=REGION)
        arn = sfn.create_state_machine(name="dollar", definition=json.dumps(definition),
                                       roleArn="arn:aws:iam::123456789012:role/r")["stateMachineArn"]
        ex = sfn.start_execution(stateMachineArn=arn, input=json.dumps(given))["executionArn"]
        for _ in range(200):
            desc = sfn.describe_execution(executionArn=ex)
            if desc["status"] != "RUNNING":
                break
            time.sleep(0.02)
        assert json.loads(desc["output"]) == {"replaced": True}  # moto follows the specification


def test_timeout_seconds_path_is_read_from_the_effective_input_by_aws_local_stepfunctions_3_0_0() -> None:
    """AWS reads TimeoutSecondsPath from the state's input ("a timeout value dynamically from the state input",
    Task state reference); moto does too: the full scenarios run AwaitJobEnd's "$.job.timeout_seconds"
    unchanged on it. aws-local-stepfunctions 3.0.0 reads it from the effective input (after Parameters), where
    the path does not exist. The bridge passes the value through Parameters; this fails once the package is
    fixed."""
    definition = {"StartAt": "Work", "States": {
        "Work": {"Type": "Task", "Resource": "arn:aws:lambda:us-east-1:123456789012:function:work",
                 "Parameters": {"name.$": "$.name"}, "TimeoutSecondsPath": "$.limits.seconds", "End": True}}}
    given = {"name": "x", "limits": {"seconds": 30}}
    seen: list[Any] = []

    def answer(state: str, task_input: Any) -> Any:
        seen.append(task_input)
        return {"done": task_input["name"]}

    as_is = run_local(definition, given, {}, answer)
    assert (as_is.status, as_is.error) == ("FAILED", "States.Runtime") and "$.limits.seconds" in (as_is.cause or "")
    seen.clear()
    fixed, changed = local_definition(definition)
    assert changed == {"Work": "TimeoutSecondsPath"}
    assert run_local(fixed, given, {}, answer).output == {"done": "x"}
    assert seen == [{"name": "x", TIMEOUT_KEY: 30}]  # the bridge takes the key off before the call


def map_machine(concurrency: dict[str, Any]) -> dict[str, Any]:
    """A Map whose iterations each run one .waitForTaskToken Task (``concurrency``: MaxConcurrency[Path])."""
    work = {"Type": "Task", "Resource": "arn:aws:states:::lambda:invoke.waitForTaskToken",
            "Parameters": {"FunctionName": "arn:aws:lambda:us-east-1:123456789012:function:work",
                           "Payload": {"item.$": "$.item", "token.$": "$$.Task.Token"}}, "End": True}
    return {"StartAt": "Items", "States": {
        "Items": {"Type": "Map", "ItemsPath": "$.items", **concurrency, "ResultPath": "$.done", "End": True,
                  "ItemProcessor": {"ProcessorConfig": {"Mode": "INLINE"}, "StartAt": "Work",
                                    "States": {"Work": work}}}}}


def test_max_concurrency_path_is_honoured_by_aws_local_stepfunctions_3_0_0() -> None:
    """The state machine caps its lineages with ``MaxConcurrencyPath`` ($.run.parallel). aws-local-stepfunctions
    3.0.0 reads it from the Map's input (MapStateAction.execute), as AWS does, so the bridge leaves it as it is.
    Without a cap the same iterations all run at once: the bridge answers Tasks side by side, and each
    concurrent run of a .waitForTaskToken Task gets a token of its own."""
    given = {"items": [{"item": i} for i in range(5)], "limit": 2}
    in_flight: list[int] = []
    lock = threading.Lock()

    def answer(state: str, task_input: Any, token: str) -> Any:
        with lock:
            in_flight.append(in_flight[-1] + 1 if in_flight else 1)
            seen.append((task_input["Payload"]["item"], task_input["Payload"]["token"], token))
        time.sleep(0.3)
        with lock:
            in_flight.append(in_flight[-1] - 1)
        return {"item": task_input["Payload"]["item"]}

    for concurrency, most in (({"MaxConcurrencyPath": "$.limit"}, 2), ({}, 5)):
        seen: list[tuple[int, str, str]] = []
        in_flight.clear()
        ended = run_local(map_machine(concurrency), given, {}, answer)
        assert ended.status == "SUCCEEDED" and ended.output["done"] == [{"item": i} for i in range(5)]
        assert max(in_flight) == most, concurrency
        assert ended.paths() == {RUN: ["Items"], **{i: ["Work"] for i in range(5)}}
        assert sorted(item for item, _, _ in seen) == list(range(5))
        assert all(in_payload == told for _, in_payload, told in seen)  # the token the Task was given
        assert len({token for _, token, _ in seen}) == 5


# ---- .waitForTaskToken: how the bridge takes a job's end by event --------------------------------------------

def token_machine(topic_arn: str) -> dict[str, Any]:
    """A Task that publishes its own task token and waits for it; a lost token ends in a reconciliation."""
    return {"StartAt": "WaitForEnd", "States": {
        "WaitForEnd": {"Type": "Task", "Resource": "arn:aws:states:::sns:publish.waitForTaskToken",
                       "Parameters": {"TopicArn": topic_arn, "Message.$": "$$.Task.Token"},
                       "Retry": [{"ErrorEquals": ["Job.Retry"], "MaxAttempts": 1}],
                       "Catch": [{"ErrorEquals": ["States.Timeout"], "ResultPath": "$.lost", "Next": "Reconcile"}],
                       "ResultPath": "$.ended", "End": True},
        "Reconcile": {"Type": "Pass", "End": True}}}


def test_a_task_token_is_completed_by_whoever_calls_send_task_success(fast_machine, tmp_path: Path) -> None:
    import boto3
    from botocore.exceptions import ClientError

    template, ids = fast_machine
    h = Harness(template, ids, tmp_path, mode="instant")
    with h.running():
        tokens: list[str] = []
        plan: list[str] = []

        def deliver(state: str, token: str) -> str | None:
            """The event side: read the published token, complete it as the plan says."""
            published = [m["Message"] for m in h.messages()]
            tokens.extend(published)
            if not published:
                return None
            sfn = boto3.client("stepfunctions", region_name=REGION)  # made after the bridge's hook
            step = plan.pop(0)
            if step == "lost":
                return "States.Timeout"
            if step == "retry":
                sfn.send_task_failure(taskToken=published[0], error="Job.Retry", cause="try again")
            else:
                sfn.send_task_success(taskToken=published[0], output=json.dumps({"status": step}))
                with pytest.raises(ClientError, match="TaskTimedOut"):  # a duplicate event changes nothing
                    sfn.send_task_success(taskToken=published[0], output="{}")
            return None

        with LocalInterpreter(h, on_wait=deliver).running() as local:
            local.definition = token_machine(h.topic_arn)
            plan[:] = ["Completed"]
            ended = local.execute({"run": 1}, "token-ok")
            assert (ended.status, ended.path, ended.output) == ("SUCCEEDED", ["WaitForEnd"],
                                                                {"run": 1, "ended": {"status": "Completed"}})
            plan[:] = ["retry", "Failed"]
            retried = local.execute({"run": 2}, "token-retry")
            assert retried.output == {"run": 2, "ended": {"status": "Failed"}} and retried.path == ["WaitForEnd"]
            assert tokens[1] != tokens[2] and all(t.startswith("asl-local:") for t in tokens)  # one per attempt
            plan[:] = ["lost"]
            lost = local.execute({"run": 3}, "token-lost")
            assert lost.path == ["WaitForEnd", "Reconcile"] and lost.output["lost"]["Error"] == "States.Timeout"
            assert plan == []
