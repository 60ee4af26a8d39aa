"""Write a local run's report files beside its ``state.json``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from rlpipe.contract import FILMSTRIP_FILE, METRICS_FILE, REPORT_FILES, STATE_FILE, VIDEO_FILE, ContainerPaths
from rlpipe.jsonio import read_json, write_bytes_atomic, write_json_atomic, write_text_atomic
from rlpipe.outcome import SessionOutcome
from rlpipe.report.build import build_report
from rlpipe.report.render import VIDEO_EMBED_MAX_BYTES, render_html, render_markdown
from rlpipe.state import RunState

log = logging.getLogger(__name__)

REPORT_JSON, REPORT_MD, REPORT_HTML, CURVE_PNG = (REPORT_FILES[k] for k in ("json", "md", "html", "png"))


def session_metrics_path(run_dir: Path, session: str) -> Path | None:
    """The session's metrics.json: the final one in its model dir, else the latest copy in its checkpoints."""
    paths = ContainerPaths(run_dir / session)
    for candidate in (paths.model / METRICS_FILE, paths.checkpoints / METRICS_FILE):
        if candidate.is_file():
            return candidate
    return None


def read_session_outcome(run_dir: Path, session: str) -> SessionOutcome | None:
    """The session's outcome, or None when it has none yet (or it cannot be read)."""
    path = session_metrics_path(run_dir, session)
    if path is None:
        return None
    try:
        data = read_json(path)
    except (OSError, ValueError) as err:  # a report must still come out when one file is damaged
        log.warning("cannot read %s: %s", path, err)
        return None
    return SessionOutcome.read(data, str(path))


def session_media(run_dir: Path, report: dict[str, Any]) -> dict[str, bytes]:
    """Point each recorded video of ``report`` at its files in the sessions' bundles (``href`` and
    ``filmstrip_href``, relative to the run dir) and return those files' bytes by href, for embedding."""
    media: dict[str, bytes] = {}
    for entry in report.get("sessions") or []:
        video = entry.get("video")
        if not isinstance(video, dict) or video.get("status") != "recorded":
            continue
        model = ContainerPaths(run_dir / entry["name"]).model
        for key, name in (("href", VIDEO_FILE), ("filmstrip_href", FILMSTRIP_FILE)):
            path = model / name
            if not path.is_file():
                continue
            href = path.relative_to(run_dir).as_posix()
            video[key] = href
            if key == "filmstrip_href" or path.stat().st_size <= VIDEO_EMBED_MAX_BYTES:
                media[href] = path.read_bytes()
    return media


def write_local_report(run_dir: Path) -> dict[str, Path]:
    """Build the report of the run in ``run_dir`` and write report.json, report.md, report.html and
    learning_curve.png there, each atomically. Returns the written paths under the keys ``json``,
    ``markdown``, ``html`` and ``learning_curve`` (the last is missing when matplotlib is not installed).
    """
    run_dir = Path(run_dir)
    state = RunState.model_validate(read_json(run_dir / STATE_FILE))
    outcomes = {s.name: read_session_outcome(run_dir, s.name) for s in state.sessions}
    report = build_report(state, outcomes)
    return write_report_files(run_dir, report, session_media(run_dir, report))


def write_report_files(out_dir: Path, report: dict[str, Any], media: dict[str, bytes] | None = None
                       ) -> dict[str, Path]:
    """Write ``report`` as report.json, report.md and report.html in ``out_dir``, with its learning curve
    (across seeds for a report with ``lineages``), each atomically. Returns the written paths under the keys
    ``json``, ``markdown``, ``html`` and ``learning_curve`` (the last missing without matplotlib)."""
    written: dict[str, Path] = {}
    png: bytes | None = None
    try:
        from rlpipe.report.plots import learning_curve_png, seeds_curve_png

        png = seeds_curve_png(report) if report.get("lineages") else learning_curve_png(report)
    except ImportError as err:
        log.warning("no learning curve (matplotlib missing): %s", err)
    if png is not None:
        write_bytes_atomic(out_dir / CURVE_PNG, png)
        written["learning_curve"] = out_dir / CURVE_PNG

    write_json_atomic(out_dir / REPORT_JSON, report)
    write_text_atomic(out_dir / REPORT_MD, render_markdown(report, curve_image=CURVE_PNG if png else None))
    write_text_atomic(out_dir / REPORT_HTML, render_html(report, png, media))
    written.update(json=out_dir / REPORT_JSON, markdown=out_dir / REPORT_MD, html=out_dir / REPORT_HTML)
    return written
