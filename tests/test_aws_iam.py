"""IAM enforced on the local executions (tests/aws_iam.py): what the steps call is allowed, what is granted is
called, and a missing grant fails naming the action and the resource.

Every scenario here runs in instant mode (no training): seconds each.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.aws_iam import STATE_MACHINE, Grants, never_called
from tests.conftest import THREE, TINY
from tests.sfn_harness import Harness
from tests.sfn_scenarios import (HeldJobs, abandon, delete_job, reconcile_while_running, run_id_of, tokens_waiting,
                                 with_heartbeat_seconds)

pytestmark = pytest.mark.timeout(300)


# Granted and never called by any scenario, each with why it stays (the stack says the same where it grants):
# S3 checks ListBucket itself on a missing key; the Lambda runtime and Step Functions use the rest.
PLATFORM = {
    "s3:ListBucket": "S3 answers a read of a missing key with 404 only to a caller allowed to list the bucket "
                     "(403 otherwise); the steps read absent keys as absent",
    "logs:CreateLogStream": "the Lambda runtime writes the function's logs",
    "logs:PutLogEvents": "the Lambda runtime writes the function's logs",
    "xray:PutTraceSegments": "active tracing: the Lambda runtime / Step Functions send traces",
    "xray:PutTelemetryRecords": "active tracing: the Lambda runtime / Step Functions send traces",
}
# Granted for a path no scenario can reach, each with why it stays.
UNREACHED = {
    ("function:await_job", "states:SendTaskFailure"):
        "fails the wait with TrainingJobMissing when the job it waits for does not exist (a clear error instead "
        "of AccessDenied); CreateTrainingJob succeeded just before, so no local scenario reaches it",
}
STATE_MACHINE_PLATFORM = {
    **{a: "Step Functions delivers the execution logs (LogOptions, level ALL)" for a in (
        "logs:CreateLogDelivery", "logs:GetLogDelivery", "logs:UpdateLogDelivery", "logs:DeleteLogDelivery",
        "logs:ListLogDeliveries", "logs:PutResourcePolicy", "logs:DescribeResourcePolicies",
        "logs:DescribeLogGroups")},
    "xray:PutTraceSegments": "Step Functions sends traces (tracing_enabled)",
    "xray:PutTelemetryRecords": "Step Functions sends traces (tracing_enabled)",
    "xray:GetSamplingRules": "Step Functions samples traces (tracing_enabled)",
    "xray:GetSamplingTargets": "Step Functions samples traces (tracing_enabled)",
}


@pytest.fixture(scope="module")
def synthesized(fast_machine) -> tuple[dict[str, Any], dict[str, Any]]:
    return fast_machine


@pytest.fixture(scope="module")
def scenarios(synthesized, tmp_path_factory) -> dict[str, Any]:
    """Every path of the state machine and the cleanup Lambda, under IAM; what each principal used."""
    template, ids = synthesized
    used: dict[str, set[str]] = {}
    outcomes: dict[str, str] = {}

    def collect(h: Harness) -> None:
        assert h.iam is not None
        for principal, actions in h.iam.used().items():
            used.setdefault(principal, set()).update(actions)

    h = Harness(template, ids, tmp_path_factory.mktemp("iam"), mode="instant")
    with h.running():
        ok = h.execute({"pipeline": THREE}, "three")  # pools kept and reused, released at the end
        outcomes["three sessions"] = ok.status
        h.sagemaker.reuse_pools = False
        outcomes["pool not taken"] = h.execute({"pipeline": TINY}, "unused-pool").status
        h.sagemaker.reuse_pools = True
        h.sagemaker.fail = {"hold": 1}
        failed = h.execute({"pipeline": THREE}, "fails-at-hold")
        outcomes["failure in session 2"] = failed.status
        outcomes["resume"] = h.execute({"resume_run_id": run_id_of(failed)}, "resume").status
        outcomes["bad input"] = h.execute({"pipelin": TINY}, "bad-input").status
        h.sagemaker.pool_quota = False  # no warm pool kept: CheckPool records that
        outcomes["no pool quota"] = h.execute({"pipeline": TINY}, "no-quota").status
        # Session 1's pool is not taken and reads InUse until session 2 is recorded (9 looks: 1 by AwaitJobEnd,
        # 1 by the job-state event, 1 by RecordSession, 5 by CheckPool, 1 by session 2's RecordSession):
        # EndLineage releases it.
        h.sagemaker.pool_quota, h.sagemaker.reuse_pools = True, False
        h.sagemaker.in_progress_describes, h.sagemaker.pool_settle_describes = 0, 9
        outcomes["pool left at the end"] = h.execute({"pipeline": TINY}, "pool-left").status
        h.sagemaker.pool_settle_describes = 7  # Available when session 2 is recorded: RecordSession frees it
        outcomes["pool freed by RecordSession"] = h.execute({"pipeline": TINY}, "pool-freed").status
        # Every job-state event lost: reconciliation heartbeats the waits, releases session 1's pool (not taken)
        # while session 2 runs, and completes each wait once its job has ended.
        h.sagemaker.in_progress_describes, h.sagemaker.pool_settle_describes = 2, 0
        h.job_events = "lost"
        arn = h.start({"pipeline": TINY}, "events-lost")
        ticks = reconcile_while_running(h, arn)
        outcomes["events lost, reconciled"] = h.wait(arn).status
        outcomes["reconciliation"] = str({k: sum(t[k] for t in ticks) for k in ("completed", "heartbeats")})
        # A job deleted by hand while its execution waits: reconciliation fails the wait (TrainingJobMissing).
        awaited = [c[0] for c in h.lambda_calls].count("await_job")
        arn = h.start({"pipeline": TINY}, "job-deleted")
        while [c[0] for c in h.lambda_calls].count("await_job") == awaited:  # its token stored, its look taken
            time.sleep(0.05)
        assert tokens_waiting(h)
        delete_job(h, h.sagemaker.creates[-1])
        h.reconcile()
        gone = h.wait(arn)
        outcomes["job deleted while waited for"] = f"{gone.status}, {gone.failure().get('error')}"
        h.job_events = "once"
        h.sagemaker.reuse_pools, h.sagemaker.in_progress_describes, h.sagemaker.pool_settle_describes = True, 1, 2
        # Two lineages, fail_fast: seed 1 fails in 'stand' while seed 0's 'stand' job runs; after EndLineage
        # closed seed 1, the run's failure path drops that job's keep-alive and stops it (FailRun).
        h.sagemaker.fail = {"stand@seed-1": 1}
        h.sagemaker.hold = lambda job: job.run_id.endswith("-seed-0") and job.session == "stand"
        outcomes["fail_fast over two lineages"] = h.execute({"pipeline": {**TINY, "name": "two", "seeds": [0, 1],
                                                                          "parallel": 2, "fail_fast": True}},
                                                            "fail-fast").status
        h.sagemaker.hold = None
        held = HeldJobs(h, fail_first=True)
        h.sagemaker.describe = held  # type: ignore[method-assign]
        outcomes["job stopped by the failure path"] = h.execute({"pipeline": TINY}, "describe-fails").status
        stopped = [j for j in h.sagemaker.jobs.values() if j.status == "Stopped"]
        outcomes["stopped jobs"] = str(len(stopped) - 1)  # besides the fail_fast run's
        # The execution died mid-session without its cleanup: EventBridge runs the cleanup Lambda.
        held.names.add(abandon(h, run_id_of(ok), "three"))
        out = h.call_lambda("cleanup", {"detail": {"name": "three", "status": "ABORTED",
                                                   "executionArn": ok.description["executionArn"]}})
        outcomes["cleanup after abort"] = out.get("action", "")
        outcomes["stopped jobs after cleanup"] = str(len([j for j in h.sagemaker.jobs.values()
                                                          if j.status == "Stopped"]))
        collect(h)
    granted = h.iam.grants.granted() if h.iam else {}

    # StartRun takes over a run whose execution died: it stops the job and releases the pools.
    h = Harness(template, ids, tmp_path_factory.mktemp("takeover"), mode="instant")
    takeover: dict[str, Any] = {}
    try:
        with h.running():
            ok = h.execute({"pipeline": TINY}, "dies")
            outcomes["run that dies"] = ok.status
            held = HeldJobs(h)  # the dead run's job keeps running until StartRun stops it
            h.sagemaker.describe = held  # type: ignore[method-assign]
            held.names.add(abandon(h, run_id_of(ok), "dies"))
            ex = h.execute({"resume_run_id": run_id_of(ok)}, "takes-over")
            takeover["status"] = ex.status
            takeover["stopped"] = sum(j.status == "Stopped" for j in h.sagemaker.jobs.values())
    except AssertionError as err:
        takeover["denied"] = str(err)
    collect(h)

    # Reconciliation stopped and the event lost: the missed heartbeat (1 s here) makes the state machine
    # describe the job itself, then wait again.
    h = Harness(with_heartbeat_seconds(template, ids["state_machine"], 1), ids, tmp_path_factory.mktemp("beat"),
                mode="instant")
    h.job_events, h.sagemaker.in_progress_describes = "lost", 2
    one = copy.deepcopy(TINY)
    one["sessions"] = one["sessions"][:1]
    with h.running():
        missed = h.execute({"pipeline": one}, "no-heartbeats", timeout=120)
        describes = missed.states_entered().count("DescribeTrainingJob")
        outcomes["heartbeat missed"] = f"{missed.status}, {describes} describe"
    collect(h)
    return {"used": used, "outcomes": outcomes, "granted": granted, "takeover": takeover}


def test_every_path_runs_with_only_what_its_roles_grant(scenarios) -> None:
    # Leaving h.running() raised nothing: no call was denied. The paths really ran:
    assert scenarios["outcomes"] == {
        "three sessions": "SUCCEEDED", "pool not taken": "SUCCEEDED", "failure in session 2": "FAILED",
        "resume": "SUCCEEDED", "bad input": "FAILED", "no pool quota": "SUCCEEDED",
        "pool left at the end": "SUCCEEDED", "pool freed by RecordSession": "SUCCEEDED",
        "job stopped by the failure path": "FAILED", "run that dies": "SUCCEEDED",
        "events lost, reconciled": "SUCCEEDED", "reconciliation": "{'completed': 2, 'heartbeats': 2}",
        "heartbeat missed": "SUCCEEDED, 1 describe", "job deleted while waited for": "FAILED, TrainingJobMissing",
        "stopped jobs": "1", "cleanup after abort": scenarios["outcomes"]["cleanup after abort"],
        "stopped jobs after cleanup": "3", "fail_fast over two lineages": "FAILED"}
    used = scenarios["used"]
    assert {"sagemaker:CreateTrainingJob", "sagemaker:AddTags", "iam:PassRole", "sagemaker:DescribeTrainingJob",
            "lambda:InvokeFunction", "sns:Publish", "kms:GenerateDataKey", "kms:Decrypt"} <= used[STATE_MACHINE]
    assert "sagemaker:StopTrainingJob" in used["function:fail_run"]
    assert {"sagemaker:StopTrainingJob", "sagemaker:UpdateTrainingJob"} <= used["function:end_lineage"]
    assert "sagemaker:StopTrainingJob" in used["function:cleanup"]
    assert {"states:SendTaskSuccess", "sagemaker:DescribeTrainingJob"} <= used["function:await_job"]
    assert {"states:SendTaskSuccess", "states:SendTaskFailure", "states:SendTaskHeartbeat",
            "sagemaker:UpdateTrainingJob"} <= \
        used["function:job_events"]


def test_granted_actions_never_called_are_only_the_platforms(scenarios, capsys) -> None:
    idle = never_called(scenarios["granted"], scenarios["used"])
    with capsys.disabled():
        print("\nGranted and never called by the steps or the state machine:")
        for principal, actions in sorted(idle.items()):
            print(f"  {principal}: {', '.join(actions)}")
    # JobEvents lists the tokens (reconciliation): its ListBucket is used. AwaitJobEnd is granted none.
    expected = {p: sorted({a for a in PLATFORM if a in granted} - ({"s3:ListBucket"} if p == "function:job_events"
                                                                   else set()) | {a for q, a in UNREACHED if q == p})
                for p, granted in scenarios["granted"].items() if p != STATE_MACHINE}
    assert "s3:ListBucket" not in idle["function:job_events"] and "s3:ListBucket" not in \
        scenarios["granted"]["function:await_job"]
    expected[STATE_MACHINE] = sorted(STATE_MACHINE_PLATFORM)
    unexplained = {p: [a for a in acts if a not in (STATE_MACHINE_PLATFORM if p == STATE_MACHINE else PLATFORM)
                       and (p, a) not in UNREACHED] for p, acts in idle.items()}
    assert {p: a for p, a in unexplained.items() if a} == {}, "granted, never called, and no reason given"
    assert idle == expected


# ---- the checker fails ----------------------------------------------------------------------------------------

REMOVED_GRANTS = [
    # A state-machine SDK task: CreateTrainingJob passes the SageMaker role.
    (STATE_MACHINE, "iam:PassRole", "iam:PassRole on arn:aws:iam::123456789012:role/rlpipe-training"),
    # A Lambda step: PrepareSession writes session.json under the run.
    ("function:prepare_session", "s3:PutObject", "s3:PutObject on arn:aws:s3:::rlpipe-test-bucket/runs/"),
]


@pytest.mark.parametrize(("principal", "action", "named"), REMOVED_GRANTS)
def test_a_removed_grant_fails_naming_action_and_resource(synthesized, tmp_path: Path, principal: str,
                                                          action: str, named: str) -> None:
    template, ids = synthesized
    h = Harness(template, ids, tmp_path, mode="instant")
    h.edit_grants = lambda grants: grants.without(principal, action)
    with pytest.raises(AssertionError) as caught:
        with h.running():
            ex = h.execute({"pipeline": TINY}, "missing-grant")
            assert ex.status == "FAILED"  # as on AWS: AccessDenied fails the step and the run
            assert "not authorized to perform: " + action in json.dumps(ex.events, default=str)
    message = str(caught.value)
    assert message.startswith("IAM denied") and principal in message and named in message, message


def test_a_condition_is_enforced_not_only_the_action(synthesized, tmp_path: Path) -> None:
    """PassRole to another service than SageMaker is not what the state machine was granted."""
    template, ids = synthesized

    def elsewhere(grants: Grants) -> Grants:
        docs = json.loads(json.dumps(grants.policies[STATE_MACHINE]))
        for doc in docs:
            for st in doc["Statement"]:
                if "Condition" in st and "iam:PassedToService" in json.dumps(st["Condition"]):
                    st["Condition"] = {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}
        return Grants({**grants.policies, STATE_MACHINE: docs}, grants.role_arns, grants.key_policies,
                      grants.account)

    h = Harness(template, ids, tmp_path, mode="instant")
    h.edit_grants = elsewhere
    with pytest.raises(AssertionError, match="iam:PassRole on arn:aws:iam::123456789012:role/rlpipe-training "
                                             r"with \{'iam:PassedToService': 'sagemaker.amazonaws.com'\}"):
        with h.running():
            h.execute({"pipeline": TINY}, "wrong-condition")


def test_taking_over_a_dead_run_is_checked_against_start_runs_role(scenarios) -> None:
    """Which outcome is right depends only on what the template grants StartRun's role: with the SageMaker
    grants the take-over must succeed under IAM and stop the dead run's job; without them (the stack before
    the take-over fix) AWS, and so the harness, refuses its first SageMaker call."""
    granted = {a.lower() for a in scenarios["granted"]["function:start_run"]}
    takeover = scenarios["takeover"]
    assert "states:DescribeExecution" in scenarios["used"]["function:start_run"]  # asked whether it still runs
    if {"sagemaker:describetrainingjob", "sagemaker:stoptrainingjob"} <= granted:
        assert takeover == {"status": "SUCCEEDED", "stopped": 1}
    else:
        assert "function:start_run" in takeover["denied"] and \
            "may not sagemaker:DescribeTrainingJob on arn:aws:sagemaker:us-east-1:123456789012:training-job/rlpipe-" \
            in takeover["denied"], takeover
