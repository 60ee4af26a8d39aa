"""Orchestration cost on AWS, modelled from local executions of the synthesized state machine.

The state machine runs on moto's ASL interpreter through the test harness (``tests/sfn_harness.py``: real Lambda
handlers, a SageMaker stand-in whose jobs finish at once). From each execution's history we count state
transitions (every ``*StateEntered`` event is one billed transition) and Lambda invocations, for pipelines of
several lengths and with more DescribeTrainingJob polls per job, which separates the fixed part, the part per
session and the part per poll. The poll count of a real run follows from the state machine's own pacing
(:class:`rlpipe.cloud.pacing.Timing`) and the plan's time estimates; prices are list prices (below).

The same history gives the AWS side of a session transition: the job's end is seen at the next poll, the next
job waits for the warm pool, then starts warm or cold (``rlpipe/data/prices.json``: ``startup_seconds``).
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
# Lambda duration is not measured here (handlers run in-process); priced at this many seconds per invocation.
ASSUMED_LAMBDA_SECONDS = 1.0
POLL_STATES_HINT = "WaitForJob, DescribeTrainingJob, JobEnded?"
WAIT_CHANGE_HINT = "the Pass state that doubles the wait (DoubleWait)"


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


def _executions(budgets: Budgets, workdir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Executions that separate the parts: each pipeline length with one InProgress poll per job and zero waits;
    then, at two sessions, three InProgress polls per job, with zero waits and with waits that double once."""
    import dataclasses

    from aws_cdk import Duration
    from aws_cdk.assertions import Template

    from stacks.orchestration.state_machine import RetryPacing
    from tests.orchestration_app import FAST_TIMING, build_stack, logical_ids
    from tests.sfn_harness import Harness

    growing = dataclasses.replace(FAST_TIMING, min_poll_seconds=1, max_poll_seconds=2)
    stacks = {}
    for label, timing in (("zero_waits", FAST_TIMING), ("doubling_waits", growing)):
        _, stack, orchestration = build_stack(
            timing=timing, bundle=False,
            pacing=RetryPacing(create_interval=Duration.seconds(1), describe_interval=Duration.seconds(1)))
        stacks[label] = (Template.from_stack(stack).to_json(), logical_ids(stack, orchestration))
    lengths = list(budgets.orchestration_sessions)
    pair = 2 if 2 in lengths else max(lengths)
    cases = [(n, 1, "zero_waits") for n in lengths] + [(pair, 3, "zero_waits"), (pair, 3, "doubling_waits")]
    runs = []
    for n, in_progress, waits in cases:
        template, ids = stacks[waits]
        h = Harness(template, ids, workdir / f"n{n}-k{in_progress}-{waits}", mode="instant")
        h.sagemaker.in_progress_describes = in_progress
        with h.running():
            t0 = time.perf_counter()
            ex = h.execute({"pipeline": copy.deepcopy(_tiny_pipeline(n))}, f"bench-{n}-{in_progress}-{waits}")
            seconds = time.perf_counter() - t0
        if ex.status != "SUCCEEDED":
            raise RuntimeError(f"execution of {n} sessions ended {ex.status}: {ex.failure()}")
        counts = count_history(ex.events)
        counts.update(sessions=n, in_progress_describes_per_job=in_progress, waits=waits,
                      local_seconds=round(seconds, 2), lambda_calls_seen_by_harness=len(h.lambda_calls))
        runs.append(counts)
        log.info("orchestration: %d sessions, %d polls/job, %s: %d transitions, %d Lambda invocations", n,
                 counts["describe_training_job_calls"] // n, waits, counts["state_transitions"],
                 counts["lambda_invocations"])
    template = stacks["zero_waits"][0]
    memory = {name: res["Properties"].get("MemorySize", 128) for name, res in template["Resources"].items()
              if res["Type"] == "AWS::Lambda::Function"}
    return runs, memory


def _fit(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Transitions and invocations = fixed + per_session * n + per_poll * extra polls + per_growth * wait changes."""
    base = [r for r in runs if r["in_progress_describes_per_job"] == 1 and r["waits"] == "zero_waits"]
    n = [r["sessions"] for r in base]
    out: dict[str, float] = {}
    for key in ("state_transitions", "lambda_invocations", "describe_training_job_calls"):
        y = [r[key] for r in base]
        if len(set(n)) > 1:
            slope = statistics.linear_regression(n, y).slope
            intercept = statistics.fmean(y) - slope * statistics.fmean(n)
        else:
            slope, intercept = y[0] / n[0], 0.0
        out[f"{key}_per_session"] = round(slope, 3)
        out[f"{key}_fixed"] = round(intercept, 3)
    more = next(r for r in runs if r["in_progress_describes_per_job"] > 1 and r["waits"] == "zero_waits")
    grow = next(r for r in runs if r["waits"] == "doubling_waits")
    same_n = next(r for r in base if r["sessions"] == more["sessions"])
    extra_polls = more["describe_training_job_calls"] - same_n["describe_training_job_calls"]
    out["transitions_per_poll"] = round((more["state_transitions"] - same_n["state_transitions"]) / extra_polls, 3)
    out["lambda_invocations_per_poll"] = round(
        (more["lambda_invocations"] - same_n["lambda_invocations"]) / extra_polls, 3)
    # Waits 1 s then 2 s (the cap): one doubling per job.
    out["transitions_per_wait_change"] = round((grow["state_transitions"] - more["state_transitions"])
                                               / grow["sessions"], 3)
    out["polls_per_session_in_harness"] = round(out["describe_training_job_calls_per_session"], 3)
    return out


def seen_after(timing: Any, job_seconds: float) -> float:
    """Seconds from a job's end until the Describe loop sees it (waits double from the first to the cap)."""
    wait, waited = timing.first_wait, 0.0
    if wait <= 0:
        return 0.0
    while waited < job_seconds:
        waited += wait
        wait = timing.next_wait(wait)
    return waited - job_seconds


def _aws_model(fit: dict[str, float], memory_mb: float) -> dict[str, Any]:
    """Transitions, invocations and cost of the default curriculum on AWS, with the real poll pacing."""
    from rlpipe.plan import build_plan, price_table

    pipeline = default_pipeline()
    plan = build_plan(pipeline)
    timing = Timing()
    startup = price_table()["startup_seconds"]
    n = len(plan.sessions)
    sessions = []
    for ps in plan.sessions:
        start = startup["warm_pool"] if ps.reuses_previous_pool else startup["cold"]
        job = ps.estimated_train_seconds + start
        polls, changes = timing.polls_for(job)
        sessions.append({"name": ps.name, "estimated_train_seconds": ps.estimated_train_seconds,
                         "startup_seconds_assumed": start, "job_seconds": job, "polls": polls,
                         "wait_changes": changes, "end_seen_after_seconds": round(seen_after(timing, job), 1),
                         "reuses_previous_pool": ps.reuses_previous_pool})
    extra_polls = sum(s["polls"] - fit["polls_per_session_in_harness"] for s in sessions)
    changes = sum(s["wait_changes"] for s in sessions)
    transitions = (fit["state_transitions_fixed"] + fit["state_transitions_per_session"] * n
                   + fit["transitions_per_poll"] * extra_polls + fit["transitions_per_wait_change"] * changes)
    invocations = (fit["lambda_invocations_fixed"] + fit["lambda_invocations_per_session"] * n
                   + fit["lambda_invocations_per_poll"] * extra_polls)
    sfn_usd = transitions * PRICES["step_functions_standard_usd_per_1000_transitions"] / 1000
    lambda_usd = invocations * (PRICES["lambda_usd_per_million_requests"] / 1e6
                                + memory_mb / 1024 * ASSUMED_LAMBDA_SECONDS * PRICES["lambda_usd_per_gb_second_x86"])
    training_usd = plan.estimated_cost_usd
    return {
        "pipeline": pipeline.name, "sessions": sessions, "startup_seconds_cold_vs_warm": startup,
        "startup_source": startup.get("source"),
        "pacing": {"first_wait_seconds": timing.first_wait, "max_poll_seconds": timing.max_poll_seconds,
                   "pool_poll_seconds": timing.pool_poll_seconds},
        "state_transitions": {"value": round(transitions), "unit": "transitions per pipeline run", "runs": 1},
        "lambda_invocations": {"value": round(invocations), "unit": "invocations per pipeline run", "runs": 1},
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
    first = model["sessions"][0]
    pacing = model["pacing"]
    parts_common = {
        "job_end_seen_at_next_poll": {
            "seconds": first["end_seen_after_seconds"],
            "source": f"the Describe loop's waits double from {pacing['first_wait_seconds']} s up to "
                      f"{pacing['max_poll_seconds']} s (rlpipe.cloud.pacing.Timing); session 1's job, estimated at "
                      f"{first['job_seconds']:g} s by the plan, is seen ended that long after it ends"},
        "record_and_prepare_lambdas": {"seconds": 2.0, "source": "assumed: two to three warm Lambda "
                                       "invocations of about a second or less each"},
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
    """Execute the state machine locally, count, and model one run of the default curriculum on AWS."""
    # As in tests/conftest.py: moto answers every call; fake credentials and a region keep boto3 off the network.
    for key, value in (("AWS_DEFAULT_REGION", "us-east-1"), ("AWS_ACCESS_KEY_ID", "testing"),
                       ("AWS_SECRET_ACCESS_KEY", "testing")):
        os.environ.setdefault(key, value)
    try:
        import tests.sfn_harness  # noqa: F401
    except Exception as exc:  # the AWS side is optional for the local benchmarks
        return {"available": False, "reason": f"state machine harness not importable: {exc}"}
    with tempfile.TemporaryDirectory(prefix="bench-orchestration-") as tmp:
        runs, memory = _executions(budgets, workdir or Path(tmp))
    fit = _fit(runs)
    memory_mb = max(memory.values()) if memory else 128
    model = _aws_model(fit, memory_mb)
    per_session = {k: figure([r[k] / r["sessions"] for r in runs if r["in_progress_describes_per_job"] == 1],
                             "per session (incl. fixed part spread)", 2)
                   for k in ("state_transitions", "lambda_invocations")}
    return {
        "available": True, "prices": PRICES,
        "executions": runs, "fit": fit, "per_session_measured": per_session,
        "lambda_memory_mb": memory, "aws_default_pipeline": model,
        "transition_estimates": transition_estimates(model, in_container_first_step_s),
        "notes": [
            "transitions = StateEntered events in the execution history (each is billed by Standard workflows)",
            f"per poll of a running job: {POLL_STATES_HINT}; per change of the wait: {WAIT_CHANGE_HINT}; their "
            "counts in a real run follow from the pacing and the job's length",
            "retries and failure paths add transitions; a run without failures is modelled",
        ],
    }


if __name__ == "__main__":  # a quick look: python -m bench.orchestration
    from bench.settings import FULL

    print(json.dumps(run(FULL), indent=1, default=str))
