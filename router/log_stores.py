"""Where the traffic log's rows live: SQLite (the embedded default) or PostgreSQL (``log.url``).

:class:`~router.traffic_log.TrafficLog` speaks one SQL, written SQLite-style (``?`` and ``:name``
parameters); a store opens the database, brings its schema to :data:`SCHEMA_VERSION`, and runs
that SQL, translating parameters for PostgreSQL. What differs between the two is kept here:
the schema and its migrations, the running-totals trigger, the row cursor column (``rowid`` /
``seq``) and how a batch is inserted.

PostgreSQL is what several router processes on several machines share; every schema change there
runs in one transaction under an advisory lock, so processes starting together migrate once.
"""

from __future__ import annotations

import abc
import logging
import re
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from router.latency_histogram import bucket_sql

__all__ = [
    "SCHEMA_VERSION", "LogStore", "PostgresStore", "SqliteStore", "is_database_url", "is_unavailable", "masked_url", "open_store",
]

logger = logging.getLogger("router.traffic_log")

SCHEMA_VERSION = 9
# Version 1: requests. Version 2 adds feedback (client.feedback) and quality_samples (live evidence
# for the quality gate). Version 3 gives a quality sample the answer it scored (shadow: the local
# answer; audit: the cloud's), what it cost and a detail line. Version 4 records which classifier
# registry version classified a request. Version 5 keeps running totals per day, tier and
# category (``request_totals``, filled by a trigger in the inserting transaction) so ``router
# stats`` reads a few hundred rows instead of scanning the log, and still counts rows that
# retention has since deleted. Version 6 records, on a response-cache hit, the request whose
# answer was served (``cached_from``). Each migration step only adds; a log
# written by an older release opens, is migrated in place, and keeps every row.
_SCHEMA_V2 = """
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    score REAL,
    accepted INTEGER,
    correction TEXT
);
CREATE INDEX IF NOT EXISTS feedback_request ON feedback (request_id);
CREATE TABLE IF NOT EXISTS quality_samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at TEXT NOT NULL,
    request_id TEXT,
    kind TEXT NOT NULL,
    category TEXT NOT NULL,
    served_key TEXT,
    similarity REAL NOT NULL,
    degenerate INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS quality_samples_key ON quality_samples (served_key, category, id);
"""
_SCHEMA_V3 = """
ALTER TABLE quality_samples ADD COLUMN answer TEXT;
ALTER TABLE quality_samples ADD COLUMN cost_usd REAL;
ALTER TABLE quality_samples ADD COLUMN detail TEXT;
"""
_SCHEMA_V4 = """
ALTER TABLE requests ADD COLUMN classifier_version TEXT;
"""
_SCHEMA_V5 = """
BEGIN;
CREATE TABLE IF NOT EXISTS request_totals (
    day TEXT NOT NULL,
    tier TEXT NOT NULL,
    category TEXT NOT NULL,
    requests INTEGER NOT NULL,
    latency_ms_sum REAL NOT NULL,
    latency_n INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    cloud_cost_usd_estimate REAL NOT NULL,
    errors INTEGER NOT NULL,
    PRIMARY KEY (day, tier, category)
);
INSERT OR IGNORE INTO request_totals
    SELECT substr(created_at, 1, 10), COALESCE(tier, ''), COALESCE(category, ''), COUNT(*),
           SUM(COALESCE(latency_ms, 0)), COUNT(latency_ms), SUM(COALESCE(cost_usd, 0)),
           SUM(COALESCE(cloud_cost_usd_estimate, 0)), SUM(error_type IS NOT NULL)
    FROM requests GROUP BY 1, 2, 3;
CREATE TRIGGER IF NOT EXISTS request_totals_on_insert AFTER INSERT ON requests BEGIN
    INSERT INTO request_totals VALUES (
        substr(NEW.created_at, 1, 10), COALESCE(NEW.tier, ''), COALESCE(NEW.category, ''), 1,
        COALESCE(NEW.latency_ms, 0), NEW.latency_ms IS NOT NULL, COALESCE(NEW.cost_usd, 0),
        COALESCE(NEW.cloud_cost_usd_estimate, 0), NEW.error_type IS NOT NULL)
    ON CONFLICT (day, tier, category) DO UPDATE SET
        requests = requests + 1,
        latency_ms_sum = latency_ms_sum + excluded.latency_ms_sum,
        latency_n = latency_n + excluded.latency_n,
        cost_usd = cost_usd + excluded.cost_usd,
        cloud_cost_usd_estimate = cloud_cost_usd_estimate + excluded.cloud_cost_usd_estimate,
        errors = errors + excluded.errors;
END;
COMMIT;
"""
_SCHEMA_V6 = """
ALTER TABLE requests ADD COLUMN cached_from TEXT;
"""
# Version 7 records who sent a request over HTTP (a fingerprint of its API key), so feedback is
# taken from that caller only.
_SCHEMA_V7 = """
ALTER TABLE requests ADD COLUMN caller TEXT;
"""
# Version 8 records, for a later turn of a conversation, which message opened its topic, so a
# retrain renders the prompt the local model was given (local.history = "topic").
_SCHEMA_V8 = """
ALTER TABLE requests ADD COLUMN topic_start INTEGER;
"""
# Version 9 keeps running totals per hour as well (``request_hourly``: requests, cost, all-cloud
# estimate, cache hits, errors per hour, tier and category) and a latency histogram per hour and
# tier over fixed log-spaced buckets (``latency_hourly``, see router.latency_histogram), so
# ``router report`` draws time series and latency percentiles without scanning the log. The same
# SQL fills them on both databases (a CASE for the bucket, CASE for the counts); the migration
# backfills them from the rows the log still holds.
_BUCKET = bucket_sql("latency_ms")
_HOURLY_BACKFILL = f"""
INSERT INTO request_hourly
    SELECT substr(created_at, 1, 13), COALESCE(tier, ''), COALESCE(category, ''), COUNT(*), SUM(COALESCE(cost_usd, 0)),
           SUM(COALESCE(cloud_cost_usd_estimate, 0)), SUM(CASE WHEN cached_from IS NULL THEN 0 ELSE 1 END),
           SUM(CASE WHEN error_type IS NULL THEN 0 ELSE 1 END)
    FROM requests GROUP BY 1, 2, 3;
INSERT INTO latency_hourly
    SELECT substr(created_at, 1, 13), COALESCE(tier, ''), {_BUCKET}, COUNT(*)
    FROM requests WHERE latency_ms IS NOT NULL GROUP BY 1, 2, 3;
"""
_HOURLY_ROW = """substr(NEW.created_at, 1, 13), COALESCE(NEW.tier, ''), COALESCE(NEW.category, ''), 1, COALESCE(NEW.cost_usd, 0),
        COALESCE(NEW.cloud_cost_usd_estimate, 0), CASE WHEN NEW.cached_from IS NULL THEN 0 ELSE 1 END,
        CASE WHEN NEW.error_type IS NULL THEN 0 ELSE 1 END"""
_LATENCY_ROW = f"substr(NEW.created_at, 1, 13), COALESCE(NEW.tier, ''), {bucket_sql('NEW.latency_ms')}, 1"
_SCHEMA_V9 = f"""
BEGIN;
CREATE TABLE IF NOT EXISTS request_hourly (
    hour TEXT NOT NULL,
    tier TEXT NOT NULL,
    category TEXT NOT NULL,
    requests INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    cloud_cost_usd_estimate REAL NOT NULL,
    cache_hits INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    PRIMARY KEY (hour, tier, category)
);
CREATE TABLE IF NOT EXISTS latency_hourly (
    hour TEXT NOT NULL,
    tier TEXT NOT NULL,
    bucket INTEGER NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (hour, tier, bucket)
);
{_HOURLY_BACKFILL}
CREATE TRIGGER IF NOT EXISTS request_hourly_on_insert AFTER INSERT ON requests BEGIN
    INSERT INTO request_hourly VALUES ({_HOURLY_ROW})
    ON CONFLICT (hour, tier, category) DO UPDATE SET
        requests = requests + 1,
        cost_usd = cost_usd + excluded.cost_usd,
        cloud_cost_usd_estimate = cloud_cost_usd_estimate + excluded.cloud_cost_usd_estimate,
        cache_hits = cache_hits + excluded.cache_hits,
        errors = errors + excluded.errors;
END;
CREATE TRIGGER IF NOT EXISTS latency_hourly_on_insert AFTER INSERT ON requests WHEN NEW.latency_ms IS NOT NULL BEGIN
    INSERT INTO latency_hourly VALUES ({_LATENCY_ROW})
    ON CONFLICT (hour, tier, bucket) DO UPDATE SET n = n + 1;
END;
COMMIT;
"""
_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    requested_model TEXT NOT NULL,
    tier TEXT,
    backend TEXT,
    served_model TEXT,
    category TEXT,
    confidence REAL,
    reason TEXT NOT NULL,
    detail TEXT,
    fallback_from TEXT,
    fallback_reason TEXT,
    adapter_version TEXT,
    stream INTEGER NOT NULL,
    messages TEXT,
    params TEXT,
    response TEXT,
    finish_reason TEXT,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    latency_ms REAL,
    ttft_ms REAL,
    classify_ms REAL,
    cost_usd REAL,
    cloud_cost_usd_estimate REAL,
    error_type TEXT,
    error_message TEXT,
    user TEXT,
    metadata TEXT,
    redacted INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS requests_created_at ON requests (created_at);
CREATE INDEX IF NOT EXISTS requests_tier_category ON requests (tier, category);
"""


# PostgreSQL starts at version 5, written out whole (SQLite's schema above is version 1 plus the
# additive steps, frozen as released, which is why the column list appears twice).
_PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS router_schema (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS requests (
    seq BIGSERIAL UNIQUE,
    id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    requested_model TEXT NOT NULL,
    tier TEXT,
    backend TEXT,
    served_model TEXT,
    category TEXT,
    confidence DOUBLE PRECISION,
    reason TEXT NOT NULL,
    detail TEXT,
    fallback_from TEXT,
    fallback_reason TEXT,
    adapter_version TEXT,
    stream INTEGER NOT NULL,
    messages TEXT,
    params TEXT,
    response TEXT,
    finish_reason TEXT,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    latency_ms DOUBLE PRECISION,
    ttft_ms DOUBLE PRECISION,
    classify_ms DOUBLE PRECISION,
    cost_usd DOUBLE PRECISION,
    cloud_cost_usd_estimate DOUBLE PRECISION,
    error_type TEXT,
    error_message TEXT,
    "user" TEXT,
    metadata TEXT,
    redacted INTEGER NOT NULL DEFAULT 0,
    classifier_version TEXT
);
CREATE INDEX IF NOT EXISTS requests_created_at ON requests (created_at);
CREATE INDEX IF NOT EXISTS requests_tier_category ON requests (tier, category);
CREATE TABLE IF NOT EXISTS feedback (
    id BIGSERIAL PRIMARY KEY,
    request_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    score DOUBLE PRECISION,
    accepted INTEGER,
    correction TEXT
);
CREATE INDEX IF NOT EXISTS feedback_request ON feedback (request_id);
CREATE TABLE IF NOT EXISTS quality_samples (
    id BIGSERIAL PRIMARY KEY,
    created_at TEXT NOT NULL,
    request_id TEXT,
    kind TEXT NOT NULL,
    category TEXT NOT NULL,
    served_key TEXT,
    similarity DOUBLE PRECISION NOT NULL,
    degenerate INTEGER NOT NULL,
    answer TEXT,
    cost_usd DOUBLE PRECISION,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS quality_samples_key ON quality_samples (served_key, category, id);
CREATE TABLE IF NOT EXISTS request_totals (
    day TEXT NOT NULL,
    tier TEXT NOT NULL,
    category TEXT NOT NULL,
    requests BIGINT NOT NULL,
    latency_ms_sum DOUBLE PRECISION NOT NULL,
    latency_n BIGINT NOT NULL,
    cost_usd DOUBLE PRECISION NOT NULL,
    cloud_cost_usd_estimate DOUBLE PRECISION NOT NULL,
    errors BIGINT NOT NULL,
    PRIMARY KEY (day, tier, category)
);
CREATE OR REPLACE FUNCTION router_request_totals() RETURNS trigger AS $$
BEGIN
    INSERT INTO request_totals VALUES (
        substr(NEW.created_at, 1, 10), COALESCE(NEW.tier, ''), COALESCE(NEW.category, ''), 1,
        COALESCE(NEW.latency_ms, 0), CASE WHEN NEW.latency_ms IS NULL THEN 0 ELSE 1 END, COALESCE(NEW.cost_usd, 0),
        COALESCE(NEW.cloud_cost_usd_estimate, 0), CASE WHEN NEW.error_type IS NULL THEN 0 ELSE 1 END)
    ON CONFLICT (day, tier, category) DO UPDATE SET
        requests = request_totals.requests + 1,
        latency_ms_sum = request_totals.latency_ms_sum + excluded.latency_ms_sum,
        latency_n = request_totals.latency_n + excluded.latency_n,
        cost_usd = request_totals.cost_usd + excluded.cost_usd,
        cloud_cost_usd_estimate = request_totals.cloud_cost_usd_estimate + excluded.cloud_cost_usd_estimate,
        errors = request_totals.errors + excluded.errors;
    RETURN NULL;
END $$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS request_totals_on_insert ON requests;
CREATE TRIGGER request_totals_on_insert AFTER INSERT ON requests FOR EACH ROW EXECUTE FUNCTION router_request_totals();
"""
# Later versions append their steps here: (version, SQL), applied in order inside one transaction.
_PG_MIGRATIONS: list[tuple[int, str]] = [
    (6, "ALTER TABLE requests ADD COLUMN IF NOT EXISTS cached_from TEXT"),
    (7, "ALTER TABLE requests ADD COLUMN IF NOT EXISTS caller TEXT"),
    (8, "ALTER TABLE requests ADD COLUMN IF NOT EXISTS topic_start INTEGER"),
    (9, f"""
CREATE TABLE IF NOT EXISTS request_hourly (
    hour TEXT NOT NULL,
    tier TEXT NOT NULL,
    category TEXT NOT NULL,
    requests BIGINT NOT NULL,
    cost_usd DOUBLE PRECISION NOT NULL,
    cloud_cost_usd_estimate DOUBLE PRECISION NOT NULL,
    cache_hits BIGINT NOT NULL,
    errors BIGINT NOT NULL,
    PRIMARY KEY (hour, tier, category)
);
CREATE TABLE IF NOT EXISTS latency_hourly (
    hour TEXT NOT NULL,
    tier TEXT NOT NULL,
    bucket INTEGER NOT NULL,
    n BIGINT NOT NULL,
    PRIMARY KEY (hour, tier, bucket)
);
{_HOURLY_BACKFILL}
CREATE OR REPLACE FUNCTION router_hourly_totals() RETURNS trigger AS $$
BEGIN
    INSERT INTO request_hourly VALUES ({_HOURLY_ROW})
    ON CONFLICT (hour, tier, category) DO UPDATE SET
        requests = request_hourly.requests + 1,
        cost_usd = request_hourly.cost_usd + excluded.cost_usd,
        cloud_cost_usd_estimate = request_hourly.cloud_cost_usd_estimate + excluded.cloud_cost_usd_estimate,
        cache_hits = request_hourly.cache_hits + excluded.cache_hits,
        errors = request_hourly.errors + excluded.errors;
    IF NEW.latency_ms IS NOT NULL THEN
        INSERT INTO latency_hourly VALUES ({_LATENCY_ROW})
        ON CONFLICT (hour, tier, bucket) DO UPDATE SET n = latency_hourly.n + 1;
    END IF;
    RETURN NULL;
END $$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS request_hourly_on_insert ON requests;
CREATE TRIGGER request_hourly_on_insert AFTER INSERT ON requests FOR EACH ROW EXECUTE FUNCTION router_hourly_totals();
"""),
]


def is_database_url(location: str | Path) -> bool:
    """Whether ``location`` names a database server (``postgresql://...``) rather than a SQLite file."""
    return isinstance(location, str) and location.split("://", 1)[0] in ("postgresql", "postgres")


def masked_url(url: str) -> str:
    """The URL with its password replaced, for messages and logs."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


# SQLite's codes for a database that cannot be written now; its generic SQLITE_ERROR (a wrong
# statement, a failed migration) is an OperationalError too, but a bug: retrying will not help.
_SQLITE_UNAVAILABLE = frozenset({
    sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_NOMEM, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_FULL, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PROTOCOL,
})  # fmt: skip


def is_unavailable(err: BaseException) -> bool:
    """Whether ``err`` says the database cannot be reached or written now (server down, file locked,
    disk full), which a later attempt may not meet, rather than that a row or statement is wrong."""
    if isinstance(err, sqlite3.Error):
        return (getattr(err, "sqlite_errorcode", 0) & 0xFF) in _SQLITE_UNAVAILABLE
    psycopg = sys.modules.get("psycopg")  # only a PostgreSQL log has imported it
    return psycopg is not None and isinstance(err, psycopg.OperationalError)


class LogStore(abc.ABC):
    """One database the log lives in. Thread-safe only under the caller's lock (TrafficLog holds one)."""

    location: str
    """The SQLite path, or the server URL with its password masked: for messages."""
    rowid: str
    """The monotonically increasing row column that cursors read by."""
    integrity_errors: tuple[type[BaseException], ...]

    @abc.abstractmethod
    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> int:
        """Run one statement in its own transaction; rows affected."""

    @abc.abstractmethod
    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Rows as dicts."""

    @abc.abstractmethod
    def insert_requests(self, sql_columns: Sequence[str], rows: list[dict[str, Any]], *, ignore_existing: bool) -> None:
        """Insert request rows in one transaction (``ignore_existing``: skip ids already present)."""

    @abc.abstractmethod
    def probe(self) -> None:
        """Raise unless the database takes writes now: the log's circuit closes only after this passes."""

    @property
    def broken(self) -> bool:
        """Whether the connection is lost for good (a server restart): the log then opens a new one."""
        return False

    @abc.abstractmethod
    def close(self) -> None: ...


class SqliteStore(LogStore):
    """A SQLite file in WAL mode: one writer at a time, readers never blocked."""

    rowid = "rowid"
    integrity_errors = (sqlite3.IntegrityError,)

    def __init__(self, path: Path, *, busy_timeout_s: float, synchronous: str) -> None:
        self.path = path
        self.location = str(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=busy_timeout_s, check_same_thread=False, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
            self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        self.conn = conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"{self.path} has log schema {version}; this library reads up to {SCHEMA_VERSION}")
        if version == SCHEMA_VERSION:
            return  # nothing to write: a reader opens the log even while another process holds the write lock
        conn.executescript(_SCHEMA)
        steps = [(2, _SCHEMA_V2, "feedback, quality samples"), (3, _SCHEMA_V3, "answers and cost of quality samples"),
                 (4, _SCHEMA_V4, "classifier version per request"), (5, _SCHEMA_V5, "running totals for stats; one scan"),
                 (6, _SCHEMA_V6, "response cache hits"), (7, _SCHEMA_V7, "caller of each request"),
                 (8, _SCHEMA_V8, "topic of a conversation's later turn"),
                 (9, _SCHEMA_V9, "hourly totals and latency histograms for reports; one scan")]  # fmt: skip
        for target, script, what in steps:
            if version < target:
                if version >= 1:
                    logger.info("traffic log %s: migrating schema %d -> %d (%s)", self.path, max(version, target - 1), target, what)
                conn.executescript(script)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> int:
        return self.conn.execute(sql, params).rowcount

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        self.conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in self.conn.execute(sql, params).fetchall()]
        finally:
            self.conn.row_factory = None

    def insert_requests(self, sql_columns: Sequence[str], rows: list[dict[str, Any]], *, ignore_existing: bool) -> None:
        verb = "INSERT OR IGNORE" if ignore_existing else "INSERT"
        sql = f"{verb} INTO requests ({', '.join(sql_columns)}) VALUES ({', '.join(f':{c}' for c in sql_columns)})"
        if len(rows) == 1:
            self.conn.execute(sql, rows[0])
            return
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.executemany(sql, rows)
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def probe(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")  # takes the write lock (waiting up to the busy timeout), writes nothing
        self.conn.execute("ROLLBACK")

    def close(self) -> None:
        self.conn.close()


_NAMED = re.compile(r"(?<![:\w]):([a-z_]+)")


def _pg_sql(sql: str) -> str:
    """SQLite-style parameters (``?``, ``:name``) as psycopg's (``%s``, ``%(name)s``)."""
    return _NAMED.sub(r"%(\1)s", sql.replace("%", "%%").replace("?", "%s"))


class PostgresStore(LogStore):
    """A PostgreSQL database shared by any number of router processes (psycopg 3)."""

    rowid = "seq"

    def __init__(self, url: str, *, connect_timeout_s: float) -> None:
        try:
            import psycopg
            from psycopg.rows import dict_row
        except ImportError as err:
            from hybrid_common.base_errors import MissingDependencyError

            raise MissingDependencyError("psycopg[binary]", purpose="a PostgreSQL traffic log (log.url)") from err
        self.location = masked_url(url)
        self.integrity_errors = (psycopg.IntegrityError,)
        self._psycopg = psycopg
        self.conn = psycopg.connect(url, autocommit=True, row_factory=dict_row, connect_timeout=max(1, round(connect_timeout_s)))
        try:
            self._migrate()
        except BaseException:
            self.conn.close()
            raise

    def _migrate(self) -> None:
        with self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(hashtext('hybrid-router traffic log schema'))")
            exists = self.conn.execute("SELECT to_regclass('router_schema') IS NOT NULL AS found").fetchone()["found"]
            version = 0
            if exists:
                row = self.conn.execute("SELECT max(version) AS v FROM router_schema").fetchone()
                version = row["v"] or 0
            if version > SCHEMA_VERSION:
                raise self._psycopg.DatabaseError(f"{self.location} has log schema {version}; this library reads up to {SCHEMA_VERSION}")
            if version == 0:
                self.conn.execute(_PG_SCHEMA)
                version = 5  # the first PostgreSQL schema is SQLite's version 5
            for target, script in _PG_MIGRATIONS:
                if version < target:
                    logger.info("traffic log %s: migrating schema %d -> %d", self.location, version, target)
                    self.conn.execute(script)
                    version = target
            self.conn.execute("DELETE FROM router_schema")
            self.conn.execute("INSERT INTO router_schema (version) VALUES (%s)", (SCHEMA_VERSION,))

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> int:
        return self.conn.execute(_pg_sql(sql), params).rowcount

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return list(self.conn.execute(_pg_sql(sql), params).fetchall())

    def insert_requests(self, sql_columns: Sequence[str], rows: list[dict[str, Any]], *, ignore_existing: bool) -> None:
        columns = ", ".join(f'"{c}"' for c in sql_columns)
        sql = f"INSERT INTO requests ({columns}) VALUES ({', '.join(f'%({c})s' for c in sql_columns)})"
        if ignore_existing:
            sql += " ON CONFLICT (id) DO NOTHING"
        if len(rows) == 1:
            self.conn.execute(sql, rows[0])
            return
        with self.conn.transaction(), self.conn.cursor() as cursor:
            cursor.executemany(sql, rows)

    def probe(self) -> None:
        self.conn.execute("SELECT 1")

    @property
    def broken(self) -> bool:
        return bool(self.conn.broken or self.conn.closed)

    def close(self) -> None:
        self.conn.close()


def open_store(location: str | Path, *, busy_timeout_s: float, synchronous: str) -> LogStore:
    """The store for a SQLite path or a ``postgresql://`` URL, schema migrated."""
    if is_database_url(location):
        return PostgresStore(str(location), connect_timeout_s=busy_timeout_s)
    return SqliteStore(Path(location), busy_timeout_s=busy_timeout_s, synchronous=synchronous)
