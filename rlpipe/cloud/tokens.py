"""Task tokens of executions waiting for a training job to end, kept in S3 by job name.

A state machine execution waits for a job with a ``.waitForTaskToken`` task; whoever learns that the job
ended (the job-state event, the waiting step itself when the job ended first, the scheduled reconciliation)
finds the token by the job's name and completes the task. One object per token,
``tokens/<job name>/<digest of the token>.json``: the event carries only the job's name, and reconciliation
lists one small prefix instead of every run. A re-wait (after a heartbeat timeout) stores a new token beside
the old one, so removing one token never removes another.

Completing a task is idempotent: SageMaker may send an event more than once, and a token closed before
(completed by someone else, timed out, or its execution gone) answers ``TaskTimedOut``, ``InvalidToken`` or
``TaskDoesNotExist``, which here means "already done".
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rlpipe.state import utcnow

log = logging.getLogger(__name__)

TOKENS_PREFIX = "tokens/"
# SendTask* errors that mean the task is no longer waiting (Step Functions API reference, SendTaskSuccess).
CLOSED_TOKEN_ERRORS = ("TaskTimedOut", "InvalidToken", "TaskDoesNotExist")
_DIGEST_LEN = 24


@dataclass(frozen=True)
class WaitingTask:
    """One stored token: which job it waits for, the run, and the previous job whose pool may idle."""

    key: str
    job_name: str
    token: str
    run_id: str
    previous_job: str = ""
    stored_at: str = ""


def _error_code(err: Exception) -> str | None:
    return getattr(err, "response", {}).get("Error", {}).get("Code")


class TokenStore:
    """The waiting tasks' tokens in the pipeline bucket."""

    def __init__(self, s3: Any, bucket: str) -> None:
        self.s3 = s3
        self.bucket = bucket

    @staticmethod
    def job_prefix(job_name: str) -> str:
        return f"{TOKENS_PREFIX}{job_name}/"

    @classmethod
    def key(cls, job_name: str, token: str) -> str:
        """Where the token waiting for ``job_name`` is kept."""
        return f"{cls.job_prefix(job_name)}{hashlib.sha256(token.encode()).hexdigest()[:_DIGEST_LEN]}.json"

    def put(self, job_name: str, token: str, run_id: str, previous_job: str = "") -> WaitingTask:
        """Store a token (a retried store writes the same object again)."""
        task = WaitingTask(key=self.key(job_name, token), job_name=job_name, token=token, run_id=run_id,
                           previous_job=previous_job, stored_at=utcnow())
        body = {"job_name": job_name, "token": token, "run_id": run_id, "previous_job": previous_job,
                "stored_at": task.stored_at}
        self.s3.put_object(Bucket=self.bucket, Key=task.key, Body=json.dumps(body).encode(),
                           ContentType="application/json")
        return task

    def _read(self, key: str) -> WaitingTask | None:
        try:
            doc = json.loads(self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read())
        except Exception as err:
            if _error_code(err) in ("NoSuchKey", "404"):
                return None  # removed meanwhile: someone completed it
            raise
        return WaitingTask(key=key, job_name=doc["job_name"], token=doc["token"], run_id=doc.get("run_id", ""),
                           previous_job=doc.get("previous_job", ""), stored_at=doc.get("stored_at", ""))

    def _keys(self, prefix: str) -> list[str]:
        keys: list[str] = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            keys += [o["Key"] for o in page.get("Contents", [])]
        return keys

    def for_job(self, job_name: str) -> list[WaitingTask]:
        """The tokens waiting for ``job_name`` (usually one; none once completed)."""
        return [t for t in (self._read(k) for k in self._keys(self.job_prefix(job_name))) if t is not None]

    def waiting(self) -> dict[str, list[WaitingTask]]:
        """Every stored token, by job name."""
        out: dict[str, list[WaitingTask]] = {}
        for key in self._keys(TOKENS_PREFIX):
            task = self._read(key)
            if task is not None:
                out.setdefault(task.job_name, []).append(task)
        return out

    def remove(self, task: WaitingTask) -> None:
        """Forget a token that is completed or no longer waited on (deleting a missing key succeeds)."""
        self.s3.delete_object(Bucket=self.bucket, Key=task.key)


def complete(sfn: Any, token: str, *, output: Mapping[str, Any] | None = None,
             error: tuple[str, str] | None = None) -> bool:
    """SendTaskSuccess with ``output`` (or SendTaskFailure with ``error`` = (name, cause)).

    Returns True when this call closed the task, False when it was closed before (a duplicate event, the
    race between the event and the waiting step, or an execution that ended meanwhile).
    """
    try:
        if error is not None:
            sfn.send_task_failure(taskToken=token, error=error[0], cause=error[1][:32768])
        else:
            sfn.send_task_success(taskToken=token, output=json.dumps(dict(output or {})))
    except Exception as err:
        if _error_code(err) in CLOSED_TOKEN_ERRORS:
            return False
        raise
    return True


def heartbeat(sfn: Any, token: str) -> bool:
    """SendTaskHeartbeat; False when the task no longer waits (its token can be forgotten)."""
    try:
        sfn.send_task_heartbeat(taskToken=token)
    except Exception as err:
        if _error_code(err) in CLOSED_TOKEN_ERRORS:
            return False
        raise
    return True
