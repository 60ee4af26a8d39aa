"""Run the synthesized state machine on moto's ASL interpreter, with real handlers and a SageMaker stand-in.

Every patch of moto internals lives in this module, and moto is pinned (==5.2.5) because of them:

* ``LambdaSimpleBackend.invoke``: call the real handler of ``lambdas/<name>/handler.py`` in-process, with the
  environment the template gives that function, against moto's S3/SNS/SageMaker; raised exceptions become
  Lambda function errors (``errorType`` = exception class), as in the Lambda runtime. Remains: without
  Docker, moto's Lambda echoes the payload.
* ``SageMakerModelBackend.create_training_job`` / ``describe_training_job`` and two response methods moto lacks
  (``update_training_job``, ``stop_training_job``): a job is created InProgress, runs when first described
  (the real trainer in a SageMaker-shaped directory, or an instant stand-in), then reads back Completed or
  Failed, with WarmPoolStatus and pool reuse as SageMaker reports them. A reused name fails with ResourceInUse.
  Remains: moto's job reads back Completed at once, never InProgress, Failed or with a pool, and its
  SageMakerResponse has no UpdateTrainingJob or StopTrainingJob.
* ``boto_client_for`` in the Lambda, SNS and aws-sdk task modules: one client per (region, service) instead
  of a new one per task (creating a SageMaker client costs tens of milliseconds; a 200-session run makes
  hundreds of them). Behaviour is unchanged. Remains for speed only; the clients it makes act as the state
  machine's role for the IAM check.
* ``CallbackEndpoint.setup_heartbeat_endpoint``: a task completed before moto sets up its heartbeat watch
  (AwaitJobEnd completing its own task when the job ended first) is seen at once, as on AWS; moto 5.2.5 would
  notice it only when the heartbeat times out.
* Nothing for job-state events: moto has no SageMaker-to-EventBridge link, so the harness itself delivers
  "SageMaker Training Job State Change" events to the JobEvents Lambda once AwaitJobEnd has returned
  (:attr:`Harness.job_events`: once, twice and out of order, or lost), as EventBridge would.
* The aws-sdk task's error naming: ``SageMaker.<ErrorCode>Exception`` as Step Functions documents it (moto
  lower-cases the service and names unmodelled errors after the client class). Remains: unpatched, a
  ThrottlingException (not in botocore's model) reaches the definition as ``sagemaker.sagemakerException``,
  so Retry/Catch on error codes could not be tested.

IAM is enforced on every call a handler or the state machine makes (:mod:`tests.aws_iam`): a call its role in
the template does not allow fails as on AWS, and the harness fails listing each denial when it stops. Every
call is also kept (``Harness.iam.calls``); when the harness stops, each CreateTrainingJob, UpdateTrainingJob and
StopTrainingJob request among them must satisfy botocore's model in full (:mod:`tests.strict_requests`).
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import boto3
import moto
from moto import mock_aws

MOTO_VERSION = "5.2.5"
if moto.__version__ != MOTO_VERSION:  # the patches below reach into moto's internals
    raise RuntimeError(f"tests/sfn_harness.py is written against moto=={MOTO_VERSION}, found {moto.__version__}")

from moto.awslambda_simple.models import LambdaSimpleBackend  # noqa: E402
from moto.core.exceptions import JsonRESTError  # noqa: E402
from moto.core.responses import ActionResult  # noqa: E402
from moto.sagemaker import models as sm_models  # noqa: E402
from moto.sagemaker.exceptions import ResourceInUseException, ValidationError  # noqa: E402
from moto.sagemaker.responses import SageMakerResponse  # noqa: E402
from moto.stepfunctions.parser.asl.eval.callback.callback import CallbackEndpoint  # noqa: E402
from moto.stepfunctions.parser.asl.component.state.exec.state_task import lambda_eval_utils  # noqa: E402
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import (  # noqa: E402
    state_task_service_aws_sdk as aws_sdk_task,
)
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import (  # noqa: E402
    state_task_service_sns as sns_task,
)

from tests.aws_iam import STATE_MACHINE, Grants, IamEnforcer  # noqa: E402
from tests.strict_requests import check_calls  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
ACCOUNT = "123456789012"
REGION = "us-east-1"
BUCKET = "rlpipe-test-bucket"
TRAINING_ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/rlpipe-training"
MOCK_CONFIG = {"stepfunctions": {"execute_state_machine": True}, "lambda": {"use_docker": False}}


# ---- the SageMaker stand-in --------------------------------------------------------------------------------

@dataclass
class Job:
    """One training job as the stand-in sees it."""

    name: str
    request: dict[str, Any]
    status: str = "InProgress"
    failure: str | None = None
    described: int = 0
    started: datetime | None = None
    ended: datetime | None = None
    seconds: int = 0
    pool: str | None = None  # WarmPoolStatus.Status
    pool_settle: int = 0     # describes after the end before the pool reads Available
    reused_by: str | None = None
    keep_alive: int = 0
    release_requests: int = 0

    @property
    def session(self) -> str:
        return next(t["Value"] for t in self.request.get("Tags", []) if t["Key"] == "rlpipe:session")

    @property
    def run_id(self) -> str:
        return next(t["Value"] for t in self.request.get("Tags", []) if t["Key"] == "rlpipe:run-id")

    def fail_key(self, fail: dict[str, int]) -> str:
        """The key of ``fail`` that names this job: ``<session>@<end of its run id>`` (one lineage: ``hold@seed-1``)
        before ``<session>``."""
        return next((k for k in fail if k.partition("@")[0] == self.session and "@" in k
                     and self.run_id.endswith(k.partition("@")[2])), self.session)

    def pool_key(self) -> tuple[Any, ...]:
        rc = self.request["ResourceConfig"]
        vpc = self.request.get("VpcConfig") or {}
        return (self.request["RoleArn"], rc["InstanceType"], rc["InstanceCount"], rc["VolumeSizeInGB"],
                rc.get("VolumeKmsKeyId"), tuple(vpc.get("Subnets", [])), tuple(vpc.get("SecurityGroupIds", [])),
                self.request.get("EnableNetworkIsolation", False),
                self.request.get("EnableInterContainerTrafficEncryption", False))


@dataclass
class SageMakerStandIn:
    """Runs jobs: ``mode`` "trainer" (the real trainer, subprocess) or "instant" (writes outputs directly).

    ``fail`` maps a session name (or ``<session>@<run id suffix>``, for one lineage) to how many of its first
    attempts fail (AlgorithmError); ``capacity`` to
    how many fail with SageMaker's CapacityError; ``throttle_creates`` makes that many CreateTrainingJob calls
    raise ``throttle_code`` (ThrottlingException) first. ``pool_quota`` False keeps no pool at all (the default warm-pool quota, 0);
    ``reuse_pools`` False lets no job take over an Available pool (as when SageMaker starts it elsewhere).
    """

    workdir: Path
    mode: str = "instant"
    fail: dict[str, int] = field(default_factory=dict)
    capacity: dict[str, int] = field(default_factory=dict)
    throttle_creates: int = 0
    throttle_code: str = "ThrottlingException"  # or the generic name throttling has been reported under
    in_progress_describes: int = 1  # describes that read InProgress (the job runs at the first one)
    pool_settle_describes: int = 2  # describes after the end that read the pool InUse before Available
    pool_quota: bool = True
    reuse_pools: bool = True
    hold: Callable[[Job], bool] | None = None  # a job it holds runs (reads InProgress) until released or stopped
    billed_seconds: int | None = None  # BillableTimeInSeconds of every job (default: its wall seconds)
    jobs: dict[str, Job] = field(default_factory=dict)
    creates: list[str] = field(default_factory=list)
    max_in_progress: int = 0  # the most jobs InProgress at once (counted at each create)
    trainer_seconds: list[float] = field(default_factory=list)

    def s3(self) -> Any:
        return boto3.client("s3", region_name=REGION)

    # -- API --------------------------------------------------------------------------------------------------
    def create(self, request: dict[str, Any]) -> None:
        if self.throttle_creates > 0:
            self.throttle_creates -= 1
            raise JsonRESTError(self.throttle_code, "Rate exceeded")
        name = request["TrainingJobName"]
        if name in self.jobs:
            raise ResourceInUseException(f"Training job names must be unique within an AWS account and region, "
                                         f"and a training job with this name already exists ({name})")
        job = Job(name=name, request=request, keep_alive=request["ResourceConfig"].get("KeepAlivePeriodInSeconds", 0))
        for other in self.jobs.values():  # SageMaker's warm-pool match
            if self.reuse_pools and other.pool == "Available" and other.pool_key() == job.pool_key():
                other.pool, other.reused_by = "Reused", name
                break
        self.jobs[name] = job
        self.creates.append(name)
        self.max_in_progress = max(self.max_in_progress, sum(j.status == "InProgress" for j in self.jobs.values()))

    def holding(self, name: str) -> bool:
        """Whether ``hold`` keeps job ``name`` running now."""
        job = self.jobs[name]
        return self.hold is not None and job.status == "InProgress" and job.started is None and self.hold(job)

    def describe(self, name: str) -> dict[str, Any]:
        job = self.jobs[name]
        job.described += 1
        if self.holding(name):
            return self._view(job, status="InProgress")
        if job.status == "InProgress" and job.started is None:
            self._run(job)  # ends now; reads InProgress a while, as a job polled mid-run would
        if job.described <= self.in_progress_describes and job.status != "Stopped":
            return self._view(job, status="InProgress")
        self._settle(job)
        return self._view(job)

    def update(self, request: dict[str, Any]) -> None:
        job = self.jobs[request["TrainingJobName"]]
        keep = request.get("ResourceConfig", {}).get("KeepAlivePeriodInSeconds")
        if keep is not None:
            job.release_requests += 1
            if job.status == "InProgress" and job.started is None:
                job.keep_alive = keep  # changed before the job ends: it keeps what it was last told
            elif keep == 0 and job.pool in ("Available", "InUse"):
                job.pool = "Terminated"

    def stop(self, name: str) -> None:
        job = self.jobs[name]
        if job.status == "InProgress":
            job.status, job.failure = "Stopped", None
            job.ended = datetime.now(timezone.utc)

    def ended_view(self, name: str) -> dict[str, Any]:
        """The job as its terminal state-change event shows it (running it first if nobody described it yet).

        The event takes the place of the describe that used to see the end: the pool settles by one step, as
        for a describe (the settling stands for time passing after the end).
        """
        job = self.jobs[name]
        if job.status == "InProgress" and job.started is None:
            self._run(job)
        self._settle(job)
        return self._view(job)

    def _settle(self, job: Job) -> None:
        if job.pool == "InUse":
            job.pool_settle -= 1
            if job.pool_settle < 0:
                job.pool = "Available"

    def _view(self, job: Job, status: str | None = None) -> dict[str, Any]:
        status = status or job.status
        out: dict[str, Any] = {"TrainingJobStatus": status,
                               "SecondaryStatus": {"InProgress": "Training", "Completed": "Completed",
                                                   "Failed": "Failed", "Stopped": "Stopped"}[status],
                               "ResourceConfig": job.request["ResourceConfig"]}
        if job.started:
            out["TrainingStartTime"] = job.started
        if status != "InProgress":
            out["TrainingEndTime"] = job.ended
            out["TrainingTimeInSeconds"] = job.seconds
            out["BillableTimeInSeconds"] = job.seconds if self.billed_seconds is None else self.billed_seconds
            if status == "Completed":
                output = job.request["OutputDataConfig"]["S3OutputPath"].rstrip("/")
                out["ModelArtifacts"] = {"S3ModelArtifacts": f"{output}/{job.name}/output/model.tar.gz"}
            if job.failure:
                out["FailureReason"] = job.failure
        if job.pool:
            pool: dict[str, Any] = {"Status": job.pool, "ResourceRetainedBillableTimeInSeconds": 3}
            if job.reused_by:
                pool["ReusedByJob"] = job.reused_by
            out["WarmPoolStatus"] = pool
        return out

    # -- running a job ----------------------------------------------------------------------------------------
    def _run(self, job: Job) -> None:
        job.started = datetime.now(timezone.utc)
        t0 = time.monotonic()
        injected = None
        if self.capacity.get(job.session, 0) > 0:
            self.capacity[job.session] -= 1
            injected = "CapacityError: Unable to provision requested ML compute capacity. Please retry using a " \
                       "different ML instance type."
        elif self.fail.get(job.fail_key(self.fail), 0) > 0:
            self.fail[job.fail_key(self.fail)] -= 1
            injected = "AlgorithmError: injected failure (tests/sfn_harness.py)"
        if injected:
            job.status, job.failure = "Failed", injected
        elif self.mode == "trainer":
            ok, reason = self._run_trainer(job)
            job.status, job.failure = ("Completed", None) if ok else ("Failed", reason)
        else:
            self._run_instant(job)
            job.status = "Completed"
        job.ended = datetime.now(timezone.utc)
        job.seconds = max(1, round(time.monotonic() - t0))
        if self.pool_quota and job.keep_alive > 0 and job.status in ("Completed", "Failed"):
            job.pool, job.pool_settle = ("InUse", self.pool_settle_describes) if self.pool_settle_describes \
                else ("Available", 0)

    def _channel(self, job: Job, name: str) -> dict[str, Any] | None:
        return next((c for c in job.request.get("InputDataConfig", []) if c["ChannelName"] == name), None)

    def _download_prefix(self, uri: str, into: Path) -> None:
        bucket, prefix = uri[len("s3://"):].split("/", 1)
        s3 = self.s3()
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(prefix):].lstrip("/") or obj["Key"].rsplit("/", 1)[-1]
                target = into / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read())

    def _upload_dir(self, local: Path, uri: str) -> None:
        bucket, prefix = uri[len("s3://"):].split("/", 1)
        s3 = self.s3()
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            s3.put_object(Bucket=bucket, Key=prefix.rstrip("/") + "/" + path.relative_to(local).as_posix(),
                          Body=path.read_bytes())

    def _put_model(self, job: Job, model_dir: Path) -> None:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for path in sorted(model_dir.rglob("*")):
                tar.add(path, arcname=path.relative_to(model_dir).as_posix(), recursive=False)
        output = job.request["OutputDataConfig"]["S3OutputPath"].rstrip("/")
        bucket, prefix = output[len("s3://"):].split("/", 1)
        self.s3().put_object(Bucket=bucket, Key=f"{prefix}/{job.name}/output/model.tar.gz", Body=buf.getvalue())

    def _run_trainer(self, job: Job) -> tuple[bool, str]:
        """SageMaker's part of a job: channels and checkpoints in, the trainer, model and checkpoints out."""
        root = self.workdir / job.name
        for name in ("config", "previous"):
            channel = self._channel(job, name)
            if channel:
                self._download_prefix(channel["DataSource"]["S3DataSource"]["S3Uri"], root / "input" / "data" / name)
        (root / "input" / "config").mkdir(parents=True, exist_ok=True)
        hyperparameters = job.request.get("HyperParameters", {})
        (root / "input" / "config" / "hyperparameters.json").write_text(json.dumps(hyperparameters))
        checkpoints = job.request["CheckpointConfig"]["S3Uri"]
        self._download_prefix(checkpoints, root / "checkpoints")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        t0 = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "rlpipe.trainer", "--root", str(root)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=600, check=False)
        self.trainer_seconds.append(time.monotonic() - t0)
        (root / "trainer.log").write_text(done.stdout + done.stderr)
        if (root / "checkpoints").is_dir():
            self._upload_dir(root / "checkpoints", checkpoints)
        if done.returncode != 0:
            failure = root / "output" / "failure"
            reason = failure.read_text()[:1024] if failure.is_file() else f"exit code {done.returncode}"
            return False, f"AlgorithmError: {reason}"
        self._put_model(job, root / "model")
        return True, ""

    def _run_instant(self, job: Job) -> None:
        """No training: the files a completed session leaves, with made-up numbers."""
        root = self.workdir / job.name
        config = self._channel(job, "config")
        assert config is not None
        self._download_prefix(config["DataSource"]["S3DataSource"]["S3Uri"], root / "config")
        doc = json.loads((root / "config" / "session.json").read_text())
        session, offset = doc["session"], doc["global_timestep_offset"]
        steps = session["timesteps"]
        now = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        reward = 1.0 + doc["index"] + 0.1 * session.get("seed", 0)  # lineages differ by seed
        require = session.get("require")
        gate = None if not require else {"metric": require["metric"], "at_least": require["at_least"],
                                         "value": reward, "passed": reward >= require["at_least"]}
        metrics = {"session": session["name"], "env": session["env"], "algorithm": session["algorithm"],
                   "global_timestep_offset": offset, "timesteps": steps,
                   "evaluations": [{"timesteps": steps, "global_timesteps": offset + steps,
                                    "mean_reward": reward, "std_reward": 0.1, "wall_seconds": 0.01}],
                   "best_eval_reward": reward, "final_eval_reward": reward, "gate": gate,
                   "timing": {"started_at": now, "first_step_at": now, "ended_at": now, "wall_seconds": 0.01,
                              "fps": 1000.0},
                   "carried": ["policy"] if doc.get("handoff_from") else [], "reset": [], "notes": ["instant stand-in"]}
        model = root / "model"
        model.mkdir(parents=True, exist_ok=True)
        (model / "metrics.json").write_text(json.dumps(metrics))
        (model / "bundle.json").write_text(json.dumps({"session": session["name"], "stand_in": True}))
        previous = self._channel(job, "previous")
        if previous:
            (model / "received_previous.txt").write_text(previous["DataSource"]["S3DataSource"]["S3Uri"])
        checkpoints = job.request["CheckpointConfig"]["S3Uri"]
        bucket, prefix = checkpoints[len("s3://"):].split("/", 1)
        self.s3().put_object(Bucket=bucket, Key=prefix + "metrics.json", Body=json.dumps(metrics).encode())
        self._put_model(job, model)


# ---- resolving the template ------------------------------------------------------------------------------------

def resolve(value: Any, refs: dict[str, str]) -> Any:
    """Resolve the intrinsics CDK uses in the definition and Lambda environments (Join, Ref, GetAtt)."""
    if isinstance(value, dict):
        if "Fn::Join" in value:
            sep, parts = value["Fn::Join"]
            return sep.join(str(resolve(p, refs)) for p in parts)
        if "Ref" in value:
            return refs[value["Ref"]]
        if "Fn::GetAtt" in value:
            logical, attr = value["Fn::GetAtt"]
            return refs[f"{logical}.{attr}"]
        return {k: resolve(v, refs) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, refs) for v in value]
    return value


# ---- the harness -----------------------------------------------------------------------------------------------

class _Context:
    """Enough of the Lambda context object for Powertools."""

    def __init__(self, name: str) -> None:
        self.function_name = name
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = 512
        self.invoked_function_arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}"
        self.aws_request_id = f"req-{time.monotonic_ns()}"
        self.log_group_name = f"/aws/lambda/{name}"
        self.log_stream_name = "test"

    def get_remaining_time_in_millis(self) -> int:
        return 300_000


def load_handler(name: str) -> Any:
    """``lambdas/<name>/handler.py`` as a module of its own."""
    path = REPO / "lambdas" / name / "handler.py"
    spec = importlib.util.spec_from_file_location(f"lambda_handler_{name}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.handler


@dataclass
class Execution:
    """An execution's outcome: description, full history and measurements."""

    status: str
    description: dict[str, Any]
    events: list[dict[str, Any]]
    seconds: float

    @property
    def output(self) -> Any:
        return json.loads(self.description["output"]) if self.description.get("output") else None

    def largest_payload(self) -> int:
        """Bytes of the largest state input/output (or task parameters) in the history."""
        largest = 0
        for event in self.events:
            for key, details in event.items():
                if not key.endswith("EventDetails") or not isinstance(details, dict):
                    continue
                for field_name in ("input", "output", "parameters"):
                    if isinstance(details.get(field_name), str):
                        largest = max(largest, len(details[field_name].encode()))
        return largest

    def states_entered(self) -> list[str]:
        return [e["stateEnteredEventDetails"]["name"] for e in self.events if "stateEnteredEventDetails" in e]

    def failure(self) -> dict[str, Any]:
        return next((e["executionFailedEventDetails"] for e in self.events if "executionFailedEventDetails" in e), {})


def job_state_event(name: str, detail: dict[str, Any]) -> dict[str, Any]:
    """An EventBridge "SageMaker Training Job State Change" event for job ``name`` (detail as described)."""
    body = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in detail.items()
            if k in ("TrainingJobStatus", "SecondaryStatus", "FailureReason", "ResourceConfig",
                     "TrainingStartTime", "TrainingEndTime")}
    return {"version": "0", "id": f"event-{time.monotonic_ns()}", "detail-type": "SageMaker Training Job State Change",
            "source": "aws.sagemaker", "account": ACCOUNT, "region": REGION,
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "resources": [f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:training-job/{name}"],
            "detail": {"TrainingJobName": name, **body}}


SCHEDULED_EVENT = {"version": "0", "detail-type": "Scheduled Event", "source": "aws.events", "account": ACCOUNT,
                   "region": REGION, "resources": [], "detail": {}}


class Harness:
    """Moto with the synthesized state machine deployed; see the module docstring for what is patched.

    ``job_events`` says how the harness plays EventBridge after AwaitJobEnd stored a token: ``"once"`` (the
    job's terminal event), ``"twice"`` (the terminal event, a stale InProgress one arriving late, then the
    terminal one again), or ``"lost"`` (none: only reconciliation can end the wait).
    """

    def __init__(self, template: dict[str, Any], ids: dict[str, Any], workdir: Path, mode: str = "instant") -> None:
        self.template = template
        self.ids = ids
        self.workdir = workdir
        self.sagemaker = SageMakerStandIn(workdir / "jobs", mode=mode)
        self.lambda_calls: list[tuple[str, int, int]] = []  # (function, request bytes, response bytes)
        self.lambda_seconds: list[tuple[str, float]] = []  # (function, seconds in its handler)
        self.job_events = "once"
        self.delivered: list[dict[str, Any]] = []  # job-state events delivered, with the Lambda's answer
        self._deliveries: list[threading.Thread] = []
        self._started = 0.0
        self._lock = threading.Lock()
        self._handlers: dict[str, Any] = {}
        self._env: dict[str, dict[str, str]] = {}
        # CreateTrainingJob's request as sent (moto's backend receives it split into snake_case arguments).
        self._current_request: dict[str, Any] = {}
        self.iam: IamEnforcer | None = None
        # Tests that prove the IAM check fails change the template's grants through this.
        self.edit_grants: Any = None

    # -- setup ------------------------------------------------------------------------------------------------
    @contextmanager
    def running(self) -> Iterator[Harness]:
        with mock_aws(config=MOCK_CONFIG), self._patched():
            from rlpipe.cloud import steps

            steps.reset_clients()
            self._deploy()
            grants = Grants.from_template(self.template, self.refs, self.ids["functions"], self.ids["state_machine"],
                                          REGION, ACCOUNT)
            self.iam = IamEnforcer(self.edit_grants(grants) if self.edit_grants else grants)
            try:
                with self.iam.active():
                    yield self
                self.iam.check()
                check_calls(self.iam.calls)
            finally:
                steps.reset_clients()

    def _deploy(self) -> None:
        self.s3 = boto3.client("s3", region_name=REGION)
        self.s3.create_bucket(Bucket=BUCKET)
        sns = boto3.client("sns", region_name=REGION)
        self.topic_arn = sns.create_topic(Name="rlpipe-alerts")["TopicArn"]
        sqs = boto3.client("sqs", region_name=REGION)
        self.queue_url = sqs.create_queue(QueueName="alerts")["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=self.queue_url,
                                             AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        sns.subscribe(TopicArn=self.topic_arn, Protocol="sqs", Endpoint=queue_arn)

        resources = self.template["Resources"]
        refs: dict[str, str] = {"AWS::Partition": "aws", "AWS::Region": REGION, "AWS::AccountId": ACCOUNT,
                                "AWS::URLSuffix": "amazonaws.com"}
        fn_names = {logical: name for name, logical in self.ids["functions"].items()}
        for logical, res in resources.items():
            kind = res["Type"]
            if kind == "AWS::S3::Bucket":
                refs[logical], refs[f"{logical}.Arn"] = BUCKET, f"arn:aws:s3:::{BUCKET}"
            elif kind == "AWS::SNS::Topic":
                refs[logical] = self.topic_arn
            elif kind == "AWS::IAM::Role":
                refs[f"{logical}.Arn"] = TRAINING_ROLE_ARN if "Training" in logical else \
                    f"arn:aws:iam::{ACCOUNT}:role/{logical}"
            elif kind == "AWS::Lambda::Function":
                name = fn_names[logical]
                refs[f"{logical}.Arn"] = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}"
        for logical, name in fn_names.items():
            variables = resources[logical]["Properties"].get("Environment", {}).get("Variables", {})
            self._env[name] = {k: str(resolve(v, refs)) for k, v in variables.items()}
            self._handlers[name] = load_handler(name)

        machine = resources[self.ids["state_machine"]]["Properties"]
        self.definition = resolve(machine["DefinitionString"], refs)
        sfn = boto3.client("stepfunctions", region_name=REGION)
        self.sfn = sfn
        self.state_machine_arn = sfn.create_state_machine(
            name="rlpipe-runs", definition=self.definition,
            roleArn=f"arn:aws:iam::{ACCOUNT}:role/rlpipe-sfn")["stateMachineArn"]
        refs[self.ids["state_machine"]] = self.state_machine_arn
        refs[f"{self.ids['state_machine']}.Name"] = "rlpipe-runs"
        self.refs = refs

    @contextmanager
    def _patched(self) -> Iterator[None]:
        harness = self
        saved = {
            "invoke": LambdaSimpleBackend.invoke,
            "create": sm_models.SageMakerModelBackend.create_training_job,
            "describe": sm_models.SageMakerModelBackend.describe_training_job,
            "normalise": aws_sdk_task.StateTaskServiceAwsSdk._normalise_exception_name,
            "names": dict(aws_sdk_task._SERVICE_ERROR_NAMES),
            "client_for": aws_sdk_task.boto_client_for,
            "heartbeat": CallbackEndpoint.setup_heartbeat_endpoint,
        }
        clients: dict[tuple[str, str], Any] = {}
        client_lock = threading.Lock()

        def client_for(region: str, service: str, state_credentials: Any = None) -> Any:
            with client_lock:
                if (region, service) not in clients:
                    clients[(region, service)] = saved["client_for"](region, service, state_credentials)
                    if harness.iam:  # these clients serve the state machine's tasks only
                        harness.iam.bind_client(clients[(region, service)], STATE_MACHINE)
                return clients[(region, service)]

        def invoke(self: Any, function_name: str, qualifier: Any, body: Any, headers: Any,
                   response_headers: Any) -> bytes:
            return harness._invoke(function_name, body, response_headers)

        def create_training_job(self: Any, **kwargs: Any) -> Any:
            request = harness._current_request
            with harness._acting_as(None):
                harness.sagemaker.create(request)
            return saved["create"](self, **kwargs)

        def describe_training_job(self: Any, training_job_name: str) -> dict[str, Any]:
            if training_job_name not in harness.sagemaker.jobs:
                return saved["describe"](self, training_job_name)
            response = dict(saved["describe"](self, training_job_name))
            for key in ("FailureReason", "WarmPoolStatus", "ModelArtifacts", "TrainingEndTime",
                        "TrainingTimeInSeconds", "BillableTimeInSeconds"):
                response.pop(key, None)
            with harness._acting_as(None):  # the job runs as SageMaker, not as the caller
                response.update(harness.sagemaker.describe(training_job_name))
            request = harness.sagemaker.jobs[training_job_name].request
            response["AlgorithmSpecification"] = request["AlgorithmSpecification"]
            return response

        original_create_response = SageMakerResponse.create_training_job

        def create_response(self: Any) -> Any:
            harness._current_request = json.loads(self.body)
            return original_create_response(self)

        def update_training_job(self: Any) -> ActionResult:
            request = json.loads(self.body)
            name = request["TrainingJobName"]
            if name not in harness.sagemaker.jobs:
                raise ValidationError(f"Could not find training job '{name}'.")
            harness.sagemaker.update(request)
            return ActionResult({"TrainingJobArn": f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:training-job/{name}"})

        def stop_training_job(self: Any) -> ActionResult:
            name = json.loads(self.body)["TrainingJobName"]
            if name not in harness.sagemaker.jobs:
                raise ValidationError(f"Could not find training job '{name}'.")
            harness.sagemaker.stop(name)
            return ActionResult({})

        def setup_heartbeat_endpoint(self: Any, heartbeat_seconds: int) -> Any:
            endpoint = saved["heartbeat"](self, heartbeat_seconds)
            if self.get_outcome() is not None:  # completed while the Lambda ran: no heartbeat will come
                endpoint.notify()
            return endpoint

        def normalise(norm_service_name: str, ex: Exception) -> str:
            code = getattr(ex, "response", {}).get("Error", {}).get("Code")
            name = code or ex.__class__.__name__
            return f"{norm_service_name}.{name}" + ("" if name.endswith("Exception") else "Exception")

        LambdaSimpleBackend.invoke = invoke
        sm_models.SageMakerModelBackend.create_training_job = create_training_job
        sm_models.SageMakerModelBackend.describe_training_job = describe_training_job
        SageMakerResponse.create_training_job = create_response
        SageMakerResponse.update_training_job = update_training_job
        SageMakerResponse.stop_training_job = stop_training_job
        aws_sdk_task.StateTaskServiceAwsSdk._normalise_exception_name = staticmethod(normalise)
        CallbackEndpoint.setup_heartbeat_endpoint = setup_heartbeat_endpoint
        aws_sdk_task._SERVICE_ERROR_NAMES["sagemaker"] = "SageMaker"
        for module in (aws_sdk_task, sns_task, lambda_eval_utils):
            module.boto_client_for = client_for
        try:
            yield
        finally:
            LambdaSimpleBackend.invoke = saved["invoke"]
            sm_models.SageMakerModelBackend.create_training_job = saved["create"]
            sm_models.SageMakerModelBackend.describe_training_job = saved["describe"]
            SageMakerResponse.create_training_job = original_create_response
            del SageMakerResponse.update_training_job
            del SageMakerResponse.stop_training_job
            aws_sdk_task.StateTaskServiceAwsSdk._normalise_exception_name = saved["normalise"]
            CallbackEndpoint.setup_heartbeat_endpoint = saved["heartbeat"]
            aws_sdk_task._SERVICE_ERROR_NAMES.clear()
            aws_sdk_task._SERVICE_ERROR_NAMES.update(saved["names"])
            for module in (aws_sdk_task, sns_task, lambda_eval_utils):
                module.boto_client_for = saved["client_for"]

    def _invoke(self, function_name: str, body: Any, response_headers: dict[str, str]) -> bytes:
        name = function_name.rsplit(":", 1)[-1] if function_name.startswith("arn:") else function_name
        raw = body.decode() if isinstance(body, bytes) else (body or "{}")
        event = json.loads(raw)
        with self._lock:
            saved = {k: os.environ.get(k) for k in self._env[name]}
            os.environ.update(self._env[name])
            t0 = time.perf_counter()
            try:
                with self._acting_as(name):
                    result: Any = self._handlers[name](event, _Context(name))
            except Exception as exc:  # the Lambda runtime's unhandled-error payload
                response_headers["x-amz-function-error"] = "Unhandled"
                result = {"errorMessage": str(exc), "errorType": type(exc).__name__,
                          "stackTrace": traceback.format_tb(exc.__traceback__)[-3:]}
            finally:
                self.lambda_seconds.append((name, time.perf_counter() - t0))
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
        out = json.dumps(result, default=str).encode()
        self.lambda_calls.append((name, len(raw.encode()), len(out)))
        if name == "await_job" and self.job_events != "lost" and not response_headers.get("x-amz-function-error"):
            # EventBridge delivers asynchronously: from another thread, while the task waits.
            thread = threading.Thread(target=self._deliver_job_end, args=(event["job_name"],), daemon=True)
            self._deliveries.append(thread)
            thread.start()
        return out

    def _deliver_job_end(self, job_name: str) -> None:
        time.sleep(0.02)
        while self.sagemaker.holding(job_name):  # the job's end (or its stop) is the event
            time.sleep(0.02)
        with self._acting_as(None):  # the job runs as SageMaker; the Lambda below acts as job_events' role
            view = self.sagemaker.ended_view(job_name)
        events = [job_state_event(job_name, view)]
        if self.job_events == "twice":
            events += [job_state_event(job_name, {**view, "TrainingJobStatus": "InProgress",
                                                  "SecondaryStatus": "Training"}), events[0]]
        for ev in events:
            answer = self.call_lambda("job_events", ev)
            self.delivered.append({"job_name": job_name, "status": ev["detail"]["TrainingJobStatus"],
                                   "answer": answer})

    def reconcile(self) -> Any:
        """One tick of the reconciliation schedule."""
        return self.call_lambda("job_events", SCHEDULED_EVENT)

    def _acting_as(self, function: str | None) -> Any:
        """Calls are the function's (its role), or with ``None`` SageMaker's own (not checked)."""
        from contextlib import nullcontext

        if self.iam is None:
            return nullcontext()
        return self.iam.acting_as(f"function:{function}" if function else None)

    def call_lambda(self, name: str, event: Any) -> Any:
        """Invoke function ``name`` as EventBridge or the CLI would (outside the state machine)."""
        headers: dict[str, str] = {}
        out = json.loads(self._invoke(name, json.dumps(event).encode(), headers))
        if headers.get("x-amz-function-error"):
            raise RuntimeError(f"{name} failed: {out}")
        return out

    # -- running ----------------------------------------------------------------------------------------------
    def put(self, key: str, body: bytes | str) -> None:
        self.s3.put_object(Bucket=BUCKET, Key=key, Body=body.encode() if isinstance(body, str) else body)

    def exists(self, key: str) -> bool:
        return self.s3.list_objects_v2(Bucket=BUCKET, Prefix=key).get("KeyCount", 0) > 0

    def get_json(self, key: str) -> Any:
        return json.loads(self.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())

    def execute(self, execution_input: Any, name: str, timeout: float = 600) -> Execution:
        """Start an execution and wait for it to end."""
        return self.wait(self.start(execution_input, name), timeout)

    def start(self, execution_input: Any, name: str) -> str:
        """Start an execution; returns its ARN."""
        self._started = time.monotonic()
        return self.sfn.start_execution(stateMachineArn=self.state_machine_arn, name=name,
                                        input=json.dumps(execution_input))["executionArn"]

    def wait(self, arn: str, timeout: float = 600) -> Execution:
        """Wait for the execution to end; its outcome and history."""
        t0, name = self._started, arn.rsplit(":", 1)[-1]
        while True:
            desc = self.sfn.describe_execution(executionArn=arn)
            if desc["status"] != "RUNNING":
                break
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"execution {name} still running after {timeout} s")
            time.sleep(0.05)
        events: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"executionArn": arn, "maxResults": 1000}
        while True:
            page = self.sfn.get_execution_history(**kwargs)
            events += page["events"]
            if not page.get("nextToken"):
                break
            kwargs["nextToken"] = page["nextToken"]
        for thread in self._deliveries:  # late (duplicate) deliveries finish before anyone looks
            thread.join(timeout=30)
        return Execution(status=desc["status"], description=desc, events=events, seconds=time.monotonic() - t0)

    def messages(self) -> list[dict[str, Any]]:
        """SNS messages delivered so far (Subject, Message), via the SQS subscription."""
        sqs = boto3.client("sqs", region_name=REGION)
        out = []
        while True:
            got = sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
            batch = got.get("Messages", [])
            if not batch:
                return out
            for m in batch:
                envelope = json.loads(m["Body"])
                out.append({"Subject": envelope.get("Subject"), "Message": envelope.get("Message")})
                sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=m["ReceiptHandle"])
