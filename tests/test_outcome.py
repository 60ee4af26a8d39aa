"""The session outcome and the one rule that takes it into the run state; the Lambdas' settings both ways."""

from __future__ import annotations

import math
from typing import Any

from rlpipe.cloud.environment import LambdaSettings
from rlpipe.cloud.pacing import Timing
from rlpipe.cloud.requests import StackSettings
from rlpipe.config import parse_pipeline
from rlpipe.outcome import SessionOutcome
from rlpipe.plan import Plan, build_plan
from rlpipe.state import RunState


def _outcome(**extra: Any) -> dict[str, Any]:
    doc = {"session": "hold", "global_timestep_offset": 256, "timesteps": 256,
           "evaluations": [{"timesteps": 256, "global_timesteps": 512, "mean_reward": 2.0, "std_reward": 0.5},
                           {"timesteps": 128, "mean_reward": 3.0},  # no run step: derived from the offset
                           {"timesteps": 192, "mean_reward": math.nan},  # no finite reward: dropped
                           "not an evaluation"],
           "best_eval_reward": 3.0, "final_eval_reward": 2.0,
           "timing": {"started_at": "2025-01-01T10:00:00+00:00", "first_step_at": "2025-01-01T10:00:05+00:00",
                      "ended_at": "2025-01-01T10:01:00+00:00", "fps": 100.0, "transfer_eval_seconds": 1.5},
           "carried": ["policy"], "reset": ["vecnormalize", "num_timesteps"], "notes": ["a trainer note"]}
    return {**doc, **extra}


def test_apply_takes_the_outcome_into_the_state(tiny_raw: dict[str, Any]) -> None:
    state = RunState.new(parse_pipeline(tiny_raw), "r1")
    stand, hold = state.sessions
    stand.ended_at = "2025-01-01T09:59:58+00:00"
    hold.first_step_at = "2025-01-01T10:00:04+00:00"  # an earlier attempt's first step stands
    planned = list(hold.carried)
    hold.apply(SessionOutcome.read(_outcome()))
    assert [(e.timesteps, e.global_timesteps) for e in hold.evaluations] == [(128, 384), (256, 512)]
    assert hold.evaluations[0].std_reward == 0.0
    assert (hold.final_eval_reward, hold.best_eval_reward, hold.timesteps) == (2.0, 3.0, 256)
    assert hold.first_step_at == "2025-01-01T10:00:04+00:00" and hold.ended_at == "2025-01-01T10:01:00+00:00"
    assert hold.carried == ["policy"] and hold.handoff_source == "trainer" and hold.notes == ["a trainer note"]
    assert [n for n in hold.handoff_notes if "not carried" in n] == [
        f"planned to carry {p}, but it was not carried" for p in planned if p != "policy"]
    state.measure_transition(1)
    assert hold.transition_seconds == 6.0 - 1.5  # step-0 evaluation of the warm start excluded
    hold.apply(SessionOutcome.read(_outcome()))  # applying again changes nothing
    assert hold.handoff_notes and len(hold.evaluations) == 2


def test_outcome_without_a_handoff_record_keeps_the_plan(tiny_raw: dict[str, Any]) -> None:
    hold = RunState.new(parse_pipeline(tiny_raw), "r1").sessions[1]
    planned = list(hold.carried)
    hold.apply(SessionOutcome.read({"evaluations": [{"timesteps": 64, "mean_reward": 1.0}]}))
    assert hold.carried == planned and hold.handoff_source == "plan" and hold.final_eval_reward == 1.0
    assert SessionOutcome.read(["not", "a", "mapping"]) is None
    assert SessionOutcome.read({"timesteps": "many"}) is None


def test_wall_seconds_add_up_over_attempts(tiny_raw: dict[str, Any]) -> None:
    st = RunState.new(parse_pipeline(tiny_raw), "r1").sessions[0]
    st.add_wall_seconds("2025-01-01T10:00:00+00:00", "2025-01-01T10:00:10+00:00")
    st.add_wall_seconds("2025-01-01T11:00:00+00:00", "2025-01-01T11:00:02.5+00:00")
    st.add_wall_seconds(None, "2025-01-01T11:00:02+00:00")
    assert st.wall_seconds == 12.5


def test_plan_reads_back_from_its_json(tiny_raw: dict[str, Any]) -> None:
    plan = build_plan(parse_pipeline(tiny_raw))
    doc = {"source": "inline", "estimated_history_events": 100, **plan.to_dict()}
    assert Plan.from_dict(doc) == plan


def test_lambda_settings_round_trip_through_the_environment() -> None:
    settings = LambdaSettings(StackSettings(bucket="b", role_arn="arn:role", image_uri="img", job_prefix="rl",
                                            subnet_ids=("s1", "s2"), security_group_ids=("g1",), kms_key_arn="k"),
                              timing=Timing(pool_poll_seconds=5, pool_max_polls=7), topic_arn="arn:topic",
                              default_pipeline_key="configs/default/pipeline.json")
    env = settings.environment(job_settings=True, topic=True, default_pipeline=True)
    assert LambdaSettings.from_env(env) == settings
    plain = settings.environment()
    assert "RLPIPE_TRAINING_ROLE_ARN" not in plain and "RLPIPE_TOPIC_ARN" not in plain
    back = LambdaSettings.from_env(plain)
    assert back.stack.role_arn == "" and back.topic_arn is None and back.timing == settings.timing
