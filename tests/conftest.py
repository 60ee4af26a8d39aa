"""Shared fixtures: tiny pipelines that train in seconds."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest

# Tests never reach AWS: fake credentials and a region for boto3 and moto.
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parent.parent

TINY: dict[str, Any] = {
    "name": "tiny",
    "defaults": {
        "algorithm": "ppo",
        "n_envs": 2,
        "hyperparameters": {"n_steps": 64, "batch_size": 64, "policy_kwargs": {"net_arch": [16, 16]}},
        # No policy video: the tests that want one ask for it (recording takes seconds per session).
        "eval": {"every_steps": 128, "episodes": 1, "video": {"enabled": False}},
        "checkpoint": {"every_steps": 128},
    },
    "sessions": [
        {"name": "stand", "env": "rlpipe/HeightMaximize-v0", "timesteps": 256},
        {"name": "hold", "env": "rlpipe/CrushResistance-v0", "timesteps": 256, "use_previous_checkpoint": True},
    ],
}
# TINY with a third session warm-started from the second.
THREE: dict[str, Any] = {**copy.deepcopy(TINY), "name": "three"}
THREE["sessions"].append({"name": "hold-more", "env": "rlpipe/CrushResistance-v0", "timesteps": 256,
                          "use_previous_checkpoint": True})


@pytest.fixture
def tiny_raw() -> dict[str, Any]:
    """A fresh copy of the tiny two-session pipeline as a dict."""
    return copy.deepcopy(TINY)


@pytest.fixture(scope="session")
def fast_machine() -> tuple[dict[str, Any], dict[str, Any]]:
    """Template and logical ids of the orchestration construct with zero waits and 1-second SDK retries,
    synthesized once per test session (a synth takes seconds) for the local execution tests."""
    from aws_cdk import Duration
    from aws_cdk.assertions import Template

    from stacks.orchestration.state_machine import RetryPacing
    from tests.orchestration_app import FAST_TIMING, build_stack, logical_ids

    _, stack, orchestration = build_stack(
        timing=FAST_TIMING, bundle=False,
        pacing=RetryPacing(create_interval=Duration.seconds(1), describe_interval=Duration.seconds(1)))
    return Template.from_stack(stack).to_json(), logical_ids(stack, orchestration)


@pytest.fixture
def app() -> Any:
    """A typer app with only the cloud commands registered (``rlpipe.cloud.cli``), as the CLI tests drive it."""
    import typer

    from rlpipe.cloud import cli as cloud_cli

    cli = typer.Typer(no_args_is_help=True)

    @cli.callback()
    def main() -> None:
        """rlpipe (test)"""

    cloud_cli.register(cli)
    return cli


CLOUD_REGION = "us-east-1"


def deploy_fake_stack(bucket: str, **outputs: str) -> dict[str, Any]:
    """Inside ``mock_aws``: ``bucket``, a state machine that only waits, and a CloudFormation stack named
    RlpipeStack whose outputs name them (and ``outputs``), as :meth:`rlpipe.cloud.cli.Stack.find` reads a
    deployed stack. Returns the S3 and Step Functions clients and the state machine's ARN."""
    import json

    import boto3

    s3 = boto3.client("s3", region_name=CLOUD_REGION)
    s3.create_bucket(Bucket=bucket)
    sfn = boto3.client("stepfunctions", region_name=CLOUD_REGION)
    machine = sfn.create_state_machine(name="runs", definition=json.dumps(
        {"StartAt": "W", "States": {"W": {"Type": "Wait", "Seconds": 3600, "End": True}}}),
        roleArn="arn:aws:iam::123456789012:role/sfn")["stateMachineArn"]
    values = {"StateMachineArn": machine, "BucketName": bucket, **outputs}
    template = {"Resources": {"Topic": {"Type": "AWS::SNS::Topic"}},
                "Outputs": {k: {"Value": v} for k, v in values.items()}}
    boto3.client("cloudformation", region_name=CLOUD_REGION).create_stack(
        StackName="RlpipeStack", TemplateBody=json.dumps(template))
    return {"s3": s3, "sfn": sfn, "machine": machine}


def invoke(app: Any, *args: str) -> Any:
    """Run the cloud CLI ``app`` with ``args`` in the fake stack's region."""
    from typer.testing import CliRunner

    return CliRunner().invoke(app, list(args), env={"AWS_REGION": CLOUD_REGION})
