"""Orchestration: the Lambdas, the Step Functions state machine that runs a pipeline, the EventBridge rules
that end a job's wait (job-state events, a reconciliation schedule) and the rule that cleans up after
executions that end abnormally.

The stack passes in the bucket, the SageMaker role, the image and the topic; this construct grants itself
what it needs on them (and nothing on ``*`` where a scope exists).
"""

from __future__ import annotations

from aws_cdk import Acknowledgment, ArnFormat, Duration, Fn, Stack, Validations
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from rlpipe.cloud.naming import job_name_pattern
from rlpipe.cloud.pacing import Timing
from rlpipe.cloud.steps import JOB_ENDED
from rlpipe.cloud.steps.job_events import JOB_STATE_CHANGE
from stacks.orchestration.functions import LOG_RETENTION, TOPIC_KEY_ACK, Functions, job_arn
from stacks.orchestration.state_machine import RetryPacing, build_definition
from stacks.settings import AppSettings

ENDED_ABNORMALLY = ["FAILED", "TIMED_OUT", "ABORTED"]
# Cleanup events EventBridge could not deliver are kept this long in the dead-letter queue.
DLQ_RETENTION = Duration.days(14)


class Orchestration(Construct):
    """Runs pipelines: Standard state machine (JSONPath, all events logged, X-Ray) over nine Lambdas.

    Attributes: ``state_machine``, ``functions`` (name -> Function), ``log_group``, ``cleanup_rule``,
    ``job_ended_rule`` (a job of this stack reached a terminal status), ``reconcile_rule`` (the schedule of the
    slow reconciliation), ``cleanup_dlq`` (events of these rules EventBridge could not deliver) and
    ``cleanup_dlq_alarm`` (alerts on them).
    ``timing`` and ``pacing`` exist for tests and impatient users; the defaults suit real jobs.
    """

    def __init__(self, scope: Construct, construct_id: str, *, bucket: s3.IBucket, training_role: iam.IRole,
                 image_uri: str, topic: sns.ITopic, settings: AppSettings, default_pipeline_key: str,
                 timing: Timing | None = None, pacing: RetryPacing | None = None) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        job_prefix = settings.job_prefix
        removal_policy = settings.cdk_removal_policy
        jobs_arn = job_arn(stack, job_prefix)
        pacing = pacing or RetryPacing()

        self._functions = Functions(
            self, "Functions", bucket=bucket, training_role=training_role, image_uri=image_uri, topic=topic,
            job_prefix=job_prefix, default_pipeline_key=default_pipeline_key,
            subnet_ids=settings.vpc_subnet_ids, security_group_ids=settings.vpc_security_group_ids,
            kms_key_arn=settings.kms_key_arn, timing=timing, removal_policy=removal_policy)
        self.functions: dict[str, lambda_.Function] = self._functions.functions

        definition = build_definition(self, functions=dict(self.functions), topic=topic, job_arn_pattern=jobs_arn,
                                      training_role=training_role, vpc=settings.uses_vpc,
                                      pacing=pacing)
        self.log_group = logs.LogGroup(
            self, "ExecutionLogs", retention=LOG_RETENTION, removal_policy=removal_policy,
            # The vendedlogs prefix keeps CloudWatch Logs' resource policy from growing with each log group; the
            # stack id's UUID lets a retained group from a destroyed stack not block the next deploy.
            log_group_name=Fn.join("", [f"/aws/vendedlogs/states/{stack.stack_name}-runs-",
                                        Fn.select(2, Fn.split("/", stack.stack_id))]))
        self.state_machine = sfn.StateMachine(
            self, "StateMachine",
            comment="rlpipe: one SageMaker training job per session, warm pools between sessions",
            definition_body=sfn.DefinitionBody.from_chainable(definition),
            state_machine_type=sfn.StateMachineType.STANDARD,
            query_language=sfn.QueryLanguage.JSON_PATH,
            # These two grant the role CloudWatch Logs delivery and X-Ray actions on "*": Step Functions itself
            # uses them, no state calls them (tests/test_aws_iam.py).
            logs=sfn.LogOptions(destination=self.log_group, level=sfn.LogLevel.ALL, include_execution_data=True),
            tracing_enabled=True,
            removal_policy=removal_policy,
        )
        topic.grant_publish(self.state_machine)

        self._grant_describe_own_executions(stack)
        self._grant_task_response()

        cleanup = self.functions["cleanup"]
        self.cleanup_dlq = sqs.Queue(self, "CleanupDeadLetters", encryption=sqs.QueueEncryption.SQS_MANAGED,
                                     enforce_ssl=True, retention_period=DLQ_RETENTION,
                                     removal_policy=removal_policy)
        Validations.of(self.cleanup_dlq).acknowledge(Acknowledgment(
            id="AwsSolutions-SQS3",
            reason="This queue is itself the dead-letter queue of the cleanup rule's target (EventBridge target "
                   "DLQs are not SQS redrive policies, which cdk-nag cannot see)."))
        self.cleanup_rule = events.Rule(
            self, "ExecutionEndedAbnormally",
            description="rlpipe: stop the job, release warm pools and alert after a failed or aborted execution",
            event_pattern=events.EventPattern(
                source=["aws.states"], detail_type=["Step Functions Execution Status Change"],
                detail={"status": ENDED_ABNORMALLY, "stateMachineArn": [self.state_machine.state_machine_arn]}),
            targets=[targets.LambdaFunction(cleanup, retry_attempts=8, max_event_age=Duration.hours(6),
                                            dead_letter_queue=self.cleanup_dlq)],
        )
        job_events = self.functions["job_events"]
        # Only this stack's jobs (prefix and hyphen, as job_name_pattern) and only their ends: the function runs
        # once per job, not per status change. Duplicates are expected (SageMaker may send several per change).
        self.job_ended_rule = events.Rule(
            self, "TrainingJobEnded",
            description="rlpipe: a training job of this stack ended; complete the task waiting for it",
            event_pattern=events.EventPattern(
                source=["aws.sagemaker"], detail_type=[JOB_STATE_CHANGE],
                detail={"TrainingJobName": events.Match.prefix(f"{job_prefix}-"),
                        "TrainingJobStatus": list(JOB_ENDED)}),
            targets=[targets.LambdaFunction(job_events, retry_attempts=8, max_event_age=Duration.hours(6),
                                            dead_letter_queue=self.cleanup_dlq)],
        )
        # A lost event must not leave an execution waiting: describe the jobs of stored tokens now and then.
        self.reconcile_rule = events.Rule(
            self, "ReconcileWaitingJobs",
            description="rlpipe: complete tasks whose job ended without a delivered event; heartbeat the others",
            schedule=events.Schedule.rate(pacing.reconcile_every),
            targets=[targets.LambdaFunction(job_events, retry_attempts=2, max_event_age=pacing.reconcile_every)],
        )
        # An undelivered cleanup or job-end event means a job may still run, a pool idle or a run wait until
        # reconciliation: tell the team.
        self.cleanup_dlq_alarm = cloudwatch.Alarm(
            self, "CleanupUndelivered",
            alarm_description="rlpipe: a cleanup or job-end event could not be delivered; a training job may still "
                              "run or a warm pool idle. See the dead-letter queue and stop them by hand.",
            metric=self.cleanup_dlq.metric_approximate_number_of_messages_visible(period=Duration.minutes(5)),
            threshold=1, evaluation_periods=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING)
        self.cleanup_dlq_alarm.add_alarm_action(cw_actions.SnsAction(topic))
        self._acknowledge(stack, job_prefix)

    def _grant_describe_own_executions(self, stack: Stack) -> None:
        """StartRun asks whether the execution that last drove a run still runs (taking over a dead one).

        A policy of its own, attached after the state machine exists: the function cannot depend on the
        machine (the machine depends on the function).
        """
        executions = stack.format_arn(service="states", resource="execution",
                                      resource_name=f"{self.state_machine.state_machine_name}:*",
                                      arn_format=ArnFormat.COLON_RESOURCE_NAME)
        policy = iam.Policy(self, "StartRunDescribeExecutions", roles=[self._functions.roles["start_run"]],
                            statements=[iam.PolicyStatement(actions=["states:DescribeExecution"],
                                                            resources=[executions])])
        Validations.of(policy).acknowledge(Acknowledgment(
            id=f"AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:states:<AWS::Region>:<AWS::AccountId>:"
               f"execution:<{stack.get_logical_id(self.state_machine.node.default_child)}.Name>:*]",
            reason="Executions are named at start time; DescribeExecution is limited to this state machine's own "
                   "executions."))

    def _grant_task_response(self) -> None:
        """AwaitJobEnd (the race) completes the waiting task; JobEvents completes and heartbeats it.

        On "*": SendTaskSuccess/Failure/Heartbeat support no resource-level permission (the Service
        Authorization Reference for Step Functions lists no resource type for them; the task token alone
        names the task), so a grant on the state machine's ARN would never match and AWS would deny the call.
        SendTaskFailure: a job found missing fails the wait (TrainingJobMissing) at once; AwaitJobEnd keeps it
        for the same rule although its job was created just before (tests/test_aws_iam.py lists it as such).
        """
        policy = iam.Policy(self, "CompleteWaitingTasks", statements=[
            iam.PolicyStatement(actions=["states:SendTaskSuccess", "states:SendTaskFailure"],
                                resources=["*"])])
        policy.attach_to_role(self._functions.roles["await_job"])
        policy.attach_to_role(self._functions.roles["job_events"])
        heartbeats = iam.Policy(self, "HeartbeatWaitingTasks", roles=[self._functions.roles["job_events"]],
                                statements=[iam.PolicyStatement(actions=["states:SendTaskHeartbeat"],
                                                                resources=["*"])])
        for p in (policy, heartbeats):
            Validations.of(p).acknowledge(Acknowledgment(
                id="AwsSolutions-IAM5[Resource::*]",
                reason="Step Functions' SendTaskSuccess, SendTaskFailure and SendTaskHeartbeat support no "
                       "resource-level permissions (Service Authorization Reference): the task token names the "
                       "task. Granted only to the two functions that complete this machine's waiting tasks."))

    def _acknowledge(self, stack: Stack, job_prefix: str) -> None:
        role = self.state_machine.role
        fn_ids = [stack.get_logical_id(fn.node.default_child) for fn in self.functions.values()]
        acks = [
            Acknowledgment(id="AwsSolutions-IAM5[Resource::*]",
                           reason="CloudWatch Logs delivery and X-Ray tracing actions of Step Functions support "
                                  "no resource-level permissions."),
            Acknowledgment(id=f"AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:sagemaker:<AWS::Region>:"
                              f"<AWS::AccountId>:training-job/{job_name_pattern(job_prefix)}]",
                           reason="Training jobs are created per session at run time; every SageMaker action is "
                                  "limited to this stack's job-name prefix."),
            Acknowledgment(id=TOPIC_KEY_ACK[0], reason=TOPIC_KEY_ACK[1]),
        ]
        acks += [Acknowledgment(id=f"AwsSolutions-IAM5[Resource::<{i}.Arn>:*]",
                                reason="Invoking versions of the state machine's own functions (added by "
                                       "LambdaInvoke's grant).") for i in fn_ids]
        Validations.of(role).acknowledge(*acks)
