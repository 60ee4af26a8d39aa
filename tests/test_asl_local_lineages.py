"""Several seeds on the second interpreter: the synthesized state machine's lineages (an inline Map, at most
``run.parallel`` iterations at once) on aws-local-stepfunctions, with the same harness as on moto (IAM enforced,
every SageMaker request strictly validated, the SageMaker stand-in holding jobs on demand). Where moto can run
the same scenario, both must take the same path in each lineage to the same end (tests/test_asl_local.py).

Abort is proven here only: moto 5.2.5 cannot abort an execution whose inline Map waits on a task token.
StopExecution returns, but the execution stays RUNNING for as long as the token waits, then ends FAILED (an
AttributeError inside moto's Map state), never ABORTED; aws-local-stepfunctions aborts it at once, as Step
Functions does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rlpipe.cloud.steps.lineages import lineage_run_id
from rlpipe.cloud.store import RunKeys
from tests.asl_local.bridge import RUN, LocalInterpreter
from tests.sfn_harness import ACCOUNT, REGION, Harness
from tests.sfn_scenarios import run_id_of
from tests.test_asl_local import assert_same, both, run_id_from_record
from tests.test_cloud_lineages import jobs_of, lineage_state, seeds, wait_for

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def local(fast_machine, tmp_path: Path) -> Iterator[LocalInterpreter]:
    """aws-local-stepfunctions on a running harness (``local.h``); leaving it checks that IAM denied nothing
    and every request was valid."""
    template, ids = fast_machine
    h = Harness(template, ids, tmp_path, mode="instant")
    with h.running(), LocalInterpreter(h).running() as interpreter:
        yield interpreter


def pools_left(h: Harness) -> list[str]:
    return [j.name for j in h.sagemaker.jobs.values() if j.pool in ("Available", "InUse")]


def test_three_lineages_two_at_a_time_each_reusing_its_own_pools(local: LocalInterpreter) -> None:
    h = local.h
    release = threading.Event()
    creates_before: list[int] = []

    def hold_every_job() -> None:
        release.clear()
        h.sagemaker.hold = lambda job: not release.is_set()
        h.sagemaker.max_in_progress = 0
        creates_before.append(len(h.sagemaker.creates))

    def two_run_then_release() -> None:
        first = creates_before[-1]
        wait_for(lambda: len(h.sagemaker.creates) == first + 2)
        time.sleep(1.0)  # two jobs run: the third lineage waits for a place, however long they run
        created = [h.sagemaker.jobs[n] for n in h.sagemaker.creates[first:]]
        assert len(created) == 2 and not [j for j in created if j.run_id.endswith("-seed-2")]
        release.set()

    on_moto, on_local = both(h, local, {"pipeline": seeds(3, parallel=2)}, "three", hold_every_job,
                             two_run_then_release)
    assert on_local.status == "SUCCEEDED", (on_local.error, on_local.cause)
    assert h.sagemaker.max_in_progress == 2 and len(h.sagemaker.creates) == 12  # six per execution
    run_id = run_id_from_record(h, "three-local")
    paths = on_local.paths()
    assert paths[RUN] == ["ReadInput", "StartRun", "Lineages", "FinishRun", "AllLineagesSucceeded?", "NotifySuccess",
                          "RunSucceeded"]
    assert sorted(k for k in paths if k != RUN) == [0, 1, 2]
    for seed in range(3):
        assert paths[seed].count("CreateTrainingJob") == 2 and paths[seed][-1] == "LineageEnded"
        state = lineage_state(h, run_id, seed)
        assert state.status == "succeeded" and all(s.status == "completed" for s in state.sessions)
        first, second = jobs_of(h, run_id, seed)
        # Warm-pool reuse within the lineage: its second job took its first job's pool, no other lineage's.
        assert first.reused_by == second.name and state.sessions[1].reused_previous_pool is True
    report = h.get_json(RunKeys(run_id).report("json"))
    assert report["seeds"] == [0, 1, 2] and [lin["status"] for lin in report["lineages"]] == ["succeeded"] * 3
    assert not pools_left(h)
    assert_same(on_moto, on_local, "three")


def test_a_failing_lineage_does_not_stop_the_others(local: LocalInterpreter) -> None:
    h = local.h

    def seed_one_fails() -> None:
        h.sagemaker.fail = {"hold@seed-1": 1}

    on_moto, on_local = both(h, local, {"pipeline": seeds(3, parallel=2)}, "one-fails", seed_one_fails)
    assert (on_local.status, on_local.error) == ("FAILED", "TrainingJobFailed")
    assert "session 'hold' failed" in (on_local.cause or "")
    run_id = run_id_from_record(h, "one-fails-local")
    assert [lineage_state(h, run_id, s).status for s in range(3)] == ["succeeded", "failed", "succeeded"]
    assert len(jobs_of(h, run_id, 0)) == len(jobs_of(h, run_id, 2)) == 2  # the others completed
    paths = on_local.paths()
    assert paths[RUN][-3:] == ["AllLineagesSucceeded?", "HandleFailure", "RunFailed"]
    assert [paths[s][-1] for s in range(3)] == ["LineageEnded"] * 3  # no fail_fast: each lineage ends its own way
    assert not pools_left(h)
    assert_same(on_moto, on_local, "one-fails")


def test_fail_fast_stops_the_other_lineage_and_its_held_job(local: LocalInterpreter) -> None:
    h = local.h

    def seed_one_fails_while_seed_zero_trains() -> None:
        h.sagemaker.fail = {"hold@seed-1": 1}
        h.sagemaker.hold = lambda job: job.run_id.endswith("-seed-0") and job.session == "hold"

    on_moto, on_local = both(h, local, {"pipeline": seeds(2, parallel=2, fail_fast=True)}, "fail-fast",
                             seed_one_fails_while_seed_zero_trains)
    assert (on_local.status, on_local.error) == ("FAILED", "TrainingJobFailed")
    run_id = run_id_from_record(h, "fail-fast-local")
    held = jobs_of(h, run_id, 0)[1]
    assert held.status == "Stopped"  # stopped by the run's failure path, not left to run
    seed0 = lineage_state(h, run_id, 0)
    assert seed0.status == "failed" and seed0.sessions[1].status == "failed"
    paths = on_local.paths()
    assert paths[0][-1] == "AwaitJobEnd"  # stopped while it waited for its job
    assert paths[1][-2:] == ["StopRun?", "LineageFailed"]
    assert paths[RUN] == ["ReadInput", "StartRun", "Lineages", "HandleFailure", "RunFailed"]
    # The stopped job's end still came as an event; its lineage's task token had been closed with the iteration
    # (SendTaskSuccess: TaskTimedOut), on both interpreters.
    for ex_run_id in (run_id, run_id_of(on_moto)):
        stopped = jobs_of(h, ex_run_id, 0)[1].name
        late = [(d["status"], d["answer"]["action"]) for d in h.delivered if d["job_name"] == stopped]
        assert late == [("Stopped", "already-closed")]
    assert not pools_left(h)
    assert_same(on_moto, on_local, "fail-fast")


def test_abort_stops_every_job_and_closes_every_lineage(local: LocalInterpreter) -> None:
    """Aborting the execution (StopExecution) leaves jobs running; the cleanup Lambda, which EventBridge calls
    on the execution's ABORTED status, stops them all, releases every pool, and reports and alerts across
    lineages. (Not compared with moto: see the module docstring.)"""
    h = local.h
    h.sagemaker.hold = lambda job: job.session == "hold"
    name = "aborted"
    run = local.start({"pipeline": seeds(3, parallel=2)}, name)
    wait_for(lambda: sum(h.sagemaker.jobs[n].session == "hold" for n in h.sagemaker.creates) == 2
             and local.waiting == ["AwaitJobEnd", "AwaitJobEnd"])
    run.abort()
    ended = run.wait()
    assert ended.status == "ABORTED" and ended.error is None
    paths = ended.paths()
    assert paths[RUN] == ["ReadInput", "StartRun", "Lineages"]
    assert sorted(k for k in paths if k != RUN) == [0, 1] and all(paths[i][-1] == "AwaitJobEnd" for i in (0, 1))
    assert local.waiting == []  # both waits abandoned with the execution
    run_id = run_id_from_record(h, name)
    held = [h.sagemaker.jobs[n] for n in h.sagemaker.creates if h.sagemaker.jobs[n].session == "hold"]
    assert [j.status for j in held] == ["InProgress", "InProgress"]  # an aborted execution stops no job itself

    arn = f"arn:aws:states:{REGION}:{ACCOUNT}:execution:rlpipe-runs:{name}"
    answer = h.call_lambda("cleanup", {"detail": {"name": name, "status": "ABORTED", "executionArn": arn}})
    assert answer["action"] == "cleaned" and answer["run_id"] == run_id
    local.deliveries_done()  # the stopped jobs' events arrive; their tokens were closed with the execution
    assert sorted((d["job_name"], d["status"], d["answer"]["action"]) for d in h.delivered
                  if d["status"] == "Stopped") == sorted((j.name, "Stopped", "already-closed") for j in held)
    assert all(j.status != "InProgress" for j in h.sagemaker.jobs.values())
    assert [j.status for j in held] == ["Stopped", "Stopped"]
    assert not pools_left(h)
    assert len(h.sagemaker.creates) == 4 and not jobs_of(h, run_id, 2)  # the third lineage never started
    for seed in range(3):
        assert lineage_state(h, run_id, seed).status == "interrupted"
    assert [lineage_state(h, run_id, s).sessions[1].status for s in (0, 1)] == ["interrupted"] * 2
    report = h.get_json(RunKeys(run_id).report("json"))
    assert report["status"] == "interrupted" and report["seeds"] == [0, 1, 2]
    assert [lin["status"] for lin in report["lineages"]] == ["interrupted"] * 3
    (alert,) = [m for m in h.messages() if run_id in m["Message"]]
    assert f"The execution {name} ended as ABORTED" in alert["Message"]
    for seed in range(3):
        assert f"seed {seed}: interrupted" in alert["Message"]
    assert h.exists(RunKeys(lineage_run_id(run_id, 0)).state)
