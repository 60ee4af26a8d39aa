"""The AWS commands of the CLI against moto: stack outputs, upload, start, status, stop, fetch-report, debug-job."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import typer
import yaml
from moto import mock_aws

from rlpipe.cloud import cli as cloud_cli
from rlpipe.cloud.naming import is_valid_job_name
from rlpipe.cloud.steps.lineages import lineage_record, lineage_run_id
from rlpipe.cloud.store import RunKeys, execution_key
from rlpipe.config import load_pipeline, parse_pipeline
from rlpipe.state import RunState
from tests.conftest import CLOUD_REGION, deploy_fake_stack, invoke

REGION = CLOUD_REGION
BUCKET = "rlpipe-stack-bucket"
ROLE = "arn:aws:iam::123456789012:role/rlpipe-training"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/rlpipe:abc"
KMS = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
# As the stack writes its RequestSettings output (StackSettings.document()).
REQUEST_SETTINGS = {"bucket": BUCKET, "role_arn": ROLE, "image_uri": IMAGE, "job_prefix": "rl-dev",
                    "subnet_ids": ["subnet-0123456789abcdef0"], "security_group_ids": ["sg-0123456789abcdef0"],
                    "kms_key_arn": KMS}


@pytest.fixture
def aws(tmp_path: Path, tiny_raw: dict[str, Any]) -> Iterator[dict[str, Any]]:
    with mock_aws():
        stack = deploy_fake_stack(BUCKET, ImageUri=IMAGE, TrainingRoleArn=ROLE,
                                  RequestSettings=json.dumps(REQUEST_SETTINGS))
        config = tmp_path / "pipeline.yaml"
        config.write_text(yaml.safe_dump(tiny_raw))
        yield {**stack, "config": config}


def test_stack_outputs(aws: dict[str, Any]) -> None:
    stack = cloud_cli.Stack.find("RlpipeStack", REGION)
    assert (stack.bucket, stack.state_machine_arn, stack.image_uri) == (BUCKET, aws["machine"], IMAGE)
    with pytest.raises(cloud_cli.CloudError, match="cannot read stack 'Nope'"):
        cloud_cli.Stack.find("Nope", REGION)


def test_start_uploads_the_resolved_pipeline_and_starts(app: typer.Typer, aws: dict[str, Any]) -> None:
    result = invoke(app, "start", str(aws["config"]), "--name", "my-run")
    assert result.exit_code == 0, result.output
    assert "execution: arn:aws:states:us-east-1:123456789012:execution:runs:my-run" in result.output
    assert "console:   https://us-east-1.console.aws.amazon.com/states/home" in result.output
    execution = aws["sfn"].describe_execution(
        executionArn="arn:aws:states:us-east-1:123456789012:execution:runs:my-run")
    uri = json.loads(execution["input"])["pipeline_s3_uri"]
    pipeline = load_pipeline(aws["config"])
    assert uri == f"s3://{BUCKET}/configs/tiny/{pipeline.fingerprint()}.json"
    body = aws["s3"].get_object(Bucket=BUCKET, Key=uri.split("/", 3)[3])["Body"].read()
    assert json.loads(body) == pipeline.resolved()


def test_start_refuses_an_invalid_config_before_touching_aws(app: typer.Typer, aws: dict[str, Any],
                                                             tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsessions: [{name: a, env: rlpipe/HeightMaximize-v0, timestep: 10}]\n")
    result = invoke(app, "start", str(bad))
    assert result.exit_code == 2 and "timestep" in result.output
    assert aws["sfn"].list_executions(stateMachineArn=aws["machine"])["executions"] == []


def _seed_run(aws: dict[str, Any], tiny_raw: dict[str, Any], execution: str = "my-run") -> RunState:
    state = RunState.new(parse_pipeline(tiny_raw), "tiny-20250101-120000-abcdef")
    first, second = state.sessions
    first.status, first.job_name, first.attempts, first.cost_usd = "completed", "rlpipe-1-000-stand-1", 1, 0.0123
    second.status, second.reused_previous_pool = "running", True
    keys = RunKeys(state.run_id)
    put = lambda key, data: aws["s3"].put_object(Bucket=BUCKET, Key=key, Body=json.dumps(data))  # noqa: E731
    put(keys.state, state.to_json())
    arn = aws["sfn"].start_execution(stateMachineArn=aws["machine"], name=execution)["executionArn"]
    put(keys.root + "execution.json", {"execution": execution, "execution_arn": arn})
    put(execution_key(execution), {"run_id": state.run_id, "execution": execution})
    return state


def test_status_by_run_id_or_execution_name(app: typer.Typer, aws: dict[str, Any], tiny_raw: dict[str, Any]) -> None:
    state = _seed_run(aws, tiny_raw)
    for run in (state.run_id, "my-run"):
        result = invoke(app, "status", run)
        assert result.exit_code == 0, result.output
        assert "stand" in result.output and "completed" in result.output and "running" in result.output
        assert "rlpipe-1-000-stand-1" in result.output and "0.0123" in result.output
    as_json = invoke(app, "status", state.run_id, "--json")
    assert json.loads(as_json.output)["run_id"] == state.run_id
    missing = invoke(app, "status", "nothing-here")
    assert missing.exit_code == 2 and "no run or execution 'nothing-here'" in missing.output


def test_stop_aborts_the_execution(app: typer.Typer, aws: dict[str, Any], tiny_raw: dict[str, Any]) -> None:
    state = _seed_run(aws, tiny_raw)
    result = invoke(app, "stop", state.run_id)
    assert result.exit_code == 0, result.output
    arn = "arn:aws:states:us-east-1:123456789012:execution:runs:my-run"
    assert aws["sfn"].describe_execution(executionArn=arn)["status"] == "ABORTED"
    again = invoke(app, "stop", state.run_id)
    assert again.exit_code == 2 and "is not running" in again.output


def test_fetch_report(app: typer.Typer, aws: dict[str, Any], tiny_raw: dict[str, Any], tmp_path: Path) -> None:
    state = _seed_run(aws, tiny_raw)
    early = invoke(app, "fetch-report", state.run_id, "-o", str(tmp_path / "early"))
    assert early.exit_code == 2 and "no report yet" in early.output
    keys = RunKeys(state.run_id)
    for kind, body in (("json", b"{}"), ("md", b"# r"), ("html", b"<html></html>")):
        aws["s3"].put_object(Bucket=BUCKET, Key=keys.report(kind), Body=body)
    result = invoke(app, "fetch-report", "my-run", "-o", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.html", "report.json", "report.md",
                                                                     "state.json"]


def test_debug_job_runs_one_session_with_the_same_request_builder(app: typer.Typer, aws: dict[str, Any]) -> None:
    result = invoke(app, "debug-job", str(aws["config"]), "--session", "hold", "--instance-type", "ml.m5.xlarge")
    assert result.exit_code == 0, result.output
    sm = boto3.client("sagemaker", region_name=REGION)
    (summary,) = sm.list_training_jobs()["TrainingJobSummaries"]
    job = sm.describe_training_job(TrainingJobName=summary["TrainingJobName"])
    assert is_valid_job_name(job["TrainingJobName"]) and job["TrainingJobName"] in result.output
    assert job["RoleArn"] == ROLE and job["ResourceConfig"]["InstanceType"] == "ml.m5.xlarge"
    # VPC, KMS key and job prefix are the deployed stack's (its RequestSettings output), not CLI defaults.
    assert job["TrainingJobName"].startswith("rl-dev-")
    assert job["VpcConfig"] == {"SecurityGroupIds": ["sg-0123456789abcdef0"], "Subnets": ["subnet-0123456789abcdef0"]}
    assert job["ResourceConfig"]["VolumeKmsKeyId"] == KMS and job["OutputDataConfig"]["KmsKeyId"] == KMS
    assert [c["ChannelName"] for c in job["InputDataConfig"]] == ["config"]  # standalone: no warm start
    assert "KeepAlivePeriodInSeconds" not in job["ResourceConfig"]
    uri = job["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"]
    doc = json.loads(aws["s3"].get_object(Bucket=BUCKET, Key=uri.split("/", 3)[3] + "session.json")["Body"].read())
    assert doc["session"]["name"] == "hold" and doc["session"]["use_previous_checkpoint"] is False
    unknown = invoke(app, "debug-job", str(aws["config"]), "--session", "nope")
    assert unknown.exit_code == 2 and "no session 'nope'" in unknown.output


# --- a run with several seeds: lineages side by side in one execution ---------------------------------------

MULTI_RUN = "tiny-20250101-130000-abcdef"


def _put(aws: dict[str, Any], key: str, data: Any) -> None:
    aws["s3"].put_object(Bucket=BUCKET, Key=key, Body=json.dumps(data))


def _seed_lineages(aws: dict[str, Any], tiny_raw: dict[str, Any], execution: str = "three-seeds"
                   ) -> dict[int, RunState]:
    """A run with seeds 0, 1, 2 as StartRun leaves it, two at once: seed 0 succeeded, seed 1 running its
    second session, seed 2 failed in its first; one execution drives them all."""
    tiny_raw.update(seeds=[0, 1, 2], parallel=2)
    pipeline = parse_pipeline(tiny_raw)
    keys = RunKeys(MULTI_RUN)
    _put(aws, keys.lineages, lineage_record(pipeline, MULTI_RUN))
    _put(aws, keys.pipeline, pipeline.resolved())
    arn = aws["sfn"].start_execution(stateMachineArn=aws["machine"], name=execution)["executionArn"]
    owner = {"execution": execution, "execution_arn": arn}
    _put(aws, keys.owner, owner)
    _put(aws, execution_key(execution), {"run_id": MULTI_RUN, "execution": execution})
    states = {}
    for seed, status in ((0, "succeeded"), (1, "running"), (2, "failed")):
        state = RunState.new(pipeline.lineage(seed), lineage_run_id(MULTI_RUN, seed))
        first, second = state.sessions
        first.status, first.job_name, first.attempts = "completed", f"rlpipe-{seed}-000-stand-1", 1
        second.status = {"succeeded": "completed", "running": "running", "failed": "pending"}[status]
        if status == "failed":
            first.status, first.error = "failed", "training job failed: AlgorithmError"
            state.finish("failed", "session stand: training job failed: AlgorithmError")
        elif status == "succeeded":
            state.finish("succeeded")
        else:
            state.status = "running"
        _put(aws, RunKeys(state.run_id).state, state.to_json())
        _put(aws, RunKeys(state.run_id).owner, owner)
        states[seed] = state
    return states


def test_start_runs_several_seeds(app: typer.Typer, aws: dict[str, Any], tiny_raw: dict[str, Any]) -> None:
    """AWS runs several seeds as lineages: start no longer refuses them and uploads the seeds with the config."""
    tiny_raw.update(seeds=[0, 1, 2], parallel=2)
    aws["config"].write_text(yaml.safe_dump(tiny_raw))
    result = invoke(app, "start", str(aws["config"]), "--name", "three-seeds")
    assert result.exit_code == 0, result.output
    execution = aws["sfn"].describe_execution(
        executionArn="arn:aws:states:us-east-1:123456789012:execution:runs:three-seeds")
    uri = json.loads(execution["input"])["pipeline_s3_uri"]
    body = json.loads(aws["s3"].get_object(Bucket=BUCKET, Key=uri.split("/", 3)[3])["Body"].read())
    assert (body["seeds"], body["parallel"]) == ([0, 1, 2], 2)


def _title_lines(output: str) -> list[str]:
    return [line.strip() for line in output.splitlines() if " / tiny-" in line]


def test_status_of_several_seeds_by_run_id_execution_name_or_arn(app: typer.Typer, aws: dict[str, Any],
                                                                  tiny_raw: dict[str, Any]) -> None:
    _seed_lineages(aws, tiny_raw)
    arn = "arn:aws:states:us-east-1:123456789012:execution:runs:three-seeds"
    for run in (MULTI_RUN, "three-seeds", arn):
        result = invoke(app, "status", run)
        assert result.exit_code == 0, result.output
        assert _title_lines(result.output) == [
            f"tiny / {MULTI_RUN}: running (seeds 0, 1, 2; 2 at once)",
            f"seed 0 / {MULTI_RUN}-seed-0: succeeded",
            f"seed 1 / {MULTI_RUN}-seed-1: running",
            f"seed 2 / {MULTI_RUN}-seed-2: failed"]
        for seed in (0, 1, 2):
            assert f"rlpipe-{seed}-000-stand-1" in result.output
        assert "seed 2: error: session stand: training job failed: AlgorithmError" in result.output


def test_status_of_one_lineage_is_its_single_seed_view(app: typer.Typer, aws: dict[str, Any],
                                                       tiny_raw: dict[str, Any]) -> None:
    _seed_lineages(aws, tiny_raw)
    result = invoke(app, "status", f"{MULTI_RUN}-seed-1")
    assert result.exit_code == 0, result.output
    assert f"lineage of seed 1 of run {MULTI_RUN} (`rlpipe status {MULTI_RUN}` shows every seed)" in result.output
    assert _title_lines(result.output) == [f"tiny / {MULTI_RUN}-seed-1: running"]
    # A run id of that shape that no run lists as its lineage is a run of its own, or nothing.
    assert cloud_cli.lineage_parent(cloud_cli.Stack.find("RlpipeStack", REGION), f"{MULTI_RUN}-seed-7") is None
    missing = invoke(app, "status", f"{MULTI_RUN}-seed-7")
    assert missing.exit_code == 2 and f"no run or execution '{MULTI_RUN}-seed-7'" in missing.output


def test_status_json_of_several_seeds(app: typer.Typer, aws: dict[str, Any], tiny_raw: dict[str, Any]) -> None:
    states = _seed_lineages(aws, tiny_raw)
    aws["s3"].delete_object(Bucket=BUCKET, Key=RunKeys(states[2].run_id).state)  # not written yet
    result = invoke(app, "status", "three-seeds", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert (doc["run_id"], doc["seeds"]) == (MULTI_RUN, [0, 1, 2])
    assert [(lin["seed"], lin["run_id"]) for lin in doc["lineages"]] == [
        (s, f"{MULTI_RUN}-seed-{s}") for s in (0, 1, 2)]
    assert doc["lineages"][0]["state"] == states[0].to_json() and doc["lineages"][2]["state"] is None
    assert doc["lineages"][1]["state"]["status"] == "running"
    once = invoke(app, "status", MULTI_RUN)
    assert once.exit_code == 0 and f"seed 2 / {MULTI_RUN}-seed-2: pending (no state yet)" in once.output


def test_stop_a_run_with_several_seeds(app: typer.Typer, aws: dict[str, Any], tiny_raw: dict[str, Any]) -> None:
    _seed_lineages(aws, tiny_raw)
    arn = "arn:aws:states:us-east-1:123456789012:execution:runs:three-seeds"
    result = invoke(app, "stop", MULTI_RUN)
    assert result.exit_code == 0, result.output
    assert f"stopped {arn}" in result.output and "lineage" not in result.output
    assert aws["sfn"].describe_execution(executionArn=arn)["status"] == "ABORTED"


def test_stop_a_lineage_stops_the_whole_run(app: typer.Typer, aws: dict[str, Any], tiny_raw: dict[str, Any]) -> None:
    _seed_lineages(aws, tiny_raw)
    arn = "arn:aws:states:us-east-1:123456789012:execution:runs:three-seeds"
    # The lineage's own execution.json is not what is stopped: after a resume that skipped a settled lineage
    # it names an older execution. The run's does.
    _put(aws, RunKeys(f"{MULTI_RUN}-seed-1").owner, {"execution": "old", "execution_arn": arn + "-old"})
    result = invoke(app, "stop", f"{MULTI_RUN}-seed-1")
    assert result.exit_code == 0, result.output
    assert (f"'{MULTI_RUN}-seed-1' is the lineage of seed 1 of run '{MULTI_RUN}': its execution runs every "
            "lineage of that run, so all of them stop") in " ".join(result.output.split())
    assert aws["sfn"].describe_execution(executionArn=arn)["status"] == "ABORTED"
    again = invoke(app, "stop", f"{MULTI_RUN}-seed-0")
    assert again.exit_code == 2 and "is not running" in again.output


def test_fetch_report_of_several_seeds_has_the_local_layout(app: typer.Typer, aws: dict[str, Any],
                                                            tiny_raw: dict[str, Any], tmp_path: Path) -> None:
    states = _seed_lineages(aws, tiny_raw)
    early = invoke(app, "fetch-report", MULTI_RUN, "-o", str(tmp_path / "early"))
    assert early.exit_code == 2 and "no report yet" in early.output
    keys = RunKeys(MULTI_RUN)
    for kind, body in (("json", b'{"seeds": [0, 1, 2]}'), ("md", b"# r"), ("html", b"<html></html>"),
                       ("png", b"png")):
        aws["s3"].put_object(Bucket=BUCKET, Key=keys.report(kind), Body=body)
    for seed in (0, 2):  # seed 1 is still running: no report of its own yet
        for kind in ("json", "html"):
            aws["s3"].put_object(Bucket=BUCKET, Key=RunKeys(states[seed].run_id).report(kind),
                                 Body=f"seed {seed} {kind}".encode())
    out = tmp_path / "out"
    result = invoke(app, "fetch-report", "three-seeds", "-o", str(out))
    assert result.exit_code == 0, result.output
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["learning_curve.png", "lineages.json", "report.html", "report.json", "report.md",
                     "seed-0/report.html", "seed-0/report.json", "seed-0/state.json",
                     "seed-1/state.json",
                     "seed-2/report.html", "seed-2/report.json", "seed-2/state.json"]
    assert "state.json" not in [p.name for p in out.iterdir()]  # the run across lineages has no state of its own
    assert json.loads((out / "lineages.json").read_text())["seeds"] == [0, 1, 2]
    assert RunState.model_validate_json((out / "seed-1" / "state.json").read_text()) == states[1]
    assert (out / "seed-2" / "report.html").read_text() == "seed 2 html"
    # One lineage alone: its own files, as a single-seed run.
    one = invoke(app, "fetch-report", f"{MULTI_RUN}-seed-0", "-o", str(tmp_path / "one"))
    assert one.exit_code == 0, one.output
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["report.html", "report.json", "state.json"]
