"""The whole CDK app: settings from context, synth offline, outputs, cdk-nag clean, cfn-lint clean."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import Validations
from aws_cdk.assertions import Template

from stacks.settings import DEFAULT_STACK_NAME, AppSettings, SettingsError

REPO = Path(__file__).resolve().parent.parent
KEY_ARN = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
FULL_OPTIONS = {
    "alert_email": "team@example.com, oncall@example.org",
    "kms_key_arn": KEY_ARN,
    "vpc_subnet_ids": "subnet-0123456789abcdef0,subnet-0fedcba9876543210",
    "vpc_security_group_ids": "sg-0123456789abcdef0",
    "removal_policy": "destroy",
    "image_build_arg_base": "cuda",
    "job_prefix": "rl",
}
EXPECTED_OUTPUTS = {"StateMachineArn", "BucketName", "TopicArn", "ImageUri", "StartExecutionCommand", "DashboardUrl"}

needs_orchestration = pytest.mark.skipif(
    not ((REPO / "stacks" / "orchestration.py").exists() or (REPO / "stacks" / "orchestration").is_dir()),
    reason="stacks/orchestration is not there yet; the whole app cannot be built without it")


@dataclass
class Synth:
    """One synthesized app: the assembly directory, the stack's template, and how validation went."""

    directory: Path
    template: dict[str, Any] | None
    error: str | None
    violations: list[str]
    acknowledgments: dict[str, dict[str, str]]  # construct path -> {rule id: reason}


def _synth(context: dict[str, Any], outdir: Path) -> Synth:
    from app import build_app

    app, stack = build_app(context, outdir=str(outdir))
    error = None
    try:
        app.synth()
    except RuntimeError as exc:  # a validation plugin (cdk-nag, CloudFormation rules) reported violations
        error = str(exc)
    violations = []
    report = outdir / "validation-report.json"
    if report.exists():
        for plugin in json.loads(report.read_text())["pluginReports"]:
            for v in plugin["violations"]:
                violations += [f"{plugin['pluginName']}: {v['ruleName']} at {c['constructPath']}: "
                               f"{v['description']}" for c in v["violatingConstructs"]]
    acknowledgments = {}
    for construct in app.node.find_all():
        for entry in construct.node.metadata:
            if entry.type == Validations.ACKNOWLEDGED_RULES_METADATA_KEY:
                acknowledgments.setdefault(construct.node.path, {}).update(entry.data)
    template_file = outdir / f"{stack.artifact_id}.template.json"
    template = json.loads(template_file.read_text()) if template_file.exists() else None
    return Synth(outdir, template, error, violations, acknowledgments)


@pytest.fixture(scope="module")
def default_synth(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    return _synth({"alert_email": "team@example.com"}, tmp_path_factory.mktemp("cdk-default"))


@pytest.fixture(scope="module")
def full_synth(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    return _synth(FULL_OPTIONS, tmp_path_factory.mktemp("cdk-full"))


def _assert_clean(synth: Synth) -> None:
    assert synth.error is None and not synth.violations, "\n".join(synth.violations) or synth.error


# --- settings (no synth) ---------------------------------------------------------------------------------

def test_settings_defaults() -> None:
    settings = AppSettings.from_context(lambda key: None)
    assert settings.alert_emails == ()
    assert settings.removal_policy == "retain" and settings.job_prefix == "rlpipe"
    assert settings.default_pipeline == REPO / "configs" / "pipeline.yaml"
    assert settings.image_build_arg_base == "cpu" and settings.stack_name == DEFAULT_STACK_NAME
    assert not settings.uses_vpc and settings.kms_key_arn is None


def test_settings_parse_comma_separated_and_list_values() -> None:
    values = {"alert_email": "a@example.com, b@example.org", "vpc_subnet_ids": ["subnet-0123456789abcdef0"],
              "vpc_security_group_ids": "sg-0123456789abcdef0", "removal_policy": "DESTROY"}
    settings = AppSettings.from_context(values.get)
    assert settings.alert_emails == ("a@example.com", "b@example.org")
    assert settings.vpc_subnet_ids == ("subnet-0123456789abcdef0",) and settings.uses_vpc
    assert settings.removal_policy == "destroy"


@pytest.mark.parametrize("values, problem", [
    ({"alert_email": "not-an-address"}, "alert_email"),
    ({"vpc_subnet_ids": "subnet-0123456789abcdef0"}, "give both or neither"),
    ({"vpc_subnet_ids": "vpc-1", "vpc_security_group_ids": "sg-0123456789abcdef0"}, "not a subnet id"),
    ({"kms_key_arn": "alias/mine"}, "kms_key_arn"),
    ({"removal_policy": "snapshot"}, "retain or destroy"),
    ({"job_prefix": "a-much-too-long-prefix"}, "job_prefix"),
    ({"job_prefix": "bad_prefix"}, "job_prefix"),
    ({"default_pipeline": "configs/missing.yaml"}, "does not exist"),
    ({"image_build_arg_base": "rocm"}, "cpu or cuda"),
])
def test_settings_reject_bad_context(values: dict[str, str], problem: str) -> None:
    with pytest.raises(SettingsError, match=problem):
        AppSettings.from_context(values.get)


def test_settings_report_every_problem_at_once() -> None:
    with pytest.raises(SettingsError) as err:
        AppSettings.from_context({"alert_email": "x", "removal_policy": "keep"}.get)
    assert len(err.value.problems) == 2


# --- the whole app -----------------------------------------------------------------------------------------

@needs_orchestration
def test_synth_has_no_unacknowledged_findings(default_synth: Synth) -> None:
    _assert_clean(default_synth)


@needs_orchestration
def test_every_acknowledgment_has_a_reason(default_synth: Synth, full_synth: Synth) -> None:
    acknowledged = {**default_synth.acknowledgments, **full_synth.acknowledgments}
    assert acknowledged
    for path, rules in acknowledged.items():
        for rule, reason in rules.items():
            assert "AwsSolutions-" in rule, (path, rule)
            assert reason and len(reason.strip()) >= 20, f"{path}: {rule} needs a real reason"


@needs_orchestration
def test_outputs(default_synth: Synth) -> None:
    assert default_synth.template is not None, default_synth.error
    outputs = default_synth.template["Outputs"]
    assert EXPECTED_OUTPUTS <= set(outputs)
    template = Template.from_json(default_synth.template)
    machine_ids = list(template.find_resources("AWS::StepFunctions::StateMachine"))
    assert outputs["StateMachineArn"]["Value"] in [{"Ref": m} for m in machine_ids]
    command = outputs["StartExecutionCommand"]["Value"]["Fn::Join"][1]
    text = "".join(p if isinstance(p, str) else "<ref>" for p in command)
    assert text.startswith("aws stepfunctions start-execution --region <ref> --state-machine-arn <ref>")
    assert text.endswith(" --input '{}'")
    assert outputs["StateMachineArn"]["Value"] in command


@needs_orchestration
def test_request_settings_output_reads_back_as_the_lambdas_settings(default_synth: Synth) -> None:
    """`rlpipe debug-job` builds its request from this output: the deployed prefix, VPC and KMS key."""
    import json as _json

    from rlpipe.cloud.requests import StackSettings

    value = default_synth.template["Outputs"]["RequestSettings"]["Value"]
    parts = value["Fn::Join"][1] if isinstance(value, dict) else [value]
    text = "".join(p if isinstance(p, str) else "REF" for p in parts)
    settings = StackSettings.from_document(_json.loads(text))
    assert (settings.bucket, settings.role_arn) == ("REF", "REF") and settings.image_uri.startswith("REF.dkr.ecr.")
    assert settings.job_prefix == "rlpipe" and settings.subnet_ids == () and settings.kms_key_arn is None


def test_constants_live_in_one_place() -> None:
    """Stack name, job prefix rules and bucket layout come from rlpipe.cloud (the Lambdas' and CLI's side)."""
    from rlpipe.cloud import cli, naming, store
    from stacks import settings, storage

    assert settings.DEFAULT_STACK_NAME is naming.DEFAULT_STACK_NAME is cli.DEFAULT_STACK
    assert AppSettings().job_prefix == naming.DEFAULT_JOB_PREFIX
    long_ok = "a" * naming.JOB_PREFIX_MAX
    assert AppSettings.from_context({"job_prefix": long_ok}.get).job_prefix == long_ok
    for name in ("CONFIGS_PREFIX", "RUNS_PREFIX", "CHECKPOINTS_PREFIX", "DEFAULT_PIPELINE_KEY"):
        assert getattr(storage, name) is getattr(store, name), name


@needs_orchestration
def test_state_machine_waits_for_image_and_default_pipeline(default_synth: Synth) -> None:
    assert default_synth.template is not None, default_synth.error
    resources = default_synth.template["Resources"]
    (machine,) = [r for r in resources.values() if r["Type"] == "AWS::StepFunctions::StateMachine"]
    depends = set(machine.get("DependsOn", []))
    kinds = {resources[d]["Type"] for d in depends}
    assert {"Custom::CDKECRDeployment", "Custom::AWS"} <= kinds


@needs_orchestration
def test_all_options_synth_cleanly(full_synth: Synth) -> None:
    _assert_clean(full_synth)
    assert full_synth.template is not None
    template = Template.from_json(full_synth.template)
    template.resource_count_is("AWS::SNS::Subscription", 2)
    buckets = template.find_resources("AWS::S3::Bucket")
    assert any(json.dumps(b).count(KEY_ARN) for b in buckets.values())
    assert all(b["DeletionPolicy"] == "Delete" for b in buckets.values())


def _lint(directory: Path) -> list[str]:
    from cfnlint.api import lint

    problems = []
    templates = sorted(directory.glob("*.template.json"))
    assert templates
    for path in templates:
        for match in lint(path.read_text()):
            if match.rule.id.startswith("E"):  # W3005 (redundant DependsOn) is known on plain CDK output
                problems.append(f"{path.name}: {match}")
    return problems


@needs_orchestration
def test_cfn_lint_finds_no_errors(default_synth: Synth, full_synth: Synth) -> None:
    assert _lint(default_synth.directory) == []
    assert _lint(full_synth.directory) == []


@needs_orchestration
@pytest.mark.skipif(not (REPO / "node_modules" / ".bin" / "cdk").exists(),
                    reason="the pinned CDK CLI is not installed (npm ci)")
def test_cdk_cli_synth_runs_offline_without_credentials(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_EC2_METADATA_DISABLED="true", JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION="20",
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_CONFIG_FILE=str(tmp_path / "none"))
    result = subprocess.run(
        [str(REPO / "node_modules" / ".bin" / "cdk"), "synth", "--quiet", "-o", str(tmp_path / "cdk.out"),
         "-c", "alert_email=team@example.com"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "cdk.out" / f"{DEFAULT_STACK_NAME}.template.json").exists()
