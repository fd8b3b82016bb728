"""One report, start to end: the window's figures gathered, its charts drawn, the page written."""

from __future__ import annotations

from typing import Any

from router.report._charts import render_charts
from router.report._gather import gather
from router.report._html import render_html

__all__ = ["build_report"]


def build_report(log: Any, config: Any, *, since: str | None = None, until: str | None = None) -> str:
    """The self-contained HTML page for the days ``since`` .. ``until`` of ``log`` (a :class:`~router.traffic_log.TrafficLog`),
    the gate and registry as ``config`` names them; what ``router report`` writes and ``/report`` serves."""
    data = gather(log, config, since=since, until=until)
    return render_html(data, render_charts(data))
