"""Dashboard: one CloudWatch page to watch runs between `rlpipe start` and the run-end e-mail."""

from __future__ import annotations

from collections.abc import Mapping

from aws_cdk import Aws, Duration
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from rlpipe.cloud.metrics import plateau_query, search_expression
from rlpipe.cloud.naming import dashboard_console_url

# Training metrics worth a graph each (one SEARCH per graph: a graph shows at most 500 series).
TRAINING_GRAPHS = (
    ("eval_mean_reward", "Evaluation reward (mean over episodes)", "Average"),
    ("fps", "Training speed (environment steps per second)", "Average"),
    ("global_timesteps", "Progress (timesteps on the run's axis)", "Maximum"),
    ("best_eval_reward", "Best evaluation reward so far", "Maximum"),
    ("evals_since_best", "Evaluations since the best reward (a stall grows)", "Maximum"),
)
# Each series is labelled with its Host dimension: the job name, which holds the session's name.
JOB_LABEL = "${PROP('Dim.Host')}"
SERVICE_PERIOD = Duration.minutes(5)
TRAINING_PERIOD = Duration.minutes(1)


def dashboard_name() -> str:
    """``<stack name>-<region>``: dashboards are global to the account, stacks of one name may exist per region.

    Made of pseudo parameters only, so the Lambdas can know the URL without depending on the dashboard (whose
    widgets depend on them).
    """
    return f"{Aws.STACK_NAME}-{Aws.REGION}"


def dashboard_url() -> str:
    """The console URL of :func:`dashboard_name` in the stack's region."""
    return dashboard_console_url(Aws.REGION, dashboard_name())


class RunDashboard(Construct):
    """Executions started/succeeded/failed, each training job's evaluation reward, speed and progress (found
    by a metric search limited to the stack's job-name prefix, so new jobs appear without a redeploy), Lambda
    errors and the cleanup dead-letter queue's depth.

    With ``plateau_evaluations`` (N > 0), an alarm goes off when a running session's evaluation reward has not
    improved for N evaluations; it notifies ``plateau_topic`` only when one is given (by default it pages no
    one and shows on the dashboard).

    Attributes: ``dashboard``, ``url`` (console URL, a token until deploy), ``training_expressions``
    (metric name -> the SEARCH expression of its graph), ``plateau_alarm`` (or None).
    """

    def __init__(self, scope: Construct, construct_id: str, *, state_machine: sfn.IStateMachine,
                 functions: Mapping[str, lambda_.IFunction], cleanup_queue: sqs.IQueue, job_prefix: str,
                 plateau_evaluations: int = 0, plateau_topic: sns.ITopic | None = None) -> None:
        super().__init__(scope, construct_id)
        self.plateau_alarm = self._plateau_alarm(plateau_evaluations, plateau_topic) if plateau_evaluations else None
        self.url = dashboard_url()
        self.training_expressions = {
            metric: search_expression(job_prefix, metric, statistic, int(TRAINING_PERIOD.to_seconds()))
            for metric, _, statistic in TRAINING_GRAPHS}
        intro = cloudwatch.TextWidget(
            markdown=(f"## rlpipe runs\nTraining metrics of every SageMaker job named `{job_prefix}-...` "
                      "(one line per session job, labelled with the job name), published from the trainer's "
                      "`rlpipe-metric` lines. `rlpipe status RUN --watch` follows one run in a terminal."),
            width=24, height=2)
        executions = cloudwatch.GraphWidget(
            title="Executions (runs)", width=12, height=6, statistic="Sum", period=SERVICE_PERIOD,
            left=[state_machine.metric_started(label="started"),
                  state_machine.metric_succeeded(label="succeeded"),
                  state_machine.metric_failed(label="failed"),
                  state_machine.metric_aborted(label="aborted"),
                  state_machine.metric_timed_out(label="timed out")])
        lambda_errors = cloudwatch.GraphWidget(
            title="Lambda errors", width=12, height=6, statistic="Sum", period=SERVICE_PERIOD,
            left=[fn.metric_errors(label=name, period=SERVICE_PERIOD) for name, fn in sorted(functions.items())])
        training = [
            cloudwatch.GraphWidget(
                title=title, width=12, height=6, period=TRAINING_PERIOD,
                left=[cloudwatch.SearchExpression(expression=self.training_expressions[metric], label=JOB_LABEL,
                                                  period=TRAINING_PERIOD)],
                left_annotations=[cloudwatch.HorizontalAnnotation(value=plateau_evaluations, label="alarm")]
                if metric == "evals_since_best" and self.plateau_alarm else None)
            for metric, title, _ in TRAINING_GRAPHS]
        queue = cloudwatch.GraphWidget(
            title="Cleanup events not delivered (dead-letter queue)", width=12, height=6,
            left=[cleanup_queue.metric_approximate_number_of_messages_visible(
                label="messages", period=SERVICE_PERIOD, statistic="Maximum")],
            left_annotations=[cloudwatch.HorizontalAnnotation(value=1, label="alerts the team")])
        self.dashboard = cloudwatch.Dashboard(
            self, "Dashboard", dashboard_name=dashboard_name(), default_interval=Duration.hours(6),
            widgets=[[intro], [executions, lambda_errors], training[:2], training[2:4], [training[4], queue]])

    def _plateau_alarm(self, evaluations: int, topic: sns.ITopic | None) -> cloudwatch.Alarm:
        alarm = cloudwatch.Alarm(
            self, "RewardPlateau",
            alarm_description=(f"rlpipe: a running session's evaluation reward has not improved for {evaluations} "
                               "evaluations (the jobs' evals_since_best metric; every rlpipe job of the account "
                               "and region). See the dashboard; `rlpipe stop RUN` ends a run."),
            metric=cloudwatch.MathExpression(expression=plateau_query(), period=SERVICE_PERIOD,
                                             label="most evaluations since the best reward"),
            threshold=evaluations, evaluation_periods=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            # A finished job stops publishing: no data is no stall.
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING)
        if topic is not None:
            alarm.add_alarm_action(cw_actions.SnsAction(topic))
        return alarm
