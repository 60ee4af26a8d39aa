"""Several seeds on AWS: the synthesized state machine runs one lineage per seed side by side (an inline Map),
executed on moto's ASL interpreter with IAM enforced and every SageMaker request strictly validated
(tests/sfn_harness.py). Jobs are the instant stand-in; a held job runs until released or stopped.

Aborting a run is proven on aws-local-stepfunctions (tests/test_asl_local_lineages.py): moto 5.2.5 cannot abort
an execution whose inline Map waits on a task token (it keeps running, then ends FAILED inside moto's Map).
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from rlpipe.cloud.steps.lineages import lineage_run_id
from rlpipe.cloud.store import RunKeys
from rlpipe.state import RunState
from tests.conftest import TINY
from tests.sfn_harness import Execution, Harness
from tests.sfn_scenarios import run_id_of

pytestmark = pytest.mark.timeout(300)


def seeds(n: int, parallel: int, **settings: Any) -> dict[str, Any]:
    raw = copy.deepcopy(TINY)
    raw.update(name=f"seeds{n}", seeds=list(range(n)), parallel=parallel, **settings)
    return raw


@pytest.fixture
def harness(fast_machine, tmp_path) -> Iterator[Harness]:
    """A running harness; leaving it checks that IAM denied nothing and every request was valid."""
    template, ids = fast_machine
    h = Harness(template, ids, tmp_path, mode="instant")
    with h.running():
        yield h


def lineage_state(h: Harness, run_id: str, seed: int) -> RunState:
    return RunState.model_validate(h.get_json(RunKeys(lineage_run_id(run_id, seed)).state))


def jobs_of(h: Harness, run_id: str, seed: int) -> list[Any]:
    """The lineage's jobs in the order they were created."""
    wanted = lineage_run_id(run_id, seed)
    return [h.sagemaker.jobs[n] for n in h.sagemaker.creates if h.sagemaker.jobs[n].run_id == wanted]


def wait_for(condition: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_three_lineages_two_at_a_time_each_reusing_its_own_pools(harness: Harness) -> None:
    h = harness
    release = threading.Event()
    h.sagemaker.hold = lambda job: not release.is_set()
    arn = h.start({"pipeline": seeds(3, parallel=2)}, "three-seeds")
    wait_for(lambda: len(h.sagemaker.creates) == 2)
    time.sleep(1.0)  # two jobs run: the third lineage waits for a place, however long they run
    assert len(h.sagemaker.creates) == 2
    release.set()
    ex = h.wait(arn)
    assert ex.status == "SUCCEEDED", ex.failure()
    assert h.sagemaker.max_in_progress == 2 and len(h.sagemaker.creates) == 6
    run_id = run_id_of(ex)
    # The lineages share the execution's history: StartRun's estimate holds.
    plan = h.get_json(RunKeys(run_id).plan)
    assert len(ex.events) <= plan["estimated_history_events"]
    record = h.get_json(RunKeys(run_id).lineages)
    assert [(lin["seed"], lin["run_id"]) for lin in record["lineages"]] == \
        [(s, f"{run_id}-seed-{s}") for s in range(3)]
    for seed in range(3):
        state = lineage_state(h, run_id, seed)
        assert state.status == "succeeded" and all(s.status == "completed" for s in state.sessions)
        first, second = jobs_of(h, run_id, seed)
        # Warm-pool reuse within the lineage: its second job took its first job's pool, no other lineage's.
        assert first.reused_by == second.name and state.sessions[1].reused_previous_pool is True
        assert first.request["ResourceConfig"]["VolumeSizeInGB"] == 30 + seed
        assert {t["Value"] for t in first.request["Tags"] if t["Key"] == "rlpipe:run-id"} == \
            {lineage_run_id(run_id, seed)}
        assert h.exists(RunKeys(lineage_run_id(run_id, seed)).report("html"))  # the lineage's own report
    # Lineages differ by seed; the report aggregates them.
    report = h.get_json(RunKeys(run_id).report("json"))
    assert report["seeds"] == [0, 1, 2] and report["status"] == "succeeded"
    assert [lin["status"] for lin in report["lineages"]] == ["succeeded"] * 3
    finals = [lin["sessions"][1]["final_eval_reward"] for lin in report["lineages"]]
    assert finals == pytest.approx([2.0, 2.1, 2.2])
    hold = report["aggregate"]["sessions"][1]
    assert hold["n"] == 3 and hold["final_eval_reward"]["mean"] == pytest.approx(2.1)
    lo, hi = hold["final_eval_reward"]["ci95"]
    assert 2.0 <= lo <= 2.1 <= hi <= 2.2
    assert h.exists(RunKeys(run_id).report("png"))
    # One e-mail for the run, summarising every lineage.
    (message,) = [m for m in h.messages() if run_id in m["Message"]]
    assert message["Subject"].startswith("rlpipe seeds3: SUCCEEDED (6/6 sessions")
    for seed in range(3):
        assert f"seed {seed}: succeeded" in message["Message"]
    assert "Across seeds" in message["Message"]
    # Every pool released at the end.
    assert not [j.name for j in h.sagemaker.jobs.values() if j.pool in ("Available", "InUse")]


def test_a_failing_lineage_does_not_stop_the_others(harness: Harness) -> None:
    h = harness
    h.sagemaker.fail = {"hold@seed-1": 1}
    ex = h.execute({"pipeline": seeds(3, parallel=2)}, "one-fails")
    assert ex.status == "FAILED"
    assert ex.failure()["error"] == "TrainingJobFailed" and "session 'hold' failed" in ex.failure()["cause"]
    run_id = run_id_of(ex)
    assert [lineage_state(h, run_id, s).status for s in range(3)] == ["succeeded", "failed", "succeeded"]
    assert h.sagemaker.max_in_progress <= 2 and len(h.sagemaker.creates) == 6
    report = h.get_json(RunKeys(run_id).report("json"))
    assert report["status"] == "failed"
    assert [lin["status"] for lin in report["lineages"]] == ["succeeded", "failed", "succeeded"]
    assert report["aggregate"]["sessions"][1]["n"] == 2  # the failed lineage did not complete 'hold'
    (alert,) = [m for m in h.messages() if run_id in m["Message"]]
    assert "FAILED" in alert["Subject"] and "seed 1: failed" in alert["Message"]
    assert "seed 0: succeeded" in alert["Message"] and "seed 2: succeeded" in alert["Message"]


def test_resume_runs_only_the_unfinished_lineage_from_its_failed_session(harness: Harness) -> None:
    h = harness
    h.sagemaker.fail = {"hold@seed-1": 1}
    failed = h.execute({"pipeline": seeds(3, parallel=2)}, "fails-then-resumes")
    run_id = run_id_of(failed)
    before = len(h.sagemaker.creates)
    resumed = h.execute({"resume_run_id": run_id}, "resumes")
    assert (failed.status, resumed.status) == ("FAILED", "SUCCEEDED")
    (again,) = [h.sagemaker.jobs[n] for n in h.sagemaker.creates[before:]]  # only seed 1's 'hold', once more
    assert again.run_id == lineage_run_id(run_id, 1) and again.session == "hold"
    assert [lineage_state(h, run_id, s).status for s in range(3)] == ["succeeded"] * 3
    report = h.get_json(RunKeys(run_id).report("json"))
    assert report["status"] == "succeeded" and report["aggregate"]["sessions"][1]["n"] == 3


def test_fail_fast_stops_every_other_lineage_and_its_job(harness: Harness) -> None:
    h = harness
    h.sagemaker.fail = {"hold@seed-1": 1}
    h.sagemaker.hold = lambda job: job.run_id.endswith("-seed-0") and job.session == "hold"
    ex = h.execute({"pipeline": seeds(2, parallel=2, fail_fast=True)}, "fail-fast")
    assert ex.status == "FAILED" and ex.failure()["error"] == "TrainingJobFailed"
    run_id = run_id_of(ex)
    held = jobs_of(h, run_id, 0)[1]
    assert held.status == "Stopped"  # stopped by the run's failure path, not left to run
    seed0 = lineage_state(h, run_id, 0)
    assert seed0.status == "failed" and seed0.sessions[1].status == "failed"
    assert lineage_state(h, run_id, 1).sessions[1].status == "failed"
    assert not [j.name for j in h.sagemaker.jobs.values() if j.pool in ("Available", "InUse")]


def test_a_failed_require_gate_ends_its_lineage_by_name(harness: Harness) -> None:
    raw = seeds(2, parallel=1)
    # The stand-in's rewards: 1.0 + 0.1 * seed for the first session.
    raw["sessions"][0]["require"] = {"metric": "final_eval_reward", "at_least": 1.05}
    ex = harness.execute({"pipeline": raw}, "gated")
    run_id = run_id_of(ex)
    assert ex.status == "FAILED" and ex.failure()["error"] == "RequireGateFailed"
    gated, passed = lineage_state(harness, run_id, 0), lineage_state(harness, run_id, 1)
    assert gated.status == "failed" and gated.sessions[0].status == "completed" and gated.sessions[1].status == "pending"
    assert "require gate" in (gated.error or "") and gated.failed_gate() is gated.sessions[0]
    assert passed.status == "succeeded"
    assert len(jobs_of(harness, run_id, 0)) == 1  # nothing trained after the gate
    report = harness.get_json(RunKeys(run_id).report("json"))
    entry = report["lineages"][0]["sessions"][0]
    assert entry["gate"] == {"metric": "final_eval_reward", "at_least": 1.05, "value": 1.0, "passed": False}


def test_billed_cost_over_the_ceiling_stops_the_run_after_the_session(harness: Harness) -> None:
    raw = seeds(2, parallel=1, max_cost_usd=1.0)
    h = harness
    h.sagemaker.billed_seconds = 36_000  # ten hours billed per job: the first job alone is over $1
    ex = h.execute({"pipeline": raw}, "over-budget")
    run_id = run_id_of(ex)
    assert ex.status == "FAILED" and ex.failure()["error"] == "CostCeilingExceeded"
    assert "exceeds max_cost_usd $1.00" in ex.failure()["cause"]
    assert len(h.sagemaker.creates) == 1  # stopped after the first session, whatever fail_fast says
    first = lineage_state(h, run_id, 0)
    assert first.sessions[0].status == "completed" and first.status == "failed"
    assert lineage_state(h, run_id, 1).status == "failed"  # never started; closed with the run


def run_seeds_and_single(h: Harness) -> tuple[Execution, Execution]:
    multi = h.execute({"pipeline": seeds(2, parallel=2)}, "two-seeds")
    single = copy.deepcopy(TINY)
    single["defaults"]["seed"] = 1
    return multi, h.execute({"pipeline": single}, "seed-one")


def test_a_lineage_asks_for_what_a_single_seed_run_of_its_seed_asks(harness: Harness) -> None:
    """Same sessions, seed, channels and hyperparameters; only names and the lineage's pool size differ."""
    multi, single = run_seeds_and_single(harness)
    assert multi.status == single.status == "SUCCEEDED"
    lineage = jobs_of(harness, run_id_of(multi), 1)
    alone = [harness.sagemaker.jobs[n] for n in harness.sagemaker.creates
             if harness.sagemaker.jobs[n].run_id == run_id_of(single)]
    for a, b in zip(lineage, alone, strict=True):
        for field in ("AlgorithmSpecification", "StoppingCondition", "EnableManagedSpotTraining"):
            assert a.request[field] == b.request[field]
        assert a.request["ResourceConfig"]["VolumeSizeInGB"] == b.request["ResourceConfig"]["VolumeSizeInGB"] + 1
        doc_a = harness.get_json(RunKeys(a.run_id).session_file(0, "stand"))["session"]
        doc_b = harness.get_json(RunKeys(b.run_id).session_file(0, "stand"))["session"]
        assert doc_a == doc_b and doc_a["seed"] == 1
