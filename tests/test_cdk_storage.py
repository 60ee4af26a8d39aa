"""Storage construct: bucket security and lifecycle, access logs, the default pipeline written at deploy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import App, RemovalPolicy, Stack
from aws_cdk import aws_kms as kms
from aws_cdk.assertions import Match, Template

from rlpipe.config import ConfigError, load_pipeline, parse_pipeline
from stacks.settings import cdk_json_context
from stacks.storage import DEFAULT_PIPELINE_KEY, Storage

REPO = Path(__file__).resolve().parent.parent
PIPELINE = REPO / "configs" / "pipeline.yaml"
KEY_ARN = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def _storage_template(**kwargs: Any) -> tuple[Template, Storage, Stack]:
    stack = Stack(App(context=cdk_json_context()), "StorageTest")
    storage = Storage(stack, "Storage", default_pipeline=kwargs.pop("default_pipeline", PIPELINE), **kwargs)
    return Template.from_stack(stack), storage, stack


@pytest.fixture(scope="module")
def synth() -> tuple[Template, Storage, Stack]:
    return _storage_template()


def _bucket_id(stack: Stack, storage: Storage) -> str:
    return stack.get_logical_id(storage.bucket.node.default_child)


def test_bucket_is_private_versioned_and_encrypted(synth: tuple[Template, Storage, Stack]) -> None:
    template, storage, stack = synth
    template.has_resource_properties("AWS::S3::Bucket", {
        "VersioningConfiguration": {"Status": "Enabled"},
        "BucketEncryption": {"ServerSideEncryptionConfiguration": [
            {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]},
        "PublicAccessBlockConfiguration": {"BlockPublicAcls": True, "BlockPublicPolicy": True,
                                           "IgnorePublicAcls": True, "RestrictPublicBuckets": True},
        "LoggingConfiguration": {"DestinationBucketName": {"Ref": stack.get_logical_id(
            storage.log_bucket.node.default_child)}, "LogFilePrefix": "pipeline-bucket/"},
    })
    template.resource_count_is("AWS::S3::Bucket", 2)
    bucket = template.find_resources("AWS::S3::Bucket")[_bucket_id(stack, storage)]
    assert bucket["DeletionPolicy"] == "Retain"


def test_every_bucket_denies_plain_http(synth: tuple[Template, Storage, Stack]) -> None:
    template, _, _ = synth
    policies = template.find_resources("AWS::S3::BucketPolicy")
    assert len(policies) == 2
    for policy in policies.values():
        statements = policy["Properties"]["PolicyDocument"]["Statement"]
        assert any(s["Effect"] == "Deny" and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
                   for s in statements)


def test_lifecycle_expires_old_checkpoint_versions(synth: tuple[Template, Storage, Stack]) -> None:
    template, storage, stack = synth
    rules = template.find_resources("AWS::S3::Bucket")[_bucket_id(stack, storage)]["Properties"][
        "LifecycleConfiguration"]["Rules"]
    by_id = {r["Id"]: r for r in rules}
    checkpoints = by_id["checkpoints"]
    assert checkpoints["Prefix"] == "checkpoints/"
    assert checkpoints["Status"] == "Enabled"
    assert checkpoints["NoncurrentVersionExpiration"]["NoncurrentDays"] <= 7
    assert checkpoints["ExpirationInDays"] >= 14  # redrive/resume of a failed session must still find them
    assert "NoncurrentVersionExpiration" in by_id["noncurrent-versions"]
    assert by_id["incomplete-uploads"]["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] == 1


def test_log_bucket_uses_s3_managed_keys_and_expires_logs(synth: tuple[Template, Storage, Stack]) -> None:
    template, storage, stack = synth
    log_bucket = template.find_resources("AWS::S3::Bucket")[
        stack.get_logical_id(storage.log_bucket.node.default_child)]["Properties"]
    assert log_bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0][
        "ServerSideEncryptionByDefault"] == {"SSEAlgorithm": "AES256"}  # log delivery needs SSE-S3
    assert log_bucket["LifecycleConfiguration"]["Rules"][0]["ExpirationInDays"] > 0


def _default_pipeline_call(template: Template) -> dict[str, Any]:
    """The PutObject call of the deploy-time custom resource, with the bucket reference blanked out."""
    (resource,) = template.find_resources("Custom::AWS").values()
    parts = resource["Properties"]["Create"]["Fn::Join"][1]
    return json.loads("".join(p if isinstance(p, str) else "BUCKET" for p in parts))


def test_default_pipeline_is_uploaded_resolved(synth: tuple[Template, Storage, Stack]) -> None:
    template, storage, _ = synth
    call = _default_pipeline_call(template)
    assert call["service"] == "S3" and call["action"] == "putObject"
    params = call["parameters"]
    assert params["Key"] == storage.default_pipeline_key == DEFAULT_PIPELINE_KEY
    body = json.loads(params["Body"])
    expected = load_pipeline(PIPELINE)
    assert body == expected.resolved()
    # Includes are inlined: the uploaded document parses without a base directory (as on AWS).
    assert parse_pipeline(body, check_envs=False).fingerprint() == expected.fingerprint()


def test_default_pipeline_writer_may_write_only_that_key(synth: tuple[Template, Storage, Stack]) -> None:
    template, storage, stack = synth
    template.has_resource_properties("AWS::IAM::Policy", {
        "PolicyDocument": {"Statement": [{
            "Action": "s3:PutObject", "Effect": "Allow",
            "Resource": {"Fn::Join": ["", [{"Fn::GetAtt": [_bucket_id(stack, storage), "Arn"]},
                                           f"/{DEFAULT_PIPELINE_KEY}"]]},
        }]},
    })
    for policy in template.find_resources("AWS::IAM::Policy").values():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            assert statement["Resource"] != "*"
            assert not str(statement["Action"]).startswith("s3:*")
    for role in template.find_resources("AWS::IAM::Role").values():
        assert "ManagedPolicyArns" not in role["Properties"]


def test_customer_key_encrypts_the_bucket() -> None:
    stack = Stack(App(context=cdk_json_context()), "StorageKeyTest")
    key = kms.Key.from_key_arn(stack, "Key", KEY_ARN)
    Storage(stack, "Storage", default_pipeline=PIPELINE, encryption_key=key)
    template = Template.from_stack(stack)
    template.has_resource_properties("AWS::S3::Bucket", {
        "VersioningConfiguration": {"Status": "Enabled"},
        "BucketEncryption": {"ServerSideEncryptionConfiguration": [{
            "BucketKeyEnabled": True,
            "ServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": KEY_ARN}}]},
    })
    # Writing the default pipeline into a KMS bucket needs a data key.
    template.has_resource_properties("AWS::IAM::Policy", {"PolicyDocument": {"Statement": Match.array_with([
        Match.object_like({"Action": ["kms:Decrypt", "kms:GenerateDataKey"], "Resource": KEY_ARN})])}})


def test_destroy_policy_empties_buckets_on_delete() -> None:
    template, storage, stack = _storage_template(removal_policy=RemovalPolicy.DESTROY)
    bucket = template.find_resources("AWS::S3::Bucket")[_bucket_id(stack, storage)]
    assert bucket["DeletionPolicy"] == "Delete"
    template.resource_count_is("Custom::S3AutoDeleteObjects", 2)


def test_invalid_default_pipeline_fails_synth(tmp_path: Path) -> None:
    bad = tmp_path / "pipeline.yaml"
    bad.write_text("name: broken\nsessions:\n  - name: a\n    env: Hopper-v5\n    timesteps: -5\n")
    with pytest.raises(ConfigError, match="timesteps"):
        Storage(Stack(App(context=cdk_json_context()), "Bad"), "Storage", default_pipeline=bad)
