"""The S3 run store: where a run's documents live in the stack's bucket, and reading/writing them.

Layout (all under ``s3://<bucket>/``)::

    configs/...                                   pipelines uploaded by ``rlpipe start``;
    configs/default/pipeline.json                 the default pipeline, written at deploy
    executions/<execution name>.json              which run an execution drives, and whether it finished
    runs/<run_id>/state.json                      the run's state (RunState), the single source of truth
    runs/<run_id>/execution.json                  the execution that drives (or last drove) the run
    runs/<run_id>/pipeline.json, plan.json        the resolved pipeline and its plan, written once
    runs/<run_id>/attempts.json                   attempt numbers handed out per session (idempotent retries)
    runs/<run_id>/jobs.json                       per-job times and costs (a session's attempts add up)
    runs/<run_id>/sessions/<NNN>-<name>/config/   the ``config`` channel: session.json for the trainer
    checkpoints/<run_id>/<name>/                  CheckpointConfig.S3Uri of the session (and its metrics.json);
                                                  a prefix of its own so a lifecycle rule can expire it
    runs/<run_id>/tensorboard/<name>/             TensorBoardOutputConfig.S3OutputPath
    runs/<run_id>/output/<job>/output/model.tar.gz   the session's handoff bundle (SageMaker's output)
    runs/<run_id>/report.{json,md,html}, learning_curve.png
    runs/<run_id>/lineages.json                   several seeds: the lineages, each a single-seed run of its
                                                  own under runs/<run_id>-seed-<s>/; the run's own prefix then
                                                  holds pipeline.json, plan.json, execution.json and the report
                                                  across lineages

S3 writes of a whole object are atomic (a reader sees the old or the new object, never half of one), so
state.json is simply overwritten; only one execution drives a run at a time (see ``steps.start_run``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from rlpipe.contract import LINEAGES_FILE, METRICS_FILE, PLAN_FILE, REPORT_FILES, SESSION_FILE, STATE_FILE
from rlpipe.outcome import SessionOutcome
from rlpipe.state import RunState

RUNS_PREFIX = "runs/"
CHECKPOINTS_PREFIX = "checkpoints/"
CONFIGS_PREFIX = "configs/"
EXECUTIONS_PREFIX = "executions/"
DEFAULT_PIPELINE_KEY = f"{CONFIGS_PREFIX}default/pipeline.json"
# Parts of a run's keys below runs/<run_id>/ that training jobs touch (see TRAINING_JOB_ACCESS).
_SESSIONS_DIR = "sessions/"
_CONFIG_DIR = "config/"
_OUTPUT_DIR = "output/"
_TENSORBOARD_DIR = "tensorboard/"
_CONTENT_TYPES = {"json": "application/json", "md": "text/markdown; charset=utf-8",
                  "html": "text/html; charset=utf-8", "png": "image/png"}


def s3_uri(bucket: str, key: str) -> str:
    """``s3://bucket/key``."""
    return f"s3://{bucket}/{key}"


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/key`` into bucket and key; raise ValueError for anything else."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc or not parsed.path.lstrip("/"):
        raise ValueError(f"not an S3 object URI (s3://bucket/key): {uri!r}")
    return parsed.netloc, parsed.path.lstrip("/")


def execution_key(execution_name: str) -> str:
    """Key of the record linking an execution to its run."""
    return f"{EXECUTIONS_PREFIX}{execution_name}.json"


def is_missing(err: Exception) -> bool:
    """Whether a botocore error means the object does not exist."""
    code = getattr(err, "response", {}).get("Error", {}).get("Code")
    return code in ("NoSuchKey", "404", "NotFound")


@dataclass(frozen=True)
class RunKeys:
    """Every key of one run."""

    run_id: str

    @property
    def root(self) -> str:
        return f"{RUNS_PREFIX}{self.run_id}/"

    @property
    def state(self) -> str:
        return self.root + STATE_FILE

    @property
    def pipeline(self) -> str:
        return self.root + "pipeline.json"

    @property
    def plan(self) -> str:
        return self.root + PLAN_FILE

    @property
    def lineages(self) -> str:
        """A run with several seeds: its lineages' runs (each a single-seed run of its own)."""
        return self.root + LINEAGES_FILE

    @property
    def attempts(self) -> str:
        return self.root + "attempts.json"

    @property
    def jobs(self) -> str:
        return self.root + "jobs.json"

    @property
    def owner(self) -> str:
        return self.root + "execution.json"

    @property
    def output(self) -> str:
        return self.root + _OUTPUT_DIR

    def session(self, index: int, name: str) -> str:
        return f"{self.root}{_SESSIONS_DIR}{index:03d}-{name}/"

    def config_channel(self, index: int, name: str) -> str:
        """Prefix of the session's ``config`` channel (holds only session.json)."""
        return self.session(index, name) + _CONFIG_DIR

    def session_file(self, index: int, name: str) -> str:
        return self.config_channel(index, name) + SESSION_FILE

    def checkpoints(self, name: str) -> str:
        """Per-session checkpoint prefix: a new attempt of a session resumes from the last one's checkpoints."""
        return f"{CHECKPOINTS_PREFIX}{self.run_id}/{name}/"

    def metrics(self, name: str) -> str:
        return self.checkpoints(name) + METRICS_FILE

    def tensorboard(self, name: str) -> str:
        return f"{self.root}{_TENSORBOARD_DIR}{name}/"

    def report(self, kind: str) -> str:
        return self.root + REPORT_FILES[kind]


@dataclass(frozen=True)
class TrainingJobAccess:
    """Key patterns (IAM wildcards) of what a training job reads and writes, from the layout above.

    ``read``: its ``config`` channel, the previous session's bundle (``previous`` channel) and its checkpoints
    (copied in at job start). ``write``: model.tar.gz and SageMaker's other job output, TensorBoard files,
    checkpoints. ``delete``: old checkpoints. ``list``: the prefixes SageMaker lists to download channels and
    checkpoints (``s3:prefix`` patterns).
    """

    read: tuple[str, ...]
    write: tuple[str, ...]
    delete: tuple[str, ...]
    list: tuple[str, ...]


_ANY_RUN = f"{RUNS_PREFIX}*/"
TRAINING_JOB_ACCESS = TrainingJobAccess(
    read=(f"{_ANY_RUN}{_SESSIONS_DIR}*/{_CONFIG_DIR}*", f"{_ANY_RUN}{_OUTPUT_DIR}*", f"{CHECKPOINTS_PREFIX}*"),
    write=(f"{_ANY_RUN}{_OUTPUT_DIR}*", f"{_ANY_RUN}{_TENSORBOARD_DIR}*", f"{CHECKPOINTS_PREFIX}*"),
    delete=(f"{CHECKPOINTS_PREFIX}*",),
    list=(f"{_ANY_RUN}{_SESSIONS_DIR}*/{_CONFIG_DIR}*", f"{_ANY_RUN}{_OUTPUT_DIR}*", f"{CHECKPOINTS_PREFIX}*"),
)


class S3Store:
    """JSON and bytes in one bucket, through a boto3 S3 client."""

    def __init__(self, s3: Any, bucket: str) -> None:
        self.s3 = s3
        self.bucket = bucket

    def uri(self, key: str) -> str:
        return s3_uri(self.bucket, key)

    def get_bytes(self, key: str) -> bytes:
        return self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def get_json(self, key: str) -> Any:
        return json.loads(self.get_bytes(key))

    def get_json_or_none(self, key: str) -> Any:
        """The JSON at ``key``, or None when there is no such object."""
        try:
            return self.get_json(key)
        except Exception as err:  # botocore ClientError; the Lambda has no other S3 exceptions to expect
            if is_missing(err):
                return None
            raise

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)

    def put_json(self, key: str, data: Any) -> None:
        # Compact on purpose: indented output goes through json's pure-Python encoder, many times slower on
        # a large state document.
        body = json.dumps(data, separators=(",", ":"), default=str).encode()
        self.put_bytes(key, body, "application/json")

    def exists(self, key: str) -> bool:
        try:
            self.s3.head_object(Bucket=self.bucket, Key=key)
        except Exception as err:
            if is_missing(err):
                return False
            raise
        return True


class RunStore(S3Store):
    """One run's documents."""

    def __init__(self, s3: Any, bucket: str, run_id: str) -> None:
        super().__init__(s3, bucket)
        self.run_id = run_id
        self.keys = RunKeys(run_id)

    def exists_run(self) -> bool:
        return self.exists(self.keys.state)

    def load_state(self) -> RunState:
        return RunState.model_validate(self.get_json(self.keys.state))

    def save_state(self, state: RunState) -> None:
        state.touch()
        self.put_json(self.keys.state, state.to_json())

    def read_outcome(self, session: str) -> SessionOutcome | None:
        """The session's metrics.json from its checkpoint prefix (None when absent or unreadable)."""
        key = self.keys.metrics(session)
        try:
            data = self.get_json_or_none(key)
        except ValueError:  # damaged JSON: the report still comes out, without this session's metrics
            return None
        return SessionOutcome.read(data, self.uri(key))

    def put_report(self, kind: str, data: bytes) -> str:
        """Write one report file; returns its URI."""
        key = self.keys.report(kind)
        self.put_bytes(key, data, _CONTENT_TYPES[kind])
        return self.uri(key)
