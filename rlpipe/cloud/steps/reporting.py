"""The run's report in S3 and the alert that sums it up (subject, body, console links)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from rlpipe.cloud.naming import execution_console_url
from rlpipe.cloud.steps.context import Context, sns_subject
from rlpipe.cloud.steps.lineages import lineages_of, read_lineage_record
from rlpipe.cloud.store import RunKeys, RunStore
from rlpipe.contract import FILMSTRIP_FILE, REPORT_FILES, VIDEO_FILE
from rlpipe.state import RunState

log = logging.getLogger(__name__)

_MESSAGE_ROWS = 40  # sessions listed in the alert e-mail; the report has them all


def _lineage_report(store: RunStore, state: RunState) -> dict[str, Any]:
    from rlpipe.report import build_report

    outcomes = {s.name: (store.read_outcome(s.name) if s.job_name else None) for s in state.sessions}
    return build_report(state, outcomes)


def write_report(ctx: Context, store: RunStore, state: RunState) -> dict[str, Any]:
    """Build a single-seed run's (or one lineage's) report with the same code as the local runner and write
    report.json/.md/.html (+ PNG)."""
    report = _lineage_report(store, state)
    media = publish_videos(ctx, store, report)
    return _put_report(store, report, media, multi_seed=False)


def write_run_report(ctx: Context, run_id: str) -> dict[str, Any]:
    """Write the run's report: a single-seed run's own, or, with several seeds, the report across lineages
    (the same :func:`~rlpipe.report.aggregate.multi_seed_report` as locally)."""
    from rlpipe.report.aggregate import multi_seed_report

    store = ctx.run_store(run_id)
    record = read_lineage_record(store)
    if record is None:
        return write_report(ctx, store, store.load_state())
    # Videos stay with each lineage's own report (EndLineage writes it beside the lineage's run).
    reports = [(int(lin.seed or 0), _lineage_report(lin.store, lin.store.load_state()))
               for lin in lineages_of(ctx, run_id) if lin.store.exists_run()]
    report = multi_seed_report(str(record["pipeline"]), run_id, reports, int(record.get("parallel", 1)))
    return _put_report(store, report, {}, multi_seed=True)


def _put_report(store: RunStore, report: dict[str, Any], media: dict[str, bytes], multi_seed: bool
                ) -> dict[str, Any]:
    from rlpipe.report import render_html, render_markdown

    png: bytes | None = None
    try:
        from rlpipe.report.plots import learning_curve_png, seeds_curve_png

        png = seeds_curve_png(report) if multi_seed else learning_curve_png(report)
    except Exception as err:  # the report must still come out without its plot
        log.warning("learning curve not drawn: %s", err)
    store.put_report("json", json.dumps(report, indent=1).encode())
    if png:
        store.put_report("png", png)
    store.put_report("md", render_markdown(report, curve_image=REPORT_FILES["png"] if png else None).encode())
    store.put_report("html", render_html(report, png, media).encode())
    return report


_VIDEO_FILES = (("href", VIDEO_FILE, "mp4", "video/mp4"), ("filmstrip_href", FILMSTRIP_FILE, "png", "image/png"))


def publish_videos(ctx: Context, store: RunStore, report: dict[str, Any]) -> dict[str, bytes]:
    """Put each recorded policy video and filmstrip beside the report (``videos/<session>.mp4|png``, copied
    from the session's checkpoint prefix, which SageMaker syncs from the trainer; the bundle's
    model.tar.gz holds them too) and point the report's entries at them: ``href``/``filmstrip_href``
    relative to the report, ``url``/``filmstrip_url`` in the S3 console. Returns the bytes of those small
    enough to embed; a file that cannot be copied is left out of the report, never fails it."""
    from rlpipe.report.render import VIDEO_EMBED_MAX_BYTES

    media: dict[str, bytes] = {}
    for entry in report.get("sessions") or []:
        video = entry.get("video")
        if not isinstance(video, dict) or video.get("status") != "recorded":
            continue
        for key, name, suffix, content_type in _VIDEO_FILES:
            href = f"videos/{entry['name']}.{suffix}"
            try:
                data = store.get_bytes(store.keys.checkpoints(entry["name"]) + name)
                store.put_bytes(store.keys.root + href, data, content_type)
            except Exception as err:  # botocore ClientError: the report comes out without this file
                log.warning("session %s: %s not published: %s", entry["name"], name, err)
                continue
            video[key] = href
            video[key.replace("href", "url")] = object_console_url(ctx, store.keys.root + href)
            if suffix == "png" or len(data) <= VIDEO_EMBED_MAX_BYTES:
                media[href] = data
    return media


def object_console_url(ctx: Context, key: str) -> str:
    """The S3 console page of ``key`` in the stack's bucket."""
    region = ctx.region or "us-east-1"
    return f"https://{region}.console.aws.amazon.com/s3/object/{ctx.settings.bucket}?region={region}&prefix={key}"


def console_links(ctx: Context, run_id: str, execution_arn: str | None) -> dict[str, str]:
    """Links for the message: the report in the S3 console, the execution in the Step Functions console and the
    stack's dashboard."""
    region = ctx.region or "us-east-1"
    key = RunKeys(run_id).report("html")
    links = {"report": ctx.store.uri(key),
             "report_console": f"https://{region}.console.aws.amazon.com/s3/object/{ctx.settings.bucket}"
                               f"?region={region}&prefix={key}"}
    if execution_arn:
        links["execution"] = execution_console_url(region, execution_arn)
    if ctx.dashboard_url:
        links["dashboard"] = ctx.dashboard_url
    return links


def summary_message(report: Mapping[str, Any], links: Mapping[str, str]) -> tuple[str, str]:
    """(subject, body) of the e-mail: status, totals, a table of sessions (capped) and links."""
    from rlpipe.report.render import (aggregate_rows, failure_sentences, lineage_rows, session_columns,
                                      summary_lines)

    status = str(report.get("status", "?")).upper()
    done, total = report.get("sessions_completed", 0), report.get("sessions_total", 0)
    cost = report.get("total_cost_usd")
    cost_text = f", ${cost:.2f}" if isinstance(cost, (int, float)) else ""
    subject = sns_subject(f"rlpipe {report.get('pipeline')}: {status} ({done}/{total} sessions{cost_text})")
    lines = [f"Run {report.get('run_id')} {status}.", ""]
    lines += [f"{label}: {value}" for label, value in summary_lines(report)]
    failures = failure_sentences(report)
    if failures:
        lines += ["", "Failures:"]
        lines += [f"  {sentence}" + (f"\n    {error}" if error else "") for sentence, error in failures]
    wanted = ("Session", "Status", "Timesteps", "Final reward", "Job", "Billable s", "Reused pool",
              "Pool idle s", "Cost")
    columns = [(h, f) for h, f in session_columns(dict(report)) if h in wanted]
    lineages = list(report.get("lineages") or [])
    if lineages:
        lines += ["", f"Lineages ({len(lineages)} seeds, {report.get('parallel', 1)} at once):"]
        lines += [f"  seed {seed}: {status}" + (f": {error}" if error and error != "-" else "")
                  for seed, status, error in lineage_rows(dict(report))]
        lines += ["", "Across seeds (mean, 95% CI):", "  Session | n | Final eval reward | Best eval reward"]
        lines += [f"  {name} | {n} | {final} | {best}" for name, n, final, best in aggregate_rows(dict(report))]
    groups = ([(f"Sessions of seed {lin['seed']}:", list(lin["sessions"])) for lin in lineages] if lineages
              else [("Sessions:", list(report.get("sessions") or []))])
    rows_left = _MESSAGE_ROWS
    for title, sessions in groups:
        lines += ["", title, "  " + " | ".join(h for h, _ in columns)]
        lines += ["  " + " | ".join(f(s) for _, f in columns) for s in sessions[:rows_left]]
        if len(sessions) > rows_left:
            lines.append(f"  ... and {len(sessions) - rows_left} more sessions in the report")
        rows_left = max(rows_left - len(sessions), 0)
    sessions = [s for _, group in groups for s in group]
    videos = [(s.get("name"), s["video"]["url"]) for s in sessions
              if isinstance(s.get("video"), dict) and s["video"].get("url")]
    if videos:
        lines += ["", "Policy videos:"] + [f"  {name}: {url}" for name, url in videos[:_MESSAGE_ROWS]]
    lines += ["", f"Report: {links.get('report_console', links.get('report'))}", f"  ({links.get('report')})"]
    if links.get("execution"):
        lines.append(f"Execution: {links['execution']}")
    if links.get("dashboard"):
        lines.append(f"Dashboard: {links['dashboard']}")
    return subject, "\n".join(lines)
