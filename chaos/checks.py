"""What a run must look like once resumed to the end, whatever killed it on the way."""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from rlpipe.config import PipelineConfig
from rlpipe.integrity import bundle_problem
from rlpipe.jsonio import read_json
from rlpipe.trainer.checkpoints import sha256_file
from rlpipe.trainer.eval_recovery import session_grid

# Members of SB3's model.zip that hold training state; "data" also holds wall-clock episode times.
WEIGHT_MEMBERS = ("policy.pth", "policy.optimizer.pth", "pytorch_variables.pth")


def bundle_digests(run_dir: Path, session: str) -> dict[str, str]:
    """Digest of every file in a session's bundle directory."""
    model = run_dir / session / "model"
    return {p.name: sha256_file(p) for p in sorted(model.iterdir()) if p.is_file()} if model.is_dir() else {}


def training_state(run_dir: Path, session: str) -> dict[str, Any]:
    """A bundle's weights, optimizer and normalisation statistics (what must equal an uninterrupted run's)."""
    model = run_dir / session / "model"
    state: dict[str, Any] = {}
    with zipfile.ZipFile(model / "model.zip") as z:
        for name in WEIGHT_MEMBERS:
            if name in z.namelist():
                state[name] = hashlib.sha256(z.read(name)).hexdigest()
    stats = model / "vecnormalize.pkl"
    if stats.exists():
        with open(stats, "rb") as fh:
            norm = pickle.load(fh)
        for which in ("obs_rms", "ret_rms"):
            rms = getattr(norm, which)
            state[which] = (np.asarray(rms.mean).tobytes(), np.asarray(rms.var).tobytes(), float(rms.count))
    return state


def stray_files(run_dir: Path, tmpdir: Path, baseline: Path) -> list[str]:
    """Temporary files left behind: half-written JSON, staging checkpoints, bundle scratch, and anything in
    TMPDIR that an uninterrupted run (whose TMPDIR is ``baseline``) does not leave too (torch's kernel cache)."""
    stray = [str(p.relative_to(run_dir)) for p in run_dir.rglob("*")
             if p.name.endswith(".tmp") or p.name.startswith(".step-") or p.name == ".bundle-scratch"]
    usual = {p.name for p in baseline.iterdir()} if baseline.is_dir() else set()
    stray += [f"$TMPDIR/{p.name}" for p in tmpdir.iterdir() if p.name not in usual] if tmpdir.is_dir() else []
    return stray


def verify_finished(run_dir: Path, pipeline: PipelineConfig) -> list[str]:
    """Problems with a run that should have ended well: status, exact budgets, intact bundles, the complete
    evaluation grid of every session with no step twice and no gap."""
    problems: list[str] = []
    state = read_json(run_dir / "state.json")
    if state["status"] != "succeeded":
        problems.append(f"run status {state['status']}")
    for cfg, st in zip(pipeline.sessions, state["sessions"]):
        name = cfg.name
        if st["status"] != "completed" or st["timesteps"] != cfg.timesteps:
            problems.append(f"{name}: {st['status']} at {st['timesteps']} of {cfg.timesteps} steps")
            continue
        damaged = bundle_problem(run_dir / name / "model")
        if damaged is not None:
            problems.append(f"{name}: bundle damaged: {damaged}")
            continue
        metrics = read_json(run_dir / name / "model" / "metrics.json")
        steps = [e["timesteps"] for e in metrics["evaluations"]]
        grid = session_grid(cfg)
        if len(steps) != len(set(steps)):
            problems.append(f"{name}: evaluations recorded twice: {sorted(s for s in steps if steps.count(s) > 1)}")
        if sorted(set(steps)) != grid:
            problems.append(f"{name}: evaluations at {sorted(set(steps))}, grid {grid}")
        for gap in metrics.get("evaluation_gaps") or []:
            problems.append(f"{name}: evaluation gap: {gap['reason']}")
    return problems


def clean_sessions(state: dict[str, Any]) -> list[str]:
    """Sessions that trained from start to end in one process, after sessions that all did too: their weights
    must equal an uninterrupted run's (a resumed session trains on new env seeds after its checkpoint)."""
    clean = []
    for st in state["sessions"]:
        if st.get("resumed_from_timesteps") is not None or st["attempts"] != 1:
            break
        clean.append(st["name"])
    return clean
