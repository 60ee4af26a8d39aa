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
from typer.testing import CliRunner

from rlpipe.cloud import cli as cloud_cli
from rlpipe.cloud.naming import is_valid_job_name
from rlpipe.cloud.store import RunKeys, execution_key
from rlpipe.config import load_pipeline
from rlpipe.state import RunState

REGION = "us-east-1"
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
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=BUCKET)
        sfn = boto3.client("stepfunctions", region_name=REGION)
        machine = sfn.create_state_machine(name="runs", definition=json.dumps(
            {"StartAt": "W", "States": {"W": {"Type": "Wait", "Seconds": 3600, "End": True}}}),
            roleArn="arn:aws:iam::123456789012:role/sfn")["stateMachineArn"]
        outputs = {"StateMachineArn": machine, "BucketName": BUCKET, "ImageUri": IMAGE, "TrainingRoleArn": ROLE,
                   "RequestSettings": json.dumps(REQUEST_SETTINGS)}
        template = {"Resources": {"Topic": {"Type": "AWS::SNS::Topic"}},
                    "Outputs": {k: {"Value": v} for k, v in outputs.items()}}
        boto3.client("cloudformation", region_name=REGION).create_stack(
            StackName="RlpipeStack", TemplateBody=json.dumps(template))
        config = tmp_path / "pipeline.yaml"
        config.write_text(yaml.safe_dump(tiny_raw))
        yield {"s3": s3, "sfn": sfn, "machine": machine, "config": config}


def invoke(app: typer.Typer, *args: str) -> Any:
    result = CliRunner().invoke(app, list(args), env={"AWS_REGION": REGION})
    return result


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
    from rlpipe.config import parse_pipeline

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
