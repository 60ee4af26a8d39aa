"""Orchestration cost on AWS, modelled from local executions of the synthesized state machine.

The state machine runs on moto's ASL interpreter through the test harness (``tests/sfn_harness.py``: real Lambda
handlers, a SageMaker stand-in whose jobs finish at once, job-state events delivered as EventBridge would). From
each execution's history we count state transitions (every ``*StateEntered`` event is one billed transition),
Lambda invocations and history events, for pipelines of several lengths, which separates the fixed part from
the part per session: a job's end arrives by event, so neither depends on how long a session runs. Prices are
list prices (below).

The same runs give the AWS side of a session transition (:mod:`bench.job_end`: from a job's end to the next
CreateTrainingJob, polling before against events after, with the Lambda handlers' measured durations).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import job_end
from bench.figures import figure
from bench.sessions import default_pipeline
from bench.settings import Budgets
from rlpipe.cloud.pacing import Timing

log = logging.getLogger("bench.orchestration")

PRICES = {
    "step_functions_standard_usd_per_1000_transitions": 0.025,
    "lambda_usd_per_million_requests": 0.20,
    "lambda_usd_per_gb_second_x86": 0.0000166667,
    "source": "AWS Step Functions and AWS Lambda pricing pages, us-east-1 list prices (Standard workflows: "
              "$0.025 per 1,000 state transitions; Lambda x86: $0.20 per 1M requests, $0.0000166667 per "
              "GB-second); free tiers ignored",
}
# Lambda duration on AWS is not measured here (handlers run in-process); priced at this many seconds each.
ASSUMED_LAMBDA_SECONDS = 1.0


def _tiny_pipeline(sessions: int) -> dict[str, Any]:
    """A chain of ``sessions`` tiny sessions, alternating the two curriculum envs, each warm-started."""
    envs = ("rlpipe/HeightMaximize-v0", "rlpipe/CrushResistance-v0")
    return {
        "name": f"orch-{sessions}",
        "defaults": {"algorithm": "ppo", "n_envs": 2,
                     "hyperparameters": {"n_steps": 64, "batch_size": 64, "policy_kwargs": {"net_arch": [16, 16]}},
                     "eval": {"every_steps": 128, "episodes": 1, "video": {"enabled": False}},
                     "checkpoint": {"every_steps": 128}},
        "sessions": [{"name": f"s{i}", "env": envs[i % 2], "timesteps": 256, "use_previous_checkpoint": i > 0}
                     for i in range(sessions)],
    }


def count_history(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Billed transitions, Lambda invocations and SageMaker calls in one execution's history."""
    entered = [e for e in events if e["type"].endswith("StateEntered")]
    per_state: dict[str, int] = {}
    for e in entered:
        name = e["stateEnteredEventDetails"]["name"]
        per_state[name] = per_state.get(name, 0) + 1
    tasks = [e.get("taskScheduledEventDetails", {}) for e in events if e["type"] == "TaskScheduled"]
    lambdas = sum(1 for e in events if e["type"] == "LambdaFunctionScheduled")
    lambdas += sum(1 for t in tasks if t.get("resourceType") == "lambda")
    describes = sum(1 for t in tasks if t.get("resource") == "describeTrainingJob")
    return {"history_events": len(events), "state_transitions": len(entered), "lambda_invocations": lambdas,
            "describe_training_job_calls": describes,
            "create_training_job_calls": sum(1 for t in tasks if t.get("resource") == "createTrainingJob"),
            "states_entered": per_state}


def _executions(budgets: Budgets, workdir: Path) -> tuple[list[dict[str, Any]], dict[str, Any],
                                                       list[tuple[str, float]]]:
    """One execution per pipeline length (zero waits, each job's end delivered once by event); returns the
    counts, the functions' memory sizes and every Lambda handler's measured duration."""
    from aws_cdk import Duration
    from aws_cdk.assertions import Template

    from stacks.orchestration.state_machine import RetryPacing
    from tests.orchestration_app import FAST_TIMING, build_stack, logical_ids
    from tests.sfn_harness import Harness

    _, stack, orchestration = build_stack(
        timing=FAST_TIMING, bundle=False,
        pacing=RetryPacing(create_interval=Duration.seconds(1), describe_interval=Duration.seconds(1)))
    template, ids = Template.from_stack(stack).to_json(), logical_ids(stack, orchestration)
    runs, durations = [], []
    for n in budgets.orchestration_sessions:
        h = Harness(template, ids, workdir / f"n{n}", mode="instant")
        with h.running():
            t0 = time.perf_counter()
            ex = h.execute({"pipeline": copy.deepcopy(_tiny_pipeline(n))}, f"bench-{n}")
            seconds = time.perf_counter() - t0
        if ex.status != "SUCCEEDED":
            raise RuntimeError(f"execution of {n} sessions ended {ex.status}: {ex.failure()}")
        counts = count_history(ex.events)
        counts.update(sessions=n, job_state_events_delivered=len(h.delivered), local_seconds=round(seconds, 2),
                      lambda_calls_seen_by_harness=len(h.lambda_calls))
        runs.append(counts)
        durations += h.lambda_seconds
        log.info("orchestration: %d sessions: %d transitions, %d history events, %d Lambda invocations", n,
                 counts["state_transitions"], counts["history_events"], counts["lambda_invocations"])
    memory = {name: res["Properties"].get("MemorySize", 128) for name, res in template["Resources"].items()
              if res["Type"] == "AWS::Lambda::Function"}
    return runs, memory, durations


def _fit(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Transitions, invocations and history events = fixed + per_session * n."""
    n = [r["sessions"] for r in runs]
    out: dict[str, float] = {}
    for key in ("state_transitions", "lambda_invocations", "history_events", "describe_training_job_calls"):
        y = [r[key] for r in runs]
        if len(set(n)) > 1:
            slope = statistics.linear_regression(n, y).slope
            intercept = statistics.fmean(y) - slope * statistics.fmean(n)
        else:
            slope, intercept = y[0] / n[0], 0.0
        out[f"{key}_per_session"] = round(slope, 3)
        out[f"{key}_fixed"] = round(intercept, 3)
    return out


def _aws_model(fit: dict[str, float], memory_mb: float, reconcile_minutes: float) -> dict[str, Any]:
    """Transitions, invocations and cost of the default curriculum on AWS: per session, whatever its length,
    plus one JobEvents invocation per job and the reconciliation schedule's ticks while the run lasts."""
    from rlpipe.plan import build_plan, price_table

    pipeline = default_pipeline()
    plan = build_plan(pipeline)
    timing = Timing()
    startup = price_table()["startup_seconds"]
    n = len(plan.sessions)
    sessions = []
    for ps in plan.sessions:
        start = startup["warm_pool"] if ps.reuses_previous_pool else startup["cold"]
        sessions.append({"name": ps.name, "estimated_train_seconds": ps.estimated_train_seconds,
                         "startup_seconds_assumed": start, "job_seconds": ps.estimated_train_seconds + start,
                         "reuses_previous_pool": ps.reuses_previous_pool})
    run_seconds = sum(s["job_seconds"] for s in sessions)
    transitions = fit["state_transitions_fixed"] + fit["state_transitions_per_session"] * n
    ticks = run_seconds / (reconcile_minutes * 60)
    invocations = fit["lambda_invocations_fixed"] + fit["lambda_invocations_per_session"] * n + n + ticks
    sfn_usd = transitions * PRICES["step_functions_standard_usd_per_1000_transitions"] / 1000
    lambda_usd = invocations * (PRICES["lambda_usd_per_million_requests"] / 1e6
                                + memory_mb / 1024 * ASSUMED_LAMBDA_SECONDS * PRICES["lambda_usd_per_gb_second_x86"])
    training_usd = plan.estimated_cost_usd
    return {
        "pipeline": pipeline.name, "sessions": sessions, "startup_seconds_cold_vs_warm": startup,
        "startup_source": startup.get("source"),
        "pacing": {"pool_poll_seconds": timing.pool_poll_seconds, "reconcile_every_minutes": reconcile_minutes},
        "state_transitions": {"value": round(transitions), "unit": "transitions per pipeline run", "runs": 1},
        "lambda_invocations": {"value": round(invocations), "unit": "invocations per pipeline run", "runs": 1,
                               "includes": "one JobEvents invocation per job and the reconciliation ticks "
                                           "during the run"},
        "step_functions_usd": {"value": round(sfn_usd, 6), "unit": "USD per pipeline run", "runs": 1},
        "lambda_usd": {"value": round(lambda_usd, 6), "unit": "USD per pipeline run", "runs": 1,
                       "assumption": f"{ASSUMED_LAMBDA_SECONDS:g} s per invocation at {memory_mb:g} MB"},
        "training_usd_estimated_by_plan": {"value": training_usd, "unit": "USD per pipeline run", "runs": 1},
        "orchestration_share_of_cost": round((sfn_usd + lambda_usd) / (training_usd + sfn_usd + lambda_usd), 5)
        if training_usd else None,
    }


def transition_estimates(model: dict[str, Any], in_container_first_step_s: float | None) -> dict[str, Any]:
    """AWS transition between sessions 1 and 2, warm pool against cold start, built from named parts."""
    startup = model["startup_seconds_cold_vs_warm"]
    pacing = model["pacing"]
    parts_common = {
        "job_end_delivered_by_event": {
            "seconds": job_end.ASSUMED["event_delivery_seconds"][0],
            "source": job_end.ASSUMED["event_delivery_seconds"][1] + "; the JobEvents Lambda completes the wait"},
        "record_and_prepare_lambdas": {"seconds": 2.0, "source": "assumed: three warm Lambda invocations "
                                       "(JobEvents, RecordSession, PrepareSession) of well under a second each"},
        "container_start_to_first_step": {"seconds": in_container_first_step_s,
                                          "source": "measured locally: cold process to first step of a "
                                          "warm-started session (bench transition.cold_process)"},
    }
    warm = dict(parts_common, wait_for_pool_available={"seconds": float(pacing["pool_poll_seconds"]),
                                                       "source": "one WaitForPool interval (Timing."
                                                       "pool_poll_seconds) before the pool reads Available"},
                job_startup={"seconds": float(startup["warm_pool"]), "source": startup.get("source")})
    cold = dict(parts_common, job_startup={"seconds": float(startup["cold"]), "source": startup.get("source")})

    def total(parts: dict[str, Any]) -> float:
        return round(sum(p["seconds"] or 0.0 for p in parts.values()), 1)

    return {"warm_pool": {"seconds": total(warm), "unit": "s (estimate)", "parts": warm},
            "cold_start": {"seconds": total(cold), "unit": "s (estimate)", "parts": cold},
            "design_reference": "DESIGN.md 'Warm pools (SageMaker managed)' and 'SageMaker from Step Functions'"}


def run(budgets: Budgets, in_container_first_step_s: float | None = None,
        workdir: Path | None = None) -> dict[str, Any]:
    """Execute the state machine locally, count, and model the AWS side: cost of the default curriculum and
    the delay from a job's end to the next CreateTrainingJob (before/after)."""
    # As in tests/conftest.py: moto answers every call; fake credentials and a region keep boto3 off the network.
    for key, value in (("AWS_DEFAULT_REGION", "us-east-1"), ("AWS_ACCESS_KEY_ID", "testing"),
                       ("AWS_SECRET_ACCESS_KEY", "testing")):
        os.environ.setdefault(key, value)
    try:
        import tests.sfn_harness  # noqa: F401
        from stacks.orchestration.state_machine import RetryPacing
    except Exception as exc:  # the AWS side is optional for the local benchmarks
        return {"available": False, "reason": f"state machine harness not importable: {exc}"}
    with tempfile.TemporaryDirectory(prefix="bench-orchestration-") as tmp:
        runs, memory, durations = _executions(budgets, workdir or Path(tmp))
    fit = _fit(runs)
    memory_mb = max(memory.values()) if memory else 128
    reconcile_minutes = RetryPacing().reconcile_every.to_minutes()
    model = _aws_model(fit, memory_mb, reconcile_minutes)
    per_session = {k: figure([r[k] / r["sessions"] for r in runs], "per session (incl. fixed part spread)", 2)
                   for k in ("state_transitions", "lambda_invocations", "history_events")}
    lambdas = job_end.lambda_durations(durations)
    end_model = job_end.model(lambdas, fit["history_events_per_session"], fit["state_transitions_fixed"],
                              fit["state_transitions_per_session"],
                              PRICES["step_functions_standard_usd_per_1000_transitions"])
    return {
        "available": True, "prices": PRICES,
        "executions": runs, "fit": fit, "per_session_measured": per_session,
        "lambda_memory_mb": memory, "aws_default_pipeline": model,
        "transition_estimates": transition_estimates(model, in_container_first_step_s),
        "job_end": end_model,
        "notes": [
            "transitions = StateEntered events in the execution history (each is billed by Standard workflows)",
            "a job's end arrives by event: per-session transitions and history events do not depend on the "
            "session's length; a lost event costs one reconciliation tick, not history",
            "retries and failure paths add transitions; a run without failures is modelled",
        ],
    }


if __name__ == "__main__":  # a quick look: python -m bench.orchestration
    from bench.settings import FULL

    print(json.dumps(run(FULL), indent=1, default=str))
