"""The training image and the SageMaker execution role that runs it.

How the image reaches ECR: ``cdk deploy`` builds ``training_image/Dockerfile`` (linux/amd64) and pushes it to
the CDK bootstrap repository, as every ``DockerImageAsset`` does. That repository is shared by all stacks of
the account and region, has no scan-on-push and keeps every tag it ever received, so the stack also owns a
dedicated ECR repository (scan on push, lifecycle rule) and copies the image into it at deploy with
``cdk-ecr-deployment`` (a prebuilt Lambda shipped inside the package: nothing is built at synth, no Docker is
needed to synth). The tag is the asset's content hash, so a changed image gets a new tag and the copy reruns;
an unchanged image copies nothing. SageMaker pulls from the dedicated repository only.
"""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Acknowledgment, ArnFormat, RemovalPolicy, Stack, Validations
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from cdk_ecr_deployment import DockerImageName, ECRDeployment
from constructs import Construct

from rlpipe.cloud.naming import job_name_pattern
from rlpipe.cloud.store import TRAINING_JOB_ACCESS
from stacks.settings import REPO_ROOT, ImageBase

DOCKERFILE = "training_image/Dockerfile"
# Build arguments per base. PyPI's default torch wheel bundles CUDA (several GB); the CPU image takes torch from
# PyTorch's CPU index instead. The CUDA image keeps PyPI's wheel, which brings its own CUDA runtime libraries,
# and adds JAX's CUDA 12 plugin for sessions on the sbx backend.
BUILD_ARGS: dict[str, dict[str, str]] = {
    "cpu": {"BASE": "python:3.11-slim", "TORCH_INDEX_URL": "https://download.pytorch.org/whl/cpu"},
    "cuda": {"BASE": "nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04", "TORCH_INDEX_URL": "https://pypi.org/simple",
             "JAX_CUDA": "cuda12"},
}
KEEP_IMAGES = 10  # older images are expired by the repository's lifecycle rule
COPY_LOG_RETENTION_DAYS = 90
TRAINING_LOG_GROUP = "/aws/sagemaker/TrainingJobs"
TRAINING_METRICS_NAMESPACE = "/aws/sagemaker/TrainingJobs"


class TrainingImage(Construct):
    """The training image (built at deploy, copied into its own ECR repository) and the SageMaker role.

    Attributes: ``asset`` (the build), ``repository`` (where SageMaker pulls from), ``image_uri`` (use it in
    CreateTrainingJob), ``deployment`` (the copy; depend on it before starting jobs), ``role`` (the SageMaker
    execution role: pass it as RoleArn; it is the same for every job, as warm-pool reuse requires).
    """

    def __init__(self, scope: Construct, construct_id: str, *, bucket: s3.IBucket, job_prefix: str,
                 base: ImageBase = "cpu", removal_policy: RemovalPolicy = RemovalPolicy.RETAIN,
                 vpc_subnet_ids: Sequence[str] = (), vpc_security_group_ids: Sequence[str] = ()) -> None:
        super().__init__(scope, construct_id)
        destroy = removal_policy == RemovalPolicy.DESTROY

        self.asset = ecr_assets.DockerImageAsset(
            self, "Asset",
            directory=str(REPO_ROOT),  # the image installs rlpipe from this repository
            file=DOCKERFILE,
            platform=ecr_assets.Platform.LINUX_AMD64,  # SageMaker training runs amd64 images only
            build_args=BUILD_ARGS[base],
            display_name="rlpipe training image",
        )

        self.repository = ecr.Repository(
            self, "Repository",
            image_scan_on_push=True,
            encryption=ecr.RepositoryEncryption.AES_256,
            lifecycle_rules=[ecr.LifecycleRule(description=f"keep the {KEEP_IMAGES} newest images",
                                               max_image_count=KEEP_IMAGES)],
            removal_policy=removal_policy,
            empty_on_delete=destroy,
        )
        self.image_tag = self.asset.image_tag
        self.image_uri = self.repository.repository_uri_for_tag(self.image_tag)
        self.deployment = self._copy_image(removal_policy)
        self.role = self._execution_role(bucket, job_prefix, vpc_subnet_ids, vpc_security_group_ids)

    def _copy_image(self, removal_policy: RemovalPolicy) -> ECRDeployment:
        """Copy the built image from the bootstrap repository into ``repository`` at deploy."""
        role = iam.Role(self, "CopyRole", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
                        description="Copies the rlpipe training image into its ECR repository at deploy")
        # The construct would add ecr:* and s3:GetObject on every resource to its handler role: hand it a view
        # of the role that ignores additions, and grant exactly what the copy needs below.
        deployment = ECRDeployment(
            self, "Copy",
            src=DockerImageName(self.asset.image_uri),
            dest=DockerImageName(self.image_uri),
            role=role.without_policy_updates(),
        )
        pull = ["ecr:BatchCheckLayerAvailability", "ecr:GetDownloadUrlForLayer", "ecr:BatchGetImage"]
        push = ["ecr:InitiateLayerUpload", "ecr:UploadLayerPart", "ecr:CompleteLayerUpload", "ecr:PutImage"]
        statements = [
            iam.PolicyStatement(actions=["ecr:GetAuthorizationToken"], resources=["*"]),
            iam.PolicyStatement(actions=pull, resources=[self.asset.repository.repository_arn]),
            iam.PolicyStatement(actions=pull + push, resources=[self.repository.repository_arn]),
        ]
        handler = deployment.node.find_child("CustomResourceHandler")
        log_group: logs.LogGroup = handler.log_group  # type: ignore[attr-defined]
        log_group.node.default_child.retention_in_days = COPY_LOG_RETENTION_DAYS  # type: ignore[union-attr]
        log_group.apply_removal_policy(removal_policy)
        statements.append(iam.PolicyStatement(actions=["logs:CreateLogStream", "logs:PutLogEvents"],
                                              resources=[log_group.log_group_arn]))
        policy = iam.Policy(self, "CopyPolicy", statements=statements, roles=[role])
        # The copy runs once the policy is attached (the function itself only depends on the role).
        deployment.node.find_child("CustomResource").node.add_dependency(policy)
        Validations.of(policy).acknowledge(Acknowledgment(
            id="AwsSolutions-IAM5[Resource::*]",
            reason="ecr:GetAuthorizationToken supports no resource-level permissions; every other ECR action "
                   "is scoped to the two repositories.",
        ))
        return deployment

    def _execution_role(self, bucket: s3.IBucket, job_prefix: str, subnet_ids: Sequence[str],
                        security_group_ids: Sequence[str]) -> iam.Role:
        """The role SageMaker assumes for every training job: the bucket prefixes, the image, logs, metrics."""
        role = iam.Role(self, "ExecutionRole", assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"),
                        description="SageMaker execution role of the rlpipe training jobs")
        stack = Stack.of(self)
        # Exactly the keys a job touches, from the bucket layout (rlpipe.cloud.store): nothing of the run's
        # state, plan or reports, nothing under configs/.
        access = TRAINING_JOB_ACCESS
        role.add_to_policy(iam.PolicyStatement(
            sid="ReadInputs",  # config and previous channels; checkpoints are copied in at job start
            actions=["s3:GetObject"],
            resources=[bucket.arn_for_objects(p) for p in access.read]))
        role.add_to_policy(iam.PolicyStatement(
            sid="WriteOutputs",  # model.tar.gz, TensorBoard output, checkpoint uploads (multipart)
            actions=["s3:PutObject", "s3:AbortMultipartUpload"],
            resources=[bucket.arn_for_objects(p) for p in access.write]))
        role.add_to_policy(iam.PolicyStatement(
            sid="RotateCheckpoints",  # the trainer keeps the newest N checkpoints
            actions=["s3:DeleteObject"],
            resources=[bucket.arn_for_objects(p) for p in access.delete]))
        role.add_to_policy(iam.PolicyStatement(
            sid="ListOwnPrefixes",
            actions=["s3:ListBucket"],
            resources=[bucket.bucket_arn],
            conditions={"StringLike": {"s3:prefix": list(access.list)}}))
        role.add_to_policy(iam.PolicyStatement(
            sid="LocateBucket", actions=["s3:GetBucketLocation"], resources=[bucket.bucket_arn]))
        if bucket.encryption_key is not None:
            bucket.encryption_key.grant_encrypt_decrypt(role)
            _grant_volume_encryption(bucket.encryption_key, role)

        self.repository.grant_pull(role)

        group_arn = stack.format_arn(service="logs", resource="log-group", resource_name=TRAINING_LOG_GROUP,
                                     arn_format=ArnFormat.COLON_RESOURCE_NAME)
        role.add_to_policy(iam.PolicyStatement(
            sid="TrainingLogGroup", actions=["logs:CreateLogGroup", "logs:DescribeLogStreams"],
            resources=[group_arn, f"{group_arn}:*"]))
        role.add_to_policy(iam.PolicyStatement(
            sid="TrainingLogStreams",  # streams are named <job name>/algo-<n>-<time>
            actions=["logs:CreateLogStream", "logs:PutLogEvents"],
            resources=[f"{group_arn}:log-stream:{job_name_pattern(job_prefix)}"]))
        role.add_to_policy(iam.PolicyStatement(
            sid="TrainingMetrics",  # MetricDefinitions and instance metrics
            actions=["cloudwatch:PutMetricData"], resources=["*"],
            conditions={"StringEquals": {"cloudwatch:namespace": TRAINING_METRICS_NAMESPACE}}))

        acks = [
            ("AwsSolutions-IAM5[Resource::*]",
             "ecr:GetAuthorizationToken, cloudwatch:PutMetricData and the EC2 Describe* calls (VPC mode only) "
             "support no resource-level permissions; PutMetricData is limited to SageMaker's training "
             "namespace by condition."),
            (f"AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:logs:<AWS::Region>:<AWS::AccountId>:log-group:"
             f"{TRAINING_LOG_GROUP}:*]",
             "SageMaker writes every training job's logs into this one log group; the wildcard covers its "
             "streams, which are created per job at run time."),
            (f"AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:logs:<AWS::Region>:<AWS::AccountId>:log-group:"
             f"{TRAINING_LOG_GROUP}:log-stream:{job_name_pattern(job_prefix)}]",
             "Log streams are named after training jobs created at run time; limited to this stack's job "
             "name prefix."),
        ]
        bucket_id = stack.get_logical_id(bucket.node.default_child) if bucket.node.default_child else None
        for pattern in sorted(set(access.read + access.write + access.delete)):
            verbs = [v for v, keys in (("read", access.read), ("write", access.write), ("delete", access.delete))
                     if pattern in keys]
            acks.append((f"AwsSolutions-IAM5[Resource::<{bucket_id}.Arn>/{pattern}]",
                         f"Training jobs {' and '.join(verbs)} objects {pattern} (run ids, sessions and job names "
                         "are known only at run time); nothing else of the pipeline bucket."))
        if bucket.encryption_key is not None:
            acks += [("AwsSolutions-IAM5[Action::kms:GenerateDataKey*]",
                      "Encrypting objects in the customer-managed-key bucket; scoped to that one key."),
                     ("AwsSolutions-IAM5[Action::kms:ReEncrypt*]",
                      "Part of the standard encrypt/decrypt grant on the bucket's key; scoped to that one key.")]

        if subnet_ids:
            acks += _grant_vpc_access(role, subnet_ids, security_group_ids)

        Validations.of(role).acknowledge(*[Acknowledgment(id=i, reason=r) for i, r in acks])
        return role


def _grant_volume_encryption(key: kms.IKey, role: iam.IRole) -> None:
    """Let SageMaker encrypt the training volume with the bucket's key (VolumeKmsKeyId)."""
    role.add_to_principal_policy(iam.PolicyStatement(
        sid="VolumeKeyGrants", actions=["kms:CreateGrant"], resources=[key.key_arn],
        conditions={"Bool": {"kms:GrantIsForAWSResource": "true"}}))


def _grant_vpc_access(role: iam.Role, subnet_ids: Sequence[str],
                      security_group_ids: Sequence[str]) -> list[tuple[str, str]]:
    """Network interfaces for training jobs in the customer's VPC (SageMaker creates them with this role)."""
    stack = Stack.of(role)

    def ec2_arn(resource: str, name: str) -> str:
        return stack.format_arn(service="ec2", resource=resource, resource_name=name)

    interfaces = ec2_arn("network-interface", "*")
    role.add_to_policy(iam.PolicyStatement(
        sid="DescribeNetwork",
        actions=["ec2:DescribeNetworkInterfaces", "ec2:DescribeVpcs", "ec2:DescribeDhcpOptions",
                 "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups"],
        resources=["*"]))
    role.add_to_policy(iam.PolicyStatement(
        sid="CreateInterfaces",
        actions=["ec2:CreateNetworkInterface"],
        resources=[interfaces] + [ec2_arn("subnet", s) for s in subnet_ids]
        + [ec2_arn("security-group", g) for g in security_group_ids]))
    role.add_to_policy(iam.PolicyStatement(
        sid="ManageInterfaces",
        actions=["ec2:CreateNetworkInterfacePermission", "ec2:DeleteNetworkInterface",
                 "ec2:DeleteNetworkInterfacePermission"],
        resources=[interfaces]))
    return [
        ("AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:ec2:<AWS::Region>:<AWS::AccountId>:network-interface/*]",
         "SageMaker creates and deletes the training jobs' network interfaces at run time; their ids are not "
         "known in advance. Creation is limited to the configured subnets and security groups."),
    ]
