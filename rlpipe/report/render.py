"""Render a report (from :func:`rlpipe.report.build.build_report`) as Markdown and as self-contained HTML.

Both say the same things in the same order: status and totals, failures in plain words, the session table
(AWS columns only when the run has AWS data), the learning curve, and for every warm-started session what
was carried over and what was reset, so nothing is dropped without the reader seeing it.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Callable, Mapping
from typing import Any

from rlpipe.contract import CURVE_FILE

# What each handoff part means when carried and when reset.
PART_MEANING: dict[str, tuple[str, str]] = {
    "policy": ("network weights of the previous session's policy",
               "network weights start from random initialisation"),
    "optimizer": ("optimizer state (Adam moment estimates and step count)",
                  "fresh optimizer state: moment estimates start at zero"),
    "vecnormalize": ("observation/reward normalisation statistics, which keep updating",
                     "normalisation statistics start again from zero, so early inputs are scaled differently"),
    "replay_buffer": ("replay buffer transitions collected by the previous session",
                      "replay buffer starts empty"),
    "num_timesteps": ("the step counter continues",
                      "the step counter restarts at 0 for this session's own budget "
                      "(plots use the global timestep axis)"),
}

# A video up to this size is embedded in the HTML report (base64 adds a third); a larger one is linked.
VIDEO_EMBED_MAX_BYTES = 2 * 1024 * 1024

STATUS_WORDS = {"succeeded": "SUCCEEDED", "failed": "FAILED", "running": "RUNNING", "interrupted": "INTERRUPTED"}
STATUS_COLOURS = {"succeeded": "#1a7f37", "completed": "#1a7f37", "failed": "#cf222e", "interrupted": "#bf8700",
                  "running": "#0969da", "pending": "#6e7781", "skipped": "#6e7781"}


# ---- value formatting (shared by both renderers) -------------------------------------------------------------

def _dash(fn: Callable[[Any], str]) -> Callable[[Any], str]:
    return lambda v: "—" if v is None else fn(v)


fmt_int = _dash(lambda v: f"{int(v):,}")
fmt_seconds = _dash(lambda v: f"{float(v):,.1f}")
fmt_reward = _dash(lambda v: f"{float(v):,.2f}")
fmt_usd = _dash(lambda v: f"${float(v):,.4f}")
fmt_percent = _dash(lambda v: f"{100 * float(v):.0f}%")
fmt_bool = _dash(lambda v: "yes" if v else "no")
fmt_text = _dash(str)
fmt_list = _dash(lambda v: ", ".join(v) if v else "—")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    s = float(seconds)
    if s < 120:
        return f"{s:.1f} s"
    minutes, sec = divmod(int(round(s)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {sec:02d} s"


def _timesteps(s: dict[str, Any]) -> str:
    return f"{fmt_int(s.get('timesteps'))} / {fmt_int(s.get('timesteps_budget'))}"


# (header, formatter over the session entry); AWS columns are shown only when some session has the field.
_BASE_COLUMNS: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
    ("Session", lambda s: fmt_text(s.get("name"))),
    ("Env", lambda s: fmt_text(s.get("env"))),
    ("Algo", lambda s: fmt_text(s.get("algorithm"))),
    ("Status", lambda s: fmt_text(s.get("status"))),
    ("Timesteps", _timesteps),
    ("Wall s", lambda s: fmt_seconds(s.get("wall_seconds"))),
    ("Transition s", lambda s: fmt_seconds(s.get("transition_seconds"))),
    ("Final reward", lambda s: fmt_reward(s.get("final_eval_reward"))),
    ("Best reward", lambda s: fmt_reward(s.get("best_eval_reward"))),
    ("Handoff from", lambda s: fmt_text(s.get("handoff_from"))),
    ("Carried", lambda s: fmt_list(s.get("carried")) if s.get("warm_started") else "—"),
    ("Reset", lambda s: fmt_list(s.get("reset")) if s.get("warm_started") else "—"),
]
_AWS_COLUMNS: list[tuple[str, str, Callable[[Any], str]]] = [
    ("Job", "job_name", fmt_text),
    ("Training s", "training_seconds", fmt_seconds),
    ("Billable s", "billable_seconds", fmt_seconds),
    ("Spot savings", "spot_savings", fmt_percent),
    ("Warm pool", "warm_pool_status", fmt_text),
    ("Reused pool", "reused_previous_pool", fmt_bool),
    ("Pool idle s", "warm_pool_idle_seconds", fmt_seconds),
    ("Cost", "cost_usd", fmt_usd),
]


def fmt_gates(s: dict[str, Any]) -> str:
    """What a session's gates did: where ``stop_when`` ended it, and the ``require`` verdict."""
    parts = []
    if s.get("stopped_early"):
        parts.append(f"stopped early at {fmt_int(s.get('stop_step'))}")
    gate = s.get("gate")
    if gate:
        value = "no value" if gate.get("value") is None else fmt_reward(gate["value"])
        parts.append(f"require {gate['metric']} {value} >= {gate['at_least']:g}: "
                     f"{'passed' if gate['passed'] else 'FAILED'}")
    return "; ".join(parts) or "—"


def session_columns(report: dict[str, Any]) -> list[tuple[str, Callable[[dict[str, Any]], str]]]:
    """The session table's columns for ``report``: the base ones, gates when some session has one, and each
    AWS column some session has."""
    sessions = report.get("sessions") or []
    columns = list(_BASE_COLUMNS)
    if any(s.get("stopped_early") or s.get("gate") for s in sessions):
        columns.append(("Gates", fmt_gates))
    for header, key, fmt in _AWS_COLUMNS:
        if any(s.get(key) is not None for s in sessions):
            columns.append((header, lambda s, key=key, fmt=fmt: fmt(s.get(key))))
    return columns


def summary_lines(report: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) lines for the report header."""
    lines = [
        ("Pipeline", fmt_text(report.get("pipeline"))),
        ("Run id", fmt_text(report.get("run_id"))),
        ("Sessions", f"{report.get('sessions_completed', 0)} of {report.get('sessions_total', 0)} completed"),
        ("Timesteps", f"{fmt_int(report.get('total_timesteps'))} of "
                      f"{fmt_int(report.get('total_timesteps_budget'))}"),
        ("Wall time", f"{_duration(report.get('total_wall_seconds'))} (training "
                      f"{_duration(report.get('total_session_wall_seconds'))}, transitions between sessions "
                      f"{_duration(report.get('total_transition_seconds'))})"),
    ]
    if report.get("total_cost_usd") is not None:
        lines.append(("Cost (AWS)", fmt_usd(report["total_cost_usd"])))
    if report.get("total_billable_seconds") is not None:
        lines.append(("Billable time (AWS)", _duration(report["total_billable_seconds"])))
    if report.get("total_warm_pool_idle_seconds") is not None:
        lines.append(("Warm-pool idle time (AWS)", _duration(report["total_warm_pool_idle_seconds"])))
    lines += [("Started", fmt_text(report.get("created_at"))),
              ("Ended", fmt_text(report.get("ended_at"))),
              ("Report generated", fmt_text(report.get("generated_at")))]
    return lines


def failure_sentences(report: dict[str, Any]) -> list[tuple[str, str | None]]:
    """(sentence, error text or None) for the run error and each failed or interrupted session."""
    out: list[tuple[str, str | None]] = []
    for f in report.get("failures") or []:
        entry = next((s for s in report.get("sessions") or [] if s.get("name") == f.get("session")), {})
        attempts = entry.get("attempts")
        tries = f" after {attempts} attempt{'s' if attempts != 1 else ''}" if attempts else ""
        done = f", at {fmt_int(entry.get('timesteps'))} of {fmt_int(entry.get('timesteps_budget'))} timesteps"
        seed = f" (seed {f['seed']})" if "seed" in f else ""
        what = "failed its require gate" if f.get("status") == "gate_failed" else f.get("status")
        out.append((f"Session '{f.get('session')}'{seed} {what}{tries}{done}.", f.get("error")))
    sessions_errors = {f.get("error") for f in report.get("failures") or []}
    if report.get("error") and report["error"] not in sessions_errors:
        out.append(("The run stopped with an error.", report["error"]))
    return out


def warm_start_items(session: dict[str, Any]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(part, meaning) lists of what ``session`` carried and what it reset."""
    carried = [(p, PART_MEANING.get(p, ("", ""))[0]) for p in session.get("carried") or []]
    reset = [(p, PART_MEANING.get(p, ("", ""))[1]) for p in session.get("reset") or []]
    return carried, reset


def fresh_start_reason(session: dict[str, Any]) -> str:
    """Why a session without a handoff starts from scratch."""
    if session.get("index") == 0:
        return "first session"
    return "use_previous_checkpoint is false"


def _size(n: Any) -> str:
    if n is None:
        return "—"
    return f"{n / 1024:,.0f} KB" if n < 1024 * 1024 else f"{n / 1024 / 1024:,.1f} MB"


def video_sessions(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Sessions that have a video record (recorded, missing or disabled), in order."""
    return [s for s in report.get("sessions") or [] if isinstance(s.get("video"), dict)]


def video_sentence(video: dict[str, Any]) -> str:
    """One line on a session's video: what it shows and what it cost, or why there is none."""
    status = video.get("status")
    if status == "recorded":
        rewards = video.get("episode_rewards") or []
        shown = f"{video.get('episodes')} episode{'s' if video.get('episodes') != 1 else ''}"
        reward = f"; episode reward {', '.join(fmt_reward(r) for r in rewards)}" if rewards else ""
        return (f"{fmt_seconds(video.get('seconds'))} s of the final policy ({shown}{reward}), "
                f"{video.get('width')}×{video.get('height')} at {fmt_seconds(video.get('fps'))} fps, "
                f"{_size(video.get('size_bytes'))}; recorded in {_duration(video.get('render_seconds'))} "
                f"({fmt_text(video.get('gl_backend'))}).")
    if status == "disabled":
        return "No video: eval.video.enabled is false."
    return f"No video: {video.get('reason') or 'no reason was recorded'}."


# ---- Markdown ------------------------------------------------------------------------------------------------

def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _md_code(text: str) -> str:
    """``text`` as an inline code span, with a fence longer than any backtick run inside it."""
    run, count = 0, 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        count = max(count, run)
    fence = "`" * (count + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _md_block(text: str) -> str:
    fence = "```"
    while fence in text:
        fence += "`"
    return f"{fence}text\n{text.rstrip()}\n{fence}"


def render_markdown(report: dict[str, Any], curve_image: str | None = CURVE_FILE) -> str:
    """A Markdown report. ``curve_image`` is the learning-curve file beside it (None leaves the image out)."""
    status = report.get("status", "running")
    out = [f"# Run report: {report.get('pipeline')}", "",
           f"**Status: {STATUS_WORDS.get(status, str(status).upper())}**", ""]
    out += [f"- {label}: {_md_cell(value)}" for label, value in summary_lines(report)]
    out.append("")

    failures = failure_sentences(report)
    if failures:
        out += ["## Failures", ""]
        for sentence, error in failures:
            out.append(f"- {sentence}" + ("" if error else " No error message was recorded."))
            if error:
                out += ["", _indent(_md_block(error), "  "), ""]
        if out[-1]:
            out.append("")

    if report.get("lineages"):
        out += ["## Lineages", "", "| Seed | Status | Ended by |", "|---|---|---|"]
        out += [f"| {seed} | {status} | {_md_cell(error)} |" for seed, status, error in lineage_rows(report)]
        out += ["", "## Across seeds", "", "| Session | n | Final eval reward | Best eval reward |", "|---|---|---|---|"]
        out += [f"| {_md_cell(n)} | {k} | {f} | {b} |" for n, k, f, b in aggregate_rows(report)]
        out += ["", f"Mean over seeds; {report['aggregate'].get('interval', '')}. Sessions below: the lineage of "
                f"seed {report['seeds'][0]}.", ""]

    sessions = report.get("sessions") or []
    columns = session_columns(report)
    out += ["## Sessions", "",
            "| " + " | ".join(h for h, _ in columns) + " |",
            "|" + "|".join("---" for _ in columns) + "|"]
    for s in sessions:
        out.append("| " + " | ".join(_md_cell(fn(s)) for _, fn in columns) + " |")
    out += ["", "Transition s: from the previous session's end to this session's first training step.", ""]

    if curve_image:
        out += ["## Learning curve", "", f"![Evaluation reward on the global timestep axis]({curve_image})", ""]

    with_video = video_sessions(report)
    if with_video:
        out += ["## Policy videos", ""]
        for s in with_video:
            video = s["video"]
            out += [f"### {s.get('name')}", "", _md_cell(video_sentence(video)), ""]
            if video.get("filmstrip_href"):
                out += [f"![Frames of the final policy of {_md_cell(str(s.get('name')))}]"
                        f"(<{video['filmstrip_href']}>)", ""]
            if video.get("href"):
                out += [f"[Video]({'<' + video['href'] + '>'})", ""]

    out += ["## Warm starts: what was carried and what was reset", ""]
    for s in sessions:
        if not s.get("warm_started"):
            out += [f"### {s.get('name')}", "", f"Starts from scratch ({fresh_start_reason(s)}).", ""]
            if s.get("notes"):
                out += [f"- Note: {n}" for n in s["notes"]] + [""]
            continue
        out += [f"### {s.get('name')} (from {s.get('handoff_from')})", ""]
        if s.get("handoff_source") == "plan":
            out += ["_As planned; the session has not reported its handoff yet._", ""]
        carried, reset = warm_start_items(s)
        out.append("Carried:" if carried else "Carried: nothing.")
        out += [f"- **{p}**" + (f": {m}" if m else "") for p, m in carried]
        out += ["", "Reset:" if reset else "Reset: nothing."]
        out += [f"- **{p}**" + (f": {m}" if m else "") for p, m in reset]
        if s.get("notes"):
            out += ["", "Notes:"] + [f"- {n}" for n in s["notes"]]
        out.append("")

    bundles = [(s["name"], s.get("bundle"), s.get("job_name")) for s in sessions
               if s.get("bundle") or s.get("job_name")]
    if bundles:
        out += ["## Artifacts", ""]
        for name, bundle, job in bundles:
            parts = ([f"bundle {_md_code(bundle)}"] if bundle else []) + \
                    ([f"training job {_md_code(job)}"] if job else [])
            out.append(f"- {name}: " + ", ".join(parts))
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _indent(text: str, prefix: str) -> str:
    return "\n".join(prefix + line if line else line for line in text.splitlines())


# ---- HTML ----------------------------------------------------------------------------------------------------

_CSS = """
body{font-family:-apple-system,BlinkMacSystemFont,"Segoe UI",Helvetica,Arial,sans-serif;margin:2rem auto;
max-width:1200px;padding:0 1rem;color:#1f2328;line-height:1.45}
h1{margin-bottom:.3rem}h2{border-bottom:1px solid #d0d7de;padding-bottom:.2rem;margin-top:2rem}
.badge{display:inline-block;padding:.15rem .6rem;border-radius:1rem;color:#fff;font-weight:600}
table{border-collapse:collapse;font-size:.9rem;margin:.5rem 0}
th,td{border:1px solid #d0d7de;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums}
dl.summary{display:grid;grid-template-columns:max-content auto;gap:.15rem 1rem}dl.summary dt{font-weight:600}
dl.summary dd{margin:0}pre{background:#fff1f0;border:1px solid #ffc1bd;padding:.6rem;overflow-x:auto;
white-space:pre-wrap}.failure{color:#cf222e;font-weight:600}img.curve{max-width:100%;height:auto}
.muted{color:#6e7781}code{background:#f6f8fa;padding:0 .2rem;border-radius:3px}
video.policy{max-width:480px;width:100%;background:#000}img.filmstrip{max-width:100%;height:auto}
"""
_NUMERIC_HEADERS = {"Timesteps", "Wall s", "Transition s", "Final reward", "Best reward", "Training s",
                    "Billable s", "Spot savings", "Pool idle s", "Cost"}


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _badge(status: str) -> str:
    colour = STATUS_COLOURS.get(status, "#6e7781")
    return f'<span class="badge" style="background:{colour}">{_e(status)}</span>'


def _data_uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _html_video(name: str, video: dict[str, Any], media: Mapping[str, bytes]) -> list[str]:
    """A session's video (embedded when small, else linked) and its filmstrip, or why there is none."""
    h = [f"<h3>{_e(name)}</h3>", f"<p>{_e(video_sentence(video))}</p>"]
    href, strip = video.get("href"), video.get("filmstrip_href")
    if href:
        data = media.get(href)
        src = _data_uri("video/mp4", data) if data is not None and len(data) <= VIDEO_EMBED_MAX_BYTES else href
        h.append(f'<video class="policy" controls loop muted playsinline preload="metadata" src="{_e(src)}">'
                 f'<a href="{_e(href)}">video.mp4</a></video>')
    if strip:
        data = media.get(strip)
        src = _data_uri("image/png", data) if data is not None else strip
        h.append(f'<p><img class="filmstrip" alt="Frames of the final policy of {_e(name)}" src="{_e(src)}"></p>')
    return h


def _stat(summary: dict[str, Any] | None) -> str:
    if not summary:
        return "-"
    lo, hi = summary["ci95"]
    return f"{summary['mean']:.1f} (IQM {summary['iqm']:.1f}, 95% CI {lo:.1f} to {hi:.1f})"


def aggregate_rows(report: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Per session across seeds: name, lineages that completed it, final and best reward summaries."""
    return [(str(a["name"]), str(a["n"]), _stat(a.get("final_eval_reward")), _stat(a.get("best_eval_reward")))
            for a in (report.get("aggregate") or {}).get("sessions", [])]


def lineage_rows(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Per lineage: seed, status and what ended it."""
    return [(str(lin["seed"]), str(lin["status"]), str(lin.get("error") or "-")) for lin in report.get("lineages", [])]


def _aggregate_html(report: dict[str, Any]) -> list[str]:
    if not report.get("lineages"):
        return []
    h = ["<h2>Lineages</h2>", "<table>", "<thead><tr><th>Seed</th><th>Status</th><th>Ended by</th></tr></thead>",
         "<tbody>"]
    h += [f"<tr><td>{_e(seed)}</td><td>{_badge(status)}</td><td>{_e(error)}</td></tr>"
          for seed, status, error in lineage_rows(report)]
    h += ["</tbody>", "</table>", "<h2>Across seeds</h2>", "<table>",
          "<thead><tr><th>Session</th><th>n</th><th>Final eval reward</th><th>Best eval reward</th></tr></thead>",
          "<tbody>"]
    h += [f'<tr><td>{_e(n)}</td><td class="num">{_e(k)}</td><td>{_e(f)}</td><td>{_e(b)}</td></tr>'
          for n, k, f, b in aggregate_rows(report)]
    h += ["</tbody>", "</table>",
          f'<p class="muted">Mean over seeds; {_e(report["aggregate"].get("interval", ""))}.</p>']
    return h


def render_html(report: dict[str, Any], curve_png: bytes | None, media: Mapping[str, bytes] | None = None) -> str:
    """A self-contained HTML report: inline CSS, the learning curve embedded as a data URI, all text escaped.

    ``media`` maps a session video's ``href``/``filmstrip_href`` (relative to the report) to the file's bytes:
    those are embedded (a video only up to :data:`VIDEO_EMBED_MAX_BYTES`), the others linked.
    """
    status = str(report.get("status", "running"))
    title = f"Run report: {report.get('pipeline')}"
    h: list[str] = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
                    '<meta name="viewport" content="width=device-width, initial-scale=1">',
                    f"<title>{_e(title)} ({_e(report.get('run_id'))})</title>", f"<style>{_CSS}</style>",
                    "</head>", "<body>", f"<h1>{_e(title)}</h1>", f"<p>{_badge(status)}</p>",
                    '<dl class="summary">']
    for label, value in summary_lines(report):
        h.append(f"<dt>{_e(label)}</dt><dd>{_e(value)}</dd>")
    h.append("</dl>")

    failures = failure_sentences(report)
    if failures:
        h += ["<h2>Failures</h2>", "<ul>"]
        for sentence, error in failures:
            detail = f"<pre>{_e(error)}</pre>" if error else " No error message was recorded."
            h.append(f'<li><span class="failure">{_e(sentence)}</span>{detail}</li>')
        h.append("</ul>")

    h += _aggregate_html(report)
    sessions = report.get("sessions") or []
    columns = session_columns(report)
    if report.get("lineages"):
        h.append(f'<p class="muted">Sessions of the lineage of seed {_e(report["seeds"][0])}.</p>')
    h += ["<h2>Sessions</h2>", "<table>", "<thead><tr>"]
    h += [f"<th>{_e(header)}</th>" for header, _ in columns]
    h += ["</tr></thead>", "<tbody>"]
    for s in sessions:
        cells = []
        for header, fn in columns:
            if header == "Status":
                cells.append(f"<td>{_badge(str(s.get('status')))}</td>")
            else:
                cls = ' class="num"' if header in _NUMERIC_HEADERS else ""
                cells.append(f"<td{cls}>{_e(fn(s))}</td>")
        h.append("<tr>" + "".join(cells) + "</tr>")
    h += ["</tbody>", "</table>",
          '<p class="muted">Transition s: from the previous session\'s end to this session\'s first '
          "training step.</p>"]

    h.append("<h2>Learning curve</h2>")
    if curve_png:
        data = base64.b64encode(curve_png).decode("ascii")
        h.append(f'<img class="curve" alt="Evaluation reward on the global timestep axis" '
                 f'src="data:image/png;base64,{data}">')
    else:
        h.append('<p class="muted">No plot in this report.</p>')

    with_video = video_sessions(report)
    if with_video:
        h.append("<h2>Policy videos</h2>")
        for s in with_video:
            h += _html_video(str(s.get("name")), s["video"], media or {})

    h.append("<h2>Warm starts: what was carried and what was reset</h2>")
    for s in sessions:
        name = _e(s.get("name"))
        if not s.get("warm_started"):
            h += [f"<h3>{name}</h3>", f"<p>Starts from scratch ({_e(fresh_start_reason(s))}).</p>"]
            if s.get("notes"):
                h.append("<ul>" + "".join(f"<li>Note: {_e(n)}</li>" for n in s["notes"]) + "</ul>")
            continue
        h.append(f"<h3>{name} (from {_e(s.get('handoff_from'))})</h3>")
        if s.get("handoff_source") == "plan":
            h.append('<p class="muted">As planned; the session has not reported its handoff yet.</p>')
        carried, reset = warm_start_items(s)
        for label, items in (("Carried", carried), ("Reset", reset)):
            if not items:
                h.append(f"<p>{label}: nothing.</p>")
                continue
            h.append(f"<p>{label}:</p><ul>")
            h += [f"<li><strong>{_e(p)}</strong>" + (f": {_e(m)}" if m else "") + "</li>" for p, m in items]
            h.append("</ul>")
        if s.get("notes"):
            h.append("<p>Notes:</p><ul>" + "".join(f"<li>{_e(n)}</li>" for n in s["notes"]) + "</ul>")

    artifacts = [s for s in sessions if s.get("bundle") or s.get("job_name")]
    if artifacts:
        h += ["<h2>Artifacts</h2>", "<ul>"]
        for s in artifacts:
            parts = ([f"bundle <code>{_e(s['bundle'])}</code>"] if s.get("bundle") else []) + \
                    ([f"training job <code>{_e(s['job_name'])}</code>"] if s.get("job_name") else [])
            h.append(f"<li>{_e(s.get('name'))}: {', '.join(parts)}</li>")
        h.append("</ul>")
    h += ["</body>", "</html>"]
    return "\n".join(h) + "\n"
