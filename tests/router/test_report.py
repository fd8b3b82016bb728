"""``router report`` and ``/report``: the page opened in headless Chromium, its figures against ``router stats``.

The log is a small real SQLite log over four days (three in the window) with every tier, cache
hits, latencies, scored samples of two model versions and a registry history with canaries. The
browser tests need ``chromium`` (``.ci/run`` installs it): without it they fail, never skip.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from router.traffic_log import LogRecord, TrafficLog

TODAY = datetime.now(UTC).date()
SERVED = "registry:v0002"
TOKEN = "report-test-token-0123456789"


def day(offset: int) -> str:
    return (TODAY - timedelta(days=offset)).isoformat()


# (category, tier, requests) in the window; ORDER 30, REFUND 12, SHIPPING 9 sort differently as text and as numbers.
WINDOW_ROWS = [("ORDER", "local", 14), ("ORDER", "cloud", 8), ("ORDER", "cache", 8), ("REFUND", "local", 4), ("REFUND", "cloud", 5),
               ("REFUND", "cache", 3), ("SHIPPING", "cloud", 6), ("SHIPPING", "handoff", 1), ("SHIPPING", "cache", 2)]  # fmt: skip
OUTSIDE_ROWS = [("ORDER", "cloud", 5), ("REFUND", "local", 5)]


def _rows() -> list[LogRecord]:
    rows, i = [], 0
    for plan, offsets in ((WINDOW_ROWS, (0, 1, 2)), (OUTSIDE_ROWS, (3,))):
        for category, tier, n in plan:
            for k in range(n):
                latency = {"local": 300.0, "cloud": 900.0, "handoff": 1500.0, "cache": 8.0}[tier] * (1 + (k * 7 % 10) / 5)
                rows.append(LogRecord(
                    id=f"r{i}", requested_model="auto", reason="x", stream=False, tier=tier, category=category,
                    created_at=f"{day(offsets[k % len(offsets)])}T{(k * 5) % 24:02d}:15:00.000+00:00", latency_ms=latency,
                    cost_usd={"cloud": 0.002, "handoff": 0.001}.get(tier, 0.0), cloud_cost_usd_estimate=0.002,
                    cached_from=f"r{i - 1}" if tier == "cache" else None,
                ))  # fmt: skip
                i += 1
    rows.append(LogRecord(id="refused", requested_model="auto", reason="x", stream=False, created_at=f"{day(1)}T03:00:00.000+00:00",
                          latency_ms=2.0, error_type="BadRequestError"))  # fmt: skip
    return rows


@pytest.fixture
def site(tmp_path: Path) -> dict[str, Path]:
    """A log, a registry with canary history, and a configuration naming both."""
    log_path = tmp_path / "traffic.sqlite3"
    with TrafficLog(log_path) as log:
        assert log.import_records(_rows()) == len(_rows())
        # Scored samples are stamped now, inside the window. ORDER opens (similarity 0.956 >= 0.75), REFUND stays
        # closed (0.640; as quality 0.567, its degenerate answer counting 0).
        for k in range(12):
            log.record_quality_sample(kind="audit", category="ORDER", served_key=SERVED, similarity=0.93 + 0.01 * (k % 7),
                                      degenerate=False, cost_usd=0.002)  # fmt: skip
        for k in range(10):
            log.record_quality_sample(kind="shadow", category="REFUND", served_key=SERVED, similarity=0.55 + 0.02 * k, degenerate=k == 9)
        log.record_quality_sample(kind="audit", category="SHIPPING", served_key="registry:v0001", similarity=0.2, degenerate=False)
        log.record_quality_sample(kind="feedback", category="ORDER", served_key=SERVED, similarity=1.0, degenerate=False, request_id="r1")
    registry = tmp_path / "registry"
    registry.mkdir()
    (registry / "serving.json").write_text(json.dumps({"version": "v0002", "adapter_path": None, "previous": "v0001",
                                                       "canary": {"version": "v0003", "share": 0.1}}))  # fmt: skip
    history = [
        {"action": "promote", "version": "v0001", "previous": "base", "at": f"{day(10)}T09:00:00+00:00", "reason": "first retrain"},
        {"action": "canary_start", "version": "v0002", "serving": "v0001", "share": 0.1, "at": f"{day(2)}T10:00:00+00:00",
         "reason": "retrain", "evidence": {}},
        {"action": "canary_promote", "version": "v0002", "serving": "v0001", "share": 0.1, "at": f"{day(1)}T10:00:00+00:00",
         "reason": "live quality held", "evidence": {"similarity": 0.912345, "samples": 40, "baseline": {"similarity": 0.9}}},
        {"action": "canary_start", "version": "v0003", "serving": "v0002", "share": 0.1, "at": f"{day(0)}T00:30:00+00:00",
         "reason": "retrain", "evidence": {"offline_similarity": 0.93}},
    ]  # fmt: skip
    (registry / "history.jsonl").write_text("".join(json.dumps(e) + "\n" for e in history) + '{"action": "canary_ro')  # a torn last line
    config = tmp_path / "router.toml"
    config.write_text(f'[log]\npath = "{log_path}"\n[local]\nregistry_path = "{registry}"\n'
                      '[routing]\nlocal_categories = ["ORDER", "REFUND", "SHIPPING"]\n[quality]\nmin_samples = 10\n')  # fmt: skip
    return {"log": log_path, "registry": registry, "config": config, "dir": tmp_path}


# ---------------------------------------------------------------------------- reading a page


class Page(HTMLParser):
    """What a test reads from a report's DOM: figures, tables (body cells as text), charts, body attributes."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.figures: dict[str, str] = {}
        self.tables: dict[str, list[list[str]]] = {}
        self.headers: dict[str, list[str]] = {}
        self.charts: dict[str, dict[str, Any]] = {}
        self.body: dict[str, str] = {}
        self.history_note = ""
        self._figure: str | None = None
        self._table: str | None = None
        self._in_body = self._in_head = False
        self._cell: list[str] | None = None
        self._chart: str | None = None
        self._note = False
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "body":
            self.body = a
        if "data-figure" in a:
            self._figure = a["data-figure"]
            self.figures[self._figure] = ""
        if "data-history-note" in a:
            self._note = True
        if tag == "table":
            self._table = a.get("data-table")
            self.tables[self._table] = []
            self.headers[self._table] = []
        elif tag == "thead":
            self._in_head = True
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []
        if tag == "figure" and "data-chart" in a:
            self._chart = a["data-chart"]
            self.charts[self._chart] = {"class": a.get("class"), "empty": a.get("data-empty"), "tags": {}, "text": ""}
        elif self._chart is not None:
            tags = self.charts[self._chart]["tags"]
            tags[tag] = tags.get(tag, 0) + 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self._chart = None
        elif tag in ("td", "th") and self._cell is not None:
            text = " ".join("".join(self._cell).split())
            (self.headers[self._table] if self._in_head else self.tables[self._table][-1]).append(text)
            self._cell = None
        elif tag == "thead":
            self._in_head = False
        elif tag == "tbody":
            self._in_body = False
        elif tag == "table":
            self._table = None
        elif tag in ("dd", "b", "span"):
            self._figure = None
        elif tag == "p":
            self._note = False

    def handle_data(self, data: str) -> None:
        if self._figure is not None:
            self.figures[self._figure] += data
        if self._cell is not None:
            self._cell.append(data)
        if self._chart is not None:
            self.charts[self._chart]["text"] += data
        if self._note:
            self.history_note += data

    def column(self, table: str, name: str) -> dict[str, str]:
        """``{first cell: the cell under header name}`` for each row of ``table``."""
        i = self.headers[table].index(name)
        return {row[0]: row[i] for row in self.tables[table]}


def chromium(page: Path, tmp_path: Path) -> tuple[str, list[str]]:
    """``page`` opened in headless Chromium: the DOM after its scripts ran, and every console message."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    assert binary, "chromium is not installed (apt-get install chromium; .ci/run does it)"
    done = subprocess.run(
        [binary, "--headless=new", "--disable-gpu", "--no-sandbox", "--no-first-run", f"--user-data-dir={tmp_path / 'chromium-profile'}",
         "--enable-logging=stderr", "--v=0", "--dump-dom", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, [line for line in done.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


# ---------------------------------------------------------------------------- router stats, parsed


def stats(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    from router.cli import main

    assert main(list(args)) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    figures = re.search(r"cloud spend \$([\d.]+); all-cloud estimate \$([\d.]+) \((\d+%) saved\)", out)
    assert figures, out
    header = next(i for i, line in enumerate(lines) if line.startswith("tier") and "requests" in line)
    end = next(i for i, line in enumerate(lines) if line.startswith("cloud spend"))
    cache = next(i for i, line in enumerate(lines) if line.startswith("cache hits"))
    gate = [line.split() for line in lines if re.match(r"^\S+\s+(open|closed)\s", line)]
    return {
        "requests": re.search(r": (\d+) requests", lines[0]).group(1),
        "cloud_spend": f"${figures.group(1)}", "all_cloud": f"${figures.group(2)}", "saving": figures.group(3),
        "rows": [line.split() for line in lines[header + 1 : end]],
        "cache": {parts[0]: parts[1:] for parts in (line.split() for line in lines[cache + 1 :]) if len(parts) == 3 and parts[0] != "all"},
        "gate": {parts[0]: parts for parts in gate},
    }  # fmt: skip


# ---------------------------------------------------------------------------- pure parts (no browser)


def test_the_cost_quality_curve_sweeps_the_floor_and_finds_the_threshold() -> None:
    from router.report import cost_quality_curve

    curve = cost_quality_curve({"A": 50, "B": 30, "C": 20}, {"A": [0.97, 0.99], "B": [0.7, 0.9], "C": []}, floor=0.75)
    assert [(p.local_share, round(p.quality, 4), p.local) for p in curve.points] == [
        (0.0, 1.0, ()), (0.5, 0.99, ("A",)), (0.8, 0.93, ("A", "B"))]  # C has no pairs: cloud at every floor
    assert curve.operating.local == ("A", "B") and curve.threshold.local_share == 0.5
    assert cost_quality_curve({"A": 50, "B": 30, "C": 20}, {"A": [0.97, 0.99], "B": [0.7, 0.9]}, floor=0.85).operating.local_share == 0.5
    assert cost_quality_curve({"A": 1}, {"A": [0.1]}, floor=0.5).threshold.local_share == 0.0  # only all-cloud holds 95 %
    assert cost_quality_curve({"A": 1}, {}, floor=0.5).empty


def test_latency_percentiles_from_buckets_are_within_six_percent() -> None:
    import random
    from collections import Counter

    import numpy as np

    from router.latency_histogram import BOUNDS_MS, bucket_of, percentile

    rng = random.Random(7)
    latencies = [rng.lognormvariate(6.5, 0.8) for _ in range(20_000)]
    counts = Counter(bucket_of(v) for v in latencies)
    for q in (50, 95, 99):
        exact = float(np.percentile(latencies, q))
        assert abs(percentile(counts, q) - exact) / exact < 0.06, q
    assert percentile({}, 50) is None
    assert bucket_of(0.2) == 0 and bucket_of(BOUNDS_MS[3]) == 4 and bucket_of(10**9) == len(BOUNDS_MS)


def test_the_logs_sql_puts_each_latency_in_the_bucket_python_reads_it_from(tmp_path: Path) -> None:
    from router.latency_histogram import BOUNDS_MS, bucket_of

    values = [0.0, 0.999, 1.0, 1.1199, 1.12, *BOUNDS_MS[40:43], BOUNDS_MS[-1] - 0.01, BOUNDS_MS[-1], 5e6]
    with TrafficLog(tmp_path / "t.db") as log:
        for i, v in enumerate(values):
            log.record(LogRecord(id=f"l{i}", requested_model="auto", reason="x", stream=False, tier="local", latency_ms=v,
                                 created_at=f"2026-02-01T{i:02d}:00:00.000+00:00"))  # fmt: skip
        got = {r["period"]: r["bucket"] for r in log.latency_histogram()}
    assert [got[f"2026-02-01T{i:02d}"] for i in range(len(values))] == [bucket_of(v) for v in values]


def test_registry_history_is_read_within_the_window_and_says_why_when_empty(site: dict[str, Path], tmp_path: Path) -> None:
    from router.report._history import read_registry_history

    history = read_registry_history(site["registry"], since=day(2), until=day(0))
    assert [e["action"] for e in history.entries] == ["canary_start", "canary_promote", "canary_start"]  # the torn line skipped
    assert history.outside == 1 and "canary v0003 on 10%" in history.note
    assert "No model registry at" in read_registry_history(tmp_path / "none", since=None, until=None).note
    assert "No promotion" in read_registry_history(site["registry"], since="2001-01-01", until="2001-01-02").note


def test_text_from_the_log_is_escaped_and_nothing_is_fetched(tmp_path: Path) -> None:
    from router.config import RouterConfig
    from router.report import CHARTS, build_report

    evil = '<script>alert("x")</script>'
    with TrafficLog(tmp_path / "t.db") as log:
        log.record(LogRecord(id="a", requested_model="auto", reason="x", stream=False, tier="local", category=evil, latency_ms=5.0))
        log.record_quality_sample(kind="audit", category=evil, served_key="model:gemma-3-270m-q4_k_m", similarity=0.9, degenerate=False)
        page = build_report(log, RouterConfig(local={"registry_path": tmp_path / "none"}))
    assert evil not in page and "&lt;script&gt;alert(" in page
    assert re.search(r"https?://", page) is None  # no CDN, font, image or namespace URL at all
    assert page.count("<script>") == 1 and all(f'data-chart="{name}"' in page for name in CHARTS)


def test_router_and_its_cli_do_not_import_matplotlib() -> None:
    code = "import router, router.report, router.cli, router.traffic_log\nimport sys\nprint('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_report_exports_match_all() -> None:
    import router.report
    from tests.exports import check_lazy_exports

    check_lazy_exports(router.report)


# ---------------------------------------------------------------------------- the page in a browser


@pytest.mark.slow
def test_the_browser_check_sees_console_errors_and_blocked_fetches(tmp_path: Path) -> None:
    """The console check below can fail: a script error and a fetch the page's policy blocks are both seen."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
                   'script-src \'unsafe-inline\'"></head><body><img src="https://cdn.invalid/x.png"><script>missing();</script></body></html>')  # fmt: skip
    _, console = chromium(bad, tmp_path)
    assert any("Uncaught ReferenceError" in line for line in console)
    assert any("Content Security Policy" in line for line in console)


@pytest.mark.slow
def test_the_report_opens_in_chromium_and_its_figures_equal_router_stats(site: dict[str, Path], tmp_path: Path, capsys) -> None:
    from router.cli import main
    from router.report import CHARTS

    out = tmp_path / "report.html"
    window = ["--since", day(2), "--until", day(0)]
    assert main(["report", "--config", str(site["config"]), *window, "--out", str(out)]) == 0  # --config after the subcommand too
    assert capsys.readouterr().out.strip() == str(out)
    html = out.read_text(encoding="utf-8")
    assert re.search(r"https?://", html) is None
    expected = stats(capsys, "--config", str(site["config"]), "stats", *window)
    assert expected["requests"] == str(sum(n for _, _, n in WINDOW_ROWS) + 1)  # the window, the refused row in it

    dom, console = chromium(out, tmp_path)
    assert console == []
    page = Page(dom)
    assert page.body.get("data-ready") == "1"  # the sorter's script ran to its end

    # Every chart is there, drawn from data (not the "no data" figure), and not an empty SVG.
    assert set(page.charts) == set(CHARTS)
    for name, chart in page.charts.items():
        assert chart["class"] == "chart" and chart["empty"] == "0", name
        assert chart["tags"].get("svg") == 1 and chart["tags"].get("path", 0) >= 10, (name, chart["tags"])
        assert "no data" not in chart["text"], name

    # The headline figures and the per tier / category table are router stats' for the same window.
    for key in ("requests", "cloud_spend", "all_cloud", "saving"):
        assert page.figures[key] == expected[key], key
    assert page.tables["tiers"] == expected["rows"]
    assert page.column("categories", "cache hits") == {c: hits for c, (hits, _) in expected["cache"].items() if c != "-"}
    assert page.column("categories", "cache hit rate") == {c: rate for c, (_, rate) in expected["cache"].items() if c != "-"}
    assert page.column("categories", "gate now") == {c: g[1] for c, g in expected["gate"].items()} == {
        "ORDER": "open", "REFUND": "closed", "SHIPPING": "closed"}
    # Every sample is in the window, so the window's live quality is the gate's ("-" is the page's "–": no samples).
    assert page.column("categories", "live quality") == {c: g[4].replace("-", "–") for c, g in expected["gate"].items()}
    assert page.column("categories", "vs floor")["REFUND"] == "below" and page.column("categories", "samples")["SHIPPING"] == "0"
    assert page.figures["window"] == f"{day(2)} to {day(0)}"

    # The curve: ORDER (30 of the window's 51 categorised requests) goes local at the configured floor, and keeps
    # quality within 95 % of all-cloud (30/51 * 0.956 + 21/51 = 0.974); with REFUND too it would not (+ 12/51 * 0.567 = 0.872).
    share = 30 / 51
    assert page.figures["operating_share"] == f"{share:.0%}" and page.figures["threshold_share"] == f"{share:.0%}"
    assert page.column("curve", "local categories") == {"–": "(all cloud)", "0.956": "ORDER", "0.567": "ORDER, REFUND"}
    assert page.column("curve", "mean quality") == {"–": "1.000", "0.956": "0.974", "0.567": "0.872"}

    # The registry's history inside the window, evidence compact; what serves now.
    versions = page.tables["versions"]
    assert [row[1] for row in versions] == ["canary_start", "canary_promote", "canary_start"]
    assert versions[1][3] == "v0001" and versions[1][4] == "10%"
    assert versions[1][6] == "similarity=0.9123, samples=40, baseline.similarity=0.9"
    assert "Serving now: v0002, canary v0003" in page.history_note

    # Sorting: a click sorts numbers as numbers (9 < 12 < 30, not "12" < "30" < "9"), a second reverses, empty cells stay last.
    check = out.with_name("sorted.html")
    check.write_text(html.replace("</body>", """<script>
(function () {
  var table = document.querySelector('table[data-table="categories"]');
  var heads = table.tHead.rows[0].cells, names = function () {
    return Array.prototype.map.call(table.tBodies[0].rows, function (r) { return r.cells[0].textContent; });
  };
  var requests = Array.prototype.filter.call(heads, function (th) { return th.textContent === "requests"; })[0];
  var quality = Array.prototype.filter.call(heads, function (th) { return th.textContent === "live quality"; })[0];
  var seen = {};
  requests.click(); seen.ascending = names();
  requests.click(); seen.descending = names(); seen.aria = requests.getAttribute("aria-sort");
  quality.click(); seen.qualityUp = names(); quality.click(); seen.qualityDown = names();
  document.body.dataset.sortCheck = JSON.stringify(seen);
}());
</script></body>"""))
    dom, console = chromium(check, tmp_path)
    assert console == []
    seen = json.loads(Page(dom).body["data-sort-check"])
    assert seen["ascending"] == ["SHIPPING", "REFUND", "ORDER"] and seen["descending"] == ["ORDER", "REFUND", "SHIPPING"]
    assert seen["aria"] == "descending"
    assert seen["qualityUp"] == ["REFUND", "ORDER", "SHIPPING"] and seen["qualityDown"] == ["ORDER", "REFUND", "SHIPPING"]

    # The whole log (four days: drawn per day) still equals router stats.
    assert main(["--config", str(site["config"]), "report", "--out", str(out)]) == 0
    capsys.readouterr()
    whole = Page(out.read_text(encoding="utf-8"))
    expected = stats(capsys, "--config", str(site["config"]), "stats")
    assert [whole.figures[k] for k in ("requests", "cloud_spend", "all_cloud", "saving")] == [
        expected[k] for k in ("requests", "cloud_spend", "all_cloud", "saving")]
    assert whole.tables["tiers"] == expected["rows"] and len(whole.tables["versions"]) == 4


@pytest.mark.slow
def test_an_empty_window_still_draws_every_chart_saying_so(tmp_path: Path, capsys) -> None:
    from router.cli import main
    from router.report import CHARTS

    log_path = tmp_path / "empty.sqlite3"
    with TrafficLog(log_path) as log:
        assert log.count() == 0  # opened, so the file exists: a log with no rows
    config = tmp_path / "router.toml"
    config.write_text(f'[log]\npath = "{log_path}"\n[local]\nregistry_path = "{tmp_path / "no-registry"}"\n')
    out = tmp_path / "empty.html"
    assert main(["--config", str(config), "report", "--out", str(out)]) == 0
    dom, console = chromium(out, tmp_path)
    assert console == []
    page = Page(dom)
    assert page.body.get("data-ready") == "1" and page.figures["requests"] == "0" and page.figures["saving"] == "–"
    assert set(page.charts) == set(CHARTS)
    for name, chart in page.charts.items():
        assert chart["empty"] == "1" and chart["tags"].get("svg") == 1 and "no data in this window" in chart["text"], name
    assert "No model registry at" in page.history_note
    assert main(["--config", str(config), "report", "--since", "2026-02-02", "--until", "2026-02-01"]) == 2
    with pytest.raises(SystemExit):
        main(["--config", str(config), "report", "--since", "yesterday"])


@pytest.mark.slow
def test_router_serve_serves_the_report_behind_the_api_key(site: dict[str, Path], tmp_path: Path, capsys) -> None:
    import httpx

    from router import Client
    from router.cli import main
    from tests.conftest import serving

    served_config = tmp_path / "serve.toml"
    served_config.write_text(f'warmup = "lazy"\n{site["config"].read_text()}[server]\napi_keys = ["{TOKEN}"]\n')
    out = tmp_path / "cli.html"
    assert main(["--config", str(site["config"]), "report", "--since", day(1), "--until", day(0), "--out", str(out)]) == 0
    cli = Page(out.read_text(encoding="utf-8"))
    with Client(served_config) as client, serving(client, warm=False) as url:
        assert httpx.get(f"{url}/report", timeout=60).status_code == 401
        assert httpx.get(f"{url}/report", headers={"Authorization": "Bearer wrong-token-000"}, timeout=60).status_code == 401
        auth = {"Authorization": f"Bearer {TOKEN}"}
        bad = httpx.get(f"{url}/report", params={"since": "last week"}, headers=auth, timeout=60)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "since"
        assert httpx.get(f"{url}/report", params={"since": day(0), "until": day(1)}, headers=auth, timeout=60).status_code == 400
        served = httpx.get(f"{url}/report", params={"since": day(1), "until": day(0)}, headers=auth, timeout=120)
        assert served.status_code == 200 and served.headers["content-type"].startswith("text/html")
    page = Page(served.text)
    assert page.figures == cli.figures and page.tables == cli.tables and set(page.charts) == set(cli.charts)


@pytest.mark.slow
def test_a_postgresql_log_reports_the_same_figures_as_its_sqlite_copy(site: dict[str, Path], pg_url: str) -> None:
    from router.config import load_config
    from router.report import build_report
    from router.traffic_log import copy_log

    config = load_config(site["config"])
    with TrafficLog(site["log"], spool=False) as source, TrafficLog(pg_url, spool=False) as copy:
        copy_log(source, copy)
        pages = [Page(build_report(log, config, since=day(2), until=day(0))) for log in (source, copy)]
    sqlite, postgres = pages
    assert postgres.figures == sqlite.figures
    # Rows come in summary()'s order, as router stats prints them: PostgreSQL sorts the no-tier row last, SQLite first.
    assert sorted(postgres.tables.pop("tiers")) == sorted(sqlite.tables.pop("tiers")) and postgres.tables == sqlite.tables
    assert postgres.figures["requests"] == str(sum(n for _, _, n in WINDOW_ROWS) + 1)
    assert {name: chart["empty"] for name, chart in postgres.charts.items()} == dict.fromkeys(sqlite.charts, "0")
