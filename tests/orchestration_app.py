"""The orchestration construct on a bare stack (bucket, SageMaker role, encrypted topic), for CDK tests and
for executing its state machine locally."""

from __future__ import annotations

from typing import Any

from aws_cdk import Acknowledgment, App, Stack, Validations
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from cdk_nag import AwsSolutionsChecks

from rlpipe.cloud.pacing import Timing
from stacks.orchestration import Orchestration
from stacks.orchestration.state_machine import RetryPacing
from stacks.settings import AppSettings

DEFAULT_PIPELINE_KEY = "configs/default/pipeline.json"
IMAGE_URI = "123456789012.dkr.ecr.us-east-1.amazonaws.com/rlpipe:test"
# No sleeping in tests: every wait of the loop comes from these (through the Lambdas' environment).
FAST_TIMING = Timing(pool_poll_seconds=0, pool_max_polls=5, retry_wait_seconds=0, max_attempts=3)


def build_stack(*, settings: AppSettings | None = None, timing: Timing | None = None,
                pacing: RetryPacing | None = None, nag: bool = False, outdir: str | None = None,
                kms_bucket: bool = False, bundle: bool = True) -> tuple[App, Stack, Orchestration]:
    """A stack holding only what the construct is given, plus the construct.

    ``bundle=False`` skips asset bundling (CDK's ``aws:cdk:bundling-stacks``) for tests that read only the
    template.
    """
    app = App(outdir=outdir, context=None if bundle else {"aws:cdk:bundling-stacks": []})
    stack = Stack(app, "OrchestrationTest")
    key = kms.Key(stack, "BucketKey", enable_key_rotation=True) if kms_bucket else None
    bucket = s3.Bucket(stack, "Bucket", encryption_key=key,
                       encryption=s3.BucketEncryption.KMS if key else s3.BucketEncryption.S3_MANAGED,
                       enforce_ssl=True, block_public_access=s3.BlockPublicAccess.BLOCK_ALL)
    Validations.of(bucket).acknowledge(Acknowledgment(
        id="AwsSolutions-S1", reason="A stand-in for the pipeline bucket; the real one logs access (stacks/storage)."))
    role = iam.Role(stack, "TrainingRole", assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"))
    topic_key = kms.Key(stack, "TopicKey", enable_key_rotation=True)
    topic = sns.Topic(stack, "Topic", master_key=topic_key, enforce_ssl=True)
    orchestration = Orchestration(stack, "Orchestration", bucket=bucket, training_role=role, image_uri=IMAGE_URI,
                                  topic=topic, settings=settings or AppSettings(),
                                  default_pipeline_key=DEFAULT_PIPELINE_KEY, timing=timing, pacing=pacing)
    if nag:
        Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return app, stack, orchestration


def logical_ids(stack: Stack, orchestration: Orchestration) -> dict[str, Any]:
    """Logical ids of the functions (name -> id) and of the state machine."""
    fns = {name: stack.get_logical_id(fn.node.default_child) for name, fn in orchestration.functions.items()}
    return {"functions": fns,
            "state_machine": stack.get_logical_id(orchestration.state_machine.node.default_child)}
