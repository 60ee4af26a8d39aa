"""AWS commands of the ``rlpipe`` CLI: start, status, stop, fetch-report, debug-job.

They find the state machine, the bucket and the training-job settings (role, image, job prefix, VPC, KMS
key) in the deployed stack's CloudFormation outputs, so the only thing to know is the stack name
(``--stack``, ``$RLPIPE_STACK``, default ``RlpipeStack``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Optional

import boto3
import typer
from rich.console import Console

from rlpipe.cloud import naming
from rlpipe.cloud.jobs import ACTIVE_JOB_STATUSES
from rlpipe.cloud.naming import DEFAULT_STACK_NAME
from rlpipe.cloud.requests import StackSettings, create_training_job_request
from rlpipe.cloud.store import CONFIGS_PREFIX, REPORT_FILES, RunKeys, S3Store, execution_key, is_missing
from rlpipe.cloud.watch import RunWatcher, follow, run_table
from rlpipe.config import ConfigError, PipelineConfig, load_pipeline
from rlpipe.contract import session_document
from rlpipe.plan import CostCeilingError, build_plan, check_cost_ceiling, single_lineage_problem
from rlpipe.state import RunState

DEFAULT_STACK = DEFAULT_STACK_NAME
console = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200)

StackOpt = Annotated[str, typer.Option("--stack", envvar="RLPIPE_STACK", help="CloudFormation stack name")]
RegionOpt = Annotated[Optional[str], typer.Option("--region", envvar="AWS_REGION",
                                                  help="AWS region (default: your AWS configuration's)")]
RunArg = Annotated[str, typer.Argument(help="run id, or the name of the execution that started it",
                                       show_default=False)]


class CloudError(Exception):
    """Something the user can fix; printed without a traceback."""


@dataclass(frozen=True)
class Stack:
    """What the CLI needs from the deployed stack's outputs."""

    name: str
    region: str
    state_machine_arn: str
    bucket: str
    image_uri: str | None = None
    training_role_arn: str | None = None
    request_settings: StackSettings | None = None

    @classmethod
    def find(cls, name: str, region: str | None = None) -> Stack:
        """Read the stack's outputs (StateMachineArn, BucketName, ImageUri, TrainingRoleArn, RequestSettings)."""
        session = boto3.session.Session(region_name=region)
        cfn = session.client("cloudformation")
        try:
            stacks = cfn.describe_stacks(StackName=name)["Stacks"]
        except Exception as exc:  # ClientError: no such stack, no credentials, ...
            raise CloudError(f"cannot read stack '{name}' in {session.region_name}: {exc}; deploy it with "
                             "`make deploy` or pass --stack / --region") from None
        outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}
        missing = [k for k in ("StateMachineArn", "BucketName") if k not in outputs]
        if missing:
            raise CloudError(f"stack '{name}' has no output {', '.join(missing)}: is it an rlpipe stack?")
        settings = None
        if outputs.get("RequestSettings"):
            try:
                settings = StackSettings.from_document(outputs["RequestSettings"])
            except (ValueError, KeyError, TypeError) as exc:
                raise CloudError(f"stack '{name}': unreadable RequestSettings output: {exc}") from None
        return cls(name=name, region=session.region_name, state_machine_arn=outputs["StateMachineArn"],
                   bucket=outputs["BucketName"], image_uri=outputs.get("ImageUri"),
                   training_role_arn=outputs.get("TrainingRoleArn"), request_settings=settings)

    def client(self, service: str) -> Any:
        return boto3.client(service, region_name=self.region)

    @property
    def store(self) -> S3Store:
        return S3Store(self.client("s3"), self.bucket)


def _load(config: Path) -> PipelineConfig:
    try:
        return load_pipeline(config)
    except ConfigError as exc:
        problems = "\n".join(f"  {p}" for p in exc.problems)
        raise CloudError(f"{exc.source}: {len(exc.problems)} problem(s)\n{problems}") from None


def upload_pipeline(stack: Stack, pipeline: PipelineConfig) -> str:
    """Put the resolved pipeline (includes inlined) under configs/; returns its S3 URI.

    The key holds the config fingerprint, so the same config uploads to the same object.
    """
    key = f"{CONFIGS_PREFIX}{pipeline.name}/{pipeline.fingerprint()}.json"
    stack.store.put_json(key, pipeline.resolved())
    return stack.store.uri(key)


def execution_name(pipeline: PipelineConfig, now: datetime | None = None) -> str:
    """A readable, unique execution name (<= 80 chars of [A-Za-z0-9-_])."""
    now = now or datetime.now(timezone.utc)
    return f"{pipeline.name[:40]}-{now:%Y%m%d-%H%M%S}-{os.urandom(3).hex()}"


def start_run(stack: Stack, config: Path, name: str | None = None) -> dict[str, str]:
    """Validate ``config`` locally, upload it and start an execution. Returns its name, ARN and console URL."""
    pipeline = _load(config)
    try:
        check_cost_ceiling(build_plan(pipeline))  # before anything is uploaded or started
    except CostCeilingError as exc:
        raise CloudError(str(exc)) from None
    several = single_lineage_problem(pipeline)
    if several is not None:
        raise CloudError(several)
    uri = upload_pipeline(stack, pipeline)
    name = name or execution_name(pipeline)
    sfn = stack.client("stepfunctions")
    arn = sfn.start_execution(stateMachineArn=stack.state_machine_arn, name=name,
                              input=json.dumps({"pipeline_s3_uri": uri}))["executionArn"]
    return {"execution": name, "execution_arn": arn, "pipeline_s3_uri": uri, "console": naming.execution_console_url(stack.region, arn)}


def resolve_run(stack: Stack, run: str) -> str:
    """The run id of ``run`` (a run id, or an execution's name or ARN)."""
    name = run.rsplit(":", 1)[-1] if run.startswith("arn:") else run
    if naming.is_valid_run_id(name) and stack.store.exists(RunKeys(name).state):
        return name
    record = stack.store.get_json_or_none(execution_key(name))
    if record and record.get("run_id"):
        return str(record["run_id"])
    if record:
        raise CloudError(f"execution '{name}' has not started a run (yet); see its history in the console")
    raise CloudError(f"no run or execution '{run}' in s3://{stack.bucket}/")


def load_state(stack: Stack, run: str) -> RunState:
    return RunState.model_validate(stack.store.get_json(RunKeys(resolve_run(stack, run)).state))


def watcher(stack: Stack, run: str, *, cloudwatch: bool = True) -> RunWatcher:
    """A :class:`RunWatcher` of ``run`` (run id or execution name) with the stack's clients."""
    return RunWatcher(stack.store, resolve_run(stack, run), stepfunctions=stack.client("stepfunctions"),
                      cloudwatch=stack.client("cloudwatch") if cloudwatch else None)


def stop_run(stack: Stack, run: str) -> str:
    """Stop the execution driving ``run``; the cleanup Lambda then stops its job and releases pools."""
    run_id = resolve_run(stack, run)
    owner = stack.store.get_json_or_none(RunKeys(run_id).owner) or {}
    arn = owner.get("execution_arn")
    if not arn:
        raise CloudError(f"run '{run_id}' records no execution")
    sfn = stack.client("stepfunctions")
    if sfn.describe_execution(executionArn=arn)["status"] != "RUNNING":
        raise CloudError(f"execution {arn} is not running; its cleanup has run (or, if the run still shows "
                         f"'running', a resume takes it over: the start step stops what it left)")
    sfn.stop_execution(executionArn=arn, error="rlpipe.Stopped", cause="stopped with `rlpipe stop`")
    return arn


def fetch_report(stack: Stack, run: str, output: Path | None = None) -> list[Path]:
    """Download the run's state and report files into ``output`` (default ./runs/<run id>)."""
    run_id = resolve_run(stack, run)
    keys = RunKeys(run_id)
    out = output or Path("runs") / run_id
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for key in [keys.state, *(keys.report(kind) for kind in REPORT_FILES)]:
        try:
            data = stack.store.get_bytes(key)
        except Exception as exc:
            if is_missing(exc):
                continue
            raise
        path = out / key.rsplit("/", 1)[-1]
        path.write_bytes(data)
        written.append(path)
    if not any(p.name == REPORT_FILES["html"] for p in written):
        raise CloudError(f"run '{run_id}' has no report yet (it is written when the run ends)")
    return written


def debug_job(stack: Stack, config: Path, session: str, *, instance_type: str | None = None) -> dict[str, Any]:
    """Run one session alone as a training job, built by the same request builder as the state machine.

    Role, image, job prefix, VPC and KMS key come from the stack's ``RequestSettings`` output, as the Lambdas
    get them. No warm start (a standalone job has no previous bundle) and no warm pool. The job writes under
    ``runs/debug-.../`` like a run's first session.
    """
    pipeline = _load(config)
    names = [s.name for s in pipeline.sessions]
    if session not in names:
        raise CloudError(f"no session '{session}' in {config}; sessions: {', '.join(names)}")
    settings = stack.request_settings
    if settings is None:
        raise CloudError(f"stack '{stack.name}' has no RequestSettings output; redeploy it with this rlpipe version")
    index = names.index(session)
    cfg = pipeline.sessions[index].model_copy(update={"use_previous_checkpoint": False})
    if instance_type:
        cfg = cfg.model_copy(update={"compute": cfg.compute.model_copy(update={"instance_type": instance_type})})
    # Planned as a pipeline of its own: no previous session to start from, no next one to keep a pool for.
    planned = build_plan(PipelineConfig(name=pipeline.name, sessions=[cfg])).sessions[0]
    run_id = naming.new_run_id(f"debug-{pipeline.name}", datetime.now(timezone.utc), os.urandom(4).hex())
    job = naming.job_name(settings.job_prefix, run_id, 0, cfg.name, 1)
    keys = RunKeys(run_id)
    stack.store.put_json(keys.session_file(0, cfg.name),
                         session_document(pipeline.name, run_id, 0, cfg.model_dump(mode="json"), None, 0))
    request = create_training_job_request(settings, run_id=run_id, pipeline=pipeline.name, index=0, session=cfg,
                                          planned=planned, job_name=job, attempt=1, previous_bundle=None)
    stack.client("sagemaker").create_training_job(**request)
    return {"job_name": job, "run_id": run_id, "console": naming.job_console_url(stack.region, job),
            "request": request}


def wait_for_job(stack: Stack, job: str, poll_seconds: float = 30) -> dict[str, Any]:
    """Poll DescribeTrainingJob until the job ends; returns the last description."""
    sm = stack.client("sagemaker")
    while True:
        desc = sm.describe_training_job(TrainingJobName=job)
        if desc["TrainingJobStatus"] not in ACTIVE_JOB_STATUSES:
            return desc
        console.print(f"{datetime.now():%H:%M:%S} {desc['TrainingJobStatus']} / {desc.get('SecondaryStatus')}")
        time.sleep(poll_seconds)


def _fail(exc: CloudError) -> typer.Exit:
    err.print(f"[bold red]error[/]: {exc}", highlight=False, markup=True)
    return typer.Exit(2)


def register(app: typer.Typer) -> None:
    """Add the AWS commands to the ``rlpipe`` app."""

    @app.command()
    def start(config: Annotated[Path, typer.Argument(help="pipeline YAML file", show_default=False)],
              stack: StackOpt = DEFAULT_STACK, region: RegionOpt = None,
              name: Annotated[Optional[str], typer.Option(help="execution name (default: generated)")] = None
              ) -> None:
        """Validate CONFIG, upload it to the stack's bucket and start a run on AWS."""
        try:
            started = start_run(Stack.find(stack, region), config, name)
        except CloudError as exc:
            raise _fail(exc) from None
        console.print(f"started [bold]{started['execution']}[/]")
        console.print(f"execution: {started['execution_arn']}", highlight=False)
        console.print(f"console:   {started['console']}", highlight=False)
        console.print(f"follow with: rlpipe status {started['execution']} --watch"
                      + ("" if stack == DEFAULT_STACK else f" --stack {stack}"))

    @app.command()
    def status(run: RunArg, stack: StackOpt = DEFAULT_STACK, region: RegionOpt = None,
               as_json: Annotated[bool, typer.Option("--json", help="print state.json")] = False,
               watch: Annotated[bool, typer.Option(
                   "--watch", "-w", help="redraw until the run ends; exit status 0 only if it succeeded")] = False,
               interval: Annotated[float, typer.Option(
                   min=1.0, help="seconds between refreshes with --watch")] = 30.0,
               cloudwatch: Annotated[bool, typer.Option(
                   "--cloudwatch/--no-cloudwatch",
                   help="read the running job's latest metrics from CloudWatch (fresher than S3)")] = True) -> None:
        """Per-session status of a run on AWS: state, steps, latest evaluation reward and speed."""
        if as_json and watch:
            raise _fail(CloudError("--json prints state.json once; it does not go with --watch"))
        try:
            found = Stack.find(stack, region)
            if as_json:
                print(json.dumps(load_state(found, run).to_json(), indent=2))
                return
            runs = watcher(found, run, cloudwatch=cloudwatch)
            view = follow(runs, console, interval) if watch else runs.view()
        except CloudError as exc:
            raise _fail(exc) from None
        if not watch:
            console.print(run_table(view))
        if view.state.error:
            console.print(f"error: {view.state.error}", markup=False, highlight=False)
        if watch and view.state.status != "succeeded":
            raise typer.Exit(1)

    @app.command()
    def stop(run: RunArg, stack: StackOpt = DEFAULT_STACK, region: RegionOpt = None) -> None:
        """Stop a run on AWS: its execution is aborted, then its training job stopped and its pools released."""
        try:
            arn = stop_run(Stack.find(stack, region), run)
        except CloudError as exc:
            raise _fail(exc) from None
        console.print(f"stopped {arn}; the cleanup Lambda stops the training job, releases warm pools and "
                      "writes the partial report", highlight=False)

    @app.command("fetch-report")
    def fetch_report_cmd(run: RunArg, stack: StackOpt = DEFAULT_STACK, region: RegionOpt = None,
                         output: Annotated[Optional[Path], typer.Option(
                             "--output", "-o", help="directory (default ./runs/<run id>)")] = None) -> None:
        """Download a run's report (json, md, html, png) and state.json from S3."""
        try:
            paths = fetch_report(Stack.find(stack, region), run, output)
        except CloudError as exc:
            raise _fail(exc) from None
        for path in paths:
            console.print(str(path), highlight=False)

    @app.command("debug-job")
    def debug_job_cmd(config: Annotated[Path, typer.Argument(help="pipeline YAML file", show_default=False)],
                      session: Annotated[str, typer.Option(help="the session to run alone")],
                      stack: StackOpt = DEFAULT_STACK, region: RegionOpt = None,
                      instance_type: Annotated[Optional[str], typer.Option(help="override compute")] = None,
                      wait: Annotated[bool, typer.Option(help="poll until the job ends")] = False) -> None:
        """Run one session as a standalone SageMaker training job (same request as the state machine's)."""
        try:
            s = Stack.find(stack, region)
            job = debug_job(s, config, session, instance_type=instance_type)
        except CloudError as exc:
            raise _fail(exc) from None
        console.print(f"created training job [bold]{job['job_name']}[/]")
        console.print(f"console: {job['console']}", highlight=False)
        if wait:
            desc = wait_for_job(s, job["job_name"])
            console.print(f"{desc['TrainingJobStatus']}: {desc.get('FailureReason', '')}", highlight=False)
            if desc["TrainingJobStatus"] != "Completed":
                raise typer.Exit(1)
