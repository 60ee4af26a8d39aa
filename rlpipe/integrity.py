"""Checks of the files a run reads back: the run state, metrics, bundle and checkpoint manifests, session docs.

A damaged file (empty, truncated, not JSON, wrongly shaped, or a bundle missing a file its manifest lists)
becomes a :class:`DamagedFile`: one line naming the file, what is wrong with it and what to do. The local
runner checks a run directory before it changes anything, so a refusal leaves the directory as it was.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rlpipe.contract import BUNDLE_META_FILE, CHECKPOINT_PREFIX, MANIFEST_FILE, METRICS_FILE

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

BUNDLE_META = BUNDLE_META_FILE
METRICS = METRICS_FILE
MANIFEST = MANIFEST_FILE
# A damaged checkpoint is set aside under this prefix by --repair (never deleted): resume skips it.
SET_ASIDE_PREFIX = "damaged-"


class DamagedFile(RuntimeError):
    """A file a run reads back is damaged; the message is one line: file, problem, remedy."""

    def __init__(self, path: Path, problem: str, remedy: str) -> None:
        self.path, self.problem, self.remedy = Path(path), problem, remedy
        super().__init__(f"{path}: {problem}; {remedy}")


# -- shapes -------------------------------------------------------------------------------------------------
class _Shape(BaseModel):
    model_config = ConfigDict(extra="allow")


class EvaluationShape(_Shape):
    timesteps: int = Field(ge=0)
    mean_reward: float
    std_reward: float = 0.0


class MetricsShape(_Shape):
    evaluations: list[EvaluationShape] = Field(default_factory=list)


class BundleShape(_Shape):
    format_version: int
    session: str
    timesteps: int = Field(ge=0)
    files: list[str]
    sha256: dict[str, str] = Field(default_factory=dict)


class ManifestShape(_Shape):
    timesteps: int = Field(ge=0)
    files: dict[str, str]
    evaluations: list[EvaluationShape] = Field(default_factory=list)


class SessionDocShape(_Shape):
    pipeline: str
    run_id: str
    index: int = Field(ge=0)
    session: dict[str, Any]
    handoff_from: str | None = None
    global_timestep_offset: int = Field(0, ge=0)


# -- reading ------------------------------------------------------------------------------------------------
def read_json_checked(path: Path, remedy: str) -> Any:
    """The JSON in ``path``; :class:`DamagedFile` when it is empty, truncated, not UTF-8 or not JSON."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DamagedFile(path, "missing", remedy) from None
    except OSError as exc:
        raise DamagedFile(path, f"cannot be read ({exc.strerror})", remedy) from None
    if not raw.strip():
        raise DamagedFile(path, "is empty", remedy)
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise DamagedFile(path, "is not UTF-8 text", remedy) from None
    except json.JSONDecodeError as exc:
        raise DamagedFile(path, f"is not valid JSON (truncated?): {exc.msg} (line {exc.lineno}, column "
                                f"{exc.colno})", remedy) from None


def first_problem(exc: ValidationError) -> str:
    """The first validation error as ``field a.0.b: message`` (one line)."""
    e = exc.errors()[0]
    where = ".".join(str(x) for x in e.get("loc", ())) or "(top level)"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"field {where}: {e.get('msg', 'invalid')}{more}"


def parse_checked(path: Path, model: type[M], remedy: str, data: Any = None) -> M:
    """``path`` read (unless ``data`` is given) and validated as ``model``; :class:`DamagedFile` otherwise."""
    data = read_json_checked(path, remedy) if data is None else data
    if not isinstance(data, dict):
        raise DamagedFile(path, f"holds a JSON {type(data).__name__}, not an object", remedy)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise DamagedFile(path, f"wrongly shaped: {first_problem(exc)}", remedy) from None


# -- bundles ------------------------------------------------------------------------------------------------
def bundle_problem(model_dir: Path, hash_files: bool = True) -> DamagedFile | None:
    """What is wrong with the handoff bundle in ``model_dir`` (None when intact): its ``bundle.json`` must be
    readable and every file it lists present, and equal to its recorded SHA-256 where one is recorded."""
    from rlpipe.trainer.checkpoints import sha256_file

    meta_path = model_dir / BUNDLE_META
    remedy = "restore the bundle, or rebuild it from the session's final checkpoint with --resume --repair"
    try:
        meta = parse_checked(meta_path, BundleShape, remedy)
    except DamagedFile as exc:
        return exc
    for name in meta.files:
        p = model_dir / name
        if not p.is_file():
            return DamagedFile(p, f"missing, though {BUNDLE_META} lists it", remedy)
        digest = meta.sha256.get(name)
        if hash_files and digest is not None and sha256_file(p) != digest:
            return DamagedFile(p, f"does not match the SHA-256 in {BUNDLE_META}", remedy)
    return None


def check_bundle(model_dir: Path) -> None:
    """Raise :class:`DamagedFile` when the bundle in ``model_dir`` is not intact."""
    problem = bundle_problem(model_dir)
    if problem is not None:
        raise problem


# -- a whole run directory ----------------------------------------------------------------------------------
@dataclass
class Repair:
    """A safe change ``--repair`` can make: nothing is deleted, damaged files are set aside."""

    what: str
    apply: Callable[[], None]


def _set_aside(path: Path) -> Callable[[], None]:
    def do() -> None:
        target = path.with_name(f"{SET_ASIDE_PREFIX}{path.name}")
        n = 1
        while target.exists():
            n += 1
            target = path.with_name(f"{SET_ASIDE_PREFIX}{n}-{path.name}")
        os.replace(path, target)
        log.warning("set aside %s as %s", path, target.name)
    return do


def check_checkpoints(directory: Path) -> list[tuple[DamagedFile, Repair]]:
    """Problems with a session's checkpoint directory: unreadable manifests and ``metrics.json``."""
    found: list[tuple[DamagedFile, Repair]] = []
    if not directory.is_dir():
        return found
    for ckpt in sorted(directory.glob(f"{CHECKPOINT_PREFIX}*")):
        if not ckpt.is_dir() or not (ckpt / MANIFEST).exists():
            continue  # a checkpoint whose manifest never got written is skipped by design (killed mid-write)
        try:
            parse_checked(ckpt / MANIFEST, ManifestShape,
                          f"move {ckpt.name} aside to resume from the checkpoint before it (--resume --repair)")
        except DamagedFile as exc:
            found.append((exc, Repair(f"set aside checkpoint {ckpt}", _set_aside(ckpt))))
    metrics = directory / METRICS
    if metrics.exists():
        try:
            parse_checked(metrics, MetricsShape, "move it aside (--resume --repair): the evaluations it held are "
                                                 "run again from the checkpoints")
        except DamagedFile as exc:
            found.append((exc, Repair(f"set aside {metrics}", _set_aside(metrics))))
    return found


def _rebuild_bundle(state: Any, index: int) -> Callable[[], None]:
    def do() -> None:
        # Run again, the session resumes from its final checkpoint, trains nothing and writes its bundle anew.
        state.sessions[index].status = "interrupted"
    return do


def check_run_dir(out_dir: Path, state: Any) -> list[tuple[DamagedFile, Repair | None]]:
    """Every damaged file a resume of ``state`` (a :class:`~rlpipe.state.RunState`) in ``out_dir`` would rely
    on or report: completed sessions' bundles and metrics, other sessions' checkpoint manifests and metrics.
    Each comes with the repair ``--repair`` would make, or None when none is safe."""
    from rlpipe.trainer.checkpoints import newest_valid

    found: list[tuple[DamagedFile, Repair | None]] = []
    for index, st in enumerate(state.sessions):
        root = out_dir / st.name
        if st.status == "completed":
            problem = bundle_problem(root / "model")
            if problem is None and (root / "model" / METRICS).exists():
                try:
                    parse_checked(root / "model" / METRICS, MetricsShape,
                                  "restore it, or rebuild the bundle from the final checkpoint (--resume --repair)")
                except DamagedFile as exc:
                    problem = exc
            if problem is not None:
                final = newest_valid(root / "checkpoints")
                repair = None
                if final is not None and final.timesteps >= st.timesteps_budget:
                    repair = Repair(f"rebuild session '{st.name}''s bundle from {final.path.name}",
                                    _rebuild_bundle(state, index))
                else:
                    problem = DamagedFile(problem.path, problem.problem,
                                          f"restore it; session '{st.name}' has no final checkpoint to rebuild its "
                                          "bundle from, so only a new run (another --output) can replace it")
                found.append((problem, repair))
        else:
            found.extend(check_checkpoints(root / "checkpoints"))
    return found
