"""The run dashboard: executions, per-job training metrics found by a SEARCH limited to the job prefix, Lambda
errors, the cleanup queue; its URL as a stack output and in every Lambda's environment."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from aws_cdk import App, Stack
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sqs as sqs
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk.assertions import Template

from rlpipe.cloud import metrics, naming
from rlpipe.cloud.environment import DASHBOARD_URL
from rlpipe.contract import METRIC_DEFINITIONS
from stacks.dashboard import TRAINING_GRAPHS, RunDashboard
from stacks.settings import cdk_json_context

PREFIX = "rl-dev"


def _ref(part: Any) -> str:
    """A literal as is; ``{"Ref": X}`` as ``<X>``, ``{"Fn::GetAtt": [X, A]}`` as ``<X.A>``."""
    if isinstance(part, str):
        return part
    return f"<{part['Ref']}>" if "Ref" in part else f"<{'.'.join(part['Fn::GetAtt'])}>"


def _joined(value: Any) -> str:
    parts = value["Fn::Join"][1] if isinstance(value, dict) else [value]
    return "".join(_ref(p) for p in parts)


def _body(template: dict[str, Any]) -> dict[str, Any]:
    """The dashboard body, CloudFormation references written as ``<logical id>`` (see :func:`_ref`)."""
    (dashboard,) = [r for r in template["Resources"].values() if r["Type"] == "AWS::CloudWatch::Dashboard"]
    return json.loads(_joined(dashboard["Properties"]["DashboardBody"]))


@pytest.fixture(scope="module")
def synth() -> tuple[dict[str, Any], Stack, RunDashboard, dict[str, lambda_.Function], sfn.StateMachine]:
    stack = Stack(App(context=cdk_json_context()), "DashboardTest")
    machine = sfn.StateMachine(stack, "Machine", definition_body=sfn.DefinitionBody.from_chainable(
        sfn.Pass(stack, "Nothing")))
    functions = {name: lambda_.Function(stack, name.title().replace("_", ""), runtime=lambda_.Runtime.PYTHON_3_13,
                                        handler="index.handler", code=lambda_.Code.from_inline("def handler(e, c): 0"))
                 for name in ("start_run", "finish_run")}
    queue = sqs.Queue(stack, "Dlq")
    dashboard = RunDashboard(stack, "Dashboard", state_machine=machine, functions=functions, cleanup_queue=queue,
                             job_prefix=PREFIX)
    return Template.from_stack(stack).to_json(), stack, dashboard, functions, machine


def _widget(body: dict[str, Any], title: str) -> dict[str, Any]:
    found = [w for w in body["widgets"] if w["properties"].get("title", "").startswith(title)]
    assert len(found) == 1, [w["properties"].get("title") for w in body["widgets"]]
    return found[0]["properties"]


def test_dashboard_is_named_per_stack_and_region(synth: Any) -> None:
    template, *_ = synth
    (dashboard,) = [r for r in template["Resources"].values() if r["Type"] == "AWS::CloudWatch::Dashboard"]
    assert _joined(dashboard["Properties"]["DashboardName"]) == "<AWS::StackName>-<AWS::Region>"


def test_executions_graph_shows_the_state_machine_started_succeeded_failed(synth: Any) -> None:
    template, stack, _, _, machine = synth
    graph = _widget(_body(template), "Executions")
    machine_ref = f"<{stack.get_logical_id(machine.node.default_child)}>"
    shown = {(m[0], m[1], m[2], m[3]) for m in graph["metrics"]}
    for name in ("ExecutionsStarted", "ExecutionsSucceeded", "ExecutionsFailed", "ExecutionsAborted",
                 "ExecutionsTimedOut"):
        assert ("AWS/States", name, "StateMachineArn", machine_ref) in shown
    assert graph["stat"] == "Sum"


def test_lambda_errors_graph_has_one_line_per_function(synth: Any) -> None:
    template, stack, _, functions, _ = synth
    graph = _widget(_body(template), "Lambda errors")
    shown = {(m[1], m[3], m[4]["label"]) for m in graph["metrics"]}
    assert shown == {("Errors", f"<{stack.get_logical_id(fn.node.default_child)}>", name)
                     for name, fn in functions.items()}


def test_training_graphs_search_this_prefix_for_each_metric(synth: Any) -> None:
    """Each graph is one SEARCH over the SageMaker training-job namespace: the metric by name, jobs by the Host
    token of the stack's prefix, each line labelled with the job (and so the session)."""
    template, _, dashboard, _, _ = synth
    body = _body(template)
    defined = {d["Name"] for d in METRIC_DEFINITIONS}
    for metric, title, statistic in TRAINING_GRAPHS:
        assert metric in defined  # SageMaker publishes only what the job's MetricDefinitions name
        (line,) = _widget(body, title)["metrics"]
        expression = line[0]["expression"]
        assert expression == (f"SEARCH('{{\"/aws/sagemaker/TrainingJobs\",Host}} MetricName=\"{metric}\" "
                              f"Host={PREFIX}', '{statistic}', 60)")
        assert expression == dashboard.training_expressions[metric]
        assert line[0]["label"] == "${PROP('Dim.Host')}"
    assert {"eval_mean_reward", "fps"} <= {m for m, _, _ in TRAINING_GRAPHS}


def test_search_term_matches_the_jobs_of_the_prefix() -> None:
    """The Host term is a CloudWatch token match: the prefix's tokens must open every job name the stack builds,
    and a name whose tokens do not start that way must not."""
    def tokens(text: str) -> list[str]:  # CloudWatch splits at non-alphanumerics (and more, which adds tokens)
        return [t for t in re.split(r"[^A-Za-z0-9]+", text) if t]

    job = naming.job_name(PREFIX, "tiny-20250101-120000-abcdef", 3, "hold", 2)
    assert tokens(metrics.host(job))[:2] == tokens(PREFIX) == ["rl", "dev"]
    assert metrics.host(job) == f"{job}/algo-1"
    assert tokens(naming.job_name("rlpipe", "x", 0, "a", 1))[:2] != tokens(PREFIX)


def test_search_expression_refuses_what_cloudwatch_would_not_find() -> None:
    with pytest.raises(ValueError, match="unknown training metric 'reward'"):
        metrics.search_expression(PREFIX, "reward")
    with pytest.raises(naming.NamingError, match="job prefix"):
        metrics.search_expression("bad prefix'", "fps")
    longest = metrics.search_expression("a" * naming.JOB_PREFIX_MAX, "global_timesteps")
    assert len(longest) < metrics.SEARCH_QUERY_MAX


def test_cleanup_queue_depth_is_graphed(synth: Any) -> None:
    template, *_ = synth
    graph = _widget(_body(template), "Cleanup events")
    (line,) = graph["metrics"]
    assert line[:2] == ["AWS/SQS", "ApproximateNumberOfMessagesVisible"]
    queue_id = next(k for k, r in template["Resources"].items() if r["Type"] == "AWS::SQS::Queue")
    assert line[2:4] == ["QueueName", f"<{queue_id}.QueueName>"]


def test_url_is_the_console_page_of_the_dashboard(synth: Any) -> None:
    _, stack, dashboard, _, _ = synth
    url = stack.resolve(dashboard.url)
    assert _joined(url) == ("https://<AWS::Region>.console.aws.amazon.com/cloudwatch/home?region=<AWS::Region>"
                            "#dashboards/dashboard/<AWS::StackName>-<AWS::Region>")


# --- in the whole app (one synth, shared with nothing else to keep the suite short) ----------------------------

@pytest.fixture(scope="module")
def app_template(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from app import build_app

    outdir = tmp_path_factory.mktemp("cdk-dashboard")
    app, stack = build_app({"alert_email": "team@example.com", "job_prefix": PREFIX}, outdir=str(outdir))
    app.synth()  # fails on an unacknowledged cdk-nag finding
    return json.loads((outdir / f"{stack.artifact_id}.template.json").read_text())


def test_app_outputs_the_dashboard_url_and_every_lambda_knows_it(app_template: dict[str, Any]) -> None:
    output = app_template["Outputs"]["DashboardUrl"]["Value"]
    assert _joined(output).endswith("#dashboards/dashboard/<AWS::StackName>-<AWS::Region>")
    functions = [r for r in app_template["Resources"].values() if r["Type"] == "AWS::Lambda::Function"
                 and "RLPIPE_BUCKET" in r["Properties"].get("Environment", {}).get("Variables", {})]
    assert len(functions) >= 8
    for fn in functions:
        assert fn["Properties"]["Environment"]["Variables"][DASHBOARD_URL] == output


def test_app_dashboard_follows_the_stacks_functions_and_prefix(app_template: dict[str, Any]) -> None:
    body = _body(app_template)
    handlers = [k for k, r in app_template["Resources"].items() if r["Type"] == "AWS::Lambda::Function"
                and "RLPIPE_BUCKET" in r["Properties"].get("Environment", {}).get("Variables", {})]
    assert {m[3] for m in _widget(body, "Lambda errors")["metrics"]} == {f"<{h}>" for h in handlers}
    expressions = [line[0]["expression"] for w in body["widgets"] for line in w["properties"].get("metrics", [])
                   if isinstance(line[0], dict)]
    assert len(expressions) == len(TRAINING_GRAPHS) and all(f"Host={PREFIX}'" in e for e in expressions)


# --- the reward-plateau alarm ----------------------------------------------------------------------------------

def _alarm_stack(**kwargs: Any) -> dict[str, Any]:
    from aws_cdk import aws_sns as sns

    stack = Stack(App(context=cdk_json_context()), "PlateauTest")
    machine = sfn.StateMachine(stack, "Machine", definition_body=sfn.DefinitionBody.from_chainable(
        sfn.Pass(stack, "Nothing")))
    topic = sns.Topic(stack, "Topic") if kwargs.pop("topic", False) else None
    RunDashboard(stack, "Dashboard", state_machine=machine, functions={}, cleanup_queue=sqs.Queue(stack, "Dlq"),
                 job_prefix=PREFIX, plateau_topic=topic, **kwargs)
    return Template.from_stack(stack).to_json()


def _plateau_alarms(template: dict[str, Any]) -> list[dict[str, Any]]:
    return [r["Properties"] for k, r in template["Resources"].items()
            if r["Type"] == "AWS::CloudWatch::Alarm" and "RewardPlateau" in k]


def test_plateau_alarm_watches_evaluations_since_the_best_and_pages_no_one_by_default() -> None:
    (alarm,) = _plateau_alarms(_alarm_stack(plateau_evaluations=5))
    assert "AlarmActions" not in alarm
    assert (alarm["Threshold"], alarm["ComparisonOperator"], alarm["TreatMissingData"]) == (
        5, "GreaterThanOrEqualToThreshold", "notBreaching")
    (query,) = alarm["Metrics"]
    assert query["Expression"] == 'SELECT MAX(evals_since_best) FROM SCHEMA("/aws/sagemaker/TrainingJobs", Host)'
    assert query["Period"] == 300  # a Metrics Insights query in an alarm needs its period
    assert "evals_since_best" in {d["Name"] for d in METRIC_DEFINITIONS}


def test_plateau_alarm_notifies_only_a_given_topic_and_is_absent_at_zero() -> None:
    (alarm,) = _plateau_alarms(_alarm_stack(plateau_evaluations=3, topic=True))
    (action,) = alarm["AlarmActions"]
    assert "Topic" in action["Ref"]
    assert _plateau_alarms(_alarm_stack(plateau_evaluations=0)) == []


def test_app_has_the_silent_plateau_alarm_by_default(app_template: dict[str, Any]) -> None:
    (alarm,) = _plateau_alarms(app_template)
    assert alarm["Threshold"] == 10 and "AlarmActions" not in alarm
    graph = _widget(_body(app_template), "Evaluations since the best")
    assert graph["annotations"]["horizontal"][0]["value"] == 10


@pytest.mark.parametrize("values,problem", [
    ({"plateau_evaluations": "ten"}, "plateau_evaluations: 'ten' must be a whole number"),
    ({"plateau_evaluations": "-1"}, "plateau_evaluations: '-1' must be a whole number"),
    ({"plateau_notify": "yes"}, "plateau_notify: 'yes' must be true or false"),
])
def test_plateau_settings_are_checked(values: dict[str, str], problem: str) -> None:
    from stacks.settings import AppSettings, SettingsError

    with pytest.raises(SettingsError, match=problem):
        AppSettings.from_context(values.get)
    settings = AppSettings.from_context({"plateau_evaluations": "0", "plateau_notify": True}.get)
    assert (settings.plateau_evaluations, settings.plateau_notify) == (0, True)
