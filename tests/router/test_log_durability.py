"""No acknowledged record is lost: a locked or full database spools, a crash loses nothing answered."""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from router.log_spool import LogSpool
from router.traffic_log import LogRecord, TrafficLog


def rec(i: int) -> LogRecord:
    return LogRecord(id=f"r{i}", requested_model="auto", reason="x", stream=False, response=f"answer {i}")


def eventually(check: Callable[[], bool], timeout_s: float = 15.0) -> None:
    """Wait for the background drainer to make ``check`` true."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "the spool was not drained in time"
        time.sleep(0.02)


def test_a_locked_database_spools_the_row_and_the_drainer_delivers_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "t.db"
    log = TrafficLog(path, busy_timeout_s=0.05)
    assert log.record(rec(0))
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    with caplog.at_level(logging.WARNING, logger="router"):
        assert log.record(rec(1)) and log.record(rec(2))  # answered requests: True, the rows are durable
    assert (log.spooled, log.failures) == (2, 0)
    assert "kept in" in caplog.text and str(log.spool.path) in caplog.text
    holder.execute("ROLLBACK")
    holder.close()
    eventually(lambda: not log.spool.pending())  # no later write needed: the drainer retries, off the request path
    assert sorted(r.id for r in log.records()) == ["r0", "r1", "r2"]
    assert next(r for r in log.records() if r.id == "r1").response == "answer 1"  # whole, not half-written
    assert log.record(rec(3)) and log.count() == 4
    log.close()


def test_writers_do_not_queue_behind_a_database_locked_by_another_connection(tmp_path: Path) -> None:
    """K writers wait out one busy timeout together, not K in turn; then the spool drains by itself."""
    path, busy, k = tmp_path / "t.db", 0.5, 8
    log = TrafficLog(path, busy_timeout_s=busy)
    assert log.record(rec(0))
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    start, results = threading.Barrier(k + 1), []

    def write(i: int) -> None:
        start.wait()
        results.append(log.record(rec(i)))

    threads = [threading.Thread(target=write, args=(i,)) for i in range(1, k + 1)]
    for t in threads:
        t.start()
    start.wait()
    began = time.monotonic()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - began
    assert results == [True] * k and log.failures == 0
    assert elapsed <= 2 * busy, f"{k} writers took {elapsed:.2f} s behind a {busy} s busy timeout"
    began = time.monotonic()
    assert log.record(rec(k + 1))  # the log is known locked: spooled at once, no wait
    assert time.monotonic() - began < busy / 2
    assert log.spooled == k + 1
    holder.execute("ROLLBACK")
    holder.close()
    eventually(lambda: not log.spool.pending() and log.count() == k + 2)
    assert sorted(r.id for r in log.records()) == sorted(f"r{i}" for i in range(k + 2))
    log.close()


def test_the_spool_is_drained_in_bounded_batches(tmp_path: Path) -> None:
    log = TrafficLog(tmp_path / "t.db", drain_batch=500)
    assert log.count() == 0  # opened with an empty spool
    log.spool.path.write_text("".join(json.dumps(log._row(rec(i))) + "\n" for i in range(1200)))
    statements: list[str] = []
    log._connection().conn.set_trace_callback(statements.append)
    assert log.drain() == 1200
    assert statements.count("COMMIT") == 3  # 500 + 500 + 200, each its own transaction
    assert log.count() == 1200 and not log.spool.pending()
    log.close()


def test_a_full_database_spools_until_there_is_room(tmp_path: Path) -> None:
    log = TrafficLog(tmp_path / "t.db")
    assert log.record(rec(0))
    conn = log._connection().conn  # the SQLite connection the log writes with
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own SQLITE_FULL: "database or disk is full"
    big = [LogRecord(id=f"big{i}", requested_model="auto", reason="x", stream=False, response="y" * 20_000) for i in range(3)]
    assert all(log.record(r) for r in big)
    assert log.spooled == 3 and log.count() == 1
    conn.execute("PRAGMA max_page_count = 1073741823")
    assert log.record(rec(1))
    eventually(lambda: log.count() == 5)
    assert log.failures == 0
    log.close()


def test_a_spool_left_by_a_killed_process_is_written_when_the_log_is_next_opened(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    TrafficLog(path).count()  # create the schema
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    script = textwrap.dedent(
        f"""
        import os
        from router.traffic_log import TrafficLog, LogRecord
        log = TrafficLog(r"{path}", busy_timeout_s=0.01)
        for i in range(20):
            assert log.record(LogRecord(id=f"r{{i}}", requested_model="auto", reason="x", stream=False))
        assert log.spooled == 20
        os._exit(9)  # no close, no drain, no atexit
        """
    )
    assert subprocess.run([sys.executable, "-c", script]).returncode == 9
    holder.execute("ROLLBACK")
    holder.close()
    with TrafficLog(path) as log:
        eventually(lambda: log.count() == 20)  # the drainer writes it as soon as the log is opened
        assert not log.spool.pending()


def test_a_partial_spool_line_is_skipped_with_a_warning_and_a_redone_drain_adds_no_duplicate(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "t.db"
    with TrafficLog(path) as log:
        log.record(rec(0))
        row = log._row(rec(1))
    spool = LogSpool(path.with_name(path.name + ".spool"))
    spool.append(row)
    spool.append(log._row(rec(0)))  # already in the log: a drain cut short before truncation, redone
    with spool.path.open("ab") as fh:
        fh.write(b'{"id": "r9", "requested_mo')  # a process killed mid-append
    with caplog.at_level(logging.WARNING, logger="router"), TrafficLog(path) as reopened:
        reopened.count()
        eventually(lambda: not reopened.spool.pending())
        assert sorted(r.id for r in reopened.records()) == ["r0", "r1"]
    assert "partial line" in caplog.text


def test_without_a_spool_a_refused_row_is_counted_lost(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    log = TrafficLog(path, busy_timeout_s=0.01, spool=False)
    log.count()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    assert log.record(rec(1)) is False and log.failures == 1
    holder.execute("ROLLBACK")
    holder.close()
    log.close()


@pytest.mark.slow
def test_kill_nine_under_load_loses_no_acknowledged_record(tmp_path: Path) -> None:
    from evals.log_durability import kill_nine_run

    result = kill_nine_run(tmp_path, requests=120, clients=6)
    print(result)
    assert result["acknowledged_at_kill"] >= 0.7 * 120 and result["spooled_at_kill"] > 0  # the spool was exercised
    assert result["lost"] == 0
    assert result["rows_after_restart"] >= result["acknowledged"]
