"""The state machine: the run's lineages side by side, each one generic loop over its sessions, carrying
pointers only.

::

    ReadInput → StartRun → Lineages (Map over seeds, at most run.parallel at once) → FinishRun → AllLineagesSucceeded?
                              │                                                           yes → NotifySuccess → RunSucceeded
                              │                                                           no  → HandleFailure
    one lineage (the Map's item processor):
      NextStep? ─done/failed→ EndLineage → StopRun? ─no→ LineageEnded (its result)
        │ │ └─pool→ WaitForPool → CheckPool → NextStep?     └─yes (fail_fast, cost ceiling)→ LineageFailed:
        │ └─retry→ WaitBeforeRetry → PrepareSession                                        the Map fails
        ▼ otherwise
      PrepareSession → CreateTrainingJob → AwaitJobEnd ───────────────────────────→ RecordSession → NextStep?
                                              ▲    │ heartbeat/timeout                  ▲
                                              │    ▼                                    │ ended
                                              └─ DescribeTrainingJob → JobEnded? ───────┘
      any error in a lineage ─Catch→ EndLineage (stops its job, releases its pools)
    StartRun, the Map or FinishRun failing ─Catch→ HandleFailure (closes every lineage, report, alert) → RunFailed

SageMaker is called through the AWS SDK integration (``aws-sdk:sagemaker:*``), not the optimized ``.sync``
one: the request is passed as built (KeepAlivePeriodInSeconds included) and the loop decides when the next
job may start (after the previous pool is Available). A job's end arrives by event: AwaitJobEnd is a
``.waitForTaskToken`` Lambda task that stores its token by job name; the "SageMaker Training Job State
Change" rule's Lambda completes it (:mod:`rlpipe.cloud.steps.job_events`). A lost event is found by the
scheduled reconciliation, which also heartbeats the task; should that stop, the heartbeat timeout (or the
job's own limits, ``$.job.timeout_seconds``) leads to one describe and a new wait: an execution never hangs.
The failure alert is published by HandleFailure itself, which records that it did: if it fails, the cleanup
Lambda alerts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aws_cdk import Duration
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

from rlpipe.cloud.requests import create_fields
from rlpipe.cloud.steps import JOB_ENDED
from rlpipe.cloud.steps.job_events import WAIT_MARGIN_SECONDS

# Step Functions names SDK errors "<Service>.<ErrorCode>Exception" (the suffix is always added). Throttling
# has also been reported as the generic SageMaker.AmazonSageMakerException / SageMaker.SageMakerException
# (aws-step-functions-data-science-sdk-python #162, #191): retried too, so a throttled run does not fail.
RETRYABLE_SAGEMAKER_ERRORS = ["SageMaker.ThrottlingException", "SageMaker.ResourceLimitExceededException",
                              "SageMaker.InternalFailureException", "SageMaker.ServiceUnavailableException",
                              "SageMaker.AmazonSageMakerException", "SageMaker.SageMakerException"]
JOB_EXISTS_ERROR = "SageMaker.ResourceInUseException"
LAMBDA_TRANSIENT_ERRORS = ["Lambda.TooManyRequestsException", "Lambda.Unknown"]
WAIT_TIMED_OUT = "States.Timeout"
HEARTBEAT_TIMED_OUT = "States.HeartbeatTimeout"


@dataclass(frozen=True)
class RetryPacing:
    """Retry intervals of SDK calls and the job wait's heartbeat (static in the definition; tests shrink them).

    ``job_heartbeat`` must exceed the reconciliation interval several times over: reconciliation sends the
    heartbeats, so the timeout fires only when it has stopped. It stays below the wait's TimeoutSeconds, which
    is at least ``WAIT_MARGIN_SECONDS`` (Step Functions wants HeartbeatSeconds < TimeoutSeconds).
    """

    create_interval: Duration = Duration.seconds(30)
    create_attempts: int = 6
    describe_interval: Duration = Duration.seconds(10)
    describe_attempts: int = 8
    backoff_rate: float = 2.0
    job_heartbeat: Duration = Duration.minutes(45)
    reconcile_every: Duration = Duration.minutes(10)

    def __post_init__(self) -> None:
        if self.job_heartbeat.to_seconds() < 3 * self.reconcile_every.to_seconds():
            raise ValueError("job_heartbeat must be at least three reconciliation intervals")
        if self.job_heartbeat.to_seconds() >= WAIT_MARGIN_SECONDS:
            raise ValueError(f"job_heartbeat must be shorter than {WAIT_MARGIN_SECONDS} s (the least TimeoutSeconds)")


def _invoke(scope: Construct, name: str, fn: lambda_.IFunction, payload: dict[str, object],
            result_path: str, comment: str) -> tasks.LambdaInvoke:
    task = tasks.LambdaInvoke(scope, name, lambda_function=fn, payload=sfn.TaskInput.from_object(payload),
                              payload_response_only=True, result_path=result_path, comment=comment,
                              retry_on_service_exceptions=True)
    task.add_retry(errors=LAMBDA_TRANSIENT_ERRORS, interval=Duration.seconds(2), max_attempts=4, backoff_rate=2)
    return task


def build_definition(scope: Construct, *, functions: dict[str, lambda_.IFunction], topic: sns.ITopic,
                     training_role: iam.IRole, job_arn_pattern: str, vpc: bool, pacing: RetryPacing | None = None
                     ) -> sfn.IChainable:
    """The definition's start state, with every state created under ``scope``."""
    pacing = pacing or RetryPacing()
    run_id = sfn.JsonPath.string_at("$.run.run_id")
    index = sfn.JsonPath.number_at("$.cursor.index")
    attempt_try = sfn.JsonPath.number_at("$.cursor.try")
    execution = sfn.JsonPath.execution_name
    execution_arn = sfn.JsonPath.execution_id

    # -- failure path ---------------------------------------------------------------------------------------
    run_failed = sfn.Fail(scope, "RunFailed", error_path="$.failure.error", cause_path="$.failure.cause",
                          comment="Error and Cause as the failure handler read them")
    handler_failed = sfn.Fail(scope, "FailureHandlingFailed", error="FailureHandlingFailed",
                              cause="The failure handler itself failed; the cleanup Lambda (EventBridge) stops the "
                                    "job and releases pools. See the execution history for the first error.")
    handle_failure = _invoke(scope, "HandleFailure", functions["fail_run"],
                             {"state": sfn.JsonPath.entire_payload, "execution": execution,
                              "execution_arn": execution_arn},
                             "$.failure", "Stop the job, release pools, write the partial report, alert")
    handle_failure.add_catch(handler_failed, result_path="$.handler_error")
    handle_failure.next(run_failed)

    # -- one lineage: its sessions, one after the other (the Map state's item processor) ----------------------
    lineage_failed = sfn.Fail(scope, "LineageFailed", error_path="$.end.error", cause_path="$.end.cause",
                              comment="fail_fast or the cost ceiling: ends the Map, so every other lineage")
    end_lineage_failed = sfn.Fail(scope, "EndLineageFailed", error="EndLineageFailed",
                                  cause="Ending a lineage failed; HandleFailure closes every lineage")
    lineage_ended = sfn.Pass(scope, "LineageEnded", output_path="$.end", comment="This lineage's result")
    stop_run = sfn.Choice(scope, "StopRun?", comment="Does this lineage's end stop the others?")
    stop_run.when(sfn.Condition.boolean_equals("$.end.stop_run", True), lineage_failed)
    stop_run.otherwise(lineage_ended)
    end_lineage = _invoke(scope, "EndLineage", functions["end_lineage"],
                          {"state": sfn.JsonPath.entire_payload}, "$.end",
                          "Stop its job if it failed, release its pools, its own report")
    end_lineage.add_catch(end_lineage_failed, result_path="$.handler_error")
    end_lineage.next(stop_run)

    def on_error(task: Any) -> Any:
        task.add_catch(end_lineage, result_path="$.error")
        return task

    prepare = on_error(_invoke(scope, "PrepareSession", functions["prepare_session"],
                               {"run_id": run_id, "index": index, "try": attempt_try, "execution": execution,
                                "lineage": sfn.JsonPath.number_at("$.run.lineage")},
                               "$.job", "session.json and the CreateTrainingJob request of this attempt"))

    # Each top-level field of the request PrepareSession built, mapped as is (Step Functions validates it),
    # except the role: the machine passes only the stack's SageMaker role, whatever a payload says.
    parameters: dict[str, Any] = {f: sfn.JsonPath.string_at(f"$.job.request.{f}") for f in create_fields(vpc)}
    parameters["RoleArn"] = training_role.role_arn
    create = tasks.CallAwsService(
        scope, "CreateTrainingJob", service="sagemaker", action="createTrainingJob",
        parameters=parameters,
        iam_resources=[job_arn_pattern],
        # The request is not needed after this state: its place takes the (small) ARN.
        result_selector={"TrainingJobArn": sfn.JsonPath.string_at("$.TrainingJobArn")},
        result_path="$.job.request",
        additional_iam_statements=[
            iam.PolicyStatement(actions=["sagemaker:AddTags"], resources=[job_arn_pattern]),
            iam.PolicyStatement(actions=["iam:PassRole"], resources=[training_role.role_arn],
                                conditions={"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}),
        ],
        comment="The request exactly as PrepareSession built it")
    create.add_retry(errors=RETRYABLE_SAGEMAKER_ERRORS, interval=pacing.create_interval,
                     max_attempts=pacing.create_attempts, backoff_rate=pacing.backoff_rate)
    # The job's end arrives by event: one task waits however long the job runs (history per session constant).
    await_end = tasks.LambdaInvoke(
        scope, "AwaitJobEnd", lambda_function=functions["await_job"],
        integration_pattern=sfn.IntegrationPattern.WAIT_FOR_TASK_TOKEN,
        payload=sfn.TaskInput.from_object({
            "token": sfn.JsonPath.task_token, "run_id": run_id,
            "job_name": sfn.JsonPath.string_at("$.job.job_name"),
            "previous_pool": sfn.JsonPath.object_at("$.job.previous_pool")}),
        result_path="$.status", heartbeat_timeout=sfn.Timeout.duration(pacing.job_heartbeat),
        task_timeout=sfn.Timeout.at("$.job.timeout_seconds"), retry_on_service_exceptions=True,
        comment="Token stored by job name; completed by the job-state event, by this step if the job ended "
                "first, or by the scheduled reconciliation")
    await_end.add_retry(errors=LAMBDA_TRANSIENT_ERRORS, interval=Duration.seconds(2), max_attempts=4,
                        backoff_rate=2)
    # The name is fixed per attempt: "already exists" means a retried call got through before.
    create.add_catch(await_end, errors=[JOB_EXISTS_ERROR], result_path=sfn.JsonPath.DISCARD)
    on_error(create)
    # No heartbeat (reconciliation stopped) or past the job's limits: look at the job, then record or wait again.
    describe = on_error(tasks.CallAwsService(
        scope, "DescribeTrainingJob", service="sagemaker", action="describeTrainingJob",
        parameters={"TrainingJobName": sfn.JsonPath.string_at("$.job.job_name")},
        iam_resources=[job_arn_pattern],
        result_selector={"TrainingJobStatus": sfn.JsonPath.string_at("$.TrainingJobStatus"),
                         "SecondaryStatus": sfn.JsonPath.string_at("$.SecondaryStatus")},
        result_path="$.status"))
    describe.add_retry(errors=RETRYABLE_SAGEMAKER_ERRORS, interval=pacing.describe_interval,
                       max_attempts=pacing.describe_attempts, backoff_rate=pacing.backoff_rate)
    await_end.add_catch(describe, errors=[WAIT_TIMED_OUT, HEARTBEAT_TIMED_OUT], result_path=sfn.JsonPath.DISCARD)
    on_error(await_end)
    record = on_error(_invoke(scope, "RecordSession", functions["record_session"],
                              {"run_id": run_id, "index": index, "try": attempt_try,
                               "job_name": sfn.JsonPath.string_at("$.job.job_name")},
                              "$.cursor", "State, metrics, bundle handoff; decides what comes next"))
    job_ended = sfn.Choice(scope, "JobEnded?")
    job_ended.when(sfn.Condition.or_(*[sfn.Condition.string_equals("$.status.TrainingJobStatus", s)
                                       for s in JOB_ENDED]), record)
    job_ended.otherwise(await_end)
    describe.next(job_ended)
    prepare.next(create).next(await_end).next(record)

    # -- between sessions: one Choice decides what comes next, from the cursor ---------------------------------
    next_step = sfn.Choice(scope, "NextStep?", comment="A session, a pool check, or the lineage's end")
    wait_retry = sfn.Wait(scope, "WaitBeforeRetry", time=sfn.WaitTime.seconds_path("$.run.retry_wait_seconds"),
                          comment="Capacity shortage: a new attempt (new job name) after a pause")
    wait_retry.next(prepare)
    wait_pool = sfn.Wait(scope, "WaitForPool", time=sfn.WaitTime.seconds_path("$.run.pool_poll_seconds"))
    check_pool = on_error(_invoke(scope, "CheckPool", functions["check_pool"],
                                  {"run_id": run_id, "job_name": sfn.JsonPath.string_at("$.job.job_name"),
                                   "cursor": sfn.JsonPath.object_at("$.cursor")},
                                  "$.cursor", "Bounded wait for WarmPoolStatus=Available"))
    wait_pool.next(check_pool).next(next_step)
    next_step.when(sfn.Condition.string_equals("$.cursor.outcome", "failed"), end_lineage)
    next_step.when(sfn.Condition.string_equals("$.cursor.outcome", "retry"), wait_retry)
    next_step.when(sfn.Condition.boolean_equals("$.cursor.wait_for_pool", True), wait_pool)
    next_step.when(sfn.Condition.boolean_equals("$.cursor.done", True), end_lineage)
    next_step.otherwise(prepare)
    record.next(next_step)


    # -- the run: its lineages side by side, then its end ------------------------------------------------------
    # An inline Map rather than a child execution per lineage: one execution is one run, so aborting it stops
    # every lineage at once and the cleanup Lambda (execution ABORTED) stops every job and releases every pool;
    # a failing iteration (fail_fast, the cost ceiling) ends the others, and no extra role needs
    # states:StartExecution. The price, a history shared by all lineages, is checked at start
    # (rlpipe.cloud.pacing.estimated_history_events; about 600 sessions over all lineages).
    lineages = sfn.Map(scope, "Lineages", items_path="$.lineages", max_concurrency_path="$.run.parallel",
                       result_path="$.lineages",
                       comment="One whole curriculum per seed, at most run.parallel at once (so as many jobs)")
    lineages.item_processor(next_step)
    lineages.add_catch(handle_failure, result_path="$.error")
    finish = _invoke(scope, "FinishRun", functions["finish_run"],
                     {"run_id": run_id, "execution": execution, "execution_arn": execution_arn,
                      "lineages": sfn.JsonPath.list_at("$.lineages")},
                     "$.summary", "The run's status from its lineages'; succeeded: release pools, the report")
    finish.add_catch(handle_failure, result_path="$.error")
    notify_success = tasks.SnsPublish(scope, "NotifySuccess", topic=topic,
                                      subject=sfn.JsonPath.string_at("$.summary.subject"),
                                      message=sfn.TaskInput.from_json_path_at("$.summary.message"),
                                      result_path=sfn.JsonPath.DISCARD)
    notify_success.add_retry(interval=Duration.seconds(5), max_attempts=3, backoff_rate=2)
    notify_success.next(sfn.Succeed(scope, "RunSucceeded"))
    succeeded = sfn.Choice(scope, "AllLineagesSucceeded?")
    succeeded.when(sfn.Condition.string_equals("$.summary.status", "succeeded"), notify_success)
    succeeded.otherwise(handle_failure)
    lineages.next(finish).next(succeeded)

    # -- start ----------------------------------------------------------------------------------------------
    read_input = sfn.Pass(scope, "ReadInput", parameters={
        "input": sfn.JsonPath.entire_payload, "execution": execution, "execution_arn": execution_arn,
        "started_at": sfn.JsonPath.execution_start_time}, comment="Whatever the input, an object to catch into")
    start = _invoke(scope, "StartRun", functions["start_run"], {
        "input": sfn.JsonPath.object_at("$.input"), "execution": sfn.JsonPath.string_at("$.execution"),
        "execution_arn": sfn.JsonPath.string_at("$.execution_arn"),
        "started_at": sfn.JsonPath.string_at("$.started_at")},
        "$", "Validate the input, plan, create or resume the run and its lineages in S3")
    start.add_catch(handle_failure, result_path="$.error")
    return read_input.next(start).next(lineages)
