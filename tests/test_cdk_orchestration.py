"""The orchestration construct on a bare stack: state machine definition, IAM scopes, Lambdas and their assets,
the EventBridge rule, cdk-nag and cfn-lint."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import Validations
from aws_cdk.assertions import Match, Template

from rlpipe.cloud.requests import create_fields
from stacks.orchestration.functions import SPECS
from stacks.orchestration.packaging import LAMBDA_PYTHON
from stacks.settings import AppSettings
from tests.orchestration_app import build_stack, logical_ids
from tests.sfn_harness import resolve

REPO = Path(__file__).resolve().parent.parent
VPC_KMS = AppSettings(vpc_subnet_ids=("subnet-0123456789abcdef0",), vpc_security_group_ids=("sg-0123456789abcdef0",),
                      kms_key_arn="arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
                      job_prefix="rl")


class Synth:
    """A synthesized bare stack with the construct: template, ids, and the definition with placeholders."""

    def __init__(self, settings: AppSettings | None = None, **kwargs: Any) -> None:
        self.app, self.stack, self.orchestration = build_stack(settings=settings, bundle=False, **kwargs)
        self.template = Template.from_stack(self.stack)
        self.json = self.template.to_json()
        self.ids = logical_ids(self.stack, self.orchestration)
        machine = self.json["Resources"][self.ids["state_machine"]]["Properties"]
        refs = _Placeholders()
        self.definition_string = resolve(machine["DefinitionString"], refs)
        self.definition = json.loads(self.definition_string)
        self.run_states = self.definition["States"]
        # One lineage's states: the Map's item processor.
        self.lineage_states = self.run_states["Lineages"]["ItemProcessor"]["States"]
        self.states = {**self.run_states, **self.lineage_states}

    def policy_statements(self, role_logical_prefix: str) -> list[dict[str, Any]]:
        """Every statement of the inline policies attached to roles whose logical id starts with the prefix."""
        out = []
        for res in self.json["Resources"].values():
            if res["Type"] != "AWS::IAM::Policy":
                continue
            roles = [r.get("Ref", "") for r in res["Properties"]["Roles"]]
            if any(r.startswith(role_logical_prefix) for r in roles):
                out += res["Properties"]["PolicyDocument"]["Statement"]
        return out


class _Placeholders(dict):
    """Resolves any Ref/GetAtt to a readable placeholder."""

    def __missing__(self, key: str) -> str:
        return f"<{key}>"


@pytest.fixture(scope="module")
def synth() -> Synth:
    return Synth()


@pytest.fixture(scope="module")
def synth_vpc() -> Synth:
    return Synth(VPC_KMS, kms_bucket=True)


# ---- the state machine ----------------------------------------------------------------------------------------

def test_state_machine_is_standard_logged_traced(synth: Synth) -> None:
    synth.template.has_resource_properties("AWS::StepFunctions::StateMachine", {
        "StateMachineType": "STANDARD",
        "LoggingConfiguration": {"Level": "ALL", "IncludeExecutionData": True,
                                 "Destinations": [Match.any_value()]},
        "TracingConfiguration": {"Enabled": True},
    })
    machine = synth.json["Resources"][synth.ids["state_machine"]]["Properties"]
    group = machine["LoggingConfiguration"]["Destinations"][0]["CloudWatchLogsLogGroup"]["LogGroupArn"]["Fn::GetAtt"][0]
    props = synth.json["Resources"][group]["Properties"]
    assert props["RetentionInDays"] == 90
    assert props["LogGroupName"]["Fn::Join"][1][0].startswith("/aws/vendedlogs/states/")
    assert synth.definition.get("QueryLanguage", "JSONPath") == "JSONPath"


def test_definition_shape(synth: Synth) -> None:
    assert synth.definition["StartAt"] == "ReadInput"
    assert set(synth.run_states) == {
        "ReadInput", "StartRun", "Lineages", "FinishRun", "AllLineagesSucceeded?", "NotifySuccess", "RunSucceeded",
        "HandleFailure", "RunFailed", "FailureHandlingFailed"}
    assert set(synth.lineage_states) == {
        "NextStep?", "PrepareSession", "CreateTrainingJob", "AwaitJobEnd", "DescribeTrainingJob", "JobEnded?",
        "RecordSession", "WaitBeforeRetry", "WaitForPool", "CheckPool", "EndLineage", "StopRun?", "LineageEnded",
        "LineageFailed", "EndLineageFailed"}
    # The lineages: an inline Map over StartRun's lineages, at most run.parallel at once, its results replacing
    # the items; any failure of it (fail_fast, the cost ceiling) goes to the run's failure path.
    lineages = synth.run_states["Lineages"]
    assert lineages["ItemsPath"] == "$.lineages" and lineages["MaxConcurrencyPath"] == "$.run.parallel"
    assert lineages["ItemProcessor"]["ProcessorConfig"]["Mode"] == "INLINE"
    assert lineages["ItemProcessor"]["StartAt"] == "NextStep?" and lineages["ResultPath"] == "$.lineages"
    assert lineages["Catch"] == [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "HandleFailure"}]
    # HandleFailure publishes the alert itself (and records that it did), then the execution fails.
    assert synth.states["HandleFailure"]["Next"] == "RunFailed"
    # Every Wait takes its seconds from the payload (the Lambdas' pacing), never a constant.
    waits = {n: s for n, s in synth.states.items() if s["Type"] == "Wait"}
    assert waits and all(set(s) & {"Seconds", "Timestamp"} == set() and "SecondsPath" in s for s in waits.values())
    # The failure path ends in a Fail state whose Error and Cause are what the handler read.
    run_failed = synth.states["RunFailed"]
    assert (run_failed["Type"], run_failed["ErrorPath"], run_failed["CausePath"]) == \
        ("Fail", "$.failure.error", "$.failure.cause")
    # Every task of the run catches into the run's failure path, every task of a lineage into EndLineage.
    for states, handler in ((synth.run_states, "HandleFailure"), (synth.lineage_states, "EndLineage")):
        for name, state in states.items():
            if state["Type"] in ("Task", "Map") and name not in (handler, "NotifySuccess"):
                assert any(c["Next"] == handler and c["ErrorEquals"] == ["States.ALL"]
                           for c in state.get("Catch", [])), name
    # A lineage ends in EndLineage, whose result either ends the Map (fail_fast, cost) or is the lineage's.
    stop = synth.states["StopRun?"]
    assert stop["Choices"] == [{"Variable": "$.end.stop_run", "BooleanEquals": True, "Next": "LineageFailed"}]
    assert (synth.states["LineageFailed"]["ErrorPath"], synth.states["LineageFailed"]["CausePath"]) == \
        ("$.end.error", "$.end.cause")
    assert synth.states["LineageEnded"] == {"Type": "Pass", "Comment": "This lineage's result",
                                            "OutputPath": "$.end", "End": True}
    assert synth.states["AllLineagesSucceeded?"]["Default"] == "HandleFailure"


def test_sagemaker_is_called_through_the_sdk_integration_and_its_end_awaited_by_token(synth: Synth) -> None:
    create, describe = synth.states["CreateTrainingJob"], synth.states["DescribeTrainingJob"]
    assert create["Resource"] == "arn:<AWS::Partition>:states:::aws-sdk:sagemaker:createTrainingJob"
    assert describe["Resource"] == "arn:<AWS::Partition>:states:::aws-sdk:sagemaker:describeTrainingJob"
    assert ".sync" not in synth.definition_string
    # The request's fields as PrepareSession built them; the role is fixed by the stack.
    params = create["Parameters"]
    assert set(params) == {f"{f}.$" for f in create_fields(vpc=False) if f != "RoleArn"} | {"RoleArn"}
    assert params["RoleArn"].startswith("<TrainingRole")
    assert params["TrainingJobName.$"] == "$.job.request.TrainingJobName"
    assert create["Catch"][0] == {"ErrorEquals": ["SageMaker.ResourceInUseException"], "ResultPath": None,
                                  "Next": "AwaitJobEnd"}
    assert create["Next"] == "AwaitJobEnd"
    # The wait: a Lambda task with a token, bounded by a heartbeat and by the job's own limits.
    wait = synth.states["AwaitJobEnd"]
    assert wait["Resource"] == "arn:<AWS::Partition>:states:::lambda:invoke.waitForTaskToken"
    assert wait["Parameters"]["FunctionName"] == {"Fn::GetAtt": [synth.ids["functions"]["await_job"], "Arn"]} \
        or wait["Parameters"]["FunctionName"].startswith(f"<{synth.ids['functions']['await_job']}")
    assert wait["Parameters"]["Payload"]["token.$"] == "$$.Task.Token"
    assert wait["Parameters"]["Payload"]["job_name.$"] == "$.job.job_name"
    assert wait["HeartbeatSeconds"] == 2700 and wait["TimeoutSecondsPath"] == "$.job.timeout_seconds"
    assert wait["ResultPath"] == "$.status" and wait["Next"] == "RecordSession"
    assert wait["Catch"][0] == {"ErrorEquals": ["States.Timeout", "States.HeartbeatTimeout"], "ResultPath": None,
                                "Next": "DescribeTrainingJob"}
    # No Wait state between a job's end and RecordSession: nothing polls the job.
    assert not any(s["Type"] == "Wait" and s.get("Next") in ("DescribeTrainingJob", "AwaitJobEnd")
                   for s in synth.states.values())
    assert describe["ResultSelector"] == {"TrainingJobStatus.$": "$.TrainingJobStatus",
                                          "SecondaryStatus.$": "$.SecondaryStatus"}
    assert describe["Next"] == "JobEnded?"
    ended = synth.states["JobEnded?"]
    assert sorted(c["StringEquals"] for c in ended["Choices"][0]["Or"]) == ["Completed", "Failed", "Stopped"]
    assert [c["Next"] for c in ended["Choices"]] == ["RecordSession"] and ended["Default"] == "AwaitJobEnd"


def test_the_heartbeat_outlasts_reconciliation_and_stays_below_the_least_timeout() -> None:
    from aws_cdk import Duration

    from stacks.orchestration.state_machine import RetryPacing

    with pytest.raises(ValueError, match="three reconciliation intervals"):
        RetryPacing(job_heartbeat=Duration.minutes(20), reconcile_every=Duration.minutes(10))
    with pytest.raises(ValueError, match="shorter than 3600 s"):
        RetryPacing(job_heartbeat=Duration.hours(1))


def test_sdk_calls_retry_throttling_also_under_the_generic_sagemaker_error_names(synth: Synth) -> None:
    for name in ("CreateTrainingJob", "DescribeTrainingJob"):
        (retry,) = synth.states[name]["Retry"]
        assert {"SageMaker.ThrottlingException", "SageMaker.ResourceLimitExceededException",
                "SageMaker.AmazonSageMakerException", "SageMaker.SageMakerException"} <= set(retry["ErrorEquals"])


def test_definition_serialized_matches(synth: Synth) -> None:
    """The same facts through the assertions library's serialized-JSON matcher."""
    matcher = Match.serialized_json(Match.object_like({
        "StartAt": "ReadInput",
        "States": Match.object_like({
            "Lineages": Match.object_like({"Type": "Map", "MaxConcurrencyPath": "$.run.parallel",
                                           "ItemProcessor": Match.object_like({"States": Match.object_like({
                                               "NextStep?": Match.object_like({"Type": "Choice",
                                                                               "Default": "PrepareSession"}),
                                               "CheckPool": Match.object_like({"Next": "NextStep?",
                                                                               "ResultPath": "$.cursor"})})})}),
            "NotifySuccess": Match.object_like({"Resource": Match.string_like_regexp("states:::sns:publish$"),
                                                "Parameters": Match.object_like({"Message.$": "$.summary.message"})}),
        }),
    }))
    result = matcher.test(synth.definition_string)
    assert not result.has_failed(), result.render_mismatch()


def test_vpc_stack_passes_vpc_config(synth_vpc: Synth, synth: Synth) -> None:
    assert "VpcConfig.$" in synth_vpc.states["CreateTrainingJob"]["Parameters"]
    assert "VpcConfig.$" not in synth.states["CreateTrainingJob"]["Parameters"]


# ---- IAM ------------------------------------------------------------------------------------------------------

def _actions(statement: dict[str, Any]) -> list[str]:
    a = statement["Action"]
    return [a] if isinstance(a, str) else list(a)


def _resources(statement: dict[str, Any]) -> list[Any]:
    r = statement["Resource"]
    return r if isinstance(r, list) else [r]


def test_state_machine_role_is_scoped(synth: Synth) -> None:
    statements = synth.policy_statements("OrchestrationStateMachineRole")
    by_action: dict[str, list[dict[str, Any]]] = {}
    for s in statements:
        for a in _actions(s):
            by_action.setdefault(a.lower(), []).append(s)
    for action in ("sagemaker:createtrainingjob", "sagemaker:describetrainingjob", "sagemaker:addtags"):
        for s in by_action[action]:
            assert [json.dumps(r) for r in _resources(s)] == [json.dumps(_job_arn("rlpipe"))], action
    assert not any(a.startswith("sagemaker:") and a not in ("sagemaker:createtrainingjob",
                   "sagemaker:describetrainingjob", "sagemaker:addtags") for a in by_action)
    (pass_role,) = by_action["iam:passrole"]
    assert pass_role["Condition"] == {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}
    logical, attribute = pass_role["Resource"]["Fn::GetAtt"]
    assert logical.startswith("TrainingRole") and attribute == "Arn"
    invoked = {json.dumps(r) for s in by_action["lambda:invokefunction"] for r in _resources(s)}
    for name, logical in synth.ids["functions"].items():  # its own functions but the EventBridge targets
        assert (json.dumps({"Fn::GetAtt": [logical, "Arn"]}) in invoked) == (name not in ("cleanup", "job_events")), \
            name
    assert all(r.get("Ref", "").startswith("Topic") for s in by_action["sns:publish"] for r in _resources(s))
    # "*" only for actions that have no resource-level permissions.
    for s in statements:
        if "*" in _resources(s):
            assert all(a.startswith(("logs:", "xray:")) for a in _actions(s)), s


def _job_arn(prefix: str) -> dict[str, Any]:
    return {"Fn::Join": ["", ["arn:", {"Ref": "AWS::Partition"}, ":sagemaker:", {"Ref": "AWS::Region"}, ":",
                              {"Ref": "AWS::AccountId"}, f":training-job/{prefix}-????????-???-*"]]}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_each_lambda_holds_only_what_its_step_calls(synth: Synth, name: str) -> None:
    spec = SPECS[name]
    prefix = "OrchestrationFunctions" + "".join(p.capitalize() for p in name.split("_")) + "Role"
    statements = synth.policy_statements(prefix)
    actions = {a for s in statements for a in _actions(s)}
    expected = {"logs:CreateLogStream", "logs:PutLogEvents", "xray:PutTraceSegments", "xray:PutTelemetryRecords"}
    if spec.read:
        expected |= {"s3:GetObject", "s3:ListBucket"}
    if spec.write:
        expected.add("s3:PutObject")
    expected |= {f"sagemaker:{a}" for a in spec.sagemaker}
    if spec.publishes:
        expected |= {"sns:Publish", "kms:Decrypt", "kms:GenerateDataKey*"}
    if name == "start_run":  # is the execution that last drove a run still running? (taking over a dead one)
        expected.add("states:DescribeExecution")
    expected |= {f"s3:{a}" for a in spec.tokens}
    if name in ("await_job", "job_events"):  # they complete the waiting tasks; reconciliation heartbeats them
        expected |= {"states:SendTaskSuccess", "states:SendTaskFailure"}
    if name == "job_events":
        expected.add("states:SendTaskHeartbeat")
    assert actions == expected
    for s in statements:
        if "s3:GetObject" in _actions(s) or "s3:PutObject" in _actions(s):
            for r in _resources(s):
                assert r["Fn::Join"][1][-1].lstrip("/").split("/")[0] + "/" in ("configs/", "runs/",
                                                                                  "executions/", "checkpoints/",
                                                                                  "tokens/"), r
        if "s3:DeleteObject" in _actions(s):
            assert [r["Fn::Join"][1][-1] for r in _resources(s)] == ["/tokens/*"]
        if "s3:ListBucket" in _actions(s):
            assert set(s["Condition"]["StringLike"]["s3:prefix"]) <= {"configs/*", "runs/*", "executions/*",
                                                                      "checkpoints/*", "tokens/*"}
        if any(a.startswith("states:SendTask") for a in _actions(s)):  # no resource-level permission exists
            assert _resources(s) == ["*"] and set(_actions(s)) <= {
                "states:SendTaskSuccess", "states:SendTaskFailure", "states:SendTaskHeartbeat"}
        if any(a.startswith("sagemaker:") for a in _actions(s)):
            assert _resources(s) == [_job_arn("rlpipe")]
        if "states:DescribeExecution" in _actions(s):
            (arn,) = _resources(s)
            assert arn["Fn::Join"][1][-2:] == [{"Fn::GetAtt": [synth.ids["state_machine"], "Name"]}, ":*"]


def test_kms_bucket_grants_the_bucket_key(synth_vpc: Synth) -> None:
    statements = synth_vpc.policy_statements("OrchestrationFunctionsPrepareSessionRole")
    kms = [s for s in statements if any(a.startswith("kms:") for a in _actions(s))]
    assert kms and set(_actions(kms[0])) == {"kms:Decrypt", "kms:GenerateDataKey"}
    sagemaker = [s for s in synth_vpc.policy_statements("OrchestrationStateMachineRole")
                 if "sagemaker:createTrainingJob" in _actions(s)]
    assert _resources(sagemaker[0]) == [_job_arn("rl")]


# ---- Lambdas and EventBridge ----------------------------------------------------------------------------------

def test_functions(synth: Synth) -> None:
    functions = synth.template.find_resources("AWS::Lambda::Function")
    layers = synth.template.find_resources("AWS::Lambda::LayerVersion")
    assert len(functions) == len(SPECS) and len(layers) == 2
    for name, logical in synth.ids["functions"].items():
        props = functions[logical]["Properties"]
        assert props["Runtime"] == f"python{LAMBDA_PYTHON}" and props["Handler"] == "handler.handler"
        assert props["Architectures"] == ["x86_64"] and props["TracingConfig"] == {"Mode": "Active"}
        assert len(props["Layers"]) == (2 if SPECS[name].plots else 1)
        env = props["Environment"]["Variables"]
        assert env["RLPIPE_JOB_PREFIX"] == "rlpipe" and "RLPIPE_BUCKET" in env
        assert ("RLPIPE_TOPIC_ARN" in env) == SPECS[name].publishes
    prepare = functions[synth.ids["functions"]["prepare_session"]]["Properties"]["Environment"]["Variables"]
    assert {"RLPIPE_TRAINING_ROLE_ARN", "RLPIPE_IMAGE_URI"} <= set(prepare)


def test_cleanup_rule_targets_abnormal_ends_of_this_machine(synth: Synth) -> None:
    synth.template.has_resource_properties("AWS::Events::Rule", {
        "EventPattern": {
            "source": ["aws.states"], "detail-type": ["Step Functions Execution Status Change"],
            "detail": {"status": ["FAILED", "TIMED_OUT", "ABORTED"],
                       "stateMachineArn": [{"Ref": synth.ids["state_machine"]}]}},
        "Targets": [Match.object_like({"Arn": {"Fn::GetAtt": [synth.ids["functions"]["cleanup"], "Arn"]},
                                       "RetryPolicy": Match.any_value(),
                                       "DeadLetterConfig": {"Arn": {"Fn::GetAtt": [Match.any_value(), "Arn"]}}})],
    })


def test_job_end_rule_matches_this_stacks_jobs_at_their_terminal_statuses(synth: Synth, synth_vpc: Synth) -> None:
    for given, prefix in ((synth, "rlpipe-"), (synth_vpc, "rl-")):
        given.template.has_resource_properties("AWS::Events::Rule", {
            "EventPattern": {
                "source": ["aws.sagemaker"], "detail-type": ["SageMaker Training Job State Change"],
                "detail": {"TrainingJobName": [{"prefix": prefix}],
                           "TrainingJobStatus": ["Completed", "Failed", "Stopped"]}},
            "Targets": [Match.object_like({
                "Arn": {"Fn::GetAtt": [given.ids["functions"]["job_events"], "Arn"]},
                "RetryPolicy": Match.any_value(),
                "DeadLetterConfig": {"Arn": {"Fn::GetAtt": [Match.any_value(), "Arn"]}}})],
        })
    # The slow reconciliation: a schedule targeting the same function.
    synth.template.has_resource_properties("AWS::Events::Rule", {
        "ScheduleExpression": "rate(10 minutes)",
        "Targets": [Match.object_like({"Arn": {"Fn::GetAtt": [synth.ids["functions"]["job_events"], "Arn"]}})],
    })


def test_functions_completing_tasks_reach_only_this_machine_and_the_token_prefix(synth_vpc: Synth) -> None:
    """AwaitJobEnd and JobEvents: SendTask* on "*" (the Service Authorization Reference gives these actions no
    resource type: a state machine ARN would never match), heartbeats for JobEvents only; S3 on tokens/ only;
    with a KMS bucket, the key's calls their S3 actions need."""
    completes = ["states:SendTaskFailure", "states:SendTaskSuccess"]
    for name, kms, sent in (("await_job", {"kms:GenerateDataKey"}, completes),
                            ("job_events", {"kms:Decrypt"}, sorted([*completes, "states:SendTaskHeartbeat"]))):
        prefix = "OrchestrationFunctions" + "".join(p.capitalize() for p in name.split("_")) + "Role"
        statements = synth_vpc.policy_statements(prefix)
        sends = [s for s in statements if any(a.startswith("states:") for a in _actions(s))]
        assert all(_resources(s) == ["*"] for s in sends), name
        assert sorted(a for s in sends for a in _actions(s)) == sent, name
        granted_kms = {a for s in statements for a in _actions(s) if a.startswith("kms:")}
        assert granted_kms == kms, name
        touched = {r["Fn::Join"][1][-1].split("/")[1] for s in statements for r in _resources(s)
                   if any(a.startswith("s3:") and a != "s3:ListBucket" for a in _actions(s))}
        assert touched == {"tokens"}, name


def test_undelivered_cleanup_events_land_in_an_encrypted_queue_and_alert(synth: Synth) -> None:
    orchestration = synth.orchestration
    queue_id = synth.stack.get_logical_id(orchestration.cleanup_dlq.node.default_child)
    rules = synth.template.find_resources("AWS::Events::Rule").values()
    delivered = [r for r in rules if "EventPattern" in r["Properties"]]  # cleanup and job-end events
    assert len(delivered) == 2 and all(r["Properties"]["Targets"][0]["DeadLetterConfig"] ==
                                       {"Arn": {"Fn::GetAtt": [queue_id, "Arn"]}} for r in delivered)
    synth.template.has_resource_properties("AWS::SQS::Queue", {"SqsManagedSseEnabled": True})
    synth.template.has_resource_properties("AWS::SQS::QueuePolicy", {"PolicyDocument": {"Statement": Match.array_with([
        Match.object_like({"Effect": "Deny", "Condition": {"Bool": {"aws:SecureTransport": "false"}}}),
        Match.object_like({"Effect": "Allow", "Action": "sqs:SendMessage",
                           "Principal": {"Service": "events.amazonaws.com"}}),
    ])}})
    synth.template.has_resource_properties("AWS::CloudWatch::Alarm", {
        "MetricName": "ApproximateNumberOfMessagesVisible", "Namespace": "AWS/SQS",
        "Dimensions": [{"Name": "QueueName", "Value": {"Fn::GetAtt": [queue_id, "QueueName"]}}],
        "Threshold": 1, "ComparisonOperator": "GreaterThanOrEqualToThreshold",
        "AlarmActions": [{"Ref": Match.string_like_regexp("^Topic")}]})


# ---- checks on every synth ------------------------------------------------------------------------------------

@pytest.mark.parametrize("options", [{}, {"settings": VPC_KMS, "kms_bucket": True}], ids=["default", "vpc-kms"])
def test_cdk_nag_clean_and_every_acknowledgment_has_a_reason(options: dict[str, Any], tmp_path: Path) -> None:
    app, _, orchestration = build_stack(nag=True, bundle=False, outdir=str(tmp_path), **options)
    app.synth()  # raises on any unacknowledged finding
    for construct in orchestration.node.find_all():
        for entry in construct.node.metadata:
            if entry.type == Validations.ACKNOWLEDGED_RULES_METADATA_KEY:
                for rule, reason in entry.data.items():
                    assert len(reason) > 40, (construct.node.path, rule)
                    assert "AwsSolutions-" in rule, rule


def test_cfn_lint_finds_no_errors(synth: Synth, tmp_path: Path) -> None:
    template = tmp_path / "orchestration.json"
    template.write_text(json.dumps(synth.json))
    cfn_lint = shutil.which("cfn-lint", path=str(Path(sys.executable).parent)) or shutil.which("cfn-lint")
    assert cfn_lint, "cfn-lint is a dev dependency"
    done = subprocess.run([cfn_lint, "--format", "parseable", str(template)], capture_output=True, text=True)
    # cfn-lint's exit code is a bit field: 2 errors, 4 warnings, 8 informational.
    assert done.returncode & 2 == 0 and done.returncode & 1 == 0, done.stdout + done.stderr


# ---- the packaged Lambdas, as the runtime sees them -----------------------------------------------------------

def _python(version: str) -> str | None:
    """An interpreter of ``version``: a pyenv install, or one on PATH (pyenv's shims only redirect)."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = [c / "bin" / f"python{version}" for c in sorted(pyenv.glob(f"{version}.*"), reverse=True)]
    on_path = shutil.which(f"python{version}")
    if on_path and "shims" not in on_path:
        candidates.append(Path(on_path))
    return next((str(c) for c in candidates if c.exists()), None)


_RUNTIME_PACKAGES = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "six.py", "urllib3")


@pytest.fixture(scope="module")
def bundled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The construct synthesized with real bundling: the asset directory of every function and layer."""
    outdir = tmp_path_factory.mktemp("assembly")
    app, stack, orchestration = build_stack(outdir=str(outdir))
    app.synth()
    template = json.loads((outdir / f"{stack.artifact_id}.template.json").read_text())
    manifest = json.loads((outdir / f"{stack.artifact_id}.assets.json").read_text())
    sources = {asset_hash: outdir / entry["source"]["path"] for asset_hash, entry in manifest["files"].items()}
    assets = {}
    for logical, res in template["Resources"].items():
        code = {"AWS::Lambda::Function": "Code", "AWS::Lambda::LayerVersion": "Content"}.get(res["Type"])
        if code:
            assets[logical] = sources[res["Properties"][code]["S3Key"].removesuffix(".zip")]
    return {"template": template, "assets": assets, "ids": logical_ids(stack, orchestration)}


def test_assets_hold_the_handler_and_the_core_but_no_training_code(bundled: dict[str, Any]) -> None:
    for name, logical in bundled["ids"]["functions"].items():
        root = bundled["assets"][logical]
        assert (root / "handler.py").is_file() and (root / "rlpipe" / "cloud" / "steps" / "__init__.py").is_file()
        assert (root / "rlpipe" / "data" / "env_catalog.json").is_file()
        assert not (root / "rlpipe" / "trainer").exists() and not (root / "rlpipe" / "envs").exists()
        size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        assert size < 2_000_000, (name, size)


def test_handlers_import_in_a_clean_lambda_like_interpreter(bundled: dict[str, Any], tmp_path: Path) -> None:
    python = _python(LAMBDA_PYTHON)
    if python is None:
        pytest.skip(f"no Python {LAMBDA_PYTHON} interpreter here (the Lambda runtime's version)")
    # What the runtime adds to a Python Lambda: boto3 and its pure-Python dependencies.
    runtime = tmp_path / "var-runtime"
    runtime.mkdir()
    site = Path(__import__("boto3").__file__).parent.parent
    for name in _RUNTIME_PACKAGES:
        src = site / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, runtime / name)
    template, assets = bundled["template"], bundled["assets"]
    layer_dirs = {logical: assets[logical] / "python" for logical, res in template["Resources"].items()
                  if res["Type"] == "AWS::Lambda::LayerVersion"}
    probe = (
        "import json, sys\n"
        "import handler\n"
        "from rlpipe.config import parse_pipeline\n"
        "from rlpipe import envspec\n"
        "assert not envspec._gymnasium_available()\n"
        "p = parse_pipeline(json.loads(sys.argv[1]))\n"
        "assert p.sessions[1].use_previous_checkpoint\n"
        "if sys.argv[2] == 'plots':\n"
        "    import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot\n"
        "print('ok', callable(handler.handler))\n")
    from tests.conftest import TINY

    for name, logical in bundled["ids"]["functions"].items():
        props = template["Resources"][logical]["Properties"]
        layers = [layer_dirs[layer["Ref"]] for layer in props["Layers"]]
        path = os.pathsep.join(str(p) for p in [assets[logical], *layers, runtime])
        env = {"AWS_DEFAULT_REGION": "us-east-1", "RLPIPE_BUCKET": "b", "MPLCONFIGDIR": str(tmp_path / "mpl"),
               "PATH": "/usr/bin:/bin"}
        # -I: isolated (no PYTHON* variables, no user site, no script dir); -S: no site-packages either.
        # The path is only the function's code, its layers and the runtime's boto3, in the runtime's order.
        done = subprocess.run([python, "-I", "-S", "-c",
                               f"import sys; sys.path[:0] = {path.split(os.pathsep)!r}\n" + probe,
                               json.dumps(TINY), "plots" if SPECS[name].plots else "-"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "ok True" in done.stdout, (name, done.stderr[-3000:])
