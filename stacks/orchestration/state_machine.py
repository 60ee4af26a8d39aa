"""The state machine: one generic loop over a run's sessions, carrying pointers only.

::

    ReadInput → StartRun → NextStep? ─done→ FinishRun → NotifySuccess → RunSucceeded
                              │ │ │ └─failed→ HandleFailure
                              │ │ └─pool→ WaitForPool → CheckPool → NextStep?
                              │ └─retry→ WaitBeforeRetry → PrepareSession
                              ▼ otherwise
    PrepareSession → CreateTrainingJob → WaitForJob → DescribeTrainingJob → JobEnded? ─yes→ RecordSession → NextStep?
                                            ▲                                   │ no
                                            ├── (wait at its cap) ──────────────┤
                                            ├── DoubleWait / CapWait ───────────┤
                                            └── ReleaseUnusedPool ──────────────┘ (once past Starting)
    any error ─Catch→ HandleFailure (stops the job, releases pools, report, alert) → RunFailed

SageMaker is called through the AWS SDK integration (``aws-sdk:sagemaker:*``), not the optimized ``.sync``
one: the request is passed as built (KeepAlivePeriodInSeconds included) and the loop decides when the next
job may start (after the previous pool is Available). The wait between polls starts at the Lambdas'
``min_poll_seconds`` and doubles each round up to its cap (``$.job.poll``, :mod:`rlpipe.cloud.pacing`); all
waits come from the payload, so tests run the same definition without sleeping. The failure alert is
published by HandleFailure itself, which records that it did: if it fails, the cleanup Lambda alerts.
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
from rlpipe.cloud.steps import STARTING_SECONDARY

JOB_ENDED = ("Completed", "Failed", "Stopped")
# Step Functions names SDK errors "<Service>.<ErrorCode>Exception" (the suffix is always added).
RETRYABLE_SAGEMAKER_ERRORS = ["SageMaker.ThrottlingException", "SageMaker.ResourceLimitExceededException",
                              "SageMaker.InternalFailureException", "SageMaker.ServiceUnavailableException"]
JOB_EXISTS_ERROR = "SageMaker.ResourceInUseException"
LAMBDA_TRANSIENT_ERRORS = ["Lambda.TooManyRequestsException", "Lambda.Unknown"]


@dataclass(frozen=True)
class RetryPacing:
    """Retry intervals of SDK calls (static in the definition; tests shrink them)."""

    create_interval: Duration = Duration.seconds(30)
    create_attempts: int = 6
    describe_interval: Duration = Duration.seconds(10)
    describe_attempts: int = 8
    backoff_rate: float = 2.0


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

    def on_error(task: Any) -> Any:
        task.add_catch(handle_failure, result_path="$.error")
        return task

    # -- success path ---------------------------------------------------------------------------------------
    finish = on_error(_invoke(scope, "FinishRun", functions["finish_run"],
                              {"run_id": run_id, "execution": execution, "execution_arn": execution_arn},
                              "$.summary", "Mark the run succeeded, release pools, write the report"))
    notify_success = tasks.SnsPublish(scope, "NotifySuccess", topic=topic,
                                      subject=sfn.JsonPath.string_at("$.summary.subject"),
                                      message=sfn.TaskInput.from_json_path_at("$.summary.message"),
                                      result_path=sfn.JsonPath.DISCARD)
    notify_success.add_retry(interval=Duration.seconds(5), max_attempts=3, backoff_rate=2)
    finish.next(notify_success).next(sfn.Succeed(scope, "RunSucceeded"))

    # -- one session ----------------------------------------------------------------------------------------
    prepare = on_error(_invoke(scope, "PrepareSession", functions["prepare_session"],
                               {"run_id": run_id, "index": index, "try": attempt_try, "execution": execution},
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
    wait_job = sfn.Wait(scope, "WaitForJob", time=sfn.WaitTime.seconds_path("$.job.poll.seconds"))
    # The name is fixed per attempt: "already exists" means a retried call got through before.
    create.add_catch(wait_job, errors=[JOB_EXISTS_ERROR], result_path=sfn.JsonPath.DISCARD)
    create.add_catch(handle_failure, result_path="$.error")
    describe = on_error(tasks.CallAwsService(
        scope, "DescribeTrainingJob", service="sagemaker", action="describeTrainingJob",
        parameters={"TrainingJobName": sfn.JsonPath.string_at("$.job.job_name")},
        iam_resources=[job_arn_pattern],
        result_selector={"TrainingJobStatus": sfn.JsonPath.string_at("$.TrainingJobStatus"),
                         "SecondaryStatus": sfn.JsonPath.string_at("$.SecondaryStatus")},
        result_path="$.status"))
    describe.add_retry(errors=RETRYABLE_SAGEMAKER_ERRORS, interval=pacing.describe_interval,
                       max_attempts=pacing.describe_attempts, backoff_rate=pacing.backoff_rate)
    record = on_error(_invoke(scope, "RecordSession", functions["record_session"],
                              {"run_id": run_id, "index": index, "try": attempt_try,
                               "job_name": sfn.JsonPath.string_at("$.job.job_name")},
                              "$.cursor", "State, metrics, bundle handoff; decides what comes next"))
    # Not ended: release the previous pool once this job is past its start and did not take it, else pace
    # the next poll (double the wait, or set it to its cap; once there, no extra state per round).
    release_unused = on_error(_invoke(scope, "ReleaseUnusedPool", functions["release_unused_pool"],
                                      {"run_id": run_id,
                                       "job_name": sfn.JsonPath.string_at("$.job.previous_pool.job_name")},
                                      "$.job.previous_pool", "The previous pool idles while this job runs: end it"))
    release_unused.next(wait_job)
    poll = "$.job.poll"
    double_wait = sfn.Pass(scope, "DoubleWait", result_path=poll, parameters={
        "seconds": sfn.JsonPath.math_add(sfn.JsonPath.number_at(f"{poll}.seconds"),
                                         sfn.JsonPath.number_at(f"{poll}.seconds")),
        "max": sfn.JsonPath.number_at(f"{poll}.max"),
        "double_up_to": sfn.JsonPath.number_at(f"{poll}.double_up_to")})
    cap_wait = sfn.Pass(scope, "CapWait", result_path=poll, parameters={
        "seconds": sfn.JsonPath.number_at(f"{poll}.max"), "max": sfn.JsonPath.number_at(f"{poll}.max"),
        "double_up_to": sfn.JsonPath.number_at(f"{poll}.double_up_to")})
    double_wait.next(wait_job)
    cap_wait.next(wait_job)
    past_start = sfn.Condition.and_(
        sfn.Condition.string_equals("$.status.TrainingJobStatus", "InProgress"),
        sfn.Condition.boolean_equals("$.job.previous_pool.pending", True),
        sfn.Condition.not_(sfn.Condition.or_(*[sfn.Condition.string_equals("$.status.SecondaryStatus", s)
                                               for s in STARTING_SECONDARY])))
    job_ended = sfn.Choice(scope, "JobEnded?")
    job_ended.when(sfn.Condition.or_(*[sfn.Condition.string_equals("$.status.TrainingJobStatus", s)
                                       for s in JOB_ENDED]), record)
    job_ended.when(past_start, release_unused)
    job_ended.when(sfn.Condition.number_greater_than_equals_json_path(f"{poll}.seconds", f"{poll}.max"), wait_job)
    job_ended.when(sfn.Condition.number_greater_than_json_path(f"{poll}.seconds", f"{poll}.double_up_to"), cap_wait)
    job_ended.otherwise(double_wait)
    prepare.next(create).next(wait_job).next(describe).next(job_ended)

    # -- between sessions: one Choice decides what comes next, from the cursor ---------------------------------
    next_step = sfn.Choice(scope, "NextStep?", comment="After the start, a session or a pool check")
    wait_retry = sfn.Wait(scope, "WaitBeforeRetry", time=sfn.WaitTime.seconds_path("$.run.retry_wait_seconds"),
                          comment="Capacity shortage: a new attempt (new job name) after a pause")
    wait_retry.next(prepare)
    wait_pool = sfn.Wait(scope, "WaitForPool", time=sfn.WaitTime.seconds_path("$.run.pool_poll_seconds"))
    check_pool = on_error(_invoke(scope, "CheckPool", functions["check_pool"],
                                  {"run_id": run_id, "job_name": sfn.JsonPath.string_at("$.job.job_name"),
                                   "cursor": sfn.JsonPath.object_at("$.cursor")},
                                  "$.cursor", "Bounded wait for WarmPoolStatus=Available"))
    wait_pool.next(check_pool).next(next_step)
    next_step.when(sfn.Condition.string_equals("$.cursor.outcome", "failed"), handle_failure)
    next_step.when(sfn.Condition.string_equals("$.cursor.outcome", "retry"), wait_retry)
    next_step.when(sfn.Condition.boolean_equals("$.cursor.wait_for_pool", True), wait_pool)
    next_step.when(sfn.Condition.boolean_equals("$.cursor.done", True), finish)
    next_step.otherwise(prepare)
    record.next(next_step)

    # -- start ----------------------------------------------------------------------------------------------
    read_input = sfn.Pass(scope, "ReadInput", parameters={
        "input": sfn.JsonPath.entire_payload, "execution": execution, "execution_arn": execution_arn,
        "started_at": sfn.JsonPath.execution_start_time}, comment="Whatever the input, an object to catch into")
    start = on_error(_invoke(scope, "StartRun", functions["start_run"], {
        "input": sfn.JsonPath.object_at("$.input"), "execution": sfn.JsonPath.string_at("$.execution"),
        "execution_arn": sfn.JsonPath.string_at("$.execution_arn"),
        "started_at": sfn.JsonPath.string_at("$.started_at")},
        "$", "Validate the input, plan, create or resume the run in S3"))
    return read_input.next(start).next(next_step)
