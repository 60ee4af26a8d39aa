"""SageMaker requests built from the plan and a session: CreateTrainingJob, UpdateTrainingJob, StopTrainingJob.

The state machine passes these dicts unchanged to the ``aws-sdk:sagemaker`` integration, the Lambdas to
boto3, and ``rlpipe debug-job`` to the same API; tests check each against botocore's own model of the
operation. Nothing about a job is decided anywhere else.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rlpipe.cloud.instance_storage import has_instance_storage
from rlpipe.cloud.naming import DEFAULT_JOB_PREFIX, check_job_prefix
from rlpipe.cloud.store import RunKeys, s3_uri
from rlpipe.config import SessionConfig
from rlpipe.contract import CONFIG_CHANNEL, DEFAULT_ROOT, METRIC_DEFINITIONS, PREVIOUS_CHANNEL, ContainerPaths
from rlpipe.plan import PlannedSession

CONTAINER = ContainerPaths(DEFAULT_ROOT)
TAG_RUN_ID = "rlpipe:run-id"
TAG_PIPELINE = "rlpipe:pipeline"
TAG_SESSION = "rlpipe:session"
TAG_ATTEMPT = "rlpipe:attempt"


@dataclass(frozen=True)
class StackSettings:
    """What the stack decides for every job (and for warm-pool matching: role, VPC, KMS are the same for all).

    The Lambdas read it from their environment (:class:`rlpipe.cloud.environment.LambdaSettings`), the CLI
    from the stack's ``RequestSettings`` output (:meth:`document` written by the stack, :meth:`from_document`
    read back).
    """

    bucket: str
    role_arn: str
    image_uri: str
    job_prefix: str = DEFAULT_JOB_PREFIX
    subnet_ids: tuple[str, ...] = ()
    security_group_ids: tuple[str, ...] = ()
    kms_key_arn: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_job_prefix(self.job_prefix)
        if bool(self.subnet_ids) != bool(self.security_group_ids):
            raise ValueError("a VPC config needs both subnet ids and security group ids")

    def document(self) -> dict[str, Any]:
        """The settings as a JSON-able dict (the stack's ``RequestSettings`` output); tags are not included."""
        return {"bucket": self.bucket, "role_arn": self.role_arn, "image_uri": self.image_uri,
                "job_prefix": self.job_prefix, "subnet_ids": list(self.subnet_ids),
                "security_group_ids": list(self.security_group_ids), "kms_key_arn": self.kms_key_arn or ""}

    @classmethod
    def from_document(cls, doc: Mapping[str, Any] | str) -> StackSettings:
        """Read back :meth:`document` (a dict or its JSON text)."""
        d = json.loads(doc) if isinstance(doc, str) else doc
        return cls(bucket=d["bucket"], role_arn=d["role_arn"], image_uri=d["image_uri"],
                   job_prefix=d.get("job_prefix") or DEFAULT_JOB_PREFIX,
                   subnet_ids=tuple(d.get("subnet_ids") or ()),
                   security_group_ids=tuple(d.get("security_group_ids") or ()),
                   kms_key_arn=d.get("kms_key_arn") or None)


# Top-level fields of every CreateTrainingJob request (VpcConfig too when the stack runs jobs in a VPC). The
# state machine maps exactly these from the request PrepareSession returns, so each is always present.
CREATE_FIELDS = ("TrainingJobName", "RoleArn", "AlgorithmSpecification", "InputDataConfig", "OutputDataConfig",
                 "ResourceConfig", "StoppingCondition", "EnableManagedSpotTraining", "EnableNetworkIsolation",
                 "EnableInterContainerTrafficEncryption", "CheckpointConfig", "TensorBoardOutputConfig", "Tags")


def create_fields(vpc: bool) -> tuple[str, ...]:
    """The top-level fields of a CreateTrainingJob request built for a stack with or without a VPC."""
    return CREATE_FIELDS + (("VpcConfig",) if vpc else ())


VOLUME_GB_MAX = 16384  # ResourceConfig.VolumeSizeInGB


def lineage_volume_gb(volume_size_gb: int, lineage: int) -> int:
    """The volume size lineage ``lineage`` asks for: the configured size, plus one GB per lineage position.

    A new job takes any Available warm pool whose RoleArn, InstanceType, InstanceCount, VolumeSizeInGB,
    VolumeKmsKeyId, VpcConfig and encryption/isolation flags match its own; image, channels and
    hyperparameters may differ. Lineages running side by side share every one of those but for this
    size, so a lineage's next job would otherwise take whichever lineage's pool came free first, and the
    lineage whose pool was taken would start cold. One GB more per lineage keeps each pool to its lineage
    (at most 99 GB of gp3 more, cents per day); beyond the maximum the sizes go down instead.
    """
    if volume_size_gb + lineage <= VOLUME_GB_MAX:
        return volume_size_gb + lineage
    return volume_size_gb - lineage


def create_training_job_request(settings: StackSettings, *, run_id: str, pipeline: str, index: int,
                                session: SessionConfig, planned: PlannedSession, job_name: str, attempt: int,
                                previous_bundle: str | None, lineage: int = 0) -> dict[str, Any]:
    """The CreateTrainingJob request of one attempt of one session of lineage ``lineage`` (0-based).

    ``previous_bundle`` is the S3 URI of the previous session's ``model.tar.gz``; it becomes the ``previous``
    channel when the session warm-starts. ``KeepAlivePeriodInSeconds`` is set only when the plan says the next
    session reuses this job's pool (the plan already gives 0 for spot, a mismatch or the last session).
    """
    keys = RunKeys(run_id)
    compute = session.compute
    bucket = settings.bucket
    channels: list[dict[str, Any]] = [{
        "ChannelName": CONFIG_CHANNEL,
        "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix",
                                        "S3Uri": s3_uri(bucket, keys.config_channel(index, session.name)),
                                        "S3DataDistributionType": "FullyReplicated"}},
        "ContentType": "application/json",
        "InputMode": "File",
    }]
    if session.use_previous_checkpoint:
        if not previous_bundle:
            raise ValueError(f"session '{session.name}' warm-starts but the previous session left no bundle")
        channels.append({
            "ChannelName": PREVIOUS_CHANNEL,
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": previous_bundle,
                                            "S3DataDistributionType": "FullyReplicated"}},
            "ContentType": "application/x-tar",
            "CompressionType": "None",  # the trainer opens model.tar.gz itself, as the local runner's dir
            "InputMode": "File",
        })
    resources: dict[str, Any] = {"InstanceType": compute.instance_type, "InstanceCount": compute.instance_count,
                                 "VolumeSizeInGB": lineage_volume_gb(compute.volume_size_gb, lineage)}
    if planned.keep_alive_seconds > 0:
        resources["KeepAlivePeriodInSeconds"] = planned.keep_alive_seconds
    # SageMaker rejects a volume key for instance types with local NVMe storage (hardware-encrypted instead).
    if settings.kms_key_arn and not has_instance_storage(compute.instance_type):
        resources["VolumeKmsKeyId"] = settings.kms_key_arn
    stopping: dict[str, int] = {"MaxRuntimeInSeconds": compute.max_runtime_seconds}
    if compute.spot:
        stopping["MaxWaitTimeInSeconds"] = compute.max_wait_seconds or compute.max_runtime_seconds
    output: dict[str, str] = {"S3OutputPath": s3_uri(bucket, keys.output)}
    if settings.kms_key_arn:
        output["KmsKeyId"] = settings.kms_key_arn
    tags = {**settings.tags, TAG_RUN_ID: run_id, TAG_PIPELINE: pipeline, TAG_SESSION: session.name,
            TAG_ATTEMPT: str(attempt)}
    request: dict[str, Any] = {
        "TrainingJobName": job_name,
        "RoleArn": settings.role_arn,
        "AlgorithmSpecification": {
            "TrainingImage": settings.image_uri,
            "TrainingInputMode": "File",
            "MetricDefinitions": [dict(m) for m in METRIC_DEFINITIONS],
            "EnableSageMakerMetricsTimeSeries": True,
        },
        "InputDataConfig": channels,
        "OutputDataConfig": output,
        "ResourceConfig": resources,
        "StoppingCondition": stopping,
        "EnableManagedSpotTraining": compute.spot,
        # Both are part of SageMaker's warm-pool match: set them explicitly, the same for every job.
        "EnableNetworkIsolation": False,
        "EnableInterContainerTrafficEncryption": False,
        "CheckpointConfig": {"S3Uri": s3_uri(bucket, keys.checkpoints(session.name)),
                             "LocalPath": str(CONTAINER.checkpoints)},
        "TensorBoardOutputConfig": {"S3OutputPath": s3_uri(bucket, keys.tensorboard(session.name)),
                                    "LocalPath": str(CONTAINER.tensorboard)},
        "Tags": [{"Key": k, "Value": v} for k, v in tags.items()],
    }
    if settings.subnet_ids:
        request["VpcConfig"] = {"SecurityGroupIds": list(settings.security_group_ids),
                                "Subnets": list(settings.subnet_ids)}
    return request


def release_pool_request(job_name: str) -> dict[str, Any]:
    """UpdateTrainingJob that ends the job's warm pool now (keep-alive 0), so its idle time stops billing."""
    return {"TrainingJobName": job_name, "ResourceConfig": {"KeepAlivePeriodInSeconds": 0}}


def stop_request(job_name: str) -> dict[str, Any]:
    """StopTrainingJob: SIGTERM to the trainer, which checkpoints and exits (SIGKILL after 120 s)."""
    return {"TrainingJobName": job_name}
