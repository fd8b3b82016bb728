"""The figures of one report window, read from the log's running totals, its quality samples and the registry.

Nothing here scans the requests: totals come from :meth:`~router.traffic_log.TrafficLog.summary`
(the very call ``router stats`` makes, so the page's figures equal its), time series and latency
percentiles from the hourly running totals and histogram, quality from the window's scored
samples (a sampled few per request), versions from the registry's history file.
"""

from __future__ import annotations


import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from typing import Any

from router.latency_histogram import percentile
from router.report._curve import CostQualityCurve, cost_quality_curve
from router.report._history import RegistryHistory, read_registry_history

__all__ = ["CategoryRow", "Interval", "LatencyPoint", "ReportData", "Totals", "gather", "window_day"]

# Student's t at 97.5 % for 1..30 degrees of freedom; beyond, the normal 1.96 is within 2 %.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip
HOURLY_UP_TO_DAYS = 3
"""Windows of up to this many days are drawn per hour, longer ones per day."""


def window_day(value: str) -> str:
    """``value`` checked as a day (``YYYY-MM-DD``), as ``--since`` / ``--until`` and ``/report?since=`` take it."""
    try:
        return date.fromisoformat(value.strip()).isoformat()
    except (AttributeError, ValueError) as err:
        raise ValueError(f"not a day (YYYY-MM-DD): {value!r}") from err


@dataclass(frozen=True)
class Totals:
    """The window's headline figures, summed exactly as ``router stats`` sums them."""

    requests: int
    cloud_spend_usd: float
    all_cloud_usd: float

    @property
    def saving(self) -> float | None:
        """Share of the all-cloud estimate not spent; None when nothing would have cost anything."""
        return 1 - self.cloud_spend_usd / self.all_cloud_usd if self.all_cloud_usd else None


@dataclass(frozen=True)
class Interval:
    """A mean with its 95 % confidence interval (Student's t; None below two samples)."""

    mean: float
    low: float | None
    high: float | None
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Interval | None:
        n = len(values)
        if not n:
            return None
        mean = sum(values) / n
        if n < 2:
            return cls(mean, None, None, n)
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
        half = (_T975[n - 2] if n - 1 <= len(_T975) else 1.96) * sd / math.sqrt(n)
        return cls(mean, max(0.0, mean - half), min(1.0, mean + half), n)

    def against(self, floor: float) -> str:
        """Where the interval lies against ``floor``: above, below, or straddling it (undecided)."""
        if self.low is None or self.high is None:
            return "too few samples"
        if self.low >= floor:
            return "above"
        if self.high < floor:
            return "below"
        return "undecided"


@dataclass(frozen=True)
class CategoryRow:
    """One category of the window: traffic, cache hits, the gate now, live quality in the window."""

    category: str
    requests: int
    share: float
    by_tier: dict[str, int]
    cache_hits: int
    gate_open: bool | None
    gate_why: str
    quality: Interval | None
    degenerate_rate: float | None
    offline_similarity: float | None


@dataclass(frozen=True)
class LatencyPoint:
    period: str
    p50: float
    p95: float
    p99: float
    n: int


@dataclass(frozen=True)
class ReportData:
    """Everything the page shows for one window; rendering reads nothing else."""

    location: str
    generated_at: str
    since: str | None
    until: str | None
    first_day: str | None
    last_day: str | None
    by: str
    """Period of the time series: "hour" or "day"."""
    summary: list[dict[str, Any]]
    totals: Totals
    series: list[dict[str, Any]]
    latency: dict[str, list[LatencyPoint]]
    latency_overall: dict[str, LatencyPoint]
    categories: list[CategoryRow]
    gate_key: str | None
    floor: float
    max_degenerate_rate: float
    min_samples: int
    curve: CostQualityCurve
    history: RegistryHistory
    notes: list[str] = field(default_factory=list)


def _tier(name: str | None) -> str:
    return name or "none"


def _latency(rows: Sequence[Mapping[str, Any]]) -> tuple[dict[str, list[LatencyPoint]], dict[str, LatencyPoint]]:
    per: dict[tuple[str, str], dict[int, int]] = defaultdict(dict)
    overall: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for r in rows:
        tier = _tier(r["tier"])
        per[(tier, r["period"])][int(r["bucket"])] = int(r["n"])
        overall[tier][int(r["bucket"])] += int(r["n"])

    def point(period: str, counts: Mapping[int, int]) -> LatencyPoint:
        p50, p95, p99 = (percentile(counts, q) or 0.0 for q in (50, 95, 99))
        return LatencyPoint(period, p50, p95, p99, sum(counts.values()))

    series: dict[str, list[LatencyPoint]] = defaultdict(list)
    for (tier, period), counts in sorted(per.items()):
        series[tier].append(point(period, counts))
    return dict(series), {tier: point("all", counts) for tier, counts in sorted(overall.items())}


def gather(log: Any, config: Any, *, since: str | None = None, until: str | None = None) -> ReportData:
    """The report's figures for the days ``since`` .. ``until`` (inclusive, ``YYYY-MM-DD``; None: open-ended),
    with the gate and registry of ``config``."""
    from hybrid_common.base_errors import RouterError
    from router.gate_state import gate_state

    since = window_day(since) if since else None
    until = window_day(until) if until else None
    if since and until and since > until:
        raise ValueError(f"the window starts ({since}) after it ends ({until})")
    notes: list[str] = []
    summary = log.summary(since=since, until=until)
    totals = Totals(
        sum(r["requests"] for r in summary), sum(r["cost_usd"] for r in summary), sum(r["cloud_cost_usd_estimate"] for r in summary)
    )
    daily = log.hourly(since=since, until=until, by="day")
    days = sorted({r["period"] for r in daily})
    first, last = since or (days[0] if days else None), until or (days[-1] if days else None)
    span = (date.fromisoformat(last) - date.fromisoformat(first)).days + 1 if first and last else 0
    by = "hour" if 0 < span <= HOURLY_UP_TO_DAYS else "day"
    series = log.hourly(since=since, until=until, by="hour") if by == "hour" else daily
    in_series = sum(r["requests"] for r in series)
    if in_series != totals.requests:
        notes.append(f"The time series count {in_series} of the window's {totals.requests} requests: the rest were deleted by "
                     "retention before the log kept hourly totals (schema 9), so only their day is known.")  # fmt: skip
    latency, latency_overall = _latency(log.latency_histogram(since=since, until=until, by=by))

    seen = sorted({r["category"] for r in summary if r["category"]})
    try:
        gate = gate_state(config, log, seen)
    except (OSError, RouterError) as err:
        gate = None
        notes.append(f"The quality gate's state could not be read: {err}")
    samples = log.quality_samples_between(since=since, until=until)
    key = gate.key if gate is not None else None
    similarity: dict[str, list[float]] = defaultdict(list)
    quality: dict[str, list[float]] = defaultdict(list)  # degenerate answers score 0
    degenerate: dict[str, list[bool]] = defaultdict(list)
    other_keys = 0
    for s in samples:
        if s["kind"] == "feedback":
            continue
        if s["served_key"] != key:
            other_keys += 1
            continue
        similarity[s["category"]].append(float(s["similarity"]))
        quality[s["category"]].append(0.0 if s["degenerate"] else float(s["similarity"]))
        degenerate[s["category"]].append(bool(s["degenerate"]))
    if other_keys:
        notes.append(f"Scored samples of this window answered by other model versions than the one serving now ({key}): "
                     f"{other_keys}; live quality and the cost–quality curve count only the serving model's.")  # fmt: skip

    by_category: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in summary:
        if r["category"]:
            by_category[r["category"]][_tier(r["tier"])] += int(r["requests"])
    gates = {g.category: g for g in (gate.categories if gate is not None else [])}
    rows = []
    for category in sorted(set(by_category) | set(gates)):
        tiers = dict(sorted(by_category.get(category, {}).items()))
        n = sum(tiers.values())
        g = gates.get(category)
        why = g.verdict.detail if g is not None else "gate state unavailable"
        if g is not None and not g.verdict.open and g.verdict.reason is not None:
            why = f"{g.verdict.reason.value}: {why}"
        flags = degenerate.get(category, [])
        rows.append(CategoryRow(
            category, n, n / totals.requests if totals.requests else 0.0, tiers, tiers.get("cache", 0),
            g.verdict.open if g is not None else None, why, Interval.of(similarity.get(category, [])),
            sum(flags) / len(flags) if flags else None, g.offline.similarity if g is not None and g.offline is not None else None,
        ))  # fmt: skip
    curve = cost_quality_curve({c: sum(t.values()) for c, t in by_category.items()}, quality, floor=config.quality.min_similarity)
    history = read_registry_history(config.local.registry_path, since=since, until=until)
    if history.serving is not None and isinstance(history.serving.get("canary"), dict):
        from router.canary import live_evidence

        history = replace(history, live=live_evidence(log, history.serving, config))
    return ReportData(
        location=log.location, generated_at=datetime.now(UTC).isoformat(timespec="seconds"), since=since, until=until,
        first_day=first, last_day=last, by=by, summary=summary, totals=totals, series=series, latency=latency,
        latency_overall=latency_overall, categories=rows, gate_key=key, floor=config.quality.min_similarity,
        max_degenerate_rate=config.quality.max_degenerate_rate, min_samples=config.quality.min_samples, curve=curve,
        history=history, notes=notes,
    )  # fmt: skip
