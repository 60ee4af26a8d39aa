"""The report's learning-curve figure: every session on one global timestep axis, plus a wall-clock timeline.

matplotlib is imported inside the function, so the rest of the report package works where it is absent.
The figure is drawn on an Agg canvas directly (no pyplot), which leaves the process's backend alone.
"""

from __future__ import annotations

import io
from typing import Any

_BOUNDARY_COLOUR = "#57606a"
_STATUS_SHADE = {"failed": "#cf222e", "interrupted": "#bf8700", "pending": "#8c959f", "running": "#0969da"}


_MAX_LABELLED_SESSIONS = 12


def _steps_label(x: float, _pos: Any = None) -> str:
    if abs(x) >= 1e6:
        return f"{x / 1e6:g}M"
    if abs(x) >= 1e3:
        return f"{x / 1e3:g}k"
    return f"{x:g}"


def learning_curve_png(report: dict[str, Any], dpi: int = 100) -> bytes:
    """PNG of the mean evaluation reward (±std band) of all sessions on the global timestep axis.

    Dashed lines mark where each session starts; sessions that failed, were interrupted or have not run
    yet are shaded over their budget. A small second panel shows wall-clock time per session and the
    transitions between sessions. Works with no evaluations at all.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    sessions = report.get("sessions") or []
    fig = Figure(figsize=(10, 6.5), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    ax, tl = fig.subplots(2, 1, height_ratios=[4, 1])
    colours = [f"C{i % 10}" for i in range(len(sessions))]

    x_end = max((s.get("global_timestep_offset", 0) + max(s.get("timesteps_budget") or 0, s.get("timesteps") or 0)
                 for s in sessions), default=0)
    any_eval = False
    for s, colour in zip(sessions, colours):
        offset = s.get("global_timestep_offset") or 0
        status = s.get("status")
        if status in _STATUS_SHADE and status != "running":
            start = offset + (s.get("timesteps") or 0)
            ax.axvspan(start, offset + (s.get("timesteps_budget") or 0), color=_STATUS_SHADE[status], alpha=0.07,
                       lw=0)
        evals = s.get("evaluations") or []
        if not evals:
            continue
        any_eval = True
        xs = [e["global_timesteps"] for e in evals]
        ys = [e["mean_reward"] for e in evals]
        sd = [e.get("std_reward") or 0.0 for e in evals]
        ax.fill_between(xs, [y - d for y, d in zip(ys, sd)], [y + d for y, d in zip(ys, sd)],
                        color=colour, alpha=0.2, lw=0)
        ax.plot(xs, ys, color=colour, marker="o", ms=3, lw=1.6, label=f"{s.get('name')} ({status})")

    # Past a dozen sessions, names and a legend would cover the curves: boundaries only.
    labelled = len(sessions) <= _MAX_LABELLED_SESSIONS
    for i, (s, colour) in enumerate(zip(sessions, colours)):
        offset = s.get("global_timestep_offset") or 0
        if i:
            ax.axvline(offset, color=_BOUNDARY_COLOUR, ls="--", lw=1)
        if not labelled:
            continue
        label = str(s.get("name")) + ("" if s.get("status") == "completed" else f" · {s.get('status')}")
        ax.annotate(label, xy=(offset, 1), xycoords=("data", "axes fraction"),
                    xytext=(4, -4), textcoords="offset points", ha="left", va="top", fontsize=9,
                    color=colour, fontweight="bold")

    if not any_eval:
        ax.text(0.5, 0.5, "No evaluations yet", transform=ax.transAxes, ha="center", va="center",
                fontsize=13, color=_BOUNDARY_COLOUR)
        ax.set_ylim(0, 1)
        ax.set_yticks([])
    else:
        if labelled:
            ax.legend(loc="lower right", fontsize=8, framealpha=0.85)
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo, hi + 0.1 * (hi - lo))  # room for the session labels at the top
    if x_end > 0:
        ax.set_xlim(0, x_end)
    ax.xaxis.set_major_formatter(FuncFormatter(_steps_label))
    ax.set_xlabel("global timesteps")
    ax.set_ylabel("mean eval reward (± std)")
    ax.grid(alpha=0.3)
    ax.set_title(f"{report.get('pipeline')}  ·  run {report.get('run_id')}  ·  {report.get('status')}", fontsize=11)

    _timeline(tl, sessions, colours)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _timeline(ax: Any, sessions: list[dict[str, Any]], colours: list[str]) -> None:
    """Sessions laid end to end in wall-clock seconds, each preceded by its transition (grey, hatched)."""
    t = 0.0
    segments: list[tuple[float, float, str, str | None]] = []
    for s, colour in zip(sessions, colours):
        transition = s.get("transition_seconds")
        if transition and transition > 0:
            segments.append((t, transition, "transition", None))
            t += transition
        wall = s.get("wall_seconds")
        if wall and wall > 0:
            segments.append((t, wall, colour, str(s.get("name"))))
            t += wall
    ax.set_yticks([])
    ax.set_xlabel("wall-clock seconds (grey hatched: transition between sessions)")
    if not segments:
        ax.text(0.5, 0.5, "No timing yet", transform=ax.transAxes, ha="center", va="center",
                color=_BOUNDARY_COLOUR)
        return
    for start, width, colour, name in segments:
        if name is None:
            ax.barh(0, width, left=start, color="#d0d7de", hatch="//", edgecolor="#8c959f", lw=0.5)
            continue
        ax.barh(0, width, left=start, color=colour, alpha=0.8)
        if width > 0.08 * t:
            ax.text(start + width / 2, 0, name, ha="center", va="center", fontsize=8, color="white",
                    fontweight="bold")
    ax.set_xlim(0, t)


def seeds_curve_figure(report: dict[str, Any], dpi: int = 100) -> Any:
    """The figure of :func:`seeds_curve_png` (a matplotlib ``Figure`` on an Agg canvas): per session, the mean
    evaluation reward over seeds and its 95 % bootstrap band, on the global timestep axis, at the steps every
    lineage evaluated: where a seed's session stopped early (``stop_when``), the band ends at that stop."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    from rlpipe.report.aggregate import curve_band

    lineages = report.get("lineages") or []
    names = [s["name"] for s in (lineages[0]["sessions"] if lineages else [])]
    fig = Figure(figsize=(10, 5), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    drawn = False
    for i, name in enumerate(names):
        band = curve_band(lineages, name)
        if not band:
            continue
        drawn = True
        xs = [b["global_timesteps"] for b in band]
        stopped = sum(1 for lin in lineages for s in lin["sessions"] if s["name"] == name and s.get("stopped_early"))
        label = name + (f" ({stopped}/{len(lineages)} seeds stopped early; band to the first stop)" if stopped
                        else "")
        ax.fill_between(xs, [b["lo"] for b in band], [b["hi"] for b in band], color=f"C{i % 10}", alpha=0.2, lw=0)
        ax.plot(xs, [b["mean"] for b in band], color=f"C{i % 10}", marker="o", ms=3, lw=1.6, label=label)
        if i:
            ax.axvline(lineages[0]["sessions"][i].get("global_timestep_offset") or 0, color=_BOUNDARY_COLOUR,
                       ls="--", lw=1)
    if drawn:
        ax.legend(loc="lower right", fontsize=8, framealpha=0.85)
    else:
        ax.text(0.5, 0.5, "No evaluations yet", transform=ax.transAxes, ha="center", va="center",
                fontsize=13, color=_BOUNDARY_COLOUR)
    ax.xaxis.set_major_formatter(FuncFormatter(_steps_label))
    ax.set_xlabel("global timesteps")
    ax.set_ylabel(f"mean eval reward over {len(lineages)} seeds (95 % band)")
    ax.grid(alpha=0.3)
    ax.set_title(f"{report.get('pipeline')}  ·  run {report.get('run_id')}  ·  {report.get('status')}", fontsize=11)
    return fig


def seeds_curve_png(report: dict[str, Any], dpi: int = 100) -> bytes:
    """PNG across lineages: per session, the mean evaluation reward over seeds and its 95 % bootstrap band,
    on the global timestep axis (at the steps every lineage evaluated)."""
    buf = io.BytesIO()
    seeds_curve_figure(report, dpi).savefig(buf, format="png")
    return buf.getvalue()
