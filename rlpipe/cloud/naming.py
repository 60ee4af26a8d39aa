"""Names on AWS: run ids, training job names and console links.

A training job name is unique per account and region for good, at most 63 characters of
``[a-zA-Z0-9](-*[a-zA-Z0-9])*``, and starts with ``<job prefix>-`` so IAM can scope SageMaker permissions to
this stack's jobs (:func:`job_name_pattern`; ``<prefix>*`` would also match a stack prefixed ``rlpipe-dev``).
Built from run, session and attempt: a retried step finds its job, a new attempt never collides.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timezone

DEFAULT_STACK_NAME = "RlpipeStack"
DEFAULT_JOB_PREFIX = "rlpipe"
JOB_NAME_MAX = 63
JOB_NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*$")
# The prefix leaves room for "-<run hash>-<index>-<session>-<attempt>".
JOB_PREFIX_MAX = 20
RUN_ID_MAX = 80
RUN_ID_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*$")
_RUN_HASH_LEN = 8
_INDEX_WIDTH = 3
_RUN_PIPELINE_PART = 40


class NamingError(ValueError):
    """A name that AWS would reject."""


def check_job_prefix(prefix: str) -> str:
    """Return ``prefix`` if it can start a training job name, else raise :class:`NamingError`."""
    if not (1 <= len(prefix) <= JOB_PREFIX_MAX) or not JOB_NAME_RE.match(prefix):
        raise NamingError(f"job prefix {prefix!r} must be 1-{JOB_PREFIX_MAX} characters of letters, digits "
                          "and inner hyphens")
    return prefix


def job_name_pattern(prefix: str) -> str:
    """The IAM resource-name pattern of every job a stack with ``prefix`` creates.

    ``<prefix>-????????-???-*``: the prefix, then the shape :func:`job_name` gives (run digest, session
    index), so the jobs of a stack whose prefix merely starts with this one (``rlpipe-dev`` next to
    ``rlpipe``) do not match. The one definition used for the SageMaker ARNs (``training-job/<pattern>``)
    and the training jobs' log streams.
    """
    return f"{check_job_prefix(prefix)}-{'?' * _RUN_HASH_LEN}-{'?' * _INDEX_WIDTH}-*"


def is_valid_job_name(name: str) -> bool:
    """Whether SageMaker accepts ``name`` as a training job name."""
    return 1 <= len(name) <= JOB_NAME_MAX and bool(JOB_NAME_RE.match(name))


def is_valid_run_id(run_id: str) -> bool:
    """Whether ``run_id`` has the shape :func:`new_run_id` gives (safe in S3 keys and tags)."""
    return 1 <= len(run_id) <= RUN_ID_MAX and bool(RUN_ID_RE.match(run_id))


def _digest(text: str, length: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def new_run_id(pipeline: str, started_at: datetime | str, token: str) -> str:
    """A run id: pipeline name, start time (UTC, to the second) and a short digest of ``token``.

    ``token`` is the execution name, so a retried start step derives the same id while two executions
    started in the same second still get different ones.
    """
    if isinstance(started_at, str):
        started_at = datetime.fromisoformat(started_at.replace("Z", "+00:00"))
    if started_at.tzinfo is not None:
        started_at = started_at.astimezone(timezone.utc)
    head = pipeline[:_RUN_PIPELINE_PART].rstrip("-") or "run"
    return f"{head}-{started_at:%Y%m%d-%H%M%S}-{_digest(token, 6)}"


def job_name(prefix: str, run_id: str, index: int, session: str, attempt: int) -> str:
    """The training job name of ``attempt`` (1-based) of session ``index`` of ``run_id``.

    The run enters as a digest (run ids are longer than the name allows); the session name is shortened
    to fit. Tags on the job carry the full run id and session name.
    """
    check_job_prefix(prefix)
    if not 0 <= index < 10 ** _INDEX_WIDTH or attempt < 1:
        raise NamingError(f"index must be 0-{10 ** _INDEX_WIDTH - 1} and attempt >= 1 (got {index}, {attempt})")
    head = f"{prefix}-{_digest(run_id, _RUN_HASH_LEN)}-{index:0{_INDEX_WIDTH}d}-"
    tail = f"-{attempt}"
    room = JOB_NAME_MAX - len(head) - len(tail)
    part = re.sub(r"[^a-zA-Z0-9-]", "-", session)[:max(room, 0)].strip("-") or "s"
    name = f"{head}{part}{tail}"
    if not is_valid_job_name(name):  # unreachable for valid prefixes and sessions; kept as a guard
        raise NamingError(f"cannot build a valid job name from {prefix!r}, {session!r}: {name!r}")
    return name


def console_url(region: str, service: str, fragment: str) -> str:
    """A page of the AWS console in ``region``: ``service`` (e.g. ``states``) and the page after ``#``."""
    return f"https://{region}.console.aws.amazon.com/{service}/home?region={region}#{fragment}"


def execution_console_url(region: str, execution_arn: str) -> str:
    """A Step Functions execution in the console."""
    return console_url(region, "states", f"/v2/executions/details/{execution_arn}")


def dashboard_console_url(region: str, dashboard: str) -> str:
    """A CloudWatch dashboard in the console."""
    return console_url(region, "cloudwatch", f"dashboards/dashboard/{dashboard}")


def job_console_url(region: str, job_name: str) -> str:
    """A SageMaker training job in the console."""
    return console_url(region, "sagemaker", f"/jobs/{job_name}")
