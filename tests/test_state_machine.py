"""The synthesized state machine, executed on moto's ASL interpreter (tests/sfn_harness.py).

Lambda tasks run the real handlers against moto's S3/SNS/SageMaker; SageMaker jobs run the real trainer on a
tiny budget (scenarios a-c) or an instant stand-in (d, e and the retry paths).
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import Duration
from aws_cdk.assertions import Template

from rlpipe.cloud.naming import is_valid_job_name
from rlpipe.cloud.store import RunKeys
from rlpipe.config import parse_pipeline
from rlpipe.cloud.tokens import TOKENS_PREFIX
from rlpipe.state import RunState
from stacks.orchestration.state_machine import RetryPacing
from tests.conftest import THREE, TINY
from tests.orchestration_app import DEFAULT_PIPELINE_KEY, FAST_TIMING, build_stack, logical_ids
from tests.sfn_harness import BUCKET, Harness
from tests.sfn_scenarios import run_id_of, with_heartbeat_seconds

pytestmark = pytest.mark.timeout(300)



@pytest.fixture(scope="module")
def synthesized() -> tuple[dict[str, Any], dict[str, Any]]:
    """Template and logical ids of the construct with zero waits and 1-second SDK retries."""
    _, stack, orchestration = build_stack(
        timing=FAST_TIMING, bundle=False,
        pacing=RetryPacing(create_interval=Duration.seconds(1), describe_interval=Duration.seconds(1)))
    return Template.from_stack(stack).to_json(), logical_ids(stack, orchestration)


def new_harness(synthesized: tuple[dict[str, Any], dict[str, Any]], tmp: Path, mode: str) -> Harness:
    template, ids = synthesized
    return Harness(template, ids, tmp, mode=mode)


def state_of(h: Harness, run_id: str) -> RunState:
    return RunState.model_validate(h.get_json(RunKeys(run_id).state))


def jobs_for(h: Harness, run_id: str) -> list[Any]:
    return [j for j in h.sagemaker.jobs.values()
            if any(t["Key"] == "rlpipe:run-id" and t["Value"] == run_id for t in j.request["Tags"])]


# ---- (a) two sessions succeed ---------------------------------------------------------------------------------

def test_two_sessions_succeed_with_handoff_report_alert_and_pool(synthesized, tmp_path: Path) -> None:
    h = new_harness(synthesized, tmp_path, mode="trainer")
    with h.running():
        h.put(DEFAULT_PIPELINE_KEY, json.dumps(parse_pipeline(copy.deepcopy(TINY)).resolved()))
        ex = h.execute({}, "default-run")  # {} runs the default pipeline
        assert ex.status == "SUCCEEDED", ex.failure()
        run_id = run_id_of(ex)
        state = state_of(h, run_id)
        stand, hold = state.sessions
        assert state.status == "succeeded" and [s.status for s in state.sessions] == ["completed", "completed"]

        # The bundle of session 1 is session 2's "previous" channel, and the trainer really warm-started.
        jobs = jobs_for(h, run_id)
        assert [j.session for j in jobs] == ["stand", "hold"] and all(is_valid_job_name(j.name) for j in jobs)
        previous = [c for c in jobs[1].request["InputDataConfig"] if c["ChannelName"] == "previous"]
        assert previous and previous[0]["DataSource"]["S3DataSource"]["S3Uri"] == stand.bundle
        assert not [c for c in jobs[0].request["InputDataConfig"] if c["ChannelName"] == "previous"]
        assert hold.handoff_from == "stand" and "policy" in hold.carried
        assert stand.final_eval_reward is not None and hold.timesteps == 256

        # The pool was kept for session 2 only, reused by it, and nothing is left idling.
        assert jobs[0].request["ResourceConfig"]["KeepAlivePeriodInSeconds"] == 1800
        assert "KeepAlivePeriodInSeconds" not in jobs[1].request["ResourceConfig"]
        assert jobs[0].pool == "Reused" and jobs[0].reused_by == jobs[1].name
        assert hold.reused_previous_pool is True
        assert "CheckPool" in ex.states_entered()  # waited for WarmPoolStatus=Available before session 2
        assert all(j.pool != "Available" for j in jobs)

        # Report in S3, built by the shared report code; exactly one e-mail.
        report = h.get_json(RunKeys(run_id).report("json"))
        assert report["status"] == "succeeded" and report["sessions_completed"] == 2
        assert report["sessions"][1]["reused_previous_pool"] is True
        for kind in ("md", "html"):
            assert h.s3.head_object(Bucket=BUCKET, Key=RunKeys(run_id).report(kind))["ContentLength"] > 0
        messages = h.messages()
        assert len(messages) == 1 and "SUCCEEDED" in messages[0]["Subject"]
        assert run_id in messages[0]["Message"] and "report.html" in messages[0]["Message"]
        print(f"\n(a) {len(ex.events)} events, largest payload {ex.largest_payload()} B, {ex.seconds:.1f} s, "
              f"trainer {sum(h.sagemaker.trainer_seconds):.1f} s")


# ---- (b) session 2 fails, (c) resume ----------------------------------------------------------------------------

@pytest.fixture(scope="class")
def failed_run(synthesized, tmp_path_factory) -> Any:
    """THREE with session 'hold' failing once; the harness stays up for the resume."""
    h = new_harness(synthesized, tmp_path_factory.mktemp("b"), mode="trainer")
    h.sagemaker.fail = {"hold": 1}
    with h.running():
        ex = h.execute({"pipeline": THREE}, "fails-at-hold")
        yield h, ex, run_id_of(ex), h.messages()


class TestFailureThenResume:
    """(b) then (c) on the same mocked account: the resume continues the run that failed."""

    def test_failed_session_fails_the_execution_with_report_alert_and_release(self, failed_run) -> None:
        h, ex, run_id, messages = failed_run
        assert ex.status == "FAILED"
        failure = ex.failure()
        assert failure["error"] == "TrainingJobFailed"
        assert "session 'hold' failed" in failure["cause"] and "injected failure" in failure["cause"]
        state = state_of(h, run_id)
        assert state.status == "failed"
        assert [s.status for s in state.sessions] == ["completed", "failed", "pending"]
        report = h.get_json(RunKeys(run_id).report("json"))
        assert report["status"] == "failed" and [f["session"] for f in report["failures"]] == ["hold"]
        assert len(messages) == 1 and "FAILED" in messages[0]["Subject"] and "hold" in messages[0]["Message"]
        hold_job = next(j for j in jobs_for(h, run_id) if j.session == "hold")
        assert hold_job.pool == "Terminated" and hold_job.release_requests == 1  # released by the failure path
        assert "HandleFailure" in ex.states_entered()

        # EventBridge then reports the FAILED execution: the cleanup Lambda sees it handled and does nothing.
        event = {"detail": {"name": "fails-at-hold", "status": "FAILED",
                            "executionArn": ex.description["executionArn"]}}
        assert h.call_lambda("cleanup", event)["action"] == "none"
        assert h.messages() == []

    def test_resume_skips_completed_sessions_and_continues(self, failed_run) -> None:
        h, _, run_id, _ = failed_run
        before = set(h.sagemaker.jobs)
        ex = h.execute({"resume_run_id": run_id}, "resume-run")
        assert ex.status == "SUCCEEDED", ex.failure()
        new_jobs = [h.sagemaker.jobs[n] for n in h.sagemaker.jobs if n not in before]
        assert [j.session for j in new_jobs] == ["hold", "hold-more"]  # 'stand' not run again
        assert new_jobs[0].name.endswith("-001-hold-2")  # attempt 2, a new name
        state = state_of(h, run_id)
        assert state.status == "succeeded" and all(s.status == "completed" for s in state.sessions)
        previous = [c for c in new_jobs[0].request["InputDataConfig"] if c["ChannelName"] == "previous"]
        assert previous[0]["DataSource"]["S3DataSource"]["S3Uri"] == state.sessions[0].bundle
        assert state.sessions[1].attempts == 2 and "policy" in state.sessions[1].carried
        messages = h.messages()
        assert len(messages) == 1 and "SUCCEEDED" in messages[0]["Subject"]


# ---- (d) 200 sessions ------------------------------------------------------------------------------------------

def test_two_hundred_sessions_keep_payloads_small_and_history_bounded(synthesized, tmp_path: Path) -> None:
    sessions = 200
    pipeline = {"name": "long", "defaults": {"algorithm": "ppo", "n_envs": 2},
                "sessions": [{"name": f"s{i}", "env": "rlpipe/HeightMaximize-v0", "timesteps": 128,
                              "use_previous_checkpoint": i > 0} for i in range(sessions)]}
    h = new_harness(synthesized, tmp_path, mode="instant")
    h.sagemaker.in_progress_describes = 0  # one describe per job: what is measured is the loop itself
    h.sagemaker.pool_settle_describes = 0
    with h.running():
        h.put("configs/long.json", json.dumps(pipeline))
        ex = h.execute({"pipeline_s3_uri": f"s3://{BUCKET}/configs/long.json"}, "long-run")
        assert ex.status == "SUCCEEDED", ex.failure()
        state = state_of(h, run_id_of(ex))
        assert all(s.status == "completed" for s in state.sessions)
        assert len(h.sagemaker.creates) == sessions
        events, largest = len(ex.events), ex.largest_payload()
        state_bytes = len(h.s3.get_object(Bucket=BUCKET, Key=RunKeys(state.run_id).state)["Body"].read())
        print(f"\n(d) {sessions} sessions: {events} history events ({events / sessions:.1f} per session), "
              f"largest state payload {largest} B, state.json in S3 {state_bytes} B, {ex.seconds:.1f} s")
        # Nothing polls a running job: the estimate StartRun refuses by holds per session, whatever the length.
        from rlpipe.cloud.pacing import EVENTS_FIXED, EVENTS_PER_SESSION

        assert events <= EVENTS_FIXED + EVENTS_PER_SESSION * sessions < 25_000
        assert "DescribeTrainingJob" not in ex.states_entered()
        assert largest < 16 * 1024  # far below 256 KiB, and it does not grow with the sessions
        assert state_bytes > 4 * largest  # the growing document lives in S3, not in the payload


# ---- (e) bad inputs fail fast -----------------------------------------------------------------------------------

BAD_INPUTS = [
    ({"pipelin": TINY}, "unknown input field 'pipelin' (did you mean 'pipeline'?)"),
    ({"pipeline_s3_uri": "s3://someone-elses-bucket/configs/p.yaml"}, "must be in this stack's bucket"),
    ({"pipeline": {**TINY, "sessions": [{"name": "x", "env": "rlpipe/HeightMaximize-v0"}]}},
     "timesteps"),
    ({"resume_run_id": "no-such-run-20250101-000000-abcdef"}, "no run 'no-such-run-20250101-000000-abcdef'"),
    ([1, 2], "execution input must be a JSON object"),
]


def test_bad_inputs_fail_fast_with_a_clear_cause_and_no_job(synthesized, tmp_path: Path) -> None:
    h = new_harness(synthesized, tmp_path, mode="instant")
    with h.running():
        for i, (given, expected) in enumerate(BAD_INPUTS):
            ex = h.execute(given, f"bad-{i}")
            assert ex.status == "FAILED"
            failure = ex.failure()
            assert failure["error"] == "InvalidInput", failure
            assert expected in failure["cause"], failure["cause"]
            assert "CreateTrainingJob" not in ex.states_entered()
        assert h.sagemaker.creates == []
        assert len(h.messages()) == len(BAD_INPUTS)  # one alert per failed execution, none twice


# ---- retries: throttled CreateTrainingJob, a capacity shortage --------------------------------------------------

@pytest.mark.parametrize("code", ["ThrottlingException", "AmazonSageMakerException"])
def test_throttling_and_capacity_errors_are_retried(synthesized, tmp_path: Path, code: str) -> None:
    """Throttling is retried under its own name and under the generic one it has been reported as."""
    h = new_harness(synthesized, tmp_path, mode="instant")
    h.sagemaker.throttle_creates = 1
    h.sagemaker.throttle_code = code
    h.sagemaker.capacity = {"stand": 1}
    with h.running():
        ex = h.execute({"pipeline": TINY}, "retries")
        assert ex.status == "SUCCEEDED", ex.failure()
        failed = [e["taskFailedEventDetails"]["error"] for e in ex.events if "taskFailedEventDetails" in e]
        assert failed == [f"SageMaker.{code}"]
        assert "WaitBeforeRetry" in ex.states_entered()
        names = [n for n in h.sagemaker.creates if "-000-stand-" in n]
        assert [n.rsplit("-", 1)[-1] for n in names] == ["1", "2"]  # attempt 2 is a new job
        assert state_of(h, run_id_of(ex)).sessions[0].attempts == 2


# ---- a job's end by event: duplicates and late events, the race, a lost event ----------------------------------

def _no_tokens_left(h: Harness) -> bool:
    return h.s3.list_objects_v2(Bucket=BUCKET, Prefix=TOKENS_PREFIX).get("KeyCount", 0) == 0


def test_jobs_end_by_event_delivered_twice_and_out_of_order(synthesized, tmp_path: Path) -> None:
    """Each wait ends by its job's event; the duplicate and a late InProgress event change nothing."""
    h = new_harness(synthesized, tmp_path, mode="instant")
    h.job_events = "twice"
    with h.running():
        ex = h.execute({"pipeline": TINY}, "by-event")
        assert ex.status == "SUCCEEDED", ex.failure()
        entered = ex.states_entered()
        assert entered.count("AwaitJobEnd") == 2 and "DescribeTrainingJob" not in entered
        jobs = jobs_for(h, run_id_of(ex))
        answers = {j.name: [(d["status"], d["answer"]["action"]) for d in h.delivered if d["job_name"] == j.name]
                   for j in jobs}
        # The first terminal event completes the task; the late one is ignored, the duplicate finds no token.
        assert all(a == [("Completed", "completed"), ("InProgress", "ignored"), ("Completed", "none")]
                   for a in answers.values()), answers
        waited = [json.loads(e["taskSucceededEventDetails"]["output"]) for e in ex.events
                  if e.get("taskSucceededEventDetails", {}).get("resource") == "invoke.waitForTaskToken"]
        assert waited == [{"TrainingJobStatus": "Completed", "SecondaryStatus": "Completed"}] * 2
        assert _no_tokens_left(h)
        assert [s.status for s in state_of(h, run_id_of(ex)).sessions] == ["completed", "completed"]


def test_a_job_that_ended_before_its_token_was_stored_completes_the_wait_itself(synthesized, tmp_path: Path) -> None:
    h = new_harness(synthesized, tmp_path, mode="instant")
    h.sagemaker.in_progress_describes = 0  # AwaitJobEnd's describe already sees the end
    h.job_events = "twice"                 # the events then come too late: they find no token
    with h.running():
        ex = h.execute({"pipeline": TINY}, "race")
        assert ex.status == "SUCCEEDED", ex.failure()
        assert {d["answer"]["action"] for d in h.delivered} == {"none", "ignored"}
        outputs = [json.loads(e["taskSubmittedEventDetails"]["output"])["Payload"] for e in ex.events
                   if "taskSubmittedEventDetails" in e and e["taskSubmittedEventDetails"]["resource"].endswith(
                       "waitForTaskToken")]
        assert [o["ended"] for o in outputs] == [True, True]
        assert _no_tokens_left(h)


def test_a_lost_event_is_recovered_by_reconciliation(synthesized, tmp_path: Path) -> None:
    """No event arrives: the execution waits until the scheduled reconciliation describes the job."""
    h = new_harness(synthesized, tmp_path, mode="instant")
    h.job_events = "lost"
    with h.running():
        arn = h.start({"pipeline": TINY}, "lost-events")
        ticks: list[dict[str, int]] = []
        deadline = time.monotonic() + 120
        while h.sfn.describe_execution(executionArn=arn)["status"] == "RUNNING" and time.monotonic() < deadline:
            if not _no_tokens_left(h):
                time.sleep(0.2)  # still waiting after a while: the event is lost
                ticks.append(h.reconcile())
            time.sleep(0.05)
        ex = h.wait(arn, timeout=30)
        assert ex.status == "SUCCEEDED", ex.failure()
        assert h.delivered == [] and sum(t["completed"] for t in ticks) == 2  # one wait per session, ended by it
        assert _no_tokens_left(h)
        # A tick with nothing waiting does nothing.
        assert h.reconcile() == {"completed": 0, "heartbeats": 0, "forgotten": 0}


def test_an_unused_pool_is_released_while_the_next_job_runs(synthesized, tmp_path: Path) -> None:
    """Reconciliation finds session 2's job past its start without the previous pool: it ends that pool."""
    h = new_harness(synthesized, tmp_path, mode="instant")
    h.sagemaker.reuse_pools = False
    h.sagemaker.in_progress_describes = 2
    h.job_events = "lost"
    with h.running():
        arn = h.start({"pipeline": TINY}, "unused-pool")
        released_while_running = None
        deadline = time.monotonic() + 120
        while h.sfn.describe_execution(executionArn=arn)["status"] == "RUNNING" and time.monotonic() < deadline:
            if not _no_tokens_left(h):
                time.sleep(0.2)
                tick = h.reconcile()
                jobs = list(h.sagemaker.jobs.values())
                if tick["heartbeats"] and len(jobs) == 2:  # session 2 runs: the first pool must be gone now
                    released_while_running = jobs[0].pool
            time.sleep(0.05)
        ex = h.wait(arn, timeout=30)
        assert ex.status == "SUCCEEDED", ex.failure()
        first, second = jobs_for(h, run_id_of(ex))
        assert released_while_running == "Terminated"
        assert first.pool == "Terminated" and first.release_requests == 1 and second.reused_by is None
        state = state_of(h, run_id_of(ex))
        assert state.sessions[0].warm_pool_status == "Terminated" and state.sessions[1].reused_previous_pool is False


# ---- pools ------------------------------------------------------------------------------------------------------

def test_no_warm_pool_quota_costs_a_few_checks_not_the_whole_wait(synthesized, tmp_path: Path) -> None:
    from rlpipe.cloud.steps import NO_POOL_CHECKS, NO_POOL_STATUS

    h = new_harness(synthesized, tmp_path, mode="instant")
    h.sagemaker.pool_quota = False
    with h.running():
        ex = h.execute({"pipeline": TINY}, "no-quota")
        assert ex.status == "SUCCEEDED", ex.failure()
        assert ex.states_entered().count("CheckPool") == NO_POOL_CHECKS < FAST_TIMING.pool_max_polls
        state = state_of(h, run_id_of(ex))
        assert state.sessions[0].warm_pool_status == NO_POOL_STATUS
        report = h.get_json(RunKeys(state.run_id).report("json"))
        assert report["sessions"][0]["warm_pool_status"] == NO_POOL_STATUS




def test_without_heartbeats_the_wait_times_out_describes_the_job_and_waits_again(synthesized,
                                                                                  tmp_path: Path) -> None:
    """Reconciliation stopped and the event lost: the heartbeat timeout (1 s here) describes the job; a job
    still running is waited for again, an ended one recorded. No execution hangs."""
    template, ids = synthesized
    h = Harness(with_heartbeat_seconds(template, ids["state_machine"], 1), ids, tmp_path, mode="instant")
    h.job_events = "lost"
    h.sagemaker.in_progress_describes = 2  # still running at the first describe after the timeout
    one = copy.deepcopy(TINY)
    one["sessions"] = one["sessions"][:1]
    with h.running():
        ex = h.execute({"pipeline": one}, "no-heartbeats", timeout=120)
        assert ex.status == "SUCCEEDED", ex.failure()
        entered = ex.states_entered()
        assert entered.count("AwaitJobEnd") == 2 and entered.count("DescribeTrainingJob") == 1
        assert entered.index("DescribeTrainingJob") < entered.index("RecordSession")
        timeouts = [e["taskTimedOutEventDetails"]["error"] for e in ex.events if "taskTimedOutEventDetails" in e]
        # The ASL specification names a missed heartbeat States.Timeout or States.HeartbeatTimeout (moto 5.2.5
        # says the former); the Catch lists both.
        assert timeouts in (["States.Timeout"], ["States.HeartbeatTimeout"])
        # The timed-out token stays behind until reconciliation finds its task closed.
        assert h.reconcile() == {"completed": 0, "heartbeats": 0, "forgotten": 1} and _no_tokens_left(h)
