from __future__ import annotations

import subprocess
import sys
import textwrap

from router.traffic_log import LogRecord, TrafficLog


def rec(i: int, **kw) -> LogRecord:
    return LogRecord(id=f"r{i}", requested_model="auto", reason="local_category", stream=False, **kw)


def test_round_trip_and_summary(tmp_path) -> None:
    with TrafficLog(tmp_path / "t.db") as log:
        assert log.record(rec(1, tier="local", category="ORDER", messages=[{"role": "user", "content": "hi"}], latency_ms=5.0))
        assert log.record(rec(2, tier="cloud", category=None, cost_usd=0.01, metadata={"k": "v"}))
        records = list(log.records())
        assert [r.id for r in records] == ["r1", "r2"]
        assert records[0].messages == [{"role": "user", "content": "hi"}] and records[1].metadata == {"k": "v"}
        assert {(s["tier"], s["requests"]) for s in log.summary()} == {("local", 1), ("cloud", 1)}
        assert [r.id for r in log.records(tier="cloud")] == ["r2"]


def test_secrets_always_scrubbed_pii_optionally(tmp_path) -> None:
    msg = [{"role": "user", "content": "key sk-abcdefghijklmnopqrstuvwx and mail a@b.io"}]
    with TrafficLog(tmp_path / "a.db") as log:
        log.record(rec(1, messages=msg))
        stored = next(log.records()).messages[0]["content"]
    assert "sk-abc" not in stored and "[SECRET]" in stored and "a@b.io" in stored
    with TrafficLog(tmp_path / "b.db", redact_patterns={"email": r"\S+@\S+"}) as log:
        log.record(rec(1, messages=msg))
        row = next(log.records())
    assert "[EMAIL]" in row.messages[0]["content"] and row.redacted


def test_a_failing_log_never_raises(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    log = TrafficLog(blocker / "sub" / "t.db")
    assert log.record(rec(1)) is False and log.failures == 1


def test_duplicate_id_leaves_no_partial_row(tmp_path) -> None:
    with TrafficLog(tmp_path / "t.db") as log:
        assert log.record(rec(1))
        assert not log.record(rec(1))
        assert log.count() == 1


def test_committed_rows_survive_a_crash(tmp_path) -> None:
    path = tmp_path / "t.db"
    script = textwrap.dedent(
        f"""
        import os
        from router.traffic_log import TrafficLog, LogRecord
        log = TrafficLog(r"{path}")
        for i in range(20):
            log.record(LogRecord(id=f"r{{i}}", requested_model="auto", reason="x", stream=False))
        os._exit(9)  # no close, no flush, no atexit
        """
    )
    assert subprocess.run([sys.executable, "-c", script]).returncode == 9
    assert TrafficLog(path).count() == 20


def _dated(i: int, day: str, **kw) -> LogRecord:
    return LogRecord(id=f"d{i}", requested_model="auto", reason="x", stream=False, created_at=f"{day}T12:00:00.000+00:00", **kw)


def test_stats_come_from_running_totals_and_survive_retention(tmp_path) -> None:
    from datetime import datetime, timedelta, timezone

    old = (datetime.now(timezone.utc) - timedelta(days=40)).date().isoformat()
    today = datetime.now(timezone.utc).date().isoformat()
    with TrafficLog(tmp_path / "t.db") as log:
        log.record(_dated(1, old, tier="cloud", category="ORDER", latency_ms=100.0, cost_usd=0.5))
        log.record(_dated(2, today, tier="cloud", category="ORDER", latency_ms=300.0, cost_usd=0.25, error_type="X"))
        log.record(_dated(3, today, tier="local", category="ORDER", cloud_cost_usd_estimate=0.75))
        log.record(_dated(4, today))  # refused: no tier, no category
        summary = {(r["tier"], r["category"]): r for r in log.summary()}
        assert summary[("cloud", "ORDER")]["requests"] == 2 and summary[("cloud", "ORDER")]["mean_latency_ms"] == 200.0
        assert summary[("cloud", "ORDER")]["cost_usd"] == 0.75 and summary[("cloud", "ORDER")]["errors"] == 1
        assert summary[(None, None)]["requests"] == 1 and summary[(None, None)]["mean_latency_ms"] is None
        assert sum(r["requests"] for r in log.summary(since=today)) == 3
        assert sum(r["requests"] for r in log.summary(until=old)) == 1

        assert log.prune(30) == 1
        assert log.count() == 3 and log.get("d1") is None
        assert sum(r["requests"] for r in log.summary()) == 4  # deleted rows are still counted
        assert [r.id for r in log.records(since=today)] == ["d2", "d3", "d4"]
        assert [r.id for page in log.pages(page_size=2, since=today) for _, r in page] == ["d2", "d3", "d4"]


def test_a_schema_4_log_is_migrated_and_its_totals_backfilled(tmp_path) -> None:
    import sqlite3

    path = tmp_path / "t.db"
    with TrafficLog(path) as log:
        for i in range(3):
            log.record(_dated(i, "2026-01-0" + str(i + 1), tier="cloud", category="ORDER"))
    with sqlite3.connect(path) as db:  # back to what release 4 wrote
        db.executescript("DROP TRIGGER request_hourly_on_insert; DROP TRIGGER latency_hourly_on_insert; DROP TABLE request_hourly; DROP TABLE latency_hourly; DROP TRIGGER request_totals_on_insert; DROP TABLE request_totals; ALTER TABLE requests DROP COLUMN cached_from; ALTER TABLE requests DROP COLUMN caller; ALTER TABLE requests DROP COLUMN topic_start; PRAGMA user_version=4;")
    with TrafficLog(path) as log:
        assert [r["requests"] for r in log.summary()] == [3]
        log.record(_dated(9, "2026-01-09", tier="cloud", category="ORDER"))
        assert [r["requests"] for r in log.summary()] == [4]
        assert [r["requests"] for r in log.hourly(by="day")] == [1, 1, 1, 1]


def test_import_records_is_bulk_and_idempotent(tmp_path) -> None:
    with TrafficLog(tmp_path / "t.db") as log:
        records = [rec(i) for i in range(25)]
        assert log.import_records(records, batch=10) == 25
        assert log.import_records(records[:5], batch=10) == 5  # already there: skipped, no duplicate
        assert log.count() == 25 and sum(r["requests"] for r in log.summary()) == 25


def test_feedback_since_and_between_serve_an_incremental_reader(tmp_path) -> None:
    """New feedback with the rows it names (by cursor), paged; and one page of rows' feedback."""
    with TrafficLog(tmp_path / "t.db") as log:
        for i in range(1, 5):
            assert log.record(rec(i))
        log.record_feedback("r1", score=1.0, accepted=True, correction=None)
        log.record_feedback("r3", score=None, accepted=False, correction=None)
        log.record_feedback("r1", score=None, accepted=None, correction="better")
        log.record_feedback("gone", score=0.0, accepted=None, correction=None)  # no such request (retention)
        last, latest = log.feedback_since()
        assert last == 4 and set(latest) == {"r1", "r3", "gone"}
        assert latest["r1"]["correction"] == "better" and latest["r1"]["score"] is None  # the latest, whole
        assert (latest["r1"]["rowid"], latest["r3"]["rowid"], latest["gone"]["rowid"]) == (1, 3, None)
        assert latest["r3"]["accepted"] is False
        assert log.feedback_since(last) == (last, {})
        first, page = log.feedback_since(0, limit=2)
        assert first == 2 and page["r1"]["accepted"] is True and set(page) == {"r1", "r3"}
        assert log.feedback_since(first, limit=2)[0] == 4
        assert set(log.feedback_between(0, 2)) == {"r1"} and log.feedback_between(0, 2)["r1"]["correction"] == "better"
        assert set(log.feedback_between(2, 4)) == {"r3"} and log.feedback_between(4, 9) == {}
        assert log.feedback()["r1"] == log.feedback_between(0, 1)["r1"]


def _varied(n: int, first_day: int = 1) -> list[LogRecord]:
    """Rows over several days, hours, tiers and categories; some cache hits, errors and missing latencies."""
    rows = []
    for i in range(n):
        tier = ("local", "cloud", "cache", None)[i % 4]
        rows.append(LogRecord(
            id=f"v{i}", requested_model="auto", reason="x", stream=False, tier=tier, category=("ORDER", "REFUND", None)[i % 3],
            created_at=f"2026-01-{first_day + i % 3:02d}T{(i * 7) % 24:02d}:30:00.000+00:00",
            latency_ms=None if i % 11 == 0 else 0.5 + (i * 37) % 5000, cost_usd=0.002 if tier == "cloud" else 0.0,
            cloud_cost_usd_estimate=0.002, cached_from="v0" if tier == "cache" else None, error_type="X" if i % 13 == 0 else None,
        ))  # fmt: skip
    return rows


def _scan(path) -> tuple[dict, dict]:
    """Hourly totals and latency buckets computed by reading every row: what the running totals must equal."""
    from collections import Counter

    from router.latency_histogram import bucket_of

    totals: Counter = Counter()
    buckets: Counter = Counter()
    with TrafficLog(path, spool=False) as log:
        for r in log.records():
            key = (r.created_at[:13], r.tier)
            totals[key + ("requests",)] += 1
            totals[key + ("cost",)] += round((r.cost_usd or 0) * 1e6)
            totals[key + ("estimate",)] += round((r.cloud_cost_usd_estimate or 0) * 1e6)
            totals[key + ("cache_hits",)] += r.cached_from is not None
            totals[key + ("errors",)] += r.error_type is not None
            if r.latency_ms is not None:
                buckets[(r.created_at[:13], r.tier, bucket_of(r.latency_ms))] += 1
    return dict(totals), dict(buckets)


def _running(log: TrafficLog) -> tuple[dict, dict]:
    from collections import Counter

    totals: Counter = Counter()
    for r in log.hourly():
        key = (r["period"], r["tier"])
        totals[key + ("requests",)] += r["requests"]
        totals[key + ("cost",)] += round(r["cost_usd"] * 1e6)
        totals[key + ("estimate",)] += round(r["cloud_cost_usd_estimate"] * 1e6)
        totals[key + ("cache_hits",)] += r["cache_hits"]
        totals[key + ("errors",)] += r["errors"]
    buckets = {(r["period"], r["tier"], r["bucket"]): r["n"] for r in log.latency_histogram()}
    return {k: v for k, v in totals.items() if v}, buckets


def test_hourly_totals_and_latency_histogram_equal_a_scan_and_bound_their_window(tmp_path) -> None:
    path = tmp_path / "t.db"
    with TrafficLog(path) as log:
        assert log.import_records(_varied(300)) == 300
    scanned, scanned_buckets = _scan(path)
    with TrafficLog(path) as log:
        running, buckets = _running(log)
        assert running == {k: v for k, v in scanned.items() if v} and buckets == scanned_buckets
        daily = log.hourly(by="day")
        assert {r["period"] for r in daily} == {"2026-01-01", "2026-01-02", "2026-01-03"}
        assert sum(r["requests"] for r in daily) == sum(r["requests"] for r in log.summary()) == 300
        for day in ("2026-01-01", "2026-01-02", "2026-01-03"):  # per day, equal to router stats' totals
            assert sum(r["requests"] for r in log.hourly(since=day, until=day)) == sum(r["requests"] for r in log.summary(since=day, until=day))
            assert {r["period"][:10] for r in log.latency_histogram(since=day, until=day)} == {day}
        assert log.hourly(since="2026-01-04") == [] and log.latency_histogram(until="2025-12-31") == []
        assert {len(r["period"]) for r in log.latency_histogram(by="day")} == {10}


def test_a_schema_8_log_is_migrated_and_its_hourly_totals_backfilled(tmp_path) -> None:
    import sqlite3

    path = tmp_path / "t.db"
    with TrafficLog(path) as log:
        log.import_records(_varied(120))
    before = _scan(path)
    with sqlite3.connect(path) as db:  # back to what release 8 wrote
        db.executescript("DROP TRIGGER request_hourly_on_insert; DROP TRIGGER latency_hourly_on_insert; "
                         "DROP TABLE request_hourly; DROP TABLE latency_hourly; PRAGMA user_version=8;")  # fmt: skip
    with TrafficLog(path) as log:
        assert log.count() == 120
        assert _running(log) == ({k: v for k, v in before[0].items() if v}, before[1])
        log.import_records(_varied(150)[120:])  # the trigger keeps counting after the migration
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 9
    scanned = _scan(path)
    with TrafficLog(path) as log:
        assert _running(log) == ({k: v for k, v in scanned[0].items() if v}, scanned[1])
