"""Every CreateTrainingJob / UpdateTrainingJob / StopTrainingJob request the executions send, checked against
botocore's SageMaker model with every constraint it states (tests/strict_requests.py).

The requests are the ones the state machine and the Lambdas really send in the moto harness (captured by its
botocore hook), for the shipped pipeline, spot, VPC + KMS and an instance-store type.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import Duration
from aws_cdk.assertions import Template

from rlpipe.cloud.requests import release_pool_request, stop_request
from rlpipe.config import load_pipeline
from stacks.orchestration.state_machine import RetryPacing
from stacks.settings import AppSettings
from tests.conftest import REPO, TINY
from tests.orchestration_app import FAST_TIMING, build_stack, logical_ids
from tests.sfn_harness import Harness
from tests.sfn_scenarios import HeldJobs, reconcile_while_running
from tests.strict_requests import TRAINING_JOB_CALLS, check_calls, java_pattern, validate

pytestmark = pytest.mark.timeout(300)

VPC_KMS = AppSettings(vpc_subnet_ids=("subnet-0123456789abcdef0", "subnet-0fedcba9876543210"),
                      vpc_security_group_ids=("sg-0123456789abcdef0",),
                      kms_key_arn="arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab")


def with_compute(**compute: Any) -> dict[str, Any]:
    pipeline = copy.deepcopy(TINY)
    pipeline["defaults"]["compute"] = compute
    return pipeline


CASES: dict[str, tuple[AppSettings | None, Any]] = {
    "configs/pipeline.yaml": (None, lambda: load_pipeline(REPO / "configs" / "pipeline.yaml").resolved()),
    "spot": (None, lambda: with_compute(spot=True, warm_pool={"enabled": False}, max_wait_seconds=172800)),
    "vpc+kms": (VPC_KMS, lambda: copy.deepcopy(TINY)),
    # Local NVMe storage, in a stack with a KMS key: the volume key is left out, the output key stays.
    "instance-store type, KMS stack": (VPC_KMS, lambda: with_compute(instance_type="ml.g5.xlarge")),
}


def synthesize(settings: AppSettings | None) -> tuple[dict[str, Any], dict[str, Any]]:
    _, stack, orchestration = build_stack(
        settings=settings, timing=FAST_TIMING, bundle=False,
        pacing=RetryPacing(create_interval=Duration.seconds(1), describe_interval=Duration.seconds(1)))
    return Template.from_stack(stack).to_json(), logical_ids(stack, orchestration)


@pytest.fixture(scope="module")
def templates(fast_machine) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    return {"default": fast_machine, "vpc+kms": synthesize(VPC_KMS)}


@pytest.mark.parametrize("case", list(CASES))
def test_requests_sent_by_the_executions_are_strictly_valid(case: str, templates, tmp_path: Path) -> None:
    settings, pipeline = CASES[case]
    template, ids = templates["vpc+kms" if settings else "default"]
    h = Harness(template, ids, tmp_path, mode="instant")
    with h.running():
        ok = h.execute({"pipeline": pipeline()}, "succeeds")
        assert ok.status == "SUCCEEDED", ok.failure()
        if case == "instance-store type, KMS stack":
            # Events lost, pools not taken: reconciliation (JobEvents) releases session 1's pool while
            # session 2 runs; its UpdateTrainingJob is checked too.
            h.job_events, h.sagemaker.reuse_pools, h.sagemaker.in_progress_describes = "lost", False, 2
            h.sagemaker.pool_settle_describes = 0
            arn = h.start({"pipeline": pipeline()}, "events-lost")
            reconcile_while_running(h, arn)
            assert h.wait(arn).status == "SUCCEEDED"
            h.job_events, h.sagemaker.reuse_pools, h.sagemaker.in_progress_describes = "once", True, 1
        h.sagemaker.describe = HeldJobs(h, fail_first=True)  # type: ignore[method-assign]
        failed = h.execute({"pipeline": pipeline()}, "stops-its-job")  # the failure path stops the job
        assert failed.status == "FAILED"
    assert h.iam is not None
    sent = [c for c in h.iam.calls if c.service == "sagemaker" and c.operation in TRAINING_JOB_CALLS]
    assert check_calls(h.iam.calls) == len(sent)  # each strictly valid (the harness checked them as it stopped)
    ops = [c.operation for c in sent]
    sessions = len(pipeline()["sessions"])
    runs = 2 if case == "instance-store type, KMS stack" else 1
    assert ops.count("CreateTrainingJob") == runs * sessions + 1 and ops.count("StopTrainingJob") == 1
    creates = [c.params for c in sent if c.operation == "CreateTrainingJob"]
    if settings:
        assert all(c["VpcConfig"]["Subnets"] == list(VPC_KMS.vpc_subnet_ids) for c in creates)
        assert all(c["OutputDataConfig"]["KmsKeyId"] == VPC_KMS.kms_key_arn for c in creates)
    if case == "vpc+kms":
        assert all(c["ResourceConfig"]["VolumeKmsKeyId"] == VPC_KMS.kms_key_arn for c in creates)
    if case == "spot":
        assert all(c["EnableManagedSpotTraining"] for c in creates)
    if case == "configs/pipeline.yaml":  # the pool kept for session 2 is dropped before its job is stopped
        assert "UpdateTrainingJob" in ops
    if case == "instance-store type, KMS stack":
        assert all(c["ResourceConfig"]["InstanceType"] == "ml.g5.xlarge" for c in creates)
        assert all("VolumeKmsKeyId" not in c["ResourceConfig"] for c in creates)
        released = [c for c in sent if c.operation == "UpdateTrainingJob" and c.principal == "function:job_events"]
        assert len(released) == 1, "reconciliation released the pool not taken"


# ---- the validator itself -------------------------------------------------------------------------------------

def a_request() -> dict[str, Any]:
    """A request as the executions send it (the stop request of a valid job name)."""
    return copy.deepcopy(stop_request("rlpipe-1a2b3c4d-000-stand-1"))


def test_it_accepts_what_the_request_builders_make() -> None:
    assert validate("sagemaker", "StopTrainingJob", a_request()) == []
    assert validate("sagemaker", "UpdateTrainingJob", release_pool_request("rlpipe-1a2b3c4d-000-stand-1")) == []


def test_it_rejects_a_job_name_longer_than_the_maximum() -> None:
    errors = validate("sagemaker", "StopTrainingJob", {"TrainingJobName": "a" * 64})
    assert "StopTrainingJob.TrainingJobName: 64 characters, more than the maximum 63" in errors


def test_it_rejects_a_value_outside_the_enum() -> None:
    request = {"TrainingJobName": "job-1", "ResourceConfig": {"KeepAlivePeriodInSeconds": 60},
               "ProfilerConfig": {"DisableProfiler": True}}
    assert validate("sagemaker", "UpdateTrainingJob", request) == []
    create = {"TrainingJobName": "job-1", "RoleArn": "arn:aws:iam::123456789012:role/r",
              "AlgorithmSpecification": {"TrainingInputMode": "File", "TrainingImage": "img"},
              "OutputDataConfig": {"S3OutputPath": "s3://b/o"},
              "ResourceConfig": {"InstanceType": "ml.c6i.huge", "InstanceCount": 1, "VolumeSizeInGB": 30},
              "StoppingCondition": {"MaxRuntimeInSeconds": 60}}
    errors = validate("sagemaker", "CreateTrainingJob", create)
    assert len(errors) == 1 and errors[0].startswith("CreateTrainingJob.ResourceConfig.InstanceType: 'ml.c6i.huge' "
                                                     "is not one of [")


def test_it_rejects_pattern_maxima_sizes_and_unknown_members() -> None:
    assert validate("sagemaker", "StopTrainingJob", {"TrainingJobName": "stand_1"}) == [
        "StopTrainingJob.TrainingJobName: 'stand_1' does not match the pattern '[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}'"]
    update = {"TrainingJobName": "job-1", "ResourceConfig": {"KeepAlivePeriodInSeconds": 21601}}
    assert validate("sagemaker", "UpdateTrainingJob", update) == [
        "UpdateTrainingJob.ResourceConfig.KeepAlivePeriodInSeconds: 21601 is above the maximum 21600"]
    create = {"TrainingJobName": "job-1", "RoleArn": "arn:aws:iam::123456789012:role/r",
              "AlgorithmSpecification": {"TrainingInputMode": "File", "TrainingImage": "img"},
              "OutputDataConfig": {"S3OutputPath": "s3://b/o"},
              "ResourceConfig": {"InstanceType": "ml.c6i.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 30},
              "StoppingCondition": {"MaxRuntimeInSeconds": 60},
              "HyperParameters": {f"k{i}": "v" for i in range(101)},
              "VpcConfig": {"Subnets": [f"subnet-{i}" for i in range(17)], "SecurityGroupIds": ["sg-1"]},
              "Tags": [{"Key": "a#b", "Value": "ok"}], "Colour": "blue"}
    errors = validate("sagemaker", "CreateTrainingJob", create)
    assert set(errors) == {
        "CreateTrainingJob.HyperParameters: 101 entries, more than the maximum 100",
        "CreateTrainingJob.VpcConfig.Subnets: 17 items, more than the maximum 16",
        "CreateTrainingJob.Tags[0].Key: 'a#b' does not match the pattern " + repr(r"([\p{L}\p{Z}\p{N}_.:/=+\-@]*)"),
        "CreateTrainingJob.Colour: unknown member of CreateTrainingJobRequest"}
    del create["RoleArn"]
    assert "CreateTrainingJob.RoleArn: required" in validate("sagemaker", "CreateTrainingJob", create)


def test_java_patterns_keep_their_java_meaning() -> None:
    assert java_pattern(r"([\p{L}\p{Z}\p{N}_.:/=+\-@]*)").fullmatch("Höhe 2")  # Unicode categories
    assert not java_pattern(r"[\p{Alnum}\-]+").fullmatch("é")  # POSIX classes are US-ASCII
    assert not java_pattern(r".*").fullmatch("line\nbreak")  # . stops at line terminators
    assert not java_pattern(r".*").fullmatch("a\u2028b")
    assert java_pattern(r"[\S\s]*").fullmatch("line\nbreak")
    assert not java_pattern(r"\d{12}").fullmatch("١٢٣٤٥٦٧٨٩٠١٢")  # \d is ASCII digits
    assert not java_pattern(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}").fullmatch("job-")  # the whole value


def test_the_harness_fails_a_run_whose_request_breaks_the_model(templates, tmp_path: Path) -> None:
    """moto accepts a 300-character image URI; SageMaker (and so the harness, when it stops) does not."""
    template, ids = templates["default"]
    h = Harness(template, ids, tmp_path, mode="instant")
    one = copy.deepcopy(TINY)
    one["sessions"] = one["sessions"][:1]
    with pytest.raises(AssertionError, match=r"AlgorithmSpecification\.TrainingImage: 300 characters, more than "
                                             r"the maximum 255"):
        with h.running():
            registry = "123456789012.dkr.ecr.us-east-1.amazonaws.com/"
            h._env["prepare_session"]["RLPIPE_IMAGE_URI"] = registry + "r" * (300 - len(registry))
            assert h.execute({"pipeline": one}, "long-image").status == "SUCCEEDED"
