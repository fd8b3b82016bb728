"""The report's charts: matplotlib figures drawn to SVG text that the page inlines, one function per chart.

matplotlib is imported here only, when a report is drawn (never at ``import router``). Figures are
built with its object API (``Figure``), not ``pyplot``: no global figure registry and no backend
switch, so a server can draw a report on a worker thread. The SVG is trimmed for inlining: no XML
prolog, no metadata block, no namespace URLs (an HTML parser puts ``<svg>`` in the SVG namespace
by itself), and every id prefixed with the chart's name so several charts share one page.

A chart without data in the window is still drawn, as a figure saying so, and flagged empty.
"""

from __future__ import annotations

import io
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from router.report._gather import ReportData

__all__ = ["CHARTS", "Chart", "render_charts"]

CHARTS = ("requests", "cost", "saving", "latency", "category_quality", "quality_curve")
"""Every chart the page holds, in page order (``data-chart`` names)."""

TIER_ORDER = ("local", "cloud", "handoff", "cache", "none")
TIER_COLORS = {"local": "#2f9e44", "cloud": "#1c7ed6", "handoff": "#f08c00", "cache": "#868e96", "none": "#c92a2a"}
_RC = {
    "svg.fonttype": "none",  # text stays text: smaller, selectable, drawn in the page's fonts
    "svg.hashsalt": "hybrid-router",  # the same data gives the same SVG
    "text.parse_math": False,  # a '$' in a category name is a dollar, not mathtext
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
}
# rcParams are process-wide: drawing holds this lock, so two reports drawn at once do not mix settings.
_LOCK = threading.Lock()


@dataclass(frozen=True)
class Chart:
    name: str
    svg: str
    empty: bool
    """Drawn as "no data in this window"."""


def _tiers(present: set[str]) -> list[str]:
    return [t for t in TIER_ORDER if t in present] + sorted(present - set(TIER_ORDER))


def _when(period: str) -> datetime:
    return datetime.strptime(period, "%Y-%m-%dT%H") if len(period) > 10 else datetime.strptime(period, "%Y-%m-%d")


def _figure(height: float = 3.0) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(9, height), layout="constrained")


_NO_DATA = "no data"
_MAX_BARS = 72  # periods drawn as bars; more as stepped bands


def _no_data(title: str, why: str) -> Any:
    fig = _figure(1.6)
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.set_title(title, loc="left")
    ax.text(0.5, 0.5, f"no data in this window\n{why}", ha="center", va="center", color="#495057", transform=ax.transAxes)
    fig.set_label(_NO_DATA)
    return fig


def _legend(ax: Any) -> None:
    """Beside the plot, never over the data."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)


def _date_axis(ax: Any) -> None:
    import matplotlib.dates as mdates

    locator = mdates.AutoDateLocator(minticks=3, maxticks=10)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))


def _stacked(data: ReportData, column: str, title: str, ylabel: str) -> Any:
    periods = sorted({r["period"] for r in data.series})
    values: dict[str, dict[str, float]] = {}
    for r in data.series:
        values.setdefault(r["tier"] or "none", {})[r["period"]] = float(r[column] or 0)
    fig = _figure()
    ax = fig.add_subplot()
    x = [_when(p) for p in periods]
    width = (0.8 / 24) if data.by == "hour" else 0.8
    bottom = [0.0] * len(periods)
    for tier in _tiers(set(values)):
        heights = [values[tier].get(p, 0.0) for p in periods]
        if not any(heights):
            continue
        top = [b + h for b, h in zip(bottom, heights, strict=True)]
        color = TIER_COLORS.get(tier, "#7048e8")
        if len(periods) <= _MAX_BARS:
            ax.bar(x, heights, width=width, bottom=bottom, color=color, label=tier, linewidth=0, align="edge")  # a period from its start
        else:  # a long window: one stepped band per tier draws faster and smaller than hundreds of thin bars
            ax.fill_between(x, bottom, top, step="mid", color=color, label=tier, linewidth=0)
        bottom = top
    if not any(bottom):
        ax.text(0.5, 0.5, f"nothing in this window ({ylabel} 0)", ha="center", va="center", transform=ax.transAxes, color="#495057")
    ax.set_title(title, loc="left")
    ax.set_ylabel(ylabel)
    _date_axis(ax)
    if any(bottom):
        _legend(ax)
    return fig


def _requests(data: ReportData) -> Any:
    if not data.series:
        return _no_data("Requests by tier", "the log holds no request in these days")
    return _stacked(data, "requests", f"Requests by tier, per {data.by}", "requests")


def _cost(data: ReportData) -> Any:
    if not data.series:
        return _no_data("Cloud spend by tier", "the log holds no request in these days")
    return _stacked(data, "cost_usd", f"Cloud spend by tier, per {data.by}", "USD")


def _saving(data: ReportData) -> Any:
    if not data.series:
        return _no_data("Cumulative spend against all-cloud", "the log holds no request in these days")
    periods = sorted({r["period"] for r in data.series})
    spent = dict.fromkeys(periods, 0.0)
    estimate = dict.fromkeys(periods, 0.0)
    for r in data.series:
        spent[r["period"]] += float(r["cost_usd"] or 0)
        estimate[r["period"]] += float(r["cloud_cost_usd_estimate"] or 0)
    # Totals at the end of each period, from zero at the window's start: one period still draws a line.
    step = timedelta(hours=1) if data.by == "hour" else timedelta(days=1)
    x = [_when(periods[0])] + [_when(p) + step for p in periods]
    cum_spent, cum_estimate, s, e = [0.0], [0.0], 0.0, 0.0
    for p in periods:
        s, e = s + spent[p], e + estimate[p]
        cum_spent.append(s)
        cum_estimate.append(e)
    fig = _figure()
    ax = fig.add_subplot()
    marker = "o" if len(x) < 30 else None
    ax.plot(x, cum_estimate, color="#495057", linestyle="--", marker=marker, markersize=3, label="all-cloud estimate")
    ax.plot(x, cum_spent, color=TIER_COLORS["cloud"], marker=marker, markersize=3, label="spent")
    ax.fill_between(x, cum_spent, cum_estimate, color=TIER_COLORS["local"], alpha=0.25, label="saved")
    saved = f"saved ${e - s:,.4f} ({1 - s / e:.0%})" if e else "no all-cloud estimate in this window"
    ax.set_title(f"Cumulative spend against all-cloud: {saved}", loc="left")
    ax.set_ylabel("USD")
    _date_axis(ax)
    _legend(ax)
    return fig


def _latency(data: ReportData) -> Any:
    if not data.latency:
        return _no_data("Latency per tier", "no request with a recorded latency in these days")
    fig = _figure(3.4)
    ax = fig.add_subplot()
    for tier in _tiers(set(data.latency)):
        points = data.latency[tier]
        x = [_when(p.period) for p in points]
        color = TIER_COLORS.get(tier, "#7048e8")
        marker = "o" if len(points) < 30 else None
        for q, style in (("p50", "-"), ("p95", "--"), ("p99", ":")):
            ax.plot(x, [getattr(p, q) for p in points], linestyle=style, color=color, marker=marker, markersize=3, label=f"{tier} {q}")
    values = [v for points in data.latency.values() for p in points for v in (p.p50, p.p99) if v > 0]
    if values and max(values) / min(values) > 30:  # over a decade and a half: a log scale keeps p50 readable
        from matplotlib.ticker import FuncFormatter, NullFormatter

        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_ylabel("ms (log scale)")
    else:
        ax.set_ylim(bottom=0)
        ax.set_ylabel("ms")
    ax.set_title(f"Latency p50 / p95 / p99 per tier, per {data.by}", loc="left")
    periods = {p.period for points in data.latency.values() for p in points}
    if len(periods) == 1:  # one period: frame it by its neighbours, not by matplotlib's default years
        step = timedelta(hours=1) if data.by == "hour" else timedelta(days=1)
        only = _when(next(iter(periods)))
        ax.set_xlim(only - step, only + step)
    _date_axis(ax)
    _legend(ax)
    return fig


def _category_quality(data: ReportData) -> Any:
    rows = [r for r in data.categories if r.quality is not None]
    if not rows:
        return _no_data("Live quality per category", f"no audit or shadow sample of the serving model ({data.gate_key}) in these days")
    fig = _figure(max(1.8, 0.35 * len(rows) + 1.0))
    ax = fig.add_subplot()
    for i, row in enumerate(rows):
        q = row.quality
        assert q is not None
        state = q.against(data.floor)
        color = {"above": TIER_COLORS["local"], "below": TIER_COLORS["none"]}.get(state, "#f08c00")
        if q.low is not None and q.high is not None:
            ax.errorbar([q.mean], [i], xerr=[[q.mean - q.low], [q.high - q.mean]], fmt="o", color=color, capsize=3)
        else:
            ax.plot([q.mean], [i], "o", color=color)
        ax.annotate(f"n={q.n}", (q.mean, i), xytext=(6, 4), textcoords="offset points", fontsize=7, color="#495057")
    ax.axvline(data.floor, color="#212529", linestyle="--", linewidth=1)
    ax.text(data.floor, len(rows) - 0.4, f" floor {data.floor:.2f}", fontsize=8, va="bottom")
    ax.set_yticks(range(len(rows)), [r.category for r in rows])
    ax.set_ylim(-0.6, len(rows) - 0.2)
    ax.set_xlim(0, 1.02)
    ax.set_xlabel("mean similarity to the cloud's answer, 95 % interval")
    ax.set_title("Live quality per category (serving model, this window) against the floor", loc="left")
    return fig


def _quality_curve(data: ReportData) -> Any:
    curve = data.curve
    if curve.empty:
        return _no_data("Cost–quality curve", f"no audit or shadow sample of the serving model ({data.gate_key}) in these days")
    from matplotlib.ticker import PercentFormatter

    fig = _figure(3.6)
    ax = fig.add_subplot()
    xs = [p.local_share for p in curve.points]
    ys = [p.quality for p in curve.points]
    ax.plot(xs, ys, "-o", color=TIER_COLORS["cloud"], markersize=4, label="floor swept 1 → 0")
    ax.axhline(curve.target, color="#495057", linestyle="--", linewidth=1, label=f"{curve.target:.0%} of all-cloud")
    if curve.threshold is not None:
        t = curve.threshold
        ax.axvline(t.local_share, color=TIER_COLORS["local"], linestyle=":", linewidth=1.5)
        ax.annotate(f"threshold: {t.local_share:.0%} local", (t.local_share, t.quality), xytext=(6, -14), textcoords="offset points",
                    fontsize=8, color=TIER_COLORS["local"])  # fmt: skip
    if curve.operating is not None:
        o = curve.operating
        ax.plot([o.local_share], [o.quality], marker="*", markersize=14, color="#e8590c", linestyle="none",
                label=f"operating point (floor {data.floor:.2f}): {o.local_share:.0%} local, quality {o.quality:.3f}")  # fmt: skip
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlim(-0.02, max(1.0, max(xs)) + 0.02)
    ax.set_ylim(max(0.0, min(ys) - 0.05), 1.02)
    ax.set_xlabel("share of requests answered locally")
    ax.set_ylabel("mean answer quality (all-cloud = 1)")
    ax.set_title("Cost–quality curve on this traffic", loc="left")
    ax.legend(loc="lower left", fontsize=8)
    return fig


_DRAW: dict[str, Callable[[ReportData], Any]] = {
    "requests": _requests, "cost": _cost, "saving": _saving, "latency": _latency,
    "category_quality": _category_quality, "quality_curve": _quality_curve,
}  # fmt: skip

_PROLOG = re.compile(r"\A.*?(?=<svg)", re.S)
_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.S)
_STYLE = re.compile(r"<style[^>]*>.*?</style>\s*", re.S)
_NAMESPACE = re.compile(r'\s+xmlns(?::\w+)?="[^"]*"')


def _inline_svg(fig: Any, name: str) -> str:
    """``fig`` as SVG markup to inline in HTML: no prolog, metadata, namespace URLs or global style; ids scoped."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None})
    svg = _STYLE.sub("", _METADATA.sub("", _PROLOG.sub("", buffer.getvalue())))
    svg = _NAMESPACE.sub("", svg)
    svg = re.sub(r'\bid="([^"]+)"', rf'id="{name}-\1"', svg)
    svg = re.sub(r"url\(#([^)]+)\)", rf"url(#{name}-\1)", svg)
    svg = re.sub(r'href="#([^"]+)"', rf'href="#{name}-\1"', svg)
    return svg.replace("<svg ", f'<svg role="img" aria-label="{name.replace("_", " ")}" ', 1)


def render_charts(data: ReportData) -> dict[str, Chart]:
    """Every chart of :data:`CHARTS` for ``data``, drawn as inline SVG."""
    try:
        import matplotlib
    except ImportError as err:
        from hybrid_common.base_errors import MissingDependencyError

        raise MissingDependencyError("matplotlib", purpose="router report") from err
    charts = {}
    with _LOCK, matplotlib.rc_context(_RC):
        for name in CHARTS:
            fig = _DRAW[name](data)
            charts[name] = Chart(name, _inline_svg(fig, name), fig.get_label() == _NO_DATA)
    return charts
