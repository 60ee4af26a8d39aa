"""The app's settings: read once from CDK context in ``app.py``, then passed to every construct as typed values.

Context comes from ``cdk.json`` or ``cdk deploy -c key=value`` (values given with ``-c`` are always strings, so
lists may be written comma-separated). A bad value fails synth with one line per problem, before anything
is deployed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from aws_cdk import RemovalPolicy

from rlpipe.cloud.naming import DEFAULT_JOB_PREFIX, DEFAULT_STACK_NAME, NamingError, check_job_prefix

REPO_ROOT = Path(__file__).resolve().parent.parent
CDK_JSON = REPO_ROOT / "cdk.json"

_EMAIL = re.compile(r"^[^@\s,]+@[^@\s,]+\.[^@\s,]+$")
_SUBNET = re.compile(r"^subnet-[0-9a-f]{8,17}$")
_SECURITY_GROUP = re.compile(r"^sg-[0-9a-f]{8,17}$")
_KMS_KEY_ARN = re.compile(r"^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/"
                          r"(mrk-[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$")
_STACK_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,127}$")

ImageBase = Literal["cpu", "cuda"]


class SettingsError(ValueError):
    """Invalid CDK context. ``problems`` holds one message per bad key; ``str()`` lists them one per line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid CDK context:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True)
class AppSettings:
    """Everything the constructs need to know about this deployment."""

    alert_emails: tuple[str, ...] = ()
    vpc_subnet_ids: tuple[str, ...] = ()
    vpc_security_group_ids: tuple[str, ...] = ()
    kms_key_arn: str | None = None
    removal_policy: Literal["retain", "destroy"] = "retain"
    job_prefix: str = DEFAULT_JOB_PREFIX
    default_pipeline: Path = field(default_factory=lambda: REPO_ROOT / "configs" / "pipeline.yaml")
    image_build_arg_base: ImageBase = "cpu"
    stack_name: str = DEFAULT_STACK_NAME
    # The reward-plateau alarm: evaluations without improvement (0: no alarm); it emails only when asked.
    plateau_evaluations: int = 10
    plateau_notify: bool = False

    @property
    def uses_vpc(self) -> bool:
        """Whether training jobs run in the customer's VPC (both subnets and security groups are given)."""
        return bool(self.vpc_subnet_ids)

    @property
    def cdk_removal_policy(self) -> RemovalPolicy:
        """The CDK removal policy for stateful resources (bucket, repository, keys)."""
        return RemovalPolicy.DESTROY if self.removal_policy == "destroy" else RemovalPolicy.RETAIN

    @classmethod
    def from_context(cls, get: Callable[[str], Any]) -> AppSettings:
        """Build and validate settings from a context getter such as ``app.node.try_get_context``."""
        problems: list[str] = []

        emails = _as_list(get("alert_email"))
        problems += [f"alert_email: '{e}' is not an email address" for e in emails if not _EMAIL.match(e)]

        subnets = _as_list(get("vpc_subnet_ids"))
        groups = _as_list(get("vpc_security_group_ids"))
        problems += [f"vpc_subnet_ids: '{s}' is not a subnet id (subnet-...)" for s in subnets
                     if not _SUBNET.match(s)]
        problems += [f"vpc_security_group_ids: '{g}' is not a security group id (sg-...)" for g in groups
                     if not _SECURITY_GROUP.match(g)]
        if bool(subnets) != bool(groups):
            problems.append("vpc_subnet_ids and vpc_security_group_ids: give both or neither "
                            "(SageMaker's VpcConfig needs subnets and security groups)")

        kms_key_arn = _as_str(get("kms_key_arn")) or None
        if kms_key_arn is not None and not _KMS_KEY_ARN.match(kms_key_arn):
            problems.append(f"kms_key_arn: '{kms_key_arn}' is not a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID)")

        removal = (_as_str(get("removal_policy")) or "retain").lower()
        if removal not in ("retain", "destroy"):
            problems.append(f"removal_policy: '{removal}' must be retain or destroy")

        # Job names are built from this prefix, the run, the session and the attempt (rlpipe.cloud.naming).
        job_prefix = _as_str(get("job_prefix")) or DEFAULT_JOB_PREFIX
        try:
            check_job_prefix(job_prefix)
        except NamingError as exc:
            problems.append(f"job_prefix: {exc} (it starts every SageMaker training job name)")

        pipeline_value = _as_str(get("default_pipeline")) or "configs/pipeline.yaml"
        default_pipeline = Path(pipeline_value)
        if not default_pipeline.is_absolute():
            default_pipeline = REPO_ROOT / default_pipeline
        if not default_pipeline.is_file():
            problems.append(f"default_pipeline: {default_pipeline} does not exist")

        base = (_as_str(get("image_build_arg_base")) or "cpu").lower()
        if base not in ("cpu", "cuda"):
            problems.append(f"image_build_arg_base: '{base}' must be cpu or cuda")

        stack_name = _as_str(get("stack_name")) or DEFAULT_STACK_NAME
        if not _STACK_NAME.match(stack_name):
            problems.append(f"stack_name: '{stack_name}' is not a valid CloudFormation stack name")

        plateau_value = _as_str(get("plateau_evaluations")) or str(cls.plateau_evaluations)
        plateau_evaluations = int(plateau_value) if plateau_value.isdigit() else -1
        if plateau_evaluations < 0:
            problems.append(f"plateau_evaluations: '{plateau_value}' must be a whole number of evaluations "
                            "(0 for no alarm)")
        notify_value = (_as_str(get("plateau_notify")) or "false").lower()
        if notify_value not in ("true", "false"):
            problems.append(f"plateau_notify: '{notify_value}' must be true or false")

        if problems:
            raise SettingsError(problems)
        return cls(
            alert_emails=tuple(emails),
            vpc_subnet_ids=tuple(subnets),
            vpc_security_group_ids=tuple(groups),
            kms_key_arn=kms_key_arn,
            removal_policy=removal,  # type: ignore[arg-type]
            job_prefix=job_prefix,
            default_pipeline=default_pipeline,
            image_build_arg_base=base,  # type: ignore[arg-type]
            stack_name=stack_name,
            plateau_evaluations=plateau_evaluations,
            plateau_notify=notify_value == "true",
        )


def cdk_json_context() -> dict[str, Any]:
    """The ``context`` block of cdk.json: feature flags and setting defaults.

    The CDK CLI passes it to the app; ``python app.py`` and tests load it themselves, so all three synthesize
    the same template.
    """
    return json.loads(CDK_JSON.read_text()).get("context", {})


def _as_str(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _as_list(value: Any) -> list[str]:
    """A context value as a list of non-empty strings: JSON lists from cdk.json, comma-separated from ``-c``."""
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return [str(v).strip() for v in items if str(v).strip()]
