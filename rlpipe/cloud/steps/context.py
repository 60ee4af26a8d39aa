"""What every step shares: its :class:`Context`, the per-container caches, the errors a caller sees, SNS subjects.

Errors a caller should see are raised as :class:`InvalidInput` (bad execution input: nothing was created)
or :class:`RunConflict`; Step Functions names the error after the exception class.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from rlpipe.cloud.environment import LambdaSettings
from rlpipe.cloud.pacing import Timing
from rlpipe.cloud.requests import StackSettings
from rlpipe.cloud.store import RunStore, S3Store
from rlpipe.config import PipelineConfig
from rlpipe.plan import Plan

T = TypeVar("T")

# SNS: a Subject is ASCII without line breaks and shorter than 100 characters.
SUBJECT_MAX = 99


class InvalidInput(Exception):
    """The execution input cannot start a run; nothing was created."""


class RunConflict(Exception):
    """The run is being driven by another execution."""


_CLIENTS: dict[str, Any] = {}


def client(service: str) -> Any:
    """A cached boto3 client (created once per Lambda container)."""
    if service not in _CLIENTS:
        import boto3

        _CLIENTS[service] = boto3.client(service)
    return _CLIENTS[service]


def reset_clients() -> None:
    """Forget cached clients and documents (tests start a fresh mocked AWS)."""
    _CLIENTS.clear()
    _RUN_DOCUMENTS.clear()


@dataclass
class Context:
    """What a step needs from its environment."""

    settings: StackSettings
    timing: Timing
    s3: Any
    sagemaker: Any
    sns: Any = None
    topic_arn: str | None = None
    default_pipeline_key: str | None = None
    region: str | None = None
    stepfunctions: Any = None
    dashboard_url: str | None = None

    @classmethod
    def from_env(cls) -> Context:
        """Settings from the environment (:class:`LambdaSettings`), boto3 clients from the runtime's credentials."""
        env = LambdaSettings.from_env()
        return cls(settings=env.stack, timing=env.timing, s3=client("s3"), sagemaker=client("sagemaker"),
                   sns=client("sns") if env.topic_arn else None, topic_arn=env.topic_arn,
                   default_pipeline_key=env.default_pipeline_key, region=env.region,
                   dashboard_url=env.dashboard_url)

    def sfn(self) -> Any:
        """The Step Functions client (created on first use: only StartRun needs it)."""
        if self.stepfunctions is None:
            self.stepfunctions = client("stepfunctions")
        return self.stepfunctions

    def publish(self, subject: str, message: str) -> bool:
        """Publish to the alert topic; False when this step has no topic configured."""
        if self.sns is None or not self.topic_arn:
            return False
        self.sns.publish(TopicArn=self.topic_arn, Subject=sns_subject(subject), Message=message)
        return True

    def run_store(self, run_id: str) -> RunStore:
        return RunStore(self.s3, self.settings.bucket, run_id)

    @property
    def store(self) -> S3Store:
        return S3Store(self.s3, self.settings.bucket)


def sns_subject(text: str) -> str:
    """``text`` as an SNS Subject: printable ASCII on one line, at most ``SUBJECT_MAX`` characters."""
    clean = "".join(c if " " <= c <= "~" else "?" for c in " ".join(text.split()))
    return clean[:SUBJECT_MAX].rstrip() or "rlpipe"


# Documents a run writes once at start and never changes, per Lambda container: (bucket, run, key) -> document.
_RUN_DOCUMENTS: dict[tuple[str, str, str], Any] = {}


def _run_document(store: RunStore, key: str, parse: Callable[[Any], T]) -> T:
    cache_key = (store.bucket, store.run_id, key)
    if cache_key not in _RUN_DOCUMENTS:
        if len(_RUN_DOCUMENTS) > 32:
            _RUN_DOCUMENTS.clear()
        _RUN_DOCUMENTS[cache_key] = parse(store.get_json(key))
    return _RUN_DOCUMENTS[cache_key]


def load_pipeline(store: RunStore) -> PipelineConfig:
    """The run's resolved pipeline. Validated at start; re-reading the resolved form skips the env checks."""
    return _run_document(store, store.keys.pipeline, PipelineConfig.model_validate)


def load_plan(store: RunStore) -> Plan:
    """The run's plan as StartRun wrote it to ``plan.json``."""
    return _run_document(store, store.keys.plan, Plan.from_dict)
