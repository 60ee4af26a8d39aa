"""Helpers for scenarios on the moto harness (tests/sfn_harness.py): a run's id, a run left by a dead
execution, jobs that keep running, job-state events lost and recovered by reconciliation, missed heartbeats."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from typing import Any

from rlpipe.cloud.store import RunKeys
from rlpipe.cloud.tokens import TOKENS_PREFIX
from tests.sfn_harness import BUCKET, Execution, Harness


def run_id_of(ex: Execution) -> str:
    """The run id StartRun gave the execution."""
    started = next(e for e in ex.events if e.get("stateExitedEventDetails", {}).get("name") == "StartRun")
    return json.loads(started["stateExitedEventDetails"]["output"])["run"]["run_id"]


def abandon(h: Harness, run_id: str, execution: str) -> str:
    """Make ``run_id`` look as an execution leaves it when it dies mid-session without its cleanup: the state
    says running, the last session's job still runs, the pool before it waits. Returns that job's name."""
    keys = RunKeys(run_id)
    state = h.get_json(keys.state)
    state["status"] = "running"
    last = state["sessions"][-1]
    last["status"], last["ended_at"] = "running", None
    h.put(keys.state, json.dumps(state))
    job = h.sagemaker.jobs[last["job_name"]]
    job.status, job.started, job.described, job.pool = "InProgress", None, 0, None
    previous = h.sagemaker.jobs[state["sessions"][-2]["job_name"]]
    previous.pool, previous.reused_by = "Available", None  # its pool not yet taken by the running job
    record_key = f"executions/{execution}.json"
    record = h.get_json(record_key)
    record.pop("notified", None)
    record.pop("cleaned_up", None)
    h.put(record_key, json.dumps(record))
    return job.name


class HeldJobs:
    """Jobs that keep running until stopped (the stand-in runs a job at its first describe otherwise): those
    created from now on whose run id ends with ``run_suffix`` (any run: ""), and any named later. The first
    describe of a held job can fail (non-retryable)."""

    def __init__(self, h: Harness, fail_first: bool = False, run_suffix: str = "") -> None:
        self.h, self.describe, self.fail, self.run_suffix = h, h.sagemaker.describe, fail_first, run_suffix
        self.before, self.names = set(h.sagemaker.jobs), set[str]()

    def __call__(self, name: str) -> dict[str, Any]:
        from moto.sagemaker.exceptions import ValidationError

        job = self.h.sagemaker.jobs[name]
        held = name in self.names or (name not in self.before and job.run_id.endswith(self.run_suffix))
        if held and job.status == "InProgress":
            if self.fail:
                self.fail = False
                raise ValidationError("injected: the describe failed")
            job.described += 1
            return self.h.sagemaker._view(job, status="InProgress")
        return self.describe(name)


def tokens_waiting(h: Harness) -> bool:
    """Is some task token stored (an AwaitJobEnd waits for its job's event)?"""
    return h.s3.list_objects_v2(Bucket=BUCKET, Prefix=TOKENS_PREFIX).get("KeyCount", 0) > 0


def reconcile_while_running(h: Harness, arn: str, timeout: float = 120,
                            on_tick: Callable[[dict[str, int]], None] | None = None) -> list[dict[str, int]]:
    """Events lost (``h.job_events = "lost"``): tick the reconciliation schedule whenever a token has waited a
    while, until the execution ``arn`` ends. Returns each tick's counts."""
    ticks: list[dict[str, int]] = []
    deadline = time.monotonic() + timeout
    while h.sfn.describe_execution(executionArn=arn)["status"] == "RUNNING" and time.monotonic() < deadline:
        if tokens_waiting(h):
            time.sleep(0.2)  # still waiting after a while: the event is lost
            ticks.append(h.reconcile())
            if on_tick:
                on_tick(ticks[-1])
        time.sleep(0.05)
    return ticks


def reconcile_on_wait(h: Harness, after: float = 0.2) -> Callable[[str, str], str | None]:
    """The same schedule for aws-local-stepfunctions (the bridge's ``on_wait``): a tick once a token has
    waited ``after`` seconds; the tick's SendTaskSuccess ends the wait."""
    first_seen: dict[str, float] = {}

    def on_wait(state: str, token: str) -> str | None:
        seen = first_seen.setdefault(token, time.monotonic())
        if time.monotonic() - seen >= after and tokens_waiting(h):
            first_seen[token] = time.monotonic()
            h.reconcile()
        return None
    return on_wait


def with_heartbeat_seconds(template: dict[str, Any], state_machine_id: str, seconds: int) -> dict[str, Any]:
    """A copy of ``template`` whose AwaitJobEnd misses its heartbeat after ``seconds`` (2700 in the stack)."""
    template = copy.deepcopy(template)
    parts = template["Resources"][state_machine_id]["Properties"]["DefinitionString"]["Fn::Join"][1]
    heartbeat = '"HeartbeatSeconds":2700'
    assert sum(p.count(heartbeat) for p in parts if isinstance(p, str)) == 1
    parts[:] = [p.replace(heartbeat, f'"HeartbeatSeconds":{seconds}') if isinstance(p, str) else p
                for p in parts]
    return template


def delete_job(h: Harness, name: str) -> None:
    """The job is deleted (DeleteTrainingJob, by hand): SageMaker no longer knows it."""
    from moto.sagemaker.models import sagemaker_backends

    from tests.sfn_harness import ACCOUNT, REGION

    h.sagemaker.jobs.pop(name)
    sagemaker_backends[ACCOUNT][REGION].training_jobs.pop(name)
