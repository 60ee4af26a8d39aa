"""SageMaker's training-container contract, shared by the trainer, the local runner and the request builder.

SageMaker mounts everything under ``/opt/ml``; locally each session gets its own root with the same layout,
so the trainer is one program in both places.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_ROOT = Path("/opt/ml")
CONFIG_CHANNEL = "config"  # holds session.json: the resolved session config (too large for hyperparameters)
PREVIOUS_CHANNEL = "previous"  # the previous session's handoff bundle (a dir locally, model.tar.gz on AWS)
SESSION_FILE = "session.json"
FAILURE_REASON_LIMIT = 1024  # SageMaker keeps the first 1024 chars of /opt/ml/output/failure

# The handoff bundle (a session's model dir; model.tar.gz on AWS).
MODEL_FILE = "model.zip"  # policy + optimizer, SB3 format
VECNORMALIZE_FILE = "vecnormalize.pkl"
REPLAY_BUFFER_FILE = "replay_buffer.pkl"  # off-policy
BUNDLE_META_FILE = "bundle.json"  # counters, what was carried/reset
METRICS_FILE = "metrics.json"  # the session's outcome (rlpipe.outcome); also beside the checkpoints
CHECKPOINT_PREFIX = "step-"  # checkpoints/step-<timesteps>/, each committed with its manifest
MANIFEST_FILE = "manifest.json"  # a checkpoint's files and their SHA-256
CURVE_FILE = "learning_curve.png"  # in the bundle and beside a run's report
VIDEO_FILE = "video.mp4"  # the final policy at work (also beside the checkpoints: S3 on AWS)
FILMSTRIP_FILE = "filmstrip.png"  # a few of the video's frames side by side
# A run directory (runs/<pipeline> locally, s3://<bucket>/runs/<run_id>/ on AWS).
STATE_FILE = "state.json"
PLAN_FILE = "plan.json"
LINEAGES_FILE = "lineages.json"  # a run with several seeds: its seeds, parallel and each lineage's run
RESOLVED_FILE = "pipeline.resolved.json"  # local; on AWS pipeline.json
COMMAND_FILE = "command.txt"  # local: the commands that started or resumed the run
LOG_FILE = "run.log"  # local: log of every attempt
REPORT_FILES = {"json": "report.json", "md": "report.md", "html": "report.html", "png": CURVE_FILE}

# One line per evaluation, e.g. "rlpipe-metric session=a step=4000 eval_mean_reward=12.5 ..."; SageMaker turns
# these into CloudWatch metrics through MetricDefinitions (at most 40, one capture group each).
METRIC_PREFIX = "rlpipe-metric"
METRIC_NAMES = ("eval_mean_reward", "eval_std_reward", "best_eval_reward", "fps", "timesteps", "global_timesteps",
                "evals_since_best")
_NUMBER = r"([-+0-9.eE]+|nan|inf)"
METRIC_DEFINITIONS = [{"Name": n, "Regex": rf"{METRIC_PREFIX} .*\b{n}={_NUMBER}"} for n in METRIC_NAMES]


def metric_line(session: str, **values: float | int) -> str:
    """Format one metric line that :data:`METRIC_DEFINITIONS` parses."""
    parts = " ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
    return f"{METRIC_PREFIX} session={session} {parts}"


@dataclass(frozen=True)
class ContainerPaths:
    """The ``/opt/ml`` layout under ``root``. ``checkpoints`` is SageMaker's CheckpointConfig.LocalPath."""

    root: Path = DEFAULT_ROOT

    @property
    def input_config(self) -> Path:
        return self.root / "input" / "config"

    @property
    def hyperparameters(self) -> Path:
        return self.input_config / "hyperparameters.json"

    def channel(self, name: str) -> Path:
        """Directory of input channel ``name``."""
        return self.root / "input" / "data" / name

    @property
    def session_file(self) -> Path:
        return self.channel(CONFIG_CHANNEL) / SESSION_FILE

    @property
    def previous(self) -> Path:
        return self.channel(PREVIOUS_CHANNEL)

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def output(self) -> Path:
        return self.root / "output"

    @property
    def failure(self) -> Path:
        return self.output / "failure"

    @property
    def tensorboard(self) -> Path:
        return self.output / "tensorboard"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def write_failure(self, reason: str) -> None:
        """Record why training failed, as SageMaker reads it (truncated to its limit)."""
        self.output.mkdir(parents=True, exist_ok=True)
        self.failure.write_text(reason[:FAILURE_REASON_LIMIT])


def session_document(pipeline: str, run_id: str, index: int, session: dict[str, Any],
                     handoff_from: str | None, global_offset: int) -> dict[str, Any]:
    """The ``session.json`` a trainer reads: resolved session config plus where it sits in the run."""
    return {"pipeline": pipeline, "run_id": run_id, "index": index, "session": session,
            "handoff_from": handoff_from, "global_timestep_offset": global_offset}
