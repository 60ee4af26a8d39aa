"""The logic behind each Lambda of the state machine; the handlers in ``lambdas/`` only call these.

The state machine carries pointers (run id, session index, job name, small counters); everything that grows
with the run lives in S3 (:mod:`rlpipe.cloud.store`). Every step is safe to run twice with the same input:
Step Functions retries Lambda invocations. Job names are fixed per attempt (``attempts.json`` hands each
(execution, try) one attempt number once), state writes replace whole documents, and the report overwrites
the same keys. A failed run is continued by a new execution with ``{"resume_run_id": ...}``, not by Step
Functions' redrive: every error is caught and routed to the failure path, which ends in a Fail state, so a
redrive would restart at that Fail state.

The modules, each importing only those above it:

* :mod:`~rlpipe.cloud.steps.context`: the :class:`Context` of a step, cached clients and pipelines, the
  errors a caller sees (:class:`InvalidInput`, :class:`RunConflict`), SNS subjects;
* :mod:`~rlpipe.cloud.steps.inputs`: the execution input;
* :mod:`~rlpipe.cloud.steps.loop`: the cursor, the pointer payload the state machine loops on;
* :mod:`~rlpipe.cloud.steps.training_jobs`: stop the run's active job;
* :mod:`~rlpipe.cloud.steps.pools`: warm pools (CheckPool, releasing a run's pools);
* :mod:`~rlpipe.cloud.steps.lineages`: a run's lineages (one single-seed run per seed), closing one, the run's
  billed cost;
* :mod:`~rlpipe.cloud.steps.job_events`: a job's end by event (AwaitJobEnd, the job-state event,
  reconciliation);
* :mod:`~rlpipe.cloud.steps.start`: StartRun;
* :mod:`~rlpipe.cloud.steps.prepare`: PrepareSession;
* :mod:`~rlpipe.cloud.steps.record`: RecordSession;
* :mod:`~rlpipe.cloud.steps.reporting`: the report in S3 and the alert's text;
* :mod:`~rlpipe.cloud.steps.ending`: EndLineage, FinishRun, FailRun and the cleanup of executions that ended
  abnormally.

The names below are the package's interface: the handlers call ``steps.<function>``.
"""

from __future__ import annotations

from rlpipe.cloud.steps.context import (SUBJECT_MAX, Context, InvalidInput, RunConflict, client, reset_clients,
                                        sns_subject)
from rlpipe.cloud.steps.ending import cleanup_execution, end_lineage, fail_run, finish_run, readable_error
from rlpipe.cloud.steps.inputs import INPUT_FIELDS, read_input
from rlpipe.cloud.steps.job_events import (JOB_ENDED, await_job_end, handle_job_event, job_state_changed,
                                           reconcile, wait_timeout_seconds)
from rlpipe.cloud.steps.loop import cursor
from rlpipe.cloud.steps.pools import (NO_POOL_CHECKS, NO_POOL_STATUS, STARTING_SECONDARY, check_pool,
                                      release_run_pools)
from rlpipe.cloud.steps.prepare import prepare_session
from rlpipe.cloud.steps.record import CAPACITY_MARKERS, COST_CEILING_EXCEEDED, REQUIRE_GATE_FAILED, record_session
from rlpipe.cloud.steps.reporting import console_links, summary_message, write_report
from rlpipe.cloud.steps.start import execution_is_running, start_run
from rlpipe.cloud.steps.training_jobs import close_active_job

__all__ = [
    # context
    "SUBJECT_MAX", "Context", "InvalidInput", "RunConflict", "client", "reset_clients", "sns_subject",
    # execution input and the loop's cursor
    "INPUT_FIELDS", "read_input", "cursor",
    # SageMaker jobs and warm pools
    "close_active_job",
    "NO_POOL_CHECKS", "NO_POOL_STATUS", "STARTING_SECONDARY", "check_pool", "release_run_pools",
    # a job's end by event
    "JOB_ENDED", "await_job_end", "handle_job_event", "job_state_changed", "reconcile", "wait_timeout_seconds",
    # the Lambdas' steps
    "start_run", "execution_is_running", "prepare_session", "CAPACITY_MARKERS", "COST_CEILING_EXCEEDED",
    "REQUIRE_GATE_FAILED", "record_session",
    "end_lineage", "finish_run", "fail_run", "cleanup_execution",
    # the report and the alert
    "console_links", "readable_error", "summary_message", "write_report",
]
