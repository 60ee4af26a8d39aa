"""Run reports: the data (``report.json``), Markdown, self-contained HTML and the learning-curve PNG.

``build_report`` and the renderers need only the core, so the AWS report Lambda uses them as they are;
``learning_curve_png`` needs matplotlib, imported when it is called.
"""

from rlpipe.report.build import build_report
from rlpipe.report.local import write_local_report
from rlpipe.report.plots import learning_curve_png
from rlpipe.report.render import render_html, render_markdown

__all__ = ["build_report", "learning_curve_png", "render_html", "render_markdown", "write_local_report"]
