"""AWS commands of the ``rlpipe`` CLI: start, status, stop, fetch-report, debug-job.

They find the state machine, the bucket and the training-job settings (role, image, job prefix, VPC, KMS
key) in the deployed stack's CloudFormation outputs, so the only thing to know is the stack name
(``--stack``, ``$RLPIPE_STACK``, default ``RlpipeStack``).

A run with several seeds is several lineages in one execution (:mod:`rlpipe.cloud.steps.lineages`): status,
stop and fetch-report take its run id, the run id of one of its lineages or the execution's name.
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
from rlpipe.cloud.steps.lineages import parent_of, read_lineage_record
from rlpipe.cloud.store import CONFIGS_PREFIX, REPORT_FILES, RunKeys, RunStore, S3Store, execution_key, is_missing
from rlpipe.cloud.watch import LineagesView, LineagesWatcher, RunWatcher, follow, render
from rlpipe.config import ConfigError, PipelineConfig, load_pipeline
from rlpipe.contract import session_document
from rlpipe.plan import CostCeilingError, build_plan, check_cost_ceiling
from rlpipe.state import RunState

DEFAULT_STACK = DEFAULT_STACK_NAME
console = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200)

StackOpt = Annotated[str, typer.Option("--stack", envvar="RLPIPE_STACK", help="CloudFormation stack name")]
RegionOpt = Annotated[Optional[str], typer.Option("--region", envvar="AWS_REGION",
                                                  help="AWS region (default: your AWS configuration's)")]
RunArg = Annotated[str, typer.Argument(help="run id (of a run or of one of its lineages), or the name of the "
                                            "execution that started it", show_default=False)]


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

    def run_store(self, run_id: str) -> RunStore:
        return RunStore(self.client("s3"), self.bucket, run_id)


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
    uri = upload_pipeline(stack, pipeline)
    name = name or execution_name(pipeline)
    sfn = stack.client("stepfunctions")
    arn = sfn.start_execution(stateMachineArn=stack.state_machine_arn, name=name,
                              input=json.dumps({"pipeline_s3_uri": uri}))["executionArn"]
    return {"execution": name, "execution_arn": arn, "pipeline_s3_uri": uri, "console": naming.execution_console_url(stack.region, arn)}


def resolve_run(stack: Stack, run: str) -> str:
    """The run id of ``run``: a run id (of a single-seed run, a run with several seeds or one of its lineages),
    or an execution's name or ARN (the run it started)."""
    name = run.rsplit(":", 1)[-1] if run.startswith("arn:") else run
    if naming.is_valid_run_id(name):
        keys = RunKeys(name)
        if stack.store.exists(keys.state) or stack.store.exists(keys.lineages):
            return name
    record = stack.store.get_json_or_none(execution_key(name))
    if record and record.get("run_id"):
        return str(record["run_id"])
    if record:
        raise CloudError(f"execution '{name}' has not started a run (yet); see its history in the console")
    raise CloudError(f"no run or execution '{run}' in s3://{stack.bucket}/")


def lineages_record(stack: Stack, run_id: str) -> dict[str, Any] | None:
    """``lineages.json`` of ``run_id`` when it is a run with several seeds, else None."""
    return read_lineage_record(stack.run_store(run_id))


def lineage_parent(stack: Stack, run_id: str) -> tuple[str, int] | None:
    """The run and seed of which ``run_id`` is a lineage, or None when it is a run of its own."""
    parent = parent_of(run_id)
    if parent is None:
        return None
    record = lineages_record(stack, parent[0]) or {}
    listed = any(str(item.get("run_id")) == run_id for item in record.get("lineages") or [])
    return parent if listed else None


def load_state(stack: Stack, run: str) -> RunState:
    return RunState.model_validate(stack.store.get_json(RunKeys(resolve_run(stack, run)).state))


def status_document(stack: Stack, run: str) -> dict[str, Any]:
    """What ``rlpipe status --json`` prints: a single-seed run's state.json; for a run with several seeds
    ``{"run_id", "seeds", "lineages": [{"seed", "run_id", "state"}]}`` (state None until it is written)."""
    run_id = resolve_run(stack, run)
    record = lineages_record(stack, run_id)
    if record is None:
        return RunState.model_validate(stack.store.get_json(RunKeys(run_id).state)).to_json()
    lineages = []
    for item in record["lineages"]:
        state = stack.store.get_json_or_none(RunKeys(str(item["run_id"])).state)
        lineages.append({"seed": item["seed"], "run_id": item["run_id"],
                         "state": None if state is None else RunState.model_validate(state).to_json()})
    return {"run_id": run_id, "seeds": record["seeds"], "lineages": lineages}


def watcher(stack: Stack, run: str, *, cloudwatch: bool = True) -> RunWatcher | LineagesWatcher:
    """A :class:`RunWatcher` of ``run`` (run id or execution name) with the stack's clients; a
    :class:`LineagesWatcher` when it is a run with several seeds."""
    run_id = resolve_run(stack, run)
    clients = {"stepfunctions": stack.client("stepfunctions"),
               "cloudwatch": stack.client("cloudwatch") if cloudwatch else None}
    record = lineages_record(stack, run_id)
    if record is not None:
        return LineagesWatcher(stack.store, record, **clients)
    return RunWatcher(stack.store, run_id, **clients)


@dataclass(frozen=True)
class Stopped:
    """An execution ``rlpipe stop`` stopped, and what the user should know about it."""

    execution_arn: str
    note: str | None = None


def stop_run(stack: Stack, run: str) -> Stopped:
    """Stop the execution driving ``run``; the cleanup Lambda then stops its jobs and releases pools.

    A lineage is not stopped alone: its execution drives every lineage of its run, so that is stopped.
    """
    run_id = resolve_run(stack, run)
    parent = lineage_parent(stack, run_id)
    note = None
    if parent is not None:
        note = (f"'{run_id}' is the lineage of seed {parent[1]} of run '{parent[0]}': its execution runs every "
                "lineage of that run, so all of them stop")
        run_id = parent[0]
    owner = stack.store.get_json_or_none(RunKeys(run_id).owner) or {}
    arn = owner.get("execution_arn")
    if not arn:
        raise CloudError(f"run '{run_id}' records no execution")
    sfn = stack.client("stepfunctions")
    if sfn.describe_execution(executionArn=arn)["status"] != "RUNNING":
        raise CloudError(f"execution {arn} is not running; its cleanup has run (or, if the run still shows "
                         f"'running', a resume takes it over: the start step stops what it left)")
    sfn.stop_execution(executionArn=arn, error="rlpipe.Stopped", cause="stopped with `rlpipe stop`")
    return Stopped(arn, note)


def _download(stack: Stack, keys: list[str], out: Path) -> list[Path]:
    """Write each of ``keys`` that exists into ``out`` under its file name; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for key in keys:
        try:
            data = stack.store.get_bytes(key)
        except Exception as exc:
            if is_missing(exc):
                continue
            raise
        path = out / key.rsplit("/", 1)[-1]
        path.write_bytes(data)
        written.append(path)
    return written


def fetch_report(stack: Stack, run: str, output: Path | None = None) -> list[Path]:
    """Download the run's state and report files into ``output`` (default ./runs/<run id>).

    A run with several seeds gets the local layout of one: its ``lineages.json`` and report across lineages
    in ``output``, each lineage's state and report in ``output/seed-<s>/``.
    """
    run_id = resolve_run(stack, run)
    keys = RunKeys(run_id)
    out = output or Path("runs") / run_id
    record = lineages_record(stack, run_id)
    reports = [keys.report(kind) for kind in REPORT_FILES]
    if record is None:
        written = _download(stack, [keys.state, *reports], out)
    else:
        written = _download(stack, [keys.lineages, *reports], out)
    if not any(p.name == REPORT_FILES["html"] for p in written):
        raise CloudError(f"run '{run_id}' has no report yet (it is written when the run ends)")
    for item in (record or {}).get("lineages") or []:
        lineage = RunKeys(str(item["run_id"]))
        written += _download(stack, [lineage.state, *(lineage.report(kind) for kind in REPORT_FILES)],
                             out / f"seed-{item['seed']}")
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
               as_json: Annotated[bool, typer.Option(
                   "--json", help="print state.json (several seeds: each lineage's, with its seed)")] = False,
               watch: Annotated[bool, typer.Option(
                   "--watch", "-w", help="redraw until the run ends; exit status 0 only if it succeeded")] = False,
               interval: Annotated[float, typer.Option(
                   min=1.0, help="seconds between refreshes with --watch")] = 30.0,
               cloudwatch: Annotated[bool, typer.Option(
                   "--cloudwatch/--no-cloudwatch",
                   help="read the running job's latest metrics from CloudWatch (fresher than S3)")] = True) -> None:
        """Per-session status of a run on AWS: state, steps, latest evaluation reward and speed.

        A run with several seeds shows a table per lineage under a line for the run; --watch follows until
        every lineage has ended (or the execution has)."""
        if as_json and watch:
            raise _fail(CloudError("--json prints the run's state once; it does not go with --watch"))
        try:
            found = Stack.find(stack, region)
            if as_json:
                print(json.dumps(status_document(found, run), indent=2))
                return
            runs = watcher(found, run, cloudwatch=cloudwatch)
            parent = lineage_parent(found, runs.run_id) if isinstance(runs, RunWatcher) else None
            if parent is not None:
                console.print(f"lineage of seed {parent[1]} of run {parent[0]} (`rlpipe status {parent[0]}` "
                              "shows every seed)", highlight=False)
            view = follow(runs, console, interval) if watch else runs.view()
        except CloudError as exc:
            raise _fail(exc) from None
        if not watch:
            console.print(render(view))
        errors = ([(f"seed {lin.seed}: ", lin.view.state.error) for lin in view.lineages if lin.view is not None]
                  if isinstance(view, LineagesView) else [("", view.state.error)])
        for prefix, error in errors:
            if error:
                console.print(f"{prefix}error: {error}", markup=False, highlight=False)
        if watch and view.status != "succeeded":
            raise typer.Exit(1)

    @app.command()
    def stop(run: RunArg, stack: StackOpt = DEFAULT_STACK, region: RegionOpt = None) -> None:
        """Stop a run on AWS: its execution is aborted, then its training jobs stopped and its pools released.

        Given a lineage of a run with several seeds, the whole run stops (one execution drives every lineage)."""
        try:
            stopped = stop_run(Stack.find(stack, region), run)
        except CloudError as exc:
            raise _fail(exc) from None
        if stopped.note:
            console.print(stopped.note, highlight=False)
        console.print(f"stopped {stopped.execution_arn}; the cleanup Lambda stops the training jobs, releases "
                      "warm pools and writes the partial report", highlight=False)

    @app.command("fetch-report")
    def fetch_report_cmd(run: RunArg, stack: StackOpt = DEFAULT_STACK, region: RegionOpt = None,
                         output: Annotated[Optional[Path], typer.Option(
                             "--output", "-o", help="directory (default ./runs/<run id>)")] = None) -> None:
        """Download a run's report (json, md, html, png) and state.json from S3.

        Several seeds: the report across lineages and lineages.json, each lineage's into seed-<s>/."""
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
