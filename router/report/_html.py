"""The report page: one self-contained HTML document (inline CSS, inline SVG, a few lines of vanilla JS).

Nothing is fetched when it is opened: no CDN, font or image URL, and a Content-Security-Policy
that forbids any (a browser blocks and reports whatever would slip in). Tables sort on a click of
their header (numbers as numbers: each numeric cell carries its raw value in ``data-sort``).
Every text that comes from the log or the registry is escaped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from html import escape
from typing import Any

from router.report._charts import CHARTS, Chart
from router.report._gather import ReportData

__all__ = ["render_html"]

_CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"

_CSS = """
:root { --ink: #212529; --muted: #495057; --line: #dee2e6; --band: #f8f9fa; --accent: #1c7ed6; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink); margin: 0 auto;
       max-width: 1100px; padding: 1.5rem 1rem 4rem; }
h1 { font-size: 1.5rem; margin: 0 0 .25rem; }
h2 { font-size: 1.15rem; margin: 2.2rem 0 .5rem; padding-bottom: .25rem; border-bottom: 1px solid var(--line); }
p, li { max-width: 80ch; }
.meta { color: var(--muted); margin: 0 0 1rem; }
.totals { display: flex; flex-wrap: wrap; gap: .75rem; margin: 1rem 0; padding: 0; }
.totals div { background: var(--band); border: 1px solid var(--line); border-radius: 6px; padding: .6rem .9rem; min-width: 11rem; }
.totals dt { color: var(--muted); font-size: .8rem; }
.totals dd { margin: 0; font-size: 1.35rem; font-variant-numeric: tabular-nums; }
.notes { background: #fff9db; border: 1px solid #ffe066; border-radius: 6px; padding: .5rem 1rem; }
figure.chart { margin: 1rem 0; }
figure.chart svg { max-width: 100%; height: auto; }
figure.chart svg * { stroke-linejoin: round; stroke-linecap: butt; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: .75rem 0; font-variant-numeric: tabular-nums; }
th, td { padding: .3rem .6rem; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
td.num, th.num { text-align: right; }
thead th { background: var(--band); cursor: pointer; user-select: none; white-space: nowrap; }
thead th:focus { outline: 2px solid var(--accent); }
thead th[aria-sort="ascending"]::after { content: " \\25B2"; font-size: .7em; }
thead th[aria-sort="descending"]::after { content: " \\25BC"; font-size: .7em; }
td.why, td.evidence { font-size: .85em; color: var(--muted); max-width: 40ch; }
.open { color: #2b8a3e; font-weight: 600; }
.closed { color: #c92a2a; font-weight: 600; }
.empty { color: var(--muted); font-style: italic; }
"""

# Click a header to sort its table; again to reverse. Empty cells stay last. Sets body[data-ready]
# once wired, which tells a headless browser test the script ran without error.
_JS = """
(function () {
  "use strict";
  function value(cell) {
    var raw = cell.hasAttribute("data-sort") ? cell.getAttribute("data-sort") : cell.textContent.trim();
    if (raw === "") { return null; }
    var n = Number(raw);
    return isNaN(n) ? raw.toLowerCase() : n;
  }
  function compare(a, b) {
    if (typeof a === typeof b) { return a < b ? -1 : (a > b ? 1 : 0); }
    return typeof a === "number" ? -1 : 1;
  }
  function sortTable(table, column, header) {
    var ascending = header.getAttribute("aria-sort") !== "ascending";
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (r1, r2) {
      var a = value(r1.cells[column]), b = value(r2.cells[column]);
      if (a === null || b === null) { return a === b ? 0 : (a === null ? 1 : -1); }
      return ascending ? compare(a, b) : compare(b, a);
    });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) { th.removeAttribute("aria-sort"); });
    header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    rows.forEach(function (row) { body.appendChild(row); });
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, i) {
      th.tabIndex = 0;
      th.addEventListener("click", function () { sortTable(table, i, th); });
      th.addEventListener("keydown", function (event) {
        if (event.key === "Enter" || event.key === " ") { event.preventDefault(); sortTable(table, i, th); }
      });
    });
  });
  document.body.dataset.ready = "1";
}());
"""


def _num(value: float | int | None, text: str | None = None) -> str:
    """A numeric cell: ``text`` shown (default: the value), the raw value sorted on; empty when None."""
    if value is None:
        return '<td class="num" data-sort="">–</td>'
    return f'<td class="num" data-sort="{value!r}">{escape(text if text is not None else str(value))}</td>'


def _txt(value: Any, cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    return f"<td{attr}>{escape(str(value))}</td>"


def _table(name: str, headers: Sequence[tuple[str, bool]], rows: Iterable[Sequence[str]], caption: str = "") -> str:
    """A sortable table; ``headers`` are (label, numeric) pairs, each row its cells' markup."""
    numeric_class = ' class="num"'
    head = "".join(f'<th scope="col"{numeric_class if numeric else ""}>{escape(label)}</th>' for label, numeric in headers)
    body = "\n".join(f"<tr>{''.join(cells)}</tr>" for cells in rows)
    cap = f"<caption>{escape(caption)}</caption>" if caption else ""
    return (f'<div class="scroll"><table class="sortable" data-table="{name}">{cap}<thead><tr>{head}</tr></thead>\n'
            f"<tbody>\n{body}\n</tbody></table></div>")


def _chart(chart: Chart) -> str:
    return f'<figure class="chart" data-chart="{chart.name}" data-empty="{int(chart.empty)}">{chart.svg}</figure>'


def _window(data: ReportData) -> str:
    if data.since or data.until:
        return f"{data.since or 'the start'} to {data.until or 'today'}"
    if data.first_day:
        return f"the whole log ({data.first_day} to {data.last_day})"
    return "the whole log"


def _totals(data: ReportData) -> str:
    t = data.totals
    # Formatted as `router stats` prints them, so the two can be compared figure by figure.
    saving = f"{t.saving:.0%}" if t.saving is not None else "–"
    items = [("requests", "Requests", str(t.requests)), ("cloud_spend", "Cloud spend", f"${t.cloud_spend_usd:.4f}"),
             ("all_cloud", "All-cloud estimate", f"${t.all_cloud_usd:.4f}"), ("saving", "Saved against all-cloud", saving)]  # fmt: skip
    cells = "".join(f'<div><dt>{label}</dt><dd data-figure="{key}">{escape(value)}</dd></div>' for key, label, value in items)
    return f'<dl class="totals">{cells}</dl>'


def _stats_table(data: ReportData) -> str:
    total = data.totals.requests
    rows = [
        [_txt(r["tier"] or "-"), _txt(r["category"] or "-"), _num(int(r["requests"])),
         _num(r["requests"] / total if total else 0.0, f"{r['requests'] / total:.0%}" if total else "–"),
         _num(r["mean_latency_ms"], f"{r['mean_latency_ms']:.0f}" if r["mean_latency_ms"] is not None else None),
         _num(r["cost_usd"], f"{r['cost_usd']:.4f}"), _num(int(r["errors"]))]
        for r in data.summary
    ]  # fmt: skip
    headers = [("tier", False), ("category", False), ("requests", True), ("share", True), ("mean ms", True), ("cost $", True), ("errors", True)]
    return _table("tiers", headers, rows) if rows else '<p class="empty">No request in this window.</p>'


def _categories_table(data: ReportData) -> str:
    tiers = sorted({t for r in data.categories for t in r.by_tier})
    headers = [("category", False), ("requests", True), ("share", True), *((t, True) for t in tiers), ("cache hits", True),
               ("cache hit rate", True), ("gate now", False), ("why", False), ("live quality", True), ("95 % interval", False),
               ("vs floor", False), ("samples", True), ("degenerate", True), ("offline similarity", True)]  # fmt: skip
    rows = []
    for r in data.categories:
        q = r.quality
        gate = "open" if r.gate_open else ("closed" if r.gate_open is not None else "?")
        interval = f"{q.low:.3f} – {q.high:.3f}" if q is not None and q.low is not None and q.high is not None else "–"
        rows.append([
            _txt(r.category), _num(r.requests), _num(r.share, f"{r.share:.1%}"), *(_num(r.by_tier.get(t, 0)) for t in tiers),
            _num(r.cache_hits), _num(r.cache_hits / r.requests if r.requests else None, f"{r.cache_hits / r.requests:.0%}" if r.requests else None),
            _txt(gate, gate if gate != "?" else ""), _txt(r.gate_why, "why"),
            _num(q.mean if q else None, f"{q.mean:.3f}" if q else None), _txt(interval),
            _txt(q.against(data.floor) if q else "no samples"), _num(q.n if q else 0),
            _num(r.degenerate_rate, f"{r.degenerate_rate:.0%}" if r.degenerate_rate is not None else None),
            _num(r.offline_similarity, f"{r.offline_similarity:.3f}" if r.offline_similarity is not None else None),
        ])  # fmt: skip
    return _table("categories", headers, rows) if rows else '<p class="empty">No category in this window.</p>'


def _latency_table(data: ReportData) -> str:
    rows = [[_txt(tier), _num(p.n), _num(p.p50, f"{p.p50:.0f}"), _num(p.p95, f"{p.p95:.0f}"), _num(p.p99, f"{p.p99:.0f}")]
            for tier, p in data.latency_overall.items()]  # fmt: skip
    headers = [("tier", False), ("requests", True), ("p50 ms", True), ("p95 ms", True), ("p99 ms", True)]
    return _table("latency", headers, rows) if rows else '<p class="empty">No latency recorded in this window.</p>'


def _curve_section(data: ReportData) -> str:
    curve = data.curve
    if curve.empty:
        return '<p class="empty">No audit, shadow or fallback pair of the serving model in this window: the curve needs them.</p>'
    parts = []
    if curve.operating is not None:
        o = curve.operating
        parts.append(f"At the configured floor ({data.floor:.2f}) the categories whose mean quality reaches it would answer "
                     f'<b data-figure="operating_share">{o.local_share:.0%}</b> of requests locally at a mean quality of '
                     f'<b data-figure="operating_quality">{o.quality:.3f}</b>.')  # fmt: skip
    if curve.threshold is not None:
        t = curve.threshold
        parts.append(f"Call-performance threshold: up to <b data-figure=\"threshold_share\">{t.local_share:.0%}</b> of requests can go "
                     f"local while mean quality stays within {curve.target:.0%} of all-cloud ({t.quality:.3f}).")  # fmt: skip
    else:
        parts.append(f"No local share keeps mean quality within {curve.target:.0%} of all-cloud.")
    rows = [[_num(p.floor if p.floor != float("inf") else None, f"{p.floor:.3f}" if p.floor != float("inf") else None),
             _num(p.local_share, f"{p.local_share:.1%}"), _num(p.quality, f"{p.quality:.3f}"), _txt(", ".join(p.local) or "(all cloud)")]
            for p in curve.points]  # fmt: skip
    table = _table("curve", [("floor", True), ("local share", True), ("mean quality", True), ("local categories", False)], rows)
    return f"<p>{' '.join(parts)}</p>\n{table}"


def _scalar(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _compact(value: Any, prefix: str = "") -> str:
    """A history line's evidence as one short line: ``key=value`` pairs, nested keys dotted, numbers to 4 digits."""
    if not isinstance(value, dict):
        return f"{prefix}={_scalar(value)}" if prefix else _scalar(value)
    return ", ".join(_compact(inner, f"{prefix}.{key}" if prefix else str(key)) for key, inner in value.items())


def _history_section(data: ReportData) -> str:
    history = data.history
    note = f'<p data-history-note="1">{escape(history.note)}</p>'
    if history.live is not None:
        note += (f'<p data-canary-live="1"><b>Running canary {escape(str(history.live.get("version")))}</b>, live evidence so far '
                 f'(rebuilt from this log): {escape(_compact(history.live))}</p>')  # fmt: skip
    if not history.entries:
        return note
    rows = []
    for e in history.entries:
        share = e.get("share")
        against = e.get("serving", e.get("previous"))
        rows.append([
            _txt(e.get("at", "")), _txt(e.get("action", "")), _txt(e.get("version", "")), _txt(against if against is not None else "–"),
            _num(share if isinstance(share, (int, float)) else None, f"{share:.0%}" if isinstance(share, (int, float)) else None),
            _txt(e.get("reason", "") or ""), _txt(_compact(e.get("evidence") or {}), "evidence"),
        ])  # fmt: skip
    headers = [("time (UTC)", False), ("action", False), ("version", False), ("against", False), ("share", True), ("reason", False),
               ("evidence", False)]  # fmt: skip
    return note + _table("versions", headers, rows)


def render_html(data: ReportData, charts: dict[str, Chart]) -> str:
    """The whole page for ``data`` with its ``charts`` (every one of :data:`~router.report._charts.CHARTS`)."""
    missing = [name for name in CHARTS if name not in charts]
    if missing:
        raise ValueError(f"charts missing from the report: {missing}")
    notes = "".join(f"<li>{escape(n)}</li>" for n in data.notes)
    per = "hour" if data.by == "hour" else "day"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>hybrid-router report: {escape(_window(data))}</title>
<style>{_CSS}</style>
</head>
<body>
<header>
<h1>hybrid-router traffic report</h1>
<p class="meta">Window: <span data-figure="window">{escape(_window(data))}</span> · log {escape(data.location)} ·
generated {escape(data.generated_at)} · times in UTC</p>
{_totals(data)}
</header>
{f'<ul class="notes">{notes}</ul>' if notes else ""}
<section id="traffic">
<h2>Traffic and spend over time</h2>
<p>Per {per}, from the log's running totals. Spend is what the cloud was paid; the all-cloud estimate is what every request
would have cost had the cloud answered it.</p>
{_chart(charts["requests"])}
{_chart(charts["cost"])}
{_chart(charts["saving"])}
<h3>Per tier and category (as <code>router stats</code> prints it)</h3>
{_stats_table(data)}
</section>
<section id="categories">
<h2>Categories: traffic, cache, quality gate</h2>
<p><b>Quality</b> here is the similarity, from 0 to 1, of the local model's answer to the cloud model's answer to the same
request, as the router's encoder scores the pairs it logs: shadow answers (the local model also answered a request the cloud
served), audits (the cloud also answered a request served locally) and fallbacks (a local answer the guard rejected).
The cloud's answers are the reference, so answering everything in the cloud scores 1.0 by definition. Live quality is the
mean over this window's pairs of the model serving now (<code>{escape(str(data.gate_key))}</code>), with its 95 % interval
against the gate's floor ({data.floor:.2f}; degenerate answers at most {data.max_degenerate_rate:.0%}; {data.min_samples}
samples to decide). <b>Gate now</b> is the gate's verdict today, on its own rolling window of samples.</p>
{_chart(charts["category_quality"])}
{_categories_table(data)}
</section>
<section id="latency">
<h2>Latency</h2>
<p>Percentiles per {per} and tier, read from the log's latency histogram (buckets 12 % wide: within about 6 %).</p>
{_chart(charts["latency"])}
{_latency_table(data)}
</section>
<section id="curve">
<h2>Cost–quality curve on this traffic</h2>
<p>Sweeping the gate's similarity floor from 1 down to 0, every category whose mean quality in this window reaches the floor
answers locally (at that quality) and the rest in the cloud (quality 1.0); each category weighs its share of the window's
categorised requests, and a degenerate local answer counts 0. Categories without pairs stay in the cloud at every floor.</p>
{_chart(charts["quality_curve"])}
{_curve_section(data)}
</section>
<section id="versions">
<h2>Model versions and canaries</h2>
{_history_section(data)}
</section>
<script>{_JS}</script>
</body>
</html>
"""
