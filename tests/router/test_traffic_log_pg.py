"""The traffic log on a real PostgreSQL server: the same API as SQLite, shared by several processes.

The server is a throwaway cluster that ``.ci/start-postgres`` starts (as the ``postgres`` user;
PostgreSQL refuses root), or the one ``ROUTER_TEST_POSTGRES_URL`` names. Each test gets its own
database. These tests never skip: without a server they fail, saying why.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from router.traffic_log import LogRecord, TrafficLog, copy_log

pytestmark = pytest.mark.slow
_START_POSTGRES = Path(__file__).resolve().parents[2] / ".ci" / "start-postgres"


@dataclass
class Cluster:
    """A PostgreSQL cluster of one test's own, which it may stop and start again."""

    data: Path
    port: int
    url: str

    def _pg_ctl(self, *args: str) -> None:
        pg_ctl = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))[-1]
        command = " ".join([pg_ctl, "-D", str(self.data), "-w", *args])
        as_postgres = ["su", "postgres", "-s", "/bin/sh", "-c"] if os.geteuid() == 0 else ["sh", "-c"]
        subprocess.run([*as_postgres, command], check=True, capture_output=True)

    def stop(self) -> None:
        self._pg_ctl("-m", "fast", "stop")

    def start(self) -> None:
        options = f"-p {self.port} -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off"
        self._pg_ctl("-l", str(self.data / "server.log"), "-o", f"'{options}'", "start")


@pytest.fixture
def own_pg() -> Iterator[Cluster]:
    """A throwaway cluster (``.ci/start-postgres``) this test may stop: the shared one serves the others."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    data = Path(f"/tmp/hybrid-router-pg-{uuid.uuid4().hex[:12]}")  # not under pytest's tmp: postgres must reach it
    done = subprocess.run([str(_START_POSTGRES), str(data), str(port)], capture_output=True, text=True)
    assert done.returncode == 0, f"no PostgreSQL cluster of this test's own: {done.stderr.strip()}"
    cluster = Cluster(data, port, done.stdout.strip().splitlines()[-1])
    yield cluster
    try:
        cluster.stop()
    except subprocess.CalledProcessError:
        pass  # already stopped
    shutil.rmtree(data, ignore_errors=True)


def eventually(check: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def rec(i: int, day: str | None = None, **kw) -> LogRecord:
    created = f"{day}T12:00:00.000+00:00" if day else ""
    return LogRecord(id=f"r{i}", requested_model="auto", reason="x", stream=False, created_at=created, **kw)


def test_the_same_log_api_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    old = (datetime.now(timezone.utc) - timedelta(days=40)).date().isoformat()
    today = datetime.now(timezone.utc).date().isoformat()
    with TrafficLog(pg_url, spool_path=tmp_path / "spool") as log:
        assert log.record(rec(1, old, tier="cloud", category="ORDER", latency_ms=100.0, cost_usd=0.5, user="alice",
                              messages=[{"role": "user", "content": "hi sk-abcdefghijklmnopqrstuvwx"}]))  # fmt: skip
        assert log.record(rec(2, today, tier="local", category="ORDER", latency_ms=300.0, error_type="X"))
        assert log.record(rec(2, today)) is False and log.failures == 1  # a duplicate id is a bug, not an outage: not spooled
        got = log.get("r1")
        assert got.user == "alice" and got.messages[0]["content"] == "hi [SECRET]" and got.stream is False
        summary = {(r["tier"], r["category"]): r for r in log.summary()}
        assert summary[("cloud", "ORDER")]["requests"] == 1 and summary[("local", "ORDER")]["errors"] == 1
        assert isinstance(summary[("cloud", "ORDER")]["requests"], int)
        assert [r.id for r in log.records(since=today)] == ["r2"]
        assert [[r.id for _, r in page] for page in log.pages(page_size=1)] == [["r1"], ["r2"]]
        log.record_feedback("r2", score=None, accepted=False, correction="better")
        assert log.feedback()["r2"]["accepted"] is False
        log.record_quality_sample(kind="audit", category="ORDER", served_key="k", similarity=0.8, degenerate=False)
        assert [s["similarity"] for s in log.quality_samples(per_category=5)] == [0.8]
        assert log.prune(30) == 1 and log.count() == 1
        assert sum(r["requests"] for r in log.summary()) == 2  # retention keeps the totals
        assert "postgresql://" in log.location


def test_several_processes_share_one_postgresql_log(pg_url: str) -> None:
    TrafficLog(pg_url, spool=False).close()  # schema first, so the writers race only on rows
    script = textwrap.dedent(
        """
        import sys
        from router.traffic_log import LogRecord, TrafficLog
        url, tag = sys.argv[1], sys.argv[2]
        with TrafficLog(url, spool=False) as log:
            for i in range(150):
                assert log.record(LogRecord(id=f"{tag}-{i}", requested_model="auto", reason="x", stream=False, tier="cloud", category="ORDER"))
        """
    )
    writers = [subprocess.Popen([sys.executable, "-c", script, pg_url, f"p{n}"]) for n in range(3)]
    assert [w.wait(120) for w in writers] == [0, 0, 0]
    with TrafficLog(pg_url, spool=False) as log:
        assert log.count() == 450
        assert [r["requests"] for r in log.summary()] == [450]  # the trigger counted every row exactly once


def test_postgresql_down_spools_and_the_rows_arrive_when_it_is_back(pg_url: str, tmp_path: Path) -> None:
    import psycopg

    log = TrafficLog(pg_url, spool_path=tmp_path / "pg.spool", busy_timeout_s=1)
    assert log.record(rec(1))
    name = pg_url.rsplit("/", 1)[1]
    with psycopg.connect(pg_url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
    assert log.record(rec(2))  # the connection is gone: spooled, durable
    assert log.spooled == 1 and log.spool.pending()
    log.close()
    with TrafficLog(pg_url, spool_path=tmp_path / "pg.spool") as reopened:  # a new connection drains the spool
        assert sorted(r.id for r in reopened.records()) == ["r1", "r2"]
        assert not reopened.spool.pending()


def test_router_log_copy_moves_a_sqlite_log_into_postgresql(pg_url: str, tmp_path: Path) -> None:
    sqlite_path = tmp_path / "traffic.sqlite3"
    with TrafficLog(sqlite_path) as log:
        for i in range(25):
            log.record(rec(i, tier="cloud", category="ORDER", cost_usd=0.01))
        log.record_feedback("r3", score=1.0, accepted=True, correction=None)
    cli = Path(sys.executable).with_name("router")
    done = subprocess.run([str(cli), "log", "copy", pg_url, "--from", str(sqlite_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "25 requests" in done.stdout and "1 feedback" in done.stdout
    again = subprocess.run([str(cli), "log", "copy", pg_url, "--from", str(sqlite_path)], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr  # a re-run adds nothing
    with TrafficLog(pg_url, spool=False) as log:
        assert log.count() == 25 and log.feedback()["r3"]["accepted"] is True
        assert [r["requests"] for r in log.summary()] == [25]
    stats = subprocess.run([str(cli), "stats", "--log", pg_url], capture_output=True, text=True)
    assert stats.returncode == 0 and "25 requests" in stats.stdout


def test_copy_log_skips_what_is_already_there(pg_url: str, tmp_path: Path) -> None:
    with TrafficLog(tmp_path / "a.sqlite3") as src, TrafficLog(pg_url, spool=False) as dst:
        src.record(rec(1))
        dst.record(rec(1))
        assert copy_log(src, dst)["requests"] == 1
        assert dst.count() == 1


def test_a_router_writes_its_log_to_postgresql(pg_url: str, tmp_path: Path, make_config) -> None:
    from router import Client

    config = make_config(log={"url": pg_url, "path": tmp_path / "local.sqlite3"})
    with Client(config) as client:
        r = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Where is my order?"}], max_tokens=8)
    with TrafficLog(pg_url, spool=False) as log:
        row = log.get(r.id)
    assert row is not None and row.tier == r.router.tier and row.response == r.choices[0].message.content
    assert not (tmp_path / "local.sqlite3").exists()  # only the spool's name lives there


def test_retrain_reads_its_examples_from_a_postgresql_log(pg_url: str, tmp_path: Path) -> None:
    from finetune.config import RetrainConfig
    from finetune.datasets import examples_from_log
    from router import RouterConfig

    with TrafficLog(pg_url, spool=False) as log:
        for i in range(3):
            log.record(rec(i, tier="cloud", category="ORDER", finish_reason="stop", response=f"Answer {i}.",
                           messages=[{"role": "user", "content": f"Question {i}?"}]))  # fmt: skip
    with_password = pg_url.replace("://postgres@", "://postgres:s3cret-pw@")  # trust auth ignores it; the router must hide it
    assert with_password != pg_url
    config = RetrainConfig.from_router_config(RouterConfig(log={"url": with_password, "path": tmp_path / "x.sqlite3"}))
    assert config.log_location == with_password
    examples = examples_from_log(config.log_location, categories=["ORDER"])
    assert sorted(e.answer for e in examples) == ["Answer 0.", "Answer 1.", "Answer 2."]
    assert "s3cret-pw" not in repr(config) and "s3cret-pw" not in TrafficLog(with_password, spool=False).location


def test_the_log_reconnects_after_postgresql_restarts_and_drains_its_spool(own_pg: Cluster, tmp_path: Path) -> None:
    from router.errors import LogUnavailableError

    log = TrafficLog(own_pg.url, spool_path=tmp_path / "pg.spool", busy_timeout_s=1)
    assert log.record(rec(1))
    own_pg.stop()
    assert all(log.record(rec(i)) for i in range(2, 6))  # the server is down: spooled, durable, no exception
    assert (log.spooled, log.failures) == (4, 0) and log.spool.pending()
    with pytest.raises(LogUnavailableError) as down:  # a read cannot be spooled: a clear 503, not a driver error
        log.get("r1")
    assert down.value.status_code == 503 and down.value.code == "log_unavailable" and down.value.retry_after_s >= 1
    own_pg.start()
    assert log.record(rec(6))
    eventually(lambda: not log.spool.pending())  # reconnected and drained, with no restart of the log
    assert sorted(r.id for r in log.records()) == [f"r{i}" for i in range(1, 7)]
    assert log.get("r1") is not None and log.failures == 0
    log.close()
    with TrafficLog(own_pg.url, spool=False) as fresh:  # in the table, as another process sees it
        assert fresh.count() == 6


def test_feedback_over_http_is_a_503_while_the_postgresql_log_is_down(own_pg: Cluster, tmp_path: Path) -> None:
    import httpx

    from router import Client, RouterConfig
    from tests.conftest import serving

    with TrafficLog(own_pg.url, spool=False) as log:
        log.record(rec(1, tier="cloud"))
    config = RouterConfig(
        local={"registry_path": None}, cloud={"preimport": False}, warmup="lazy",
        log={"url": own_pg.url, "path": tmp_path / "local.sqlite3"},
    )  # fmt: skip
    with Client(config) as client, serving(client, warm=False) as url, httpx.Client(base_url=url, timeout=60) as http:
        assert http.post("/v1/feedback", json={"response_id": "r1", "accepted": True}).status_code == 204
        own_pg.stop()
        down = http.post("/v1/feedback", json={"response_id": "r1", "accepted": False})
        assert down.status_code == 503, down.text
        assert down.json()["error"]["code"] == "log_unavailable" and own_pg.url not in down.text
        own_pg.start()
        eventually(lambda: http.post("/v1/feedback", json={"response_id": "r1", "score": 0.5}).status_code == 204)
    with TrafficLog(own_pg.url, spool=False) as log:
        assert log.feedback()["r1"]["score"] == 0.5


def test_a_schema_8_postgresql_log_is_migrated_and_its_hourly_totals_backfilled(pg_url: str) -> None:
    """Schema 9 on PostgreSQL: the migration backfills the hourly totals and latency histogram, then the trigger keeps them."""
    import psycopg

    from tests.router.test_traffic_log import _running, _scan, _varied

    with TrafficLog(pg_url, spool=False) as log:
        log.import_records(_varied(120))
    before = _scan(pg_url)
    with psycopg.connect(pg_url, autocommit=True) as db:  # back to what release 8 wrote
        db.execute("DROP TRIGGER request_hourly_on_insert ON requests; DROP FUNCTION router_hourly_totals(); "
                   "DROP TABLE request_hourly; DROP TABLE latency_hourly; UPDATE router_schema SET version = 8")  # fmt: skip
    with TrafficLog(pg_url, spool=False) as log:
        assert log.count() == 120
        assert _running(log) == ({k: v for k, v in before[0].items() if v}, before[1])
        log.import_records(_varied(150)[120:])
        assert isinstance(log.hourly()[0]["requests"], int) and isinstance(log.latency_histogram()[0]["n"], int)
    with psycopg.connect(pg_url, autocommit=True) as db:
        assert db.execute("SELECT version FROM router_schema").fetchone()[0] == 9
    scanned = _scan(pg_url)
    with TrafficLog(pg_url, spool=False) as log:
        assert _running(log) == ({k: v for k, v in scanned[0].items() if v}, scanned[1])
        assert sum(r["requests"] for r in log.hourly(since="2026-01-02", until="2026-01-02")) == sum(
            r["requests"] for r in log.summary(since="2026-01-02", until="2026-01-02"))
