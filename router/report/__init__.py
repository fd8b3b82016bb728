"""``router report``: one self-contained HTML page about a window of the traffic log.

Requests, spend and saving over time by tier, per-category traffic, cache hits, gate state and
live quality, latency percentiles, the registry's promotions and canaries, and the cost–quality
curve on the user's own traffic. Figures come from the log's running totals, never a scan of its
rows; charts are matplotlib drawn to inline SVG (imported only when a report is drawn).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hybrid_common.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "build_report": "router.report._build",
    "gather": "router.report._gather",
    "window_day": "router.report._gather",
    "ReportData": "router.report._gather",
    "render_charts": "router.report._charts",
    "CHARTS": "router.report._charts",
    "render_html": "router.report._html",
    "cost_quality_curve": "router.report._curve",
    "CostQualityCurve": "router.report._curve",
    "CurvePoint": "router.report._curve",
}

__all__, __getattr__, __dir__ = lazy_exports("router.report", _EXPORTS, globals())

if TYPE_CHECKING:
    from router.report._build import build_report
    from router.report._charts import CHARTS, render_charts
    from router.report._curve import CostQualityCurve, CurvePoint, cost_quality_curve
    from router.report._gather import ReportData, gather, window_day
    from router.report._html import render_html
