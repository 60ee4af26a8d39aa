"""The Lambdas' settings, one object both ways: the stack writes it as each function's environment
(:meth:`LambdaSettings.environment`), the function reads it back (:meth:`LambdaSettings.from_env`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from rlpipe.cloud import pacing
from rlpipe.cloud.naming import DEFAULT_JOB_PREFIX
from rlpipe.cloud.pacing import Timing
from rlpipe.cloud.requests import StackSettings

BUCKET = "RLPIPE_BUCKET"
JOB_PREFIX = "RLPIPE_JOB_PREFIX"
# What a CreateTrainingJob request takes from the stack: only the step that builds requests gets them.
TRAINING_ROLE_ARN = "RLPIPE_TRAINING_ROLE_ARN"
IMAGE_URI = "RLPIPE_IMAGE_URI"
SUBNET_IDS = "RLPIPE_SUBNET_IDS"
SECURITY_GROUP_IDS = "RLPIPE_SECURITY_GROUP_IDS"
KMS_KEY_ARN = "RLPIPE_KMS_KEY_ARN"
TOPIC_ARN = "RLPIPE_TOPIC_ARN"
DEFAULT_PIPELINE_KEY = "RLPIPE_DEFAULT_PIPELINE_KEY"
DASHBOARD_URL = "RLPIPE_DASHBOARD_URL"  # linked from the run-end e-mail
REGION = ("AWS_REGION", "AWS_DEFAULT_REGION")  # set by the Lambda runtime, not by the stack


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in (value or "").split(",") if v.strip())


@dataclass(frozen=True)
class LambdaSettings:
    """What a step reads from its environment: the stack's job settings, the pacing, the alert topic and the
    default pipeline (the last two only where a step uses them), the stack's dashboard, and the region."""

    stack: StackSettings
    timing: Timing = field(default_factory=Timing)
    topic_arn: str | None = None
    default_pipeline_key: str | None = None
    region: str | None = None
    dashboard_url: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LambdaSettings:
        """Read the variables :meth:`environment` writes (and the runtime's region)."""
        env = os.environ if env is None else env
        stack = StackSettings(bucket=env[BUCKET], role_arn=env.get(TRAINING_ROLE_ARN, ""),
                              image_uri=env.get(IMAGE_URI, ""), job_prefix=env.get(JOB_PREFIX, DEFAULT_JOB_PREFIX),
                              subnet_ids=_split(env.get(SUBNET_IDS)),
                              security_group_ids=_split(env.get(SECURITY_GROUP_IDS)),
                              kms_key_arn=env.get(KMS_KEY_ARN) or None)
        return cls(stack=stack, timing=Timing.from_env(env), topic_arn=env.get(TOPIC_ARN) or None,
                   default_pipeline_key=env.get(DEFAULT_PIPELINE_KEY) or None,
                   region=next((env[n] for n in REGION if env.get(n)), None),
                   dashboard_url=env.get(DASHBOARD_URL) or None)

    def environment(self, *, job_settings: bool = False, topic: bool = False,
                    default_pipeline: bool = False) -> dict[str, str]:
        """The variables of one function: bucket, job prefix and pacing always; the training-job settings,
        the topic and the default pipeline key when that function uses them; the dashboard URL when known."""
        s = self.stack
        env = {BUCKET: s.bucket, JOB_PREFIX: s.job_prefix, **pacing.environment(self.timing)}
        if job_settings:
            env.update({TRAINING_ROLE_ARN: s.role_arn, IMAGE_URI: s.image_uri, SUBNET_IDS: ",".join(s.subnet_ids),
                        SECURITY_GROUP_IDS: ",".join(s.security_group_ids), KMS_KEY_ARN: s.kms_key_arn or ""})
        if topic and self.topic_arn:
            env[TOPIC_ARN] = self.topic_arn
        if default_pipeline and self.default_pipeline_key:
            env[DEFAULT_PIPELINE_KEY] = self.default_pipeline_key
        if self.dashboard_url:
            env.update(dashboard_environment(self.dashboard_url))
        return env


def dashboard_environment(url: str) -> dict[str, str]:
    """The variable that tells a function the stack's dashboard URL (added once the dashboard exists)."""
    return {DASHBOARD_URL: url}
