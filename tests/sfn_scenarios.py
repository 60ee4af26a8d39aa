"""Helpers for scenarios on the moto harness (tests/sfn_harness.py): a run's id, a run left by a dead
execution, jobs that keep running."""

from __future__ import annotations

import json
from typing import Any

from rlpipe.cloud.store import RunKeys
from tests.sfn_harness import Execution, Harness


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
    created from now on, and any named later. The first describe of a held job can fail (non-retryable)."""

    def __init__(self, h: Harness, fail_first: bool = False) -> None:
        self.h, self.describe, self.fail = h, h.sagemaker.describe, fail_first
        self.before, self.names = set(h.sagemaker.jobs), set[str]()

    def __call__(self, name: str) -> dict[str, Any]:
        from moto.sagemaker.exceptions import ValidationError

        job = self.h.sagemaker.jobs[name]
        if (name in self.names or name not in self.before) and job.status == "InProgress":
            if self.fail:
                self.fail = False
                raise ValidationError("injected: the describe failed")
            job.described += 1
            return self.h.sagemaker._view(job, status="InProgress")
        return self.describe(name)
