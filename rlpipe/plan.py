"""The plan of a validated pipeline: handoffs, warm-pool reuse, keep-alive and a cost estimate.

Both drivers read it: the local runner for handoffs, the state machine's Lambdas for the SageMaker
requests (keep-alive only when the next session can reuse the pool).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from importlib import resources
from typing import Any

from rlpipe.config import PipelineConfig, SessionConfig


@lru_cache(maxsize=1)
def price_table() -> dict[str, Any]:
    """The shipped price table (region, date and source inside)."""
    return json.loads(resources.files("rlpipe").joinpath("data", "prices.json").read_text())


def pool_key(s: SessionConfig) -> tuple[Any, ...]:
    """The per-session part of SageMaker's warm-pool match (role, VPC, KMS and encryption are stack-wide)."""
    c = s.compute
    return (c.instance_type, c.instance_count, c.volume_size_gb)


def can_reuse_pool(prev: SessionConfig, nxt: SessionConfig) -> tuple[bool, str]:
    """Whether ``nxt``'s training job can start on the pool ``prev``'s job leaves, and why not."""
    p = prev.compute
    if not p.warm_pool.enabled or p.warm_pool.keep_alive_seconds == 0:
        return False, f"'{prev.name}' keeps no warm pool"
    if nxt.compute.spot:  # config validation already refuses a pool on a spot session (prev)
        return False, "warm pools cannot be combined with spot"
    if pool_key(prev) != pool_key(nxt):
        return False, "instance type, count or volume size differ"
    return True, "same instance type, count and volume"


@dataclass
class PlannedSession:
    """One session of the plan."""

    index: int
    name: str
    global_timestep_offset: int  # timesteps of all sessions before this one: the x offset of its curve
    env: str
    algorithm: str
    timesteps: int
    handoff_from: str | None
    carried: list[str]
    reset: list[str]
    instance_type: str
    instance_count: int
    spot: bool
    warm_pool: bool
    reuses_previous_pool: bool
    reuse_reason: str
    keep_alive_seconds: int
    estimated_train_seconds: float
    estimated_cost_usd: float | None
    notes: list[str] = field(default_factory=list)


@dataclass
class Plan:
    """The whole plan, with the price table's provenance for the estimate."""

    pipeline: str
    sessions: list[PlannedSession]
    estimated_cost_usd: float | None  # one lineage
    price_region: str
    price_recorded: str
    seeds: list[int] = field(default_factory=lambda: [0])
    parallel: int = 1
    estimated_cost_all_seeds_usd: float | None = None
    max_cost_usd: float | None = None

    def waves(self) -> list[list[int]]:
        """The seeds in the groups that run at once (``parallel`` lineages at a time, in seed order)."""
        return [self.seeds[i:i + self.parallel] for i in range(0, len(self.seeds), self.parallel)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Plan:
        """Read back :meth:`to_dict` (keys it does not know, e.g. those ``plan.json`` adds, are ignored)."""
        known = {f.name for f in fields(cls)} - {"sessions"}
        session_fields = {f.name for f in fields(PlannedSession)}
        return cls(sessions=[PlannedSession(**{k: v for k, v in s.items() if k in session_fields})
                             for s in doc["sessions"]], **{k: v for k, v in doc.items() if k in known})


def handoff_parts(s: SessionConfig) -> tuple[list[str], list[str]]:
    """What a warm start carries from the previous bundle and what it resets (the policy is always carried)."""
    if not s.use_previous_checkpoint:
        return [], []
    carried, reset = ["policy"], []
    (carried if s.handoff.optimizer == "carry" else reset).append("optimizer")
    if s.normalize:  # without VecNormalize there are no statistics to carry or reset
        (carried if s.handoff.vecnormalize == "carry" else reset).append("vecnormalize")
    if s.info.off_policy:
        (carried if s.handoff.replay_buffer == "carry" else reset).append("replay_buffer")
    # Each session has its own budget: SB3's num_timesteps restarts at 0; the global offset is kept for plots.
    reset.append("num_timesteps")
    return carried, reset


def build_plan(pipeline: PipelineConfig) -> Plan:
    """Plan ``pipeline``: handoffs, pool reuse, effective keep-alive, estimated time and cost."""
    prices = price_table()
    rates = prices["usd_per_hour"]
    sessions: list[PlannedSession] = []
    total: float | None = 0.0
    for i, s in enumerate(pipeline.sessions):
        prev = pipeline.sessions[i - 1] if i else None
        nxt = pipeline.sessions[i + 1] if i + 1 < len(pipeline.sessions) else None
        reuses, reason = can_reuse_pool(prev, s) if prev else (False, "first session")
        next_reuses = can_reuse_pool(s, nxt)[0] if nxt else False
        carried, reset = handoff_parts(s)
        rates_sps = prices["throughput_steps_per_second"]
        sps = rates_sps[s.algorithm] if s.backend == "sb3" else rates_sps[f"{s.backend}:{s.algorithm}"]
        train_s = s.timesteps / sps
        startup = prices["startup_seconds"]["warm_pool" if reuses else "cold"]
        # The pool idles from this job's end until the next job claims it: about one warm start.
        idle = prices["startup_seconds"]["warm_pool"] if next_reuses else 0
        notes: list[str] = []
        rate = rates.get(s.compute.instance_type)
        cost: float | None = None
        if rate is None:
            notes.append(f"no price for {s.compute.instance_type} in the table")
            total = None
        else:
            factor = (1 - prices["spot_discount_assumed"]) if s.compute.spot else 1.0
            cost = rate / 3600 * s.compute.instance_count * ((startup + train_s) * factor + idle)
            if total is not None:
                total += cost
        if s.compute.warm_pool.enabled and not next_reuses and nxt is not None:
            notes.append("pool not kept: next session cannot reuse it")
        info = s.info
        if not info.off_policy:
            rollout = int(s.hyperparameters.get("n_steps", info.default_n_steps)) * s.n_envs
            if s.timesteps % rollout:
                notes.append(f"the last {s.timesteps % rollout} steps fill a partial rollout that is not trained on "
                             f"(budget not a multiple of n_steps x n_envs = {rollout})")
        sessions.append(PlannedSession(
            index=i, name=s.name, global_timestep_offset=sum(x.timesteps for x in pipeline.sessions[:i]), env=s.env, algorithm=s.algorithm, timesteps=s.timesteps,
            handoff_from=prev.name if (prev and s.use_previous_checkpoint) else None,
            carried=carried, reset=reset, instance_type=s.compute.instance_type,
            instance_count=s.compute.instance_count, spot=s.compute.spot,
            warm_pool=s.compute.warm_pool.enabled, reuses_previous_pool=reuses, reuse_reason=reason,
            keep_alive_seconds=s.compute.warm_pool.keep_alive_seconds if next_reuses else 0,
            estimated_train_seconds=round(train_s, 1),
            estimated_cost_usd=round(cost, 4) if cost is not None else None, notes=notes))
    seeds = pipeline.seed_list()
    return Plan(pipeline=pipeline.name, sessions=sessions,
                estimated_cost_usd=round(total, 4) if total is not None else None,
                price_region=prices["region"], price_recorded=prices["recorded"], seeds=seeds,
                parallel=min(pipeline.parallel, len(seeds)),
                estimated_cost_all_seeds_usd=round(total * len(seeds), 4) if total is not None else None,
                max_cost_usd=pipeline.max_cost_usd)


class CostCeilingError(ValueError):
    """The plan's estimate for all seeds exceeds ``max_cost_usd`` (or cannot be checked against it)."""


def check_cost_ceiling(plan: Plan) -> None:
    """Refuse a run whose estimate for all lineages exceeds ``max_cost_usd``; a missing price refuses too,
    since the ceiling could not be kept."""
    ceiling = plan.max_cost_usd
    if ceiling is None:
        return
    total = plan.estimated_cost_all_seeds_usd
    if total is None:
        missing = sorted({s.instance_type for s in plan.sessions if s.estimated_cost_usd is None})
        raise CostCeilingError(f"pipeline '{plan.pipeline}': max_cost_usd {ceiling:g} cannot be checked: no price "
                               f"for {', '.join(missing)} in rlpipe/data/prices.json; use a listed instance type "
                               "or remove max_cost_usd")
    if total > ceiling:
        n = len(plan.seeds)
        raise CostCeilingError(f"pipeline '{plan.pipeline}': max_cost_usd: estimated ${total:.2f} for {n} "
                               f"lineage(s) ({n} x ${plan.estimated_cost_usd:.2f}) exceeds the ceiling of "
                               f"${ceiling:.2f}; raise max_cost_usd, list fewer seeds or shorten the sessions")
