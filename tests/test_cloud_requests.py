"""SageMaker requests and names: every request passes botocore's own validation of its operation."""

from __future__ import annotations

import copy
import re
from typing import Any

import botocore.session
import pytest
from botocore.validate import ParamValidator

from rlpipe.cloud import naming
from rlpipe.cloud.requests import (
    CREATE_FIELDS,
    StackSettings,
    create_fields,
    create_training_job_request,
    release_pool_request,
    stop_request,
)
from rlpipe.config import parse_pipeline
from rlpipe.contract import METRIC_DEFINITIONS
from rlpipe.plan import build_plan

SETTINGS = StackSettings(bucket="rlpipe-bucket", role_arn="arn:aws:iam::123456789012:role/rlpipe-training",
                         image_uri="123456789012.dkr.ecr.us-east-1.amazonaws.com/rlpipe:abc")
VPC = StackSettings(bucket="rlpipe-bucket", role_arn=SETTINGS.role_arn, image_uri=SETTINGS.image_uri,
                    subnet_ids=("subnet-0123456789abcdef0", "subnet-0fedcba9876543210"),
                    security_group_ids=("sg-0123456789abcdef0",),
                    kms_key_arn="arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab")
RUN_ID = "tiny-20250101-120000-abcdef"
_TAG = re.compile(r"^[\w.:/=+\-@ ]*$")


@pytest.fixture(scope="module")
def sagemaker_model() -> Any:
    return botocore.session.get_session().create_client("sagemaker", region_name="us-east-1").meta.service_model


def assert_valid(model: Any, operation: str, params: dict[str, Any]) -> None:
    """botocore's parameter validation for ``operation`` (types, required members, enums, ranges)."""
    report = ParamValidator().validate(params, model.operation_model(operation).input_shape)
    assert not report.has_errors(), report.generate_report()


def requests_for(raw: dict[str, Any], settings: StackSettings = SETTINGS) -> list[dict[str, Any]]:
    pipeline = parse_pipeline(raw)
    plan = build_plan(pipeline)
    out, bundle = [], None
    for i, (s, p) in enumerate(zip(pipeline.sessions, plan.sessions, strict=True)):
        name = naming.job_name(settings.job_prefix, RUN_ID, i, s.name, 1)
        out.append(create_training_job_request(settings, run_id=RUN_ID, pipeline=pipeline.name, index=i, session=s,
                                               planned=p, job_name=name, attempt=1, previous_bundle=bundle))
        bundle = f"s3://rlpipe-bucket/runs/{RUN_ID}/output/{name}/output/model.tar.gz"
    return out


def test_create_requests_pass_botocore_validation(sagemaker_model: Any, tiny_raw: dict[str, Any]) -> None:
    for settings in (SETTINGS, VPC):
        for request in requests_for(tiny_raw, settings):
            assert_valid(sagemaker_model, "CreateTrainingJob", request)
            assert set(request) == set(create_fields(vpc=bool(settings.subnet_ids)))
            assert naming.is_valid_job_name(request["TrainingJobName"])
            assert all(_TAG.match(t["Key"]) and _TAG.match(t["Value"]) for t in request["Tags"])


def test_create_request_content(tiny_raw: dict[str, Any]) -> None:
    first, second = requests_for(tiny_raw)
    spec = first["AlgorithmSpecification"]
    assert spec["TrainingImage"] == SETTINGS.image_uri and spec["TrainingInputMode"] == "File"
    assert spec["MetricDefinitions"] == METRIC_DEFINITIONS and len(spec["MetricDefinitions"]) <= 40
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in first["InputDataConfig"]}
    assert channels == {"config": f"s3://rlpipe-bucket/runs/{RUN_ID}/sessions/000-stand/config/"}
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in second["InputDataConfig"]}
    assert channels["previous"].endswith(f"/output/{first['TrainingJobName']}/output/model.tar.gz")
    assert first["CheckpointConfig"] == {"S3Uri": f"s3://rlpipe-bucket/checkpoints/{RUN_ID}/stand/",
                                         "LocalPath": "/opt/ml/checkpoints"}
    assert second["CheckpointConfig"]["S3Uri"].endswith("/hold/")  # one prefix per session
    assert first["TensorBoardOutputConfig"]["LocalPath"] == "/opt/ml/output/tensorboard"
    assert first["OutputDataConfig"] == {"S3OutputPath": f"s3://rlpipe-bucket/runs/{RUN_ID}/output/"}
    assert first["StoppingCondition"] == {"MaxRuntimeInSeconds": 86400}
    assert first["EnableManagedSpotTraining"] is False and "VpcConfig" not in first
    tags = {t["Key"]: t["Value"] for t in second["Tags"]}
    assert tags == {"rlpipe:run-id": RUN_ID, "rlpipe:pipeline": "tiny", "rlpipe:session": "hold", "rlpipe:attempt": "1"}


def test_vpc_and_kms(tiny_raw: dict[str, Any]) -> None:
    request = requests_for(tiny_raw, VPC)[0]
    assert request["VpcConfig"] == {"SecurityGroupIds": ["sg-0123456789abcdef0"],
                                    "Subnets": ["subnet-0123456789abcdef0", "subnet-0fedcba9876543210"]}
    assert request["ResourceConfig"]["VolumeKmsKeyId"] == VPC.kms_key_arn
    assert request["OutputDataConfig"]["KmsKeyId"] == VPC.kms_key_arn


@pytest.mark.parametrize("instance_type", ["ml.g5.xlarge", "ml.g4dn.xlarge", "ml.p4d.24xlarge", "ml.p5.48xlarge",
                                           "ml.trn1.2xlarge", "ml.g6.xlarge", "ml.r5d.large"])
def test_no_volume_key_for_instance_types_with_local_storage(sagemaker_model: Any, tiny_raw: dict[str, Any],
                                                             instance_type: str) -> None:
    """SageMaker rejects VolumeKmsKeyId for local NVMe storage: the request leaves it out (output stays encrypted)."""
    raw = copy.deepcopy(tiny_raw)
    raw["defaults"] = {**raw.get("defaults", {}), "compute": {"instance_type": instance_type}}
    for request in requests_for(raw, VPC):
        assert_valid(sagemaker_model, "CreateTrainingJob", request)
        assert "VolumeKmsKeyId" not in request["ResourceConfig"]
        assert request["OutputDataConfig"]["KmsKeyId"] == VPC.kms_key_arn


def test_instance_storage_table(sagemaker_model: Any) -> None:
    import json
    from importlib import resources

    from rlpipe.cloud.instance_storage import has_instance_storage, instance_storage_families

    table = json.loads(resources.files("rlpipe").joinpath("data", "instance_storage.json").read_text())
    families = instance_storage_families()
    assert not families & set(table["not_instance_storage"])
    # The API reference's own examples: NVMe for ml.p4d, ml.g4dn, ml.g5; EBS for ml.c5 and ml.p2.
    assert all(has_instance_storage(t) for t in ("ml.p4d.24xlarge", "ml.g4dn.xlarge", "ml.g5.2xlarge"))
    assert not any(has_instance_storage(t) for t in ("ml.c5.xlarge", "ml.p2.xlarge", "ml.c6i.2xlarge", "ml.g5"))
    # Every training family botocore knows is classified one way or the other.
    training = {t.split(".")[1] for t in sagemaker_model.shape_for("TrainingInstanceType").enum}
    unclassified = training - families - set(table["not_instance_storage"]) - set(table["unverified"])
    assert not unclassified, f"classify these families in rlpipe/data/instance_storage.json: {unclassified}"


def test_keep_alive_only_when_the_next_session_reuses_the_pool(sagemaker_model: Any, tiny_raw: dict[str, Any]) -> None:
    raw = copy.deepcopy(tiny_raw)
    raw["sessions"].append({"name": "other-type", "env": "rlpipe/CrushResistance-v0", "timesteps": 256,
                            "compute": {"instance_type": "ml.m5.xlarge"}})
    raw["sessions"].append({"name": "last", "env": "rlpipe/CrushResistance-v0", "timesteps": 256,
                            "compute": {"instance_type": "ml.m5.xlarge", "warm_pool": {"keep_alive_seconds": 600}}})
    keep = [r["ResourceConfig"].get("KeepAlivePeriodInSeconds") for r in requests_for(raw)]
    # stand -> hold: same instances (kept); hold -> other-type: different type (not kept);
    # other-type -> last: same (kept, with other-type's own keep-alive); last: nothing follows.
    assert keep == [1800, None, 1800, None]
    for r in requests_for(raw):
        assert_valid(sagemaker_model, "CreateTrainingJob", r)


def test_spot_sets_max_wait_and_keeps_no_pool(sagemaker_model: Any, tiny_raw: dict[str, Any]) -> None:
    raw = copy.deepcopy(tiny_raw)
    raw["defaults"]["compute"] = {"spot": True, "warm_pool": {"enabled": False}, "max_runtime_seconds": 3600,
                                  "max_wait_seconds": 7200}
    for request in requests_for(raw):
        assert_valid(sagemaker_model, "CreateTrainingJob", request)
        assert request["EnableManagedSpotTraining"] is True
        assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
        assert "KeepAlivePeriodInSeconds" not in request["ResourceConfig"]


def test_warm_start_without_a_bundle_is_refused(tiny_raw: dict[str, Any]) -> None:
    pipeline = parse_pipeline(tiny_raw)
    plan = build_plan(pipeline)
    with pytest.raises(ValueError, match="left no bundle"):
        create_training_job_request(SETTINGS, run_id=RUN_ID, pipeline="tiny", index=1, session=pipeline.sessions[1],
                                    planned=plan.sessions[1], job_name="rlpipe-x-001-hold-1", attempt=1,
                                    previous_bundle=None)


def test_update_and_stop_requests_pass_botocore_validation(sagemaker_model: Any) -> None:
    release = release_pool_request("rlpipe-0123abcd-000-stand-1")
    assert release == {"TrainingJobName": "rlpipe-0123abcd-000-stand-1",
                       "ResourceConfig": {"KeepAlivePeriodInSeconds": 0}}
    assert_valid(sagemaker_model, "UpdateTrainingJob", release)
    assert_valid(sagemaker_model, "StopTrainingJob", stop_request("rlpipe-0123abcd-000-stand-1"))


def test_botocore_model_knows_every_create_field(sagemaker_model: Any) -> None:
    members = sagemaker_model.operation_model("CreateTrainingJob").input_shape.members
    assert set(CREATE_FIELDS) | {"VpcConfig"} <= set(members)
    assert members["ResourceConfig"].members["KeepAlivePeriodInSeconds"].metadata["max"] >= 3600


# ---- names ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("prefix", ["rlpipe", "rl", "a" * naming.JOB_PREFIX_MAX])
@pytest.mark.parametrize("session", ["s", "height-maximize", "x" * 24, "a--b"])
@pytest.mark.parametrize("index,attempt", [(0, 1), (7, 12), (999, 3), (998, 999)])
def test_job_names_are_valid_unique_and_prefixed(prefix: str, session: str, index: int, attempt: int) -> None:
    run_id = naming.new_run_id("robot-curriculum" * 3, "2025-01-01T12:00:00.123Z", "execution-name")
    name = naming.job_name(prefix, run_id, index, session, attempt)
    assert naming.is_valid_job_name(name) and len(name) <= 63 and name.startswith(f"{prefix}-")
    assert name == naming.job_name(prefix, run_id, index, session, attempt)  # deterministic
    assert name != naming.job_name(prefix, run_id, index, session, attempt + 1)
    assert name != naming.job_name(prefix, run_id + "x", index, session, attempt)


def test_run_ids() -> None:
    a = naming.new_run_id("robot-curriculum", "2025-01-01T12:00:00Z", "exec-1")
    assert a.startswith("robot-curriculum-20250101-120000-") and naming.is_valid_run_id(a)
    assert a == naming.new_run_id("robot-curriculum", "2025-01-01T12:00:00Z", "exec-1")
    assert a != naming.new_run_id("robot-curriculum", "2025-01-01T12:00:00Z", "exec-2")
    assert naming.is_valid_run_id(naming.new_run_id("p" * 40, "2025-01-01T12:00:00+02:00", "e"))
    assert not naming.is_valid_run_id("../escape") and not naming.is_valid_run_id("a/b")


def test_bad_prefixes_are_refused() -> None:
    for prefix in ("", "-x", "x-", "a_b", "a" * (naming.JOB_PREFIX_MAX + 1)):
        with pytest.raises(naming.NamingError):
            naming.check_job_prefix(prefix)
    with pytest.raises(ValueError, match="both subnet"):
        StackSettings(bucket="b", role_arn="r", image_uri="i", subnet_ids=("subnet-1",))


def test_job_arn_pattern_covers_own_jobs_only() -> None:
    """IAM scopes every SageMaker action (and log stream) to this pattern; another stack's prefix that
    merely starts with ours (rlpipe-dev next to rlpipe) must not match."""
    from fnmatch import fnmatchcase

    mine = naming.job_name_pattern("rlpipe")
    assert mine == "rlpipe-????????-???-*"
    for index, session, attempt in ((0, "stand", 1), (999, "a" * 60, 12), (7, "x", 3)):
        assert fnmatchcase(naming.job_name("rlpipe", "run-20250101-000000-abcdef", index, session, attempt), mine)
    other = naming.job_name("rlpipe-dev", "run-20250101-000000-abcdef", 0, "stand", 1)
    assert not fnmatchcase(other, mine) and fnmatchcase(other, naming.job_name_pattern("rlpipe-dev"))
    with pytest.raises(naming.NamingError):
        naming.job_name("rlpipe", "r", 1000, "s", 1)  # the pattern holds three index digits


def test_keep_alive_limit_is_botocores(sagemaker_model: Any, tiny_raw: dict[str, Any]) -> None:
    """The config's keep-alive range is the one SageMaker's model gives, for create and update alike."""
    from rlpipe.config import MAX_KEEP_ALIVE_SECONDS

    for shape in ("ResourceConfig", "ResourceConfigForUpdate"):
        member = sagemaker_model.shape_for(shape).members["KeepAlivePeriodInSeconds"]
        assert (member.metadata["min"], member.metadata["max"]) == (0, MAX_KEEP_ALIVE_SECONDS)
    raw = copy.deepcopy(tiny_raw)
    raw["defaults"] = {**raw.get("defaults", {}),
                       "compute": {"warm_pool": {"keep_alive_seconds": MAX_KEEP_ALIVE_SECONDS}}}
    first = requests_for(raw)[0]
    assert first["ResourceConfig"]["KeepAlivePeriodInSeconds"] == MAX_KEEP_ALIVE_SECONDS
    assert_valid(sagemaker_model, "CreateTrainingJob", first)


def test_each_lineage_asks_for_its_own_volume_size_so_its_pools_stay_its_own(sagemaker_model: Any) -> None:
    """The warm-pool match compares VolumeSizeInGB: one GB per lineage position keeps lineages apart, within
    the config's range (EBS's 16 TiB) at both ends and botocore's minimum."""
    from rlpipe.cloud.requests import VOLUME_GB_MAX, lineage_volume_gb
    from rlpipe.config import MAX_SEEDS, Compute

    shape = sagemaker_model.operation_model("CreateTrainingJob").input_shape
    least = shape.members["ResourceConfig"].members["VolumeSizeInGB"].metadata["min"]
    limits = {type(m).__name__: m for m in Compute.model_fields["volume_size_gb"].metadata}
    assert VOLUME_GB_MAX == limits["Le"].le
    assert [lineage_volume_gb(30, k) for k in range(MAX_SEEDS)] == list(range(30, 30 + MAX_SEEDS))
    top = [lineage_volume_gb(VOLUME_GB_MAX, k) for k in range(MAX_SEEDS)]
    assert len(set(top)) == MAX_SEEDS and max(top) == VOLUME_GB_MAX and min(top) > least
