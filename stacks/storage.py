"""Storage: the pipeline bucket (configs, runs, checkpoints, reports), its access-log bucket, and the default
pipeline written into the bucket at deploy time.

Bucket layout (defined in ``rlpipe.cloud.store``; every other construct scopes its permissions to it):
    configs/<...>                 pipelines uploaded by ``rlpipe start``; ``configs/default/pipeline.json`` is
                                  written by this stack at deploy (input ``{}`` runs it)
    runs/<run_id>/...             state documents, resolved session configs, job output, reports
    checkpoints/<run_id>/<...>    SageMaker CheckpointConfig prefixes, one per session
"""

from __future__ import annotations

import json
from pathlib import Path

from aws_cdk import Acknowledgment, Duration, RemovalPolicy, Validations
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import custom_resources as cr
from constructs import Construct

from rlpipe.cloud.store import CHECKPOINTS_PREFIX, CONFIGS_PREFIX, DEFAULT_PIPELINE_KEY, RUNS_PREFIX
from rlpipe.config import load_pipeline

__all__ = ["CHECKPOINTS_PREFIX", "CONFIGS_PREFIX", "DEFAULT_PIPELINE_KEY", "RUNS_PREFIX", "Storage"]

# Checkpoints are rewritten many times per session, and every rewrite leaves a noncurrent version behind.
NONCURRENT_CHECKPOINT_DAYS = 3
# A session's checkpoints only matter for resuming it (a new execution with {"resume_run_id": ...}); the
# handoff bundle that the next session needs lives under runs/.
CHECKPOINT_RETENTION_DAYS = 90
NONCURRENT_VERSION_DAYS = 30
ACCESS_LOG_RETENTION_DAYS = 365


class Storage(Construct):
    """The pipeline bucket with its access-log bucket, and the default pipeline uploaded at deploy.

    Attributes: ``bucket``, ``log_bucket``, ``default_pipeline_key`` (an object key in ``bucket``).
    """

    def __init__(self, scope: Construct, construct_id: str, *, default_pipeline: Path,
                 removal_policy: RemovalPolicy = RemovalPolicy.RETAIN, encryption_key: kms.IKey | None = None,
                 checkpoint_retention: Duration = Duration.days(CHECKPOINT_RETENTION_DAYS)) -> None:
        super().__init__(scope, construct_id)
        # Validated at synth, before anything else: a broken default fails `cdk synth`, not the first execution.
        pipeline_body = json.dumps(load_pipeline(default_pipeline).resolved(), indent=2, sort_keys=True) + "\n"
        destroy = removal_policy == RemovalPolicy.DESTROY

        # S3 server access logs can only be delivered to a bucket with S3-managed encryption.
        self.log_bucket = s3.Bucket(
            self, "AccessLogs",
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            enforce_ssl=True,
            minimum_tls_version=1.2,
            lifecycle_rules=[s3.LifecycleRule(id="expire-access-logs",
                                              expiration=Duration.days(ACCESS_LOG_RETENTION_DAYS),
                                              abort_incomplete_multipart_upload_after=Duration.days(1))],
            removal_policy=removal_policy,
            auto_delete_objects=destroy,
        )
        Validations.of(self.log_bucket).acknowledge(Acknowledgment(
            id="AwsSolutions-S1",
            reason="This is the access-log bucket of the pipeline bucket; logging it into itself would loop.",
        ))

        self.bucket = s3.Bucket(
            self, "Bucket",
            encryption=s3.BucketEncryption.KMS if encryption_key else s3.BucketEncryption.S3_MANAGED,
            encryption_key=encryption_key,
            bucket_key_enabled=encryption_key is not None,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            enforce_ssl=True,
            minimum_tls_version=1.2,
            versioned=True,
            server_access_logs_bucket=self.log_bucket,
            server_access_logs_prefix="pipeline-bucket/",
            lifecycle_rules=[
                s3.LifecycleRule(id="checkpoints",
                                 prefix=CHECKPOINTS_PREFIX,
                                 expiration=checkpoint_retention,
                                 noncurrent_version_expiration=Duration.days(NONCURRENT_CHECKPOINT_DAYS)),
                s3.LifecycleRule(id="noncurrent-versions",
                                 noncurrent_version_expiration=Duration.days(NONCURRENT_VERSION_DAYS),
                                 expired_object_delete_marker=True),
                s3.LifecycleRule(id="incomplete-uploads",
                                 abort_incomplete_multipart_upload_after=Duration.days(1)),
            ],
            removal_policy=removal_policy,
            auto_delete_objects=destroy,
        )

        self.default_pipeline_key = DEFAULT_PIPELINE_KEY
        self.default_pipeline_writer = self._write_default_pipeline(pipeline_body, removal_policy)

    def _write_default_pipeline(self, body: str, removal_policy: RemovalPolicy) -> cr.AwsCustomResource:
        """PutObject the resolved default pipeline (includes inlined) into the bucket at deploy.

        One PutObject call by a role that may write exactly this key: no extra asset, no Docker, and far less
        access than ``BucketDeployment``'s handler (read/write/delete on the whole bucket).
        """
        put = cr.AwsSdkCall(
            service="S3",
            action="putObject",
            parameters={"Bucket": self.bucket.bucket_name, "Key": self.default_pipeline_key,
                        "Body": body, "ContentType": "application/json"},
            physical_resource_id=cr.PhysicalResourceId.of(self.default_pipeline_key),
        )
        log_group = logs.LogGroup(self, "DefaultPipelineWriterLogs", retention=logs.RetentionDays.THREE_MONTHS,
                                  removal_policy=removal_policy)
        role = iam.Role(self, "DefaultPipelineWriterRole",
                        assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
                        description="Writes the default pipeline object into the pipeline bucket at deploy")
        log_group.grant_write(role)
        statements = [iam.PolicyStatement(actions=["s3:PutObject"],
                                           resources=[self.bucket.arn_for_objects(self.default_pipeline_key)])]
        if self.bucket.encryption_key is not None:
            statements.append(iam.PolicyStatement(actions=["kms:GenerateDataKey", "kms:Decrypt"],
                                                  resources=[self.bucket.encryption_key.key_arn]))
        return cr.AwsCustomResource(
            self, "DefaultPipeline",
            on_create=put,
            on_update=put,
            policy=cr.AwsCustomResourcePolicy.from_statements(statements),
            role=role,
            log_group=log_group,
            install_latest_aws_sdk=False,
            timeout=Duration.minutes(2),
        )
