"""A run's lineages on AWS: one whole curriculum per seed, side by side in one execution (the Map state).

A run with one seed is its own and only lineage, with the single-seed layout of today. A run with several
seeds keeps ``lineages.json`` under its prefix, and each seed's lineage is a run of its own,
``<run_id>-seed-<s>`` (:func:`lineage_run_id`), with the single-seed layout: every step that works on one
lineage (PrepareSession, RecordSession, CheckPool, the job events) sees an ordinary single-seed run, as a
local lineage is an ordinary run directory under ``runs/<name>/seed-<s>/``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from rlpipe.cloud.steps.context import Context
from rlpipe.cloud.steps.pools import release_run_pools
from rlpipe.cloud.steps.training_jobs import close_active_job
from rlpipe.cloud.store import RunStore
from rlpipe.config import PipelineConfig
from rlpipe.state import RunState, utcnow


def lineage_run_id(run_id: str, seed: int) -> str:
    """The run id of seed ``seed``'s lineage (at most 80 characters: :func:`~rlpipe.cloud.naming.new_run_id`
    gives at most 63, seeds have at most 10 digits)."""
    return f"{run_id}-seed-{seed}"


_LINEAGE_RUN_ID = re.compile(r"^(?P<run>.+)-seed-(?P<seed>[0-9]+)$")


def parent_of(run_id: str) -> tuple[str, int] | None:
    """The run and seed that ``run_id`` would be the lineage of (the inverse of :func:`lineage_run_id`), or None
    when it does not have that shape; whether that run exists and lists it is for the caller to check."""
    found = _LINEAGE_RUN_ID.match(run_id)
    return (found["run"], int(found["seed"])) if found else None


def is_multi_seed(pipeline: PipelineConfig) -> bool:
    """Whether ``pipeline`` runs as several lineages (as locally: more than one seed)."""
    return len(pipeline.seed_list()) > 1


@dataclass(frozen=True)
class Lineage:
    """One lineage of a run: its seed (None: a single-seed run, its own lineage), its position, its run."""

    seed: int | None
    position: int
    store: RunStore

    @property
    def run_id(self) -> str:
        return self.store.run_id


def lineage_record(pipeline: PipelineConfig, run_id: str) -> dict[str, Any]:
    """``lineages.json`` of a new run with several seeds."""
    return {"pipeline": pipeline.name, "run_id": run_id, "config_fingerprint": pipeline.fingerprint(),
            "seeds": pipeline.seed_list(), "parallel": pipeline.parallel, "fail_fast": pipeline.fail_fast,
            "max_cost_usd": pipeline.max_cost_usd,
            "lineages": [{"seed": s, "run_id": lineage_run_id(run_id, s)} for s in pipeline.seed_list()]}


def read_lineage_record(store: RunStore) -> dict[str, Any] | None:
    """The run's ``lineages.json``; None for a single-seed run."""
    record = store.get_json_or_none(store.keys.lineages)
    return record if isinstance(record, Mapping) else None


def lineages_in(store: RunStore) -> list[Lineage]:
    """The lineages of the run of ``store``, in seed order: its own run when it has one seed."""
    record = read_lineage_record(store)
    if record is None:
        return [Lineage(None, 0, store)]
    return [Lineage(int(item["seed"]), i, RunStore(store.s3, store.bucket, str(item["run_id"])))
            for i, item in enumerate(record["lineages"])]


def lineages_of(ctx: Context, run_id: str) -> list[Lineage]:
    """The lineages of ``run_id``, in seed order: its own run when it has one seed."""
    return lineages_in(ctx.run_store(run_id))


def run_exists(ctx: Context, run_id: str) -> bool:
    """Whether ``run_id`` names a run in the bucket (a single-seed run's state or a run's lineages)."""
    store = ctx.run_store(run_id)
    return store.exists_run() or store.exists(store.keys.lineages)


def started_lineages(ctx: Context, run_id: str) -> Iterator[tuple[Lineage, RunState]]:
    """Each lineage of ``run_id`` whose state exists, with that state."""
    for lin in lineages_of(ctx, run_id):
        if lin.store.exists_run():
            yield lin, lin.store.load_state()


def run_status(statuses: list[str]) -> str:
    """The status of a run from its lineages' statuses (as the report across lineages states it)."""
    for status in ("running", "interrupted", "failed", "pending"):
        if status in statuses:
            return "interrupted" if status == "pending" else status
    return "succeeded" if statuses else "pending"


def billed_cost_usd(ctx: Context, parent_run_id: str, current: RunState) -> float:
    """The cost billed so far over every lineage of ``parent_run_id`` (training and warm-pool idle time, from
    each job's BillableTimeInSeconds), with ``current`` standing for its lineage's stored state."""
    total = 0.0
    for lin in lineages_of(ctx, parent_run_id):
        if lin.run_id == current.run_id:
            state: RunState | None = current
        else:
            state = lin.store.load_state() if lin.store.exists_run() else None
        if state is not None:
            total += sum(s.cost_usd or 0.0 for s in state.sessions)
    return round(total, 6)


def close_lineage(ctx: Context, store: RunStore, state: RunState, status: str, cause: str) -> None:
    """Stop the lineage's active job (keep-alive dropped first), mark its running session and itself ``status``
    (a lineage that already ended keeps its status), release its pools, save its state."""
    close_active_job(ctx, state)
    for st in state.sessions:
        if st.status == "running":
            st.status = "interrupted" if status == "interrupted" else "failed"
            st.error = st.error or cause
            st.ended_at = st.ended_at or utcnow()
    if state.status not in ("failed", "interrupted", "succeeded"):  # every session done stays a success
        state.finish(status, cause)  # type: ignore[arg-type]
    release_run_pools(ctx, state)
    store.save_state(state)
