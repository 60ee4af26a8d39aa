"""Orchestration: the Lambdas, the Step Functions state machine that runs a pipeline, and the EventBridge
rule that cleans up after executions that end abnormally.

The stack passes in the bucket, the SageMaker role, the image and the topic; this construct grants itself
what it needs on them (and nothing on ``*`` where a scope exists).
"""

from __future__ import annotations

from aws_cdk import Acknowledgment, Duration, Fn, Stack, Validations
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from rlpipe.cloud.steps import Timing
from stacks.orchestration.functions import LOG_RETENTION, TOPIC_KEY_ACK, Functions
from stacks.orchestration.state_machine import RetryPacing, build_definition
from stacks.settings import AppSettings

ENDED_ABNORMALLY = ["FAILED", "TIMED_OUT", "ABORTED"]


class Orchestration(Construct):
    """Runs pipelines: Standard state machine (JSONPath, all events logged, X-Ray) over seven Lambdas.

    Attributes: ``state_machine``, ``functions`` (name -> Function), ``log_group``, ``cleanup_rule``.
    ``timing`` and ``pacing`` exist for tests and impatient users; the defaults suit real jobs.
    """

    def __init__(self, scope: Construct, construct_id: str, *, bucket: s3.IBucket, training_role: iam.IRole,
                 image_uri: str, topic: sns.ITopic, settings: AppSettings, default_pipeline_key: str,
                 timing: Timing | None = None, pacing: RetryPacing | None = None) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        job_prefix = settings.job_prefix
        removal_policy = settings.cdk_removal_policy
        job_arn = stack.format_arn(service="sagemaker", resource="training-job", resource_name=f"{job_prefix}*")

        self._functions = Functions(
            self, "Functions", bucket=bucket, training_role=training_role, image_uri=image_uri, topic=topic,
            job_prefix=job_prefix, default_pipeline_key=default_pipeline_key,
            subnet_ids=settings.vpc_subnet_ids, security_group_ids=settings.vpc_security_group_ids,
            kms_key_arn=settings.kms_key_arn, timing=timing, removal_policy=removal_policy)
        self.functions: dict[str, lambda_.Function] = self._functions.functions

        definition = build_definition(self, functions=dict(self.functions), topic=topic, job_arn_pattern=job_arn,
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
            logs=sfn.LogOptions(destination=self.log_group, level=sfn.LogLevel.ALL, include_execution_data=True),
            tracing_enabled=True,
            removal_policy=removal_policy,
        )
        topic.grant_publish(self.state_machine)

        cleanup = self.functions["cleanup"]
        self.cleanup_rule = events.Rule(
            self, "ExecutionEndedAbnormally",
            description="rlpipe: stop the job, release warm pools and alert after a failed or aborted execution",
            event_pattern=events.EventPattern(
                source=["aws.states"], detail_type=["Step Functions Execution Status Change"],
                detail={"status": ENDED_ABNORMALLY, "stateMachineArn": [self.state_machine.state_machine_arn]}),
            targets=[targets.LambdaFunction(cleanup, retry_attempts=8, max_event_age=Duration.hours(6))],
        )
        self._acknowledge(stack, job_prefix)

    def _acknowledge(self, stack: Stack, job_prefix: str) -> None:
        role = self.state_machine.role
        fn_ids = [stack.get_logical_id(fn.node.default_child) for fn in self.functions.values()]
        acks = [
            Acknowledgment(id="AwsSolutions-IAM5[Resource::*]",
                           reason="CloudWatch Logs delivery and X-Ray tracing actions of Step Functions support "
                                  "no resource-level permissions."),
            Acknowledgment(id=f"AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:sagemaker:<AWS::Region>:"
                              f"<AWS::AccountId>:training-job/{job_prefix}*]",
                           reason="Training jobs are created per session at run time; every SageMaker action is "
                                  "limited to this stack's job-name prefix."),
            Acknowledgment(id=TOPIC_KEY_ACK[0], reason=TOPIC_KEY_ACK[1]),
        ]
        acks += [Acknowledgment(id=f"AwsSolutions-IAM5[Resource::<{i}.Arn>:*]",
                                reason="Invoking versions of the state machine's own functions (added by "
                                       "LambdaInvoke's grant).") for i in fn_ids]
        Validations.of(role).acknowledge(*acks)
