"""Evaluations lost to a kill are run again on resume with their own weights; gone weights leave a named gap."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rlpipe.jsonio import read_json, write_json_atomic
from rlpipe.trainer.eval_recovery import evaluation_grid
from rlpipe.trainer.session import SessionTrainer

from .trainer_utils import pipeline_raw, session_root


def test_evaluation_grid_follows_the_vector_steps() -> None:
    assert evaluation_grid(256, 128, 2, warm_start=False) == [128, 256]
    assert evaluation_grid(256, 128, 2, warm_start=True) == [0, 128, 256]
    assert evaluation_grid(300, 100, 3, warm_start=False) == [102, 201, 300]  # first vector step past each
    assert evaluation_grid(12, 2, 4, warm_start=False) == [4, 8, 12]  # one evaluation per crossing step
    assert evaluation_grid(100, 1000, 4, warm_start=True) == [0, 100]


def _evaluations(root: Path) -> list[tuple[int, float]]:
    return [(e["timesteps"], e["mean_reward"]) for e in read_json(root / "model" / "metrics.json")["evaluations"]]


def _forget(root: Path, steps: set[int], drop_checkpoints_above: int) -> None:
    """As if the process was killed before the evaluations of ``steps`` came back, with its newest checkpoint
    at ``drop_checkpoints_above``: later checkpoints and the bundle never written."""
    import shutil

    for ckpt in root.glob("checkpoints/step-*"):
        if int(ckpt.name.split("-")[1]) > drop_checkpoints_above:
            shutil.rmtree(ckpt)
    shutil.rmtree(root / "model")
    for doc_path in [root / "checkpoints" / "metrics.json", *root.glob("checkpoints/step-*/manifest.json")]:
        doc: dict[str, Any] = read_json(doc_path)
        doc["evaluations"] = [e for e in doc["evaluations"] if e["timesteps"] not in steps]
        write_json_atomic(doc_path, doc)


@pytest.mark.parametrize("background", [False, True])
def test_lost_transfer_evaluation_is_run_again_from_the_handed_over_bundle(tmp_path: Path, background: bool) -> None:
    raw = pipeline_raw(eval={"every_steps": 128, "episodes": 2, "background": background})
    first = tmp_path / "s1"
    SessionTrainer(session_root(first, raw, 0)).run()
    second = session_root(tmp_path / "s2", raw, 1, previous=first / "model")
    SessionTrainer(second).run()
    complete = _evaluations(tmp_path / "s2")
    assert [e[0] for e in complete] == [0, 128, 256]

    _forget(tmp_path / "s2", {0}, drop_checkpoints_above=128)
    result = SessionTrainer(second).run()
    assert result.resumed_from == 128
    resumed = _evaluations(tmp_path / "s2")
    assert [e[0] for e in resumed] == [0, 128, 256]
    assert resumed[:2] == complete[:2]  # the same rewards: the same weights, statistics and seeds
    assert read_json(tmp_path / "s2" / "model" / "metrics.json")["evaluation_gaps"] == []
    assert len(list((tmp_path / "s2" / "checkpoints").glob("step-*"))) == 2  # checkpoint.keep, once all are in


def test_lost_evaluation_whose_checkpoint_was_rotated_is_recorded_as_a_gap(tmp_path: Path) -> None:
    raw = pipeline_raw(eval={"every_steps": 128, "episodes": 1, "background": False})
    raw["sessions"][0].update(timesteps=384, checkpoint={"every_steps": 128, "keep": 1})
    paths = session_root(tmp_path, raw, 0)
    SessionTrainer(paths).run()
    assert [p.name for p in paths.checkpoints.glob("step-*")] == ["step-000000000384"]
    _forget(tmp_path, {128, 384}, drop_checkpoints_above=384)
    SessionTrainer(paths).run()
    metrics = read_json(paths.model / "metrics.json")
    assert [e["timesteps"] for e in metrics["evaluations"]] == [256, 384]  # 384 run again from its checkpoint
    [gap] = metrics["evaluation_gaps"]
    assert gap["timesteps"] == 128 and "step-000000000128 no longer exists" in gap["reason"]
    assert gap["reason"] in metrics["notes"]


def test_prune_keeps_checkpoints_whose_evaluation_is_pending(tmp_path: Path) -> None:
    from rlpipe.trainer.checkpoints import checkpoint_name, prune

    for steps in (128, 256, 384, 512):
        (tmp_path / checkpoint_name(steps)).mkdir()
    prune(tmp_path, keep=1, protect={checkpoint_name(256)})
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint_name(256), checkpoint_name(512)]


def test_an_evaluation_falling_back_to_the_trainer_leaves_its_random_state_alone() -> None:
    import torch

    from .test_trainer import _worker_and_evaluator

    with _worker_and_evaluator() as (worker, evaluator, history, expected):
        evaluator.evaluate()
        worker._process.kill()
        before = torch.random.get_rng_state()
        evaluator.drain(None)  # the lost snapshot is evaluated here, on a spare policy
        assert evaluator.background is None and history[0]["mean_reward"] == pytest.approx(expected)
        # Training after a worker's death draws the same samples as it would have with the worker alive.
        assert torch.equal(torch.random.get_rng_state(), before)
