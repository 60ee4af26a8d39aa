"""The Lambdas of the state machine, each with its own role holding only what its step calls."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from aws_cdk import Acknowledgment, Duration, RemovalPolicy, Stack, Validations
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from constructs import Construct

from rlpipe.cloud.naming import job_name_pattern
from rlpipe.cloud.environment import LambdaSettings
from rlpipe.cloud.pacing import Timing
from rlpipe.cloud.requests import StackSettings
from rlpipe.cloud.store import CHECKPOINTS_PREFIX, CONFIGS_PREFIX, EXECUTIONS_PREFIX, RUNS_PREFIX
from rlpipe.cloud.tokens import TOKENS_PREFIX
from stacks.orchestration.packaging import ARCHITECTURE, RUNTIME, handler_code, layer_code

LOG_RETENTION = logs.RetentionDays.THREE_MONTHS
# Topic.grant_publish grants these on an encrypted topic's key.
TOPIC_KEY_ACK = ("AwsSolutions-IAM5[Action::kms:GenerateDataKey*]",
                 "Publishing to the KMS-encrypted alert topic needs data keys of the topic's key; the grant is "
                 "scoped to that one key.")


@dataclass(frozen=True)
class FunctionSpec:
    """One Lambda: what it reads and writes, which SageMaker actions it calls, and its size."""

    description: str
    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    sagemaker: tuple[str, ...] = ()
    tokens: tuple[str, ...] = ()  # S3 actions on the waiting tasks' tokens (rlpipe.cloud.tokens)
    publishes: bool = False
    plots: bool = False
    timeout_seconds: int = 60
    memory_mb: int = 512


SPECS: dict[str, FunctionSpec] = {
    "start_run": FunctionSpec("Validates the execution input, plans the pipeline, creates or resumes the run",
                              read=(CONFIGS_PREFIX, RUNS_PREFIX, EXECUTIONS_PREFIX),
                              write=(RUNS_PREFIX, EXECUTIONS_PREFIX),
                              # Taking over a dead execution's run stops its job and releases its pools.
                              sagemaker=("DescribeTrainingJob", "UpdateTrainingJob", "StopTrainingJob"),
                              timeout_seconds=120),
    "prepare_session": FunctionSpec("Writes session.json and builds the CreateTrainingJob request",
                                    read=(RUNS_PREFIX,), write=(RUNS_PREFIX,)),
    "record_session": FunctionSpec("Records a finished training job and hands its bundle on",
                                   read=(RUNS_PREFIX, CHECKPOINTS_PREFIX), write=(RUNS_PREFIX,),
                                   sagemaker=("DescribeTrainingJob", "UpdateTrainingJob")),
    "check_pool": FunctionSpec("Polls the previous job's warm pool before the next session",
                               read=(RUNS_PREFIX,), write=(RUNS_PREFIX,),
                               sagemaker=("DescribeTrainingJob",), timeout_seconds=30, memory_mb=256),
    # Both also complete tasks (states:SendTask*, on "*": no resource-level permission): granted in Orchestration.
    "await_job": FunctionSpec("Stores the waiting task's token by job name; completes it if the job already ended",
                              sagemaker=("DescribeTrainingJob",), tokens=("PutObject", "DeleteObject"),
                              timeout_seconds=30, memory_mb=256),
    "job_events": FunctionSpec("Completes the task waiting for a job that ended (EventBridge); on a schedule, "
                               "reconciles stored tokens, heartbeats them, releases unused pools",
                               sagemaker=("DescribeTrainingJob", "UpdateTrainingJob"),
                               tokens=("GetObject", "DeleteObject", "ListBucket"), timeout_seconds=120,
                               memory_mb=256),
    "end_lineage": FunctionSpec("End of one lineage: stops its job if it failed, releases its warm pools, writes "
                                "its own report",
                                read=(RUNS_PREFIX, CHECKPOINTS_PREFIX), write=(RUNS_PREFIX,),
                                sagemaker=("DescribeTrainingJob", "UpdateTrainingJob", "StopTrainingJob"),
                                plots=True, timeout_seconds=300, memory_mb=1024),
    "finish_run": FunctionSpec("The run's status from its lineages'; when all succeeded, writes the report",
                               read=(RUNS_PREFIX, CHECKPOINTS_PREFIX, EXECUTIONS_PREFIX),
                               write=(RUNS_PREFIX, EXECUTIONS_PREFIX), plots=True,
                               timeout_seconds=300, memory_mb=1024),
    "fail_run": FunctionSpec("Failure path: stops the job, releases warm pools, writes the partial report, alerts",
                             read=(RUNS_PREFIX, CHECKPOINTS_PREFIX, EXECUTIONS_PREFIX),
                             write=(RUNS_PREFIX, EXECUTIONS_PREFIX),
                             sagemaker=("DescribeTrainingJob", "UpdateTrainingJob", "StopTrainingJob"),
                             publishes=True, plots=True, timeout_seconds=300, memory_mb=1024),
    "cleanup": FunctionSpec("After a FAILED, TIMED_OUT or ABORTED execution: stops the job, releases pools, "
                            "writes the partial report, alerts",
                            read=(RUNS_PREFIX, CHECKPOINTS_PREFIX, EXECUTIONS_PREFIX),
                            write=(RUNS_PREFIX, EXECUTIONS_PREFIX),
                            sagemaker=("DescribeTrainingJob", "UpdateTrainingJob", "StopTrainingJob"),
                            publishes=True, plots=True, timeout_seconds=300, memory_mb=1024),
}


def job_arn(stack: Stack, job_prefix: str) -> str:
    """ARN pattern of every training job this stack creates (``training-job/<prefix>-*``)."""
    return stack.format_arn(service="sagemaker", resource="training-job", resource_name=job_name_pattern(job_prefix))


class Functions(Construct):
    """Two dependency layers and one function per step.

    Attributes: ``functions`` (name -> Function), ``roles`` (name -> Role), ``layers``.
    """

    def __init__(self, scope: Construct, construct_id: str, *, bucket: s3.IBucket, training_role: iam.IRole,
                 image_uri: str, topic: sns.ITopic, job_prefix: str, default_pipeline_key: str,
                 subnet_ids: Sequence[str] = (), security_group_ids: Sequence[str] = (),
                 kms_key_arn: str | None = None, timing: Timing | None = None,
                 removal_policy: RemovalPolicy = RemovalPolicy.RETAIN) -> None:
        super().__init__(scope, construct_id)
        self.layers = {
            "core": lambda_.LayerVersion(self, "CoreLayer", code=layer_code("core"),
                                         compatible_runtimes=[RUNTIME], compatible_architectures=[ARCHITECTURE],
                                         description="pydantic, PyYAML, Powertools for the rlpipe core"),
            "report": lambda_.LayerVersion(self, "ReportLayer", code=layer_code("report"),
                                           compatible_runtimes=[RUNTIME], compatible_architectures=[ARCHITECTURE],
                                           description="matplotlib for the report's learning curve"),
        }
        stack = Stack.of(self)
        self._job_prefix = job_prefix
        self._job_arn = job_arn(stack, job_prefix)
        settings = LambdaSettings(
            StackSettings(bucket=bucket.bucket_name, role_arn=training_role.role_arn, image_uri=image_uri,
                          job_prefix=job_prefix, subnet_ids=tuple(subnet_ids),
                          security_group_ids=tuple(security_group_ids), kms_key_arn=kms_key_arn),
            timing=timing or Timing(), topic_arn=topic.topic_arn, default_pipeline_key=default_pipeline_key)
        self.functions: dict[str, lambda_.Function] = {}
        self.roles: dict[str, iam.Role] = {}
        for name, spec in SPECS.items():
            env = {"POWERTOOLS_SERVICE_NAME": "rlpipe", "POWERTOOLS_LOG_LEVEL": "INFO",
                   **settings.environment(job_settings=name == "prepare_session", topic=spec.publishes,
                                          default_pipeline=name == "start_run")}
            if spec.plots:
                env["MPLCONFIGDIR"] = "/tmp/matplotlib"  # the only writable place in a Lambda
            self._add(name, spec, env, bucket, topic, default_pipeline_key, removal_policy)

    def _add(self, name: str, spec: FunctionSpec, env: Mapping[str, str], bucket: s3.IBucket, topic: sns.ITopic,
             default_pipeline_key: str, removal_policy: RemovalPolicy) -> None:
        ident = "".join(part.capitalize() for part in name.split("_"))
        log_group = logs.LogGroup(self, f"{ident}Logs", retention=LOG_RETENTION, removal_policy=removal_policy)
        role = iam.Role(self, f"{ident}Role", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
                        description=f"rlpipe Lambda {name}")
        # Used by the Lambda runtime (logs) and, with tracing ACTIVE, X-Ray's grant below: no step calls them
        # (tests/test_aws_iam.py lists every granted action no step calls).
        role.add_to_policy(iam.PolicyStatement(actions=["logs:CreateLogStream", "logs:PutLogEvents"],
                                               resources=[f"{log_group.log_group_arn}"]))
        acks = [
            (f"AwsSolutions-IAM5[Resource::<{Stack.of(self).get_logical_id(log_group.node.default_child)}.Arn>:*]",
             "Log streams of this function's own log group (named per container at run time)."),
            ("AwsSolutions-IAM5[Resource::*]",
             "X-Ray PutTraceSegments/PutTelemetryRecords support no resource-level permissions."),
        ]
        acks += self._grant_bucket(role, bucket, spec, name, default_pipeline_key)
        acks += self._grant_tokens(role, bucket, spec)
        if spec.sagemaker:
            role.add_to_policy(iam.PolicyStatement(actions=[f"sagemaker:{a}" for a in spec.sagemaker],
                                                   resources=[self._job_arn]))
            acks.append((f"AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:sagemaker:<AWS::Region>:"
                         f"<AWS::AccountId>:training-job/{job_name_pattern(self._job_prefix)}]",
                         "Training jobs are created per session at run time; access is limited to this "
                         "stack's job-name prefix."))
        if spec.publishes:
            topic.grant_publish(role)
            acks.append(TOPIC_KEY_ACK)
        layers = [self.layers["core"]] + ([self.layers["report"]] if spec.plots else [])
        fn = lambda_.Function(
            self, ident,
            description=f"rlpipe: {spec.description}",
            runtime=RUNTIME,
            architecture=ARCHITECTURE,
            handler="handler.handler",
            code=handler_code(name),
            layers=layers,
            role=role,
            environment=dict(env),
            timeout=Duration.seconds(spec.timeout_seconds),
            memory_size=spec.memory_mb,
            log_group=log_group,
            tracing=lambda_.Tracing.ACTIVE,
        )
        Validations.of(role).acknowledge(*[Acknowledgment(id=i, reason=r) for i, r in acks])
        Validations.of(fn).acknowledge(Acknowledgment(
            id="AwsSolutions-L1",
            reason="Python 3.13 on purpose: the dependency layers are built and import-tested for it (tests run "
                   "the synthesized handlers under a local 3.13 interpreter); move with a tested build."))
        self.functions[name] = fn
        self.roles[name] = role

    def _grant_tokens(self, role: iam.Role, bucket: s3.IBucket, spec: FunctionSpec) -> list[tuple[str, str]]:
        """The spec's actions on ``tokens/`` objects only (ListBucket limited to that prefix)."""
        if not spec.tokens:
            return []
        objects = [a for a in spec.tokens if a != "ListBucket"]
        role.add_to_policy(iam.PolicyStatement(actions=[f"s3:{a}" for a in objects],
                                               resources=[bucket.arn_for_objects(f"{TOKENS_PREFIX}*")]))
        if "ListBucket" in spec.tokens:
            role.add_to_policy(iam.PolicyStatement(actions=["s3:ListBucket"], resources=[bucket.bucket_arn],
                                                   conditions={"StringLike": {"s3:prefix": [f"{TOKENS_PREFIX}*"]}}))
        if bucket.encryption_key is not None:
            bucket.encryption_key.grant(role, *(["kms:Decrypt"] if "GetObject" in objects else []),
                                        *(["kms:GenerateDataKey"] if "PutObject" in objects else []))
        bucket_id = Stack.of(self).get_logical_id(bucket.node.default_child) if bucket.node.default_child else None
        return [(f"AwsSolutions-IAM5[Resource::<{bucket_id}.Arn>/{TOKENS_PREFIX}*]",
                 "Task tokens are stored per training job at run time; access stays within the tokens/ prefix "
                 "of the pipeline bucket.")]

    def _grant_bucket(self, role: iam.Role, bucket: s3.IBucket, spec: FunctionSpec, name: str,
                      default_pipeline_key: str) -> list[tuple[str, str]]:
        """GetObject/PutObject on the spec's prefixes, ListBucket limited to them (so a missing key reads as
        404, not 403), and the bucket key's data-key calls when the bucket uses a customer-managed key."""
        acks: list[tuple[str, str]] = []
        read, write = list(spec.read), list(spec.write)
        if not read and not write:
            return acks
        objects = [bucket.arn_for_objects(f"{p}*") for p in read]
        if name == "start_run" and not default_pipeline_key.startswith(CONFIGS_PREFIX):
            objects.append(bucket.arn_for_objects(default_pipeline_key))
        role.add_to_policy(iam.PolicyStatement(actions=["s3:GetObject"], resources=objects))
        if write:
            role.add_to_policy(iam.PolicyStatement(actions=["s3:PutObject"],
                                                   resources=[bucket.arn_for_objects(f"{p}*") for p in write]))
        role.add_to_policy(iam.PolicyStatement(
            actions=["s3:ListBucket"], resources=[bucket.bucket_arn],
            conditions={"StringLike": {"s3:prefix": [f"{p}*" for p in sorted(set(read + write))]}}))
        if bucket.encryption_key is not None:
            bucket.encryption_key.grant(role, "kms:Decrypt", *(["kms:GenerateDataKey"] if write else []))
        bucket_id = Stack.of(self).get_logical_id(bucket.node.default_child) if bucket.node.default_child else None
        for prefix in sorted(set(read + write)):
            acks.append((f"AwsSolutions-IAM5[Resource::<{bucket_id}.Arn>/{prefix}*]",
                         f"Per-run objects under {prefix} are created at run time; access stays within that "
                         "prefix of the pipeline bucket."))
        return acks

