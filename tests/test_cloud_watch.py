"""Watching a run on AWS against moto: `rlpipe status` once and with --watch, progress from state.json,
checkpoint manifests and CloudWatch metrics, a run with several seeds (one view per lineage), and the
dashboard link of the run-end e-mail."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import boto3
import pytest
import typer
from moto import mock_aws

from rlpipe.cloud import metrics, watch
from rlpipe.cloud.environment import LambdaSettings
from rlpipe.cloud.requests import StackSettings
from rlpipe.cloud.steps.lineages import lineage_record, lineage_run_id
from rlpipe.cloud.store import RunKeys, S3Store, execution_key
from rlpipe.config import parse_pipeline
from rlpipe.outcome import Evaluation
from rlpipe.state import RunState
from tests.conftest import CLOUD_REGION, deploy_fake_stack, invoke

REGION = CLOUD_REGION
BUCKET = "rlpipe-watch-bucket"
RUN_ID = "tiny-20250101-120000-abcdef"
JOB = "rlpipe-1a2b3c4d-001-hold-1"
DASHBOARD = "https://us-east-1.console.aws.amazon.com/cloudwatch/home?region=us-east-1#dashboards/dashboard/S-us-east-1"


@pytest.fixture
def aws() -> Iterator[dict[str, Any]]:
    with mock_aws():
        yield {**deploy_fake_stack(BUCKET), "cw": boto3.client("cloudwatch", region_name=REGION)}


def _put(aws: dict[str, Any], key: str, data: Any) -> None:
    aws["s3"].put_object(Bucket=BUCKET, Key=key, Body=json.dumps(data))


def _running_run(aws: dict[str, Any], tiny_raw: dict[str, Any]) -> RunState:
    """``stand`` completed (reward 12.5 at 256 steps, 900 fps), ``hold`` running as JOB; an execution drives it."""
    state = RunState.new(parse_pipeline(tiny_raw), RUN_ID)
    first, second = state.sessions
    first.status, first.job_name, first.attempts, first.timesteps = "completed", "rlpipe-1a2b3c4d-000-stand-1", 1, 256
    first.evaluations = [Evaluation(timesteps=256, global_timesteps=256, mean_reward=12.5)]
    first.final_eval_reward, first.fps = 12.5, 900.0
    second.status, second.job_name, second.attempts, state.status = "running", JOB, 1, "running"
    _put(aws, RunKeys(RUN_ID).state, state.to_json())
    arn = aws["sfn"].start_execution(stateMachineArn=aws["machine"], name="my-run")["executionArn"]
    _put(aws, RunKeys(RUN_ID).owner, {"execution": "my-run", "execution_arn": arn})
    _put(aws, execution_key("my-run"), {"run_id": RUN_ID, "execution": "my-run"})
    return state


def _checkpoint(aws: dict[str, Any], steps: int, rewards: list[float], manifest: bool = True,
                run_id: str = RUN_ID) -> None:
    prefix = f"{RunKeys(run_id).checkpoints('hold')}step-{steps:012d}/"
    aws["s3"].put_object(Bucket=BUCKET, Key=prefix + "model.zip", Body=b"zip")
    if manifest:
        _put(aws, prefix + "manifest.json", {"timesteps": steps, "files": {"model.zip": "x"}, "evaluations": [
            {"timesteps": 64 * (i + 1), "mean_reward": r} for i, r in enumerate(rewards)]})


def _metrics(aws: dict[str, Any], job: str, points: list[tuple[int, dict[str, float]]]) -> None:
    """Publish ``(minutes ago, {metric: value})`` for ``job`` as SageMaker would (namespace, Host dimension)."""
    now = datetime.now(timezone.utc)
    for ago, values in points:
        aws["cw"].put_metric_data(Namespace=metrics.TRAINING_NAMESPACE, MetricData=[
            {"MetricName": name, "Value": value, "Timestamp": now - timedelta(minutes=ago),
             "Dimensions": [{"Name": metrics.HOST_DIMENSION, "Value": metrics.host(job)}]}
            for name, value in values.items()])


def _no_pause(seconds: float) -> None:
    raise AssertionError("a finished run is not watched")


# --- status once ---------------------------------------------------------------------------------------------

def test_status_shows_each_sessions_steps_reward_and_speed_from_the_freshest_source(
        app: typer.Typer, aws: dict[str, Any], tiny_raw: dict[str, Any]) -> None:
    _running_run(aws, tiny_raw)
    _checkpoint(aws, 128, [3.25, 4.5])
    _checkpoint(aws, 192, [5.0], manifest=False)  # still uploading: skipped
    result = invoke(app, "status", "my-run", "--no-cloudwatch")
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[2].strip(): [c.strip() for c in line.split("│")] for line in result.output.splitlines()
            if line.count("│") > 10 and line.split("│")[2].strip() in ("stand", "hold")}
    assert rows["stand"][6:10] == ["256 / 256 (100%)", "12.50", "900", "state"]
    assert rows["hold"][6:10] == ["128 / 256 (50%)", "4.50", "-", "checkpoint"]

    # The job's metrics on CloudWatch are further along than its last checkpoint: they win.
    _metrics(aws, JOB, [(6, {"timesteps": 160, "eval_mean_reward": 5.5, "fps": 700.0}),
                        (2, {"timesteps": 224, "eval_mean_reward": 6.75, "fps": 812.0})])
    result = invoke(app, "status", RUN_ID)
    assert result.exit_code == 0, result.output
    hold = next(line for line in result.output.splitlines() if "│ hold" in line)
    assert [c.strip() for c in hold.split("│")][6:10] == ["224 / 256 (88%)", "6.75", "812", "cloudwatch"]
    assert "tiny / tiny-20250101-120000-abcdef: running" in result.output


def test_status_json_does_not_go_with_watch(app: typer.Typer, aws: dict[str, Any], tiny_raw: dict[str, Any]) -> None:
    _running_run(aws, tiny_raw)
    result = invoke(app, "status", RUN_ID, "--json", "--watch")
    assert result.exit_code == 2 and "does not go with --watch" in result.output


# --- --watch -------------------------------------------------------------------------------------------------

def test_watch_ends_at_once_on_a_finished_run(app: typer.Typer, aws: dict[str, Any], tiny_raw: dict[str, Any],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    state = _running_run(aws, tiny_raw)
    for s in state.sessions:
        s.status, s.timesteps = "completed", 256
    state.finish("succeeded")
    _put(aws, RunKeys(RUN_ID).state, state.to_json())
    monkeypatch.setattr(watch, "pause", _no_pause)
    result = invoke(app, "status", "my-run", "--watch")
    assert result.exit_code == 0, result.output
    assert "tiny / tiny-20250101-120000-abcdef: succeeded" in result.output

    state.finish("failed", "session hold: training job failed")
    _put(aws, RunKeys(RUN_ID).state, state.to_json())
    failed = invoke(app, "status", "my-run", "--watch")
    assert failed.exit_code == 1 and "error: session hold: training job failed" in failed.output


def test_watch_follows_a_run_until_it_succeeds(app: typer.Typer, aws: dict[str, Any], tiny_raw: dict[str, Any],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Each pause, the run moves on in S3 (and on CloudWatch): the view is read again, and the watch ends when
    the run has succeeded."""
    state = _running_run(aws, tiny_raw)
    pauses: list[float] = []
    views: list[watch.RunView] = []
    real_view = watch.RunWatcher.view

    def recording_view(self: watch.RunWatcher) -> watch.RunView:
        views.append(real_view(self))
        return views[-1]

    def advance(seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) == 1:  # first pause: the job reports its first evaluation
            _metrics(aws, JOB, [(1, {"timesteps": 128, "eval_mean_reward": 7.0, "fps": 650.0})])
        else:  # second pause: the session ends and the run succeeds
            hold = state.sessions[1]
            hold.status, hold.timesteps, hold.final_eval_reward, hold.fps = "completed", 256, 8.25, 640.0
            hold.evaluations = [Evaluation(timesteps=256, global_timesteps=512, mean_reward=8.25)]
            state.finish("succeeded")
            _put(aws, RunKeys(RUN_ID).state, state.to_json())

    monkeypatch.setattr(watch, "pause", advance)
    monkeypatch.setattr(watch.RunWatcher, "view", recording_view)
    result = invoke(app, "status", "my-run", "--watch", "--interval", "5")
    assert result.exit_code == 0, result.output
    assert pauses == [5.0, 5.0]
    assert [v.state.status for v in views] == ["running", "running", "succeeded"]
    assert [views[0].progress["hold"].source, views[1].progress["hold"].source] == ["state", "cloudwatch"]
    assert (views[1].progress["hold"].timesteps, views[1].progress["hold"].reward) == (128, 7.0)
    assert "tiny / tiny-20250101-120000-abcdef: succeeded" in result.output
    final = next(line for line in result.output.splitlines() if "│ hold" in line)
    assert [c.strip() for c in final.split("│")][3] == "completed" and "8.25" in final


def test_watch_ends_when_the_execution_ended_without_the_run(app: typer.Typer, aws: dict[str, Any],
                                                              tiny_raw: dict[str, Any],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopped from the console: the state still says running until the cleanup runs; the watch does not hang."""
    _running_run(aws, tiny_raw)
    aws["sfn"].stop_execution(executionArn=f"{aws['machine'].replace(':stateMachine:', ':execution:')}:my-run")
    monkeypatch.setattr(watch, "pause", _no_pause)
    result = invoke(app, "status", RUN_ID, "--watch", "--interval", "1")
    assert result.exit_code == 1
    assert "execution my-run ended as ABORTED" in result.output


def test_interval_has_a_floor(app: typer.Typer, aws: dict[str, Any]) -> None:
    result = invoke(app, "status", RUN_ID, "--watch", "--interval", "0.1")
    assert result.exit_code == 2 and "--interval" in result.output


# --- several seeds --------------------------------------------------------------------------------------------

def _running_lineages(aws: dict[str, Any], tiny_raw: dict[str, Any]) -> dict[int, RunState]:
    """A run with seeds 0 and 1 side by side, each lineage running ``hold`` (job ``rlpipe-<seed>-001-hold-1``)
    after a completed ``stand``; one execution drives both."""
    tiny_raw.update(seeds=[0, 1], parallel=2)
    pipeline = parse_pipeline(tiny_raw)
    _put(aws, RunKeys(RUN_ID).lineages, lineage_record(pipeline, RUN_ID))
    arn = aws["sfn"].start_execution(stateMachineArn=aws["machine"], name="my-run")["executionArn"]
    owner = {"execution": "my-run", "execution_arn": arn}
    _put(aws, RunKeys(RUN_ID).owner, owner)
    _put(aws, execution_key("my-run"), {"run_id": RUN_ID, "execution": "my-run"})
    states = {}
    for seed in (0, 1):
        state = RunState.new(pipeline.lineage(seed), lineage_run_id(RUN_ID, seed))
        first, second = state.sessions
        first.status, first.timesteps, first.final_eval_reward = "completed", 256, 10.0 + seed
        second.status, second.job_name, second.attempts, state.status = "running", f"rlpipe-{seed}-001-hold-1", 1, \
            "running"
        _put(aws, RunKeys(state.run_id).state, state.to_json())
        _put(aws, RunKeys(state.run_id).owner, owner)
        states[seed] = state
    return states


def _end_lineage(aws: dict[str, Any], state: RunState, status: str, error: str | None = None) -> None:
    hold = state.sessions[1]
    hold.status, hold.timesteps = ("completed" if status == "succeeded" else "failed"), 256
    hold.error = error
    state.finish(status, error)  # type: ignore[arg-type]
    _put(aws, RunKeys(state.run_id).state, state.to_json())


def _hold_row(output: str, seed: int) -> list[str]:
    """The cells of ``hold``'s row in the table of seed ``seed`` (the last drawing of it in ``output``)."""
    lines = output.splitlines()
    start = max(i for i, line in enumerate(lines) if f"seed {seed} / {RUN_ID}-seed-{seed}:" in line)
    row = next(line for line in lines[start:] if "│ hold" in line)
    return [c.strip() for c in row.split("│")]


def test_status_of_several_seeds_reads_each_lineages_progress(app: typer.Typer, aws: dict[str, Any],
                                                              tiny_raw: dict[str, Any]) -> None:
    _running_lineages(aws, tiny_raw)
    _checkpoint(aws, 128, [3.25], run_id=lineage_run_id(RUN_ID, 1))  # the lineage's own checkpoint prefix
    _metrics(aws, "rlpipe-0-001-hold-1", [(1, {"timesteps": 192, "eval_mean_reward": 6.5, "fps": 700.0})])
    result = invoke(app, "status", RUN_ID)
    assert result.exit_code == 0, result.output
    assert f"tiny / {RUN_ID}: running (seeds 0, 1; 2 at once)" in result.output
    assert _hold_row(result.output, 0)[6:10] == ["192 / 256 (75%)", "6.50", "700", "cloudwatch"]
    assert _hold_row(result.output, 1)[6:10] == ["128 / 256 (50%)", "3.25", "-", "checkpoint"]


def test_watch_follows_every_lineage_until_all_have_ended(app: typer.Typer, aws: dict[str, Any],
                                                          tiny_raw: dict[str, Any],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Seed 0 succeeds at the first pause, seed 1 at the second: the watch goes on until both have ended,
    asking Step Functions about the one execution once per refresh."""
    states = _running_lineages(aws, tiny_raw)
    views: list[watch.LineagesView] = []
    described: list[str] = []
    real_view = watch.LineagesWatcher.view
    real_describe = aws["sfn"].describe_execution

    class CountingStepFunctions:
        def describe_execution(self, executionArn: str) -> Any:  # noqa: N803 (boto3's name)
            described.append(executionArn)
            return real_describe(executionArn=executionArn)

    def recording_view(self: watch.LineagesWatcher) -> watch.LineagesView:
        self.stepfunctions = CountingStepFunctions()
        views.append(real_view(self))
        return views[-1]

    def advance(seconds: float) -> None:
        _end_lineage(aws, states[len(views) - 1], "succeeded")

    monkeypatch.setattr(watch, "pause", advance)
    monkeypatch.setattr(watch.LineagesWatcher, "view", recording_view)
    result = invoke(app, "status", "my-run", "--watch", "--interval", "5")
    assert result.exit_code == 0, result.output
    assert [[lin.status for lin in v.lineages] for v in views] == [
        ["running", "running"], ["succeeded", "running"], ["succeeded", "succeeded"]]
    assert [v.status for v in views] == ["running", "running", "succeeded"]
    assert len(described) == 2  # once per refresh while the run was running; not again once it had ended
    assert f"tiny / {RUN_ID}: succeeded (seeds 0, 1; 2 at once)" in result.output
    assert _hold_row(result.output, 1)[3] == "completed"


def test_watch_of_several_seeds_exits_1_when_a_lineage_failed(app: typer.Typer, aws: dict[str, Any],
                                                              tiny_raw: dict[str, Any],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    states = _running_lineages(aws, tiny_raw)
    _end_lineage(aws, states[0], "succeeded")
    _end_lineage(aws, states[1], "failed", "session hold: training job failed")
    monkeypatch.setattr(watch, "pause", _no_pause)
    result = invoke(app, "status", RUN_ID, "--watch")
    assert result.exit_code == 1
    assert f"tiny / {RUN_ID}: failed (seeds 0, 1; 2 at once)" in result.output
    assert "seed 1: error: session hold: training job failed" in result.output
    assert "seed 0: error" not in result.output


def test_watch_of_several_seeds_ends_when_the_execution_ended(app: typer.Typer, aws: dict[str, Any],
                                                              tiny_raw: dict[str, Any],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    _running_lineages(aws, tiny_raw)
    aws["sfn"].stop_execution(executionArn=f"{aws['machine'].replace(':stateMachine:', ':execution:')}:my-run")
    monkeypatch.setattr(watch, "pause", _no_pause)
    result = invoke(app, "status", f"{RUN_ID}-seed-0", "--watch")  # one lineage: the same execution
    assert result.exit_code == 1
    assert "execution my-run ended as ABORTED" in result.output
    result = invoke(app, "status", RUN_ID, "--watch")
    assert result.exit_code == 1
    assert "execution my-run ended as ABORTED" in result.output


# --- the pieces ----------------------------------------------------------------------------------------------

def test_latest_job_metrics_returns_the_newest_point_of_each_metric(aws: dict[str, Any]) -> None:
    _metrics(aws, JOB, [(30, {"fps": 100.0, "timesteps": 10}), (3, {"fps": 300.0}), (10, {"fps": 200.0})])
    _metrics(aws, "rlpipe-other-000-a-1", [(1, {"fps": 999.0})])
    found = metrics.latest_job_metrics(aws["cw"], JOB, ("fps", "timesteps", "eval_mean_reward"))
    assert {k: v for k, (_, v) in found.items()} == {"fps": 300.0, "timesteps": 10.0}


def test_freshest_takes_the_most_steps_and_fills_gaps() -> None:
    state = watch.Progress(timesteps=100, reward=1.0, fps=50.0, source="state")
    checkpoint = watch.Progress(timesteps=200, reward=2.0, source="checkpoint")
    metrics_ = watch.Progress(timesteps=150, reward=1.5, fps=60.0, source="cloudwatch")
    assert watch.freshest(metrics_, checkpoint, state) == watch.Progress(200, 2.0, 60.0, "checkpoint")
    assert watch.freshest(None, None) == watch.Progress(timesteps=None, source="state")


def test_checkpoint_progress_without_checkpoints_is_none(aws: dict[str, Any]) -> None:
    assert watch.checkpoint_progress(S3Store(aws["s3"], BUCKET), RUN_ID, "hold") is None


def test_run_end_email_links_the_dashboard(aws: dict[str, Any], tiny_raw: dict[str, Any]) -> None:
    from rlpipe.cloud import steps
    from rlpipe.report import build_report

    settings = LambdaSettings(StackSettings(bucket=BUCKET, role_arn="r", image_uri="i"), dashboard_url=DASHBOARD)
    env = settings.environment()
    assert LambdaSettings.from_env(env).dashboard_url == DASHBOARD
    ctx = steps.Context(settings=settings.stack, timing=settings.timing, s3=aws["s3"], sagemaker=None,
                        region=REGION, dashboard_url=LambdaSettings.from_env(env).dashboard_url)
    links = steps.console_links(ctx, RUN_ID, "arn:aws:states:us-east-1:1:execution:runs:my-run")
    _, message = steps.summary_message(build_report(RunState.new(parse_pipeline(tiny_raw), RUN_ID), {}), links)
    assert f"Dashboard: {DASHBOARD}" in message.splitlines()
    without = steps.console_links(steps.Context(settings=settings.stack, timing=settings.timing, s3=aws["s3"],
                                                sagemaker=None, region=REGION), RUN_ID, None)
    assert "dashboard" not in without and "Dashboard:" not in steps.summary_message(
        build_report(RunState.new(parse_pipeline(tiny_raw), RUN_ID), {}), without)[1]


def test_evaluations_since_best_counts_a_stall() -> None:
    from rlpipe.trainer.callbacks import evaluations_since_best

    assert evaluations_since_best([]) == 0
    assert evaluations_since_best([1.0, 2.0, 3.0]) == 0
    assert evaluations_since_best([1.0, 5.0, 4.0, 5.0, 2.0]) == 3  # equalling the best is no improvement


def test_a_source_the_credentials_may_not_read_is_noted_not_fatal(aws: dict[str, Any],
                                                                  tiny_raw: dict[str, Any]) -> None:
    from botocore.exceptions import ClientError

    class Denied:
        def get_metric_data(self, **_: Any) -> None:
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "not allowed"}}, "GetMetricData")

    _running_run(aws, tiny_raw)
    _checkpoint(aws, 64, [1.5])
    watcher = watch.RunWatcher(S3Store(aws["s3"], BUCKET), RUN_ID, cloudwatch=Denied(), stepfunctions=aws["sfn"])
    view = watcher.view()
    assert view.progress["hold"] == watch.Progress(timesteps=64, reward=1.5, source="checkpoint")
    assert len(view.notes) == 1 and view.notes[0].startswith("CloudWatch metrics not read:")
    assert "AccessDenied" in view.notes[0] and not view.ended
    watcher.cloudwatch = aws["cw"]
    assert watcher.view().notes == []
