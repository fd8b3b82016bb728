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
