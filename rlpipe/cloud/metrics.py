"""Training metrics on CloudWatch: where SageMaker publishes the trainer's metric lines, and how to find them.

SageMaker turns each ``rlpipe-metric`` line (:data:`rlpipe.contract.METRIC_DEFINITIONS`) into a metric of the
namespace :data:`TRAINING_NAMESPACE`, named after the definition, with one dimension ``Host`` =
``<job name>/algo-1``. The stack's dashboard finds every job of the stack with a SEARCH expression (new jobs
appear without a redeploy); ``rlpipe status --watch`` reads the running job's latest values.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from typing import Any

from rlpipe.cloud.naming import check_job_prefix
from rlpipe.contract import METRIC_NAMES

TRAINING_NAMESPACE = "/aws/sagemaker/TrainingJobs"
HOST_DIMENSION = "Host"
# CloudWatch's limit on the query inside SEARCH(...).
SEARCH_QUERY_MAX = 1024


def host(job_name: str, instance: int = 1) -> str:
    """The ``Host`` dimension value of a job's instance (single-instance jobs: ``algo-1``)."""
    return f"{job_name}/algo-{instance}"


def search_expression(job_prefix: str, metric: str, statistic: str = "Average", period_seconds: int = 60) -> str:
    """A CloudWatch SEARCH over ``metric`` of every training job whose name holds ``job_prefix``.

    The ``Host=<prefix>`` term is a token match, not a prefix match (CloudWatch splits names at
    non-alphanumerics): a job of another stack whose prefix is ``<prefix>-dev`` matches too, so stacks sharing
    an account are told apart by prefixes that do not contain one another.
    """
    if metric not in METRIC_NAMES:
        raise ValueError(f"unknown training metric {metric!r}; known: {', '.join(METRIC_NAMES)}")
    query = (f'{{"{TRAINING_NAMESPACE}",{HOST_DIMENSION}}} MetricName="{metric}" '
             f"{HOST_DIMENSION}={check_job_prefix(job_prefix)}")
    if len(query) > SEARCH_QUERY_MAX:  # unreachable with the prefix length limit; kept as a guard
        raise ValueError(f"search query longer than {SEARCH_QUERY_MAX} characters: {query!r}")
    return f"SEARCH('{query}', '{statistic}', {period_seconds})"


def plateau_query(metric: str = "evals_since_best") -> str:
    """A Metrics Insights query: the largest ``metric`` over all training jobs that publish it, one series.

    Alarms take a single series, and Metrics Insights filters dimension values only by equality, so this
    covers every job in the account and region that prints the metric (every rlpipe stack's).
    """
    if metric not in METRIC_NAMES:
        raise ValueError(f"unknown training metric {metric!r}; known: {', '.join(METRIC_NAMES)}")
    return f'SELECT MAX({metric}) FROM SCHEMA("{TRAINING_NAMESPACE}", {HOST_DIMENSION})'


def latest_job_metrics(cloudwatch: Any, job_name: str, names: tuple[str, ...] = METRIC_NAMES,
                       lookback: timedelta = timedelta(hours=3), now: datetime | None = None
                       ) -> dict[str, tuple[datetime, float]]:
    """The newest datapoint (time, value) of each of ``names`` that the job published within ``lookback``.

    One GetMetricData call; metrics without a datapoint are left out, as are NaN and infinite values.
    """
    now = now or datetime.now(timezone.utc)
    queries = [{"Id": f"m{i}", "Label": name, "ReturnData": True,
                "MetricStat": {"Metric": {"Namespace": TRAINING_NAMESPACE, "MetricName": name,
                                          "Dimensions": [{"Name": HOST_DIMENSION, "Value": host(job_name)}]},
                               "Period": 60, "Stat": "Maximum"}}
               for i, name in enumerate(names)]
    found: dict[str, tuple[datetime, float]] = {}
    kwargs: dict[str, Any] = {"MetricDataQueries": queries, "StartTime": now - lookback, "EndTime": now,
                              "ScanBy": "TimestampDescending"}
    while True:
        page = cloudwatch.get_metric_data(**kwargs)
        for result in page.get("MetricDataResults", []):
            name = names[int(result["Id"][1:])]
            for stamp, value in zip(result.get("Timestamps", []), result.get("Values", [])):
                if math.isfinite(value) and (name not in found or stamp > found[name][0]):
                    found[name] = (stamp, float(value))
        if not page.get("NextToken"):
            return found
        kwargs["NextToken"] = page["NextToken"]
