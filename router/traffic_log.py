"""The traffic log: one SQLite row per request, the data ``finetune/`` trains from.

Durability and isolation from serving are the design constraints:

* each request is one ``INSERT`` in its own transaction, so a row is either whole or absent;
* WAL with ``synchronous=NORMAL`` means a committed row survives a crash of this process;
* :meth:`TrafficLog.record` never raises. A row the database will not take now (locked past the
  busy timeout, disk full) goes to a local spool (:mod:`router.log_spool`), fsynced before the
  request's response is returned, and is written to the database by a later ``record`` once it
  takes writes again; only a row that not even the spool could take is counted in ``failures``
  (``lost``) and dropped, with a warning.

Secrets that look like API keys are always scrubbed from stored text; other PII optionally, with
the same matcher routing uses (:class:`hybrid_common.pii.PiiMatcher`), so the log blanks exactly
what routing would have kept on the machine.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hybrid_common.pii import PiiMatcher
from router.log_spool import LogSpool

__all__ = ["LogRecord", "TrafficLog"]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 4
# Version 1: requests. Version 2 adds feedback (client.feedback) and quality_samples (live evidence
# for the quality gate). Version 3 gives a quality sample the answer it scored (shadow: the local
# answer; audit: the cloud's), what it cost and a detail line. Version 4 records which classifier
# registry version classified a request. Each migration step only adds; a log
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

# Always scrubbed, whatever the configuration: API keys must never reach the log.
_SECRETS = re.compile(r"\b(?:sk|pk|rk)-[A-Za-z0-9_-]{16,}\b|\bAKIA[0-9A-Z]{16}\b|(?i:bearer)\s+[A-Za-z0-9._~+/-]{16,}=*")
_JSON_COLUMNS = frozenset({"messages", "params", "metadata"})


@dataclass
class LogRecord:
    """One logged request; ``messages``, ``params`` and ``metadata`` are stored as JSON."""

    id: str
    requested_model: str
    reason: str
    stream: bool
    created_at: str = ""
    tier: str | None = None
    backend: str | None = None
    served_model: str | None = None
    category: str | None = None
    confidence: float | None = None
    detail: str | None = None
    fallback_from: str | None = None
    fallback_reason: str | None = None
    adapter_version: str | None = None
    classifier_version: str | None = None
    messages: list[dict[str, Any]] | None = None
    params: dict[str, Any] | None = None
    response: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    classify_ms: float | None = None
    cost_usd: float | None = None
    cloud_cost_usd_estimate: float | None = None
    error_type: str | None = None
    error_message: str | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    redacted: bool = False


_COLUMNS = [f.name for f in fields(LogRecord)]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _record(row: sqlite3.Row) -> LogRecord:
    return _record_from(dict(row))


def _record_from(values: dict[str, Any]) -> LogRecord:
    for column in _JSON_COLUMNS:
        if values[column] is not None:
            values[column] = json.loads(values[column])
    values["stream"] = bool(values["stream"])
    values["redacted"] = bool(values["redacted"])
    return LogRecord(**values)


class TrafficLog:
    """Append-only request log in SQLite; safe to share between threads."""

    def __init__(
        self,
        path: str | Path,
        *,
        store_messages: bool = True,
        redact_patterns: Mapping[str, str] | PiiMatcher | None = None,
        spool: bool = True,
        busy_timeout_s: float = 5.0,
        synchronous: str = "normal",
    ) -> None:
        self.path = Path(path)
        self.failures = 0
        """Rows that could not be written at all (not even to the spool): lost."""
        self.spooled = 0
        """Rows that went to the spool because the database refused them (since this object was made)."""
        self.spool: LogSpool | None = LogSpool(self.path.with_name(self.path.name + ".spool")) if spool else None
        self._busy_timeout_s = busy_timeout_s
        if synchronous not in ("normal", "full"):
            raise ValueError(f"synchronous must be 'normal' or 'full', not {synchronous!r}")
        self._synchronous = synchronous.upper()
        self._store_messages = store_messages
        if redact_patterns is None or isinstance(redact_patterns, PiiMatcher):
            self._redact = redact_patterns
        else:
            self._redact = PiiMatcher(redact_patterns) if redact_patterns else None
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=self._busy_timeout_s, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                conn.close()
                raise sqlite3.DatabaseError(f"{self.path} has log schema {version}; this library reads up to {SCHEMA_VERSION}")
            conn.executescript(_SCHEMA)
            if version < 2:
                if version == 1:
                    logger.info("traffic log %s: migrating schema 1 -> 2 (feedback, quality samples)", self.path)
                conn.executescript(_SCHEMA_V2)
            if version < 3:
                if version in (1, 2):
                    logger.info("traffic log %s: migrating schema %d -> 3 (answers and cost of quality samples)", self.path, max(version, 2))
                conn.executescript(_SCHEMA_V3)
            if version < 4:
                if version in (1, 2, 3):
                    logger.info("traffic log %s: migrating schema %d -> 4 (classifier version per request)", self.path, version)
                conn.executescript(_SCHEMA_V4)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self._conn = conn
            self._drain_spool_into(conn)  # rows an earlier process could not write, e.g. before a crash
        return self._conn

    def _drain_spool_into(self, conn: sqlite3.Connection) -> None:
        if self.spool is None or not self.spool.pending():
            return
        try:
            drained = self.spool.drain(lambda rows: self._insert(conn, rows, ignore_existing=True))
        except Exception as err:  # still refused: the rows stay spooled for a later write
            logger.debug("traffic log spool not drained yet: %s", err)
            return
        if drained:
            logger.warning("traffic log: %d spooled record(s) written to %s", drained, self.path)

    def _scrub(self, value: Any) -> Any:
        """Redact every string inside ``value`` (before JSON encoding, so structure survives)."""
        if isinstance(value, str):
            value = _SECRETS.sub("[SECRET]", value)
            return self._redact.redact(value) if self._redact else value
        if isinstance(value, list):
            return [self._scrub(v) for v in value]
        if isinstance(value, dict):
            return {k: self._scrub(v) for k, v in value.items()}
        return value

    def _row(self, record: LogRecord) -> dict[str, Any]:
        row = asdict(record)
        row["created_at"] = record.created_at or _now()
        row["stream"] = int(record.stream)
        row["redacted"] = int(bool(self._redact))
        if not self._store_messages:
            row["messages"] = None
            row["response"] = None
        for column in ("messages", "response", "error_message"):
            row[column] = self._scrub(row[column])
        for column in _JSON_COLUMNS:
            if row[column] is not None:
                row[column] = json.dumps(row[column], ensure_ascii=False, default=str)
        return row

    def record(self, record: LogRecord) -> bool:
        """Write one row atomically, or spool it durably; False (and ``failures`` + 1) if neither worked."""
        try:
            row = self._row(record)
        except Exception as err:  # the log must never fail a request, whatever went wrong
            return self._lost(err)
        try:
            with self._lock:
                self._insert(self._connection(), [row], ignore_existing=False)
        except sqlite3.IntegrityError as err:  # e.g. the id is already logged: a bug, not an outage
            return self._lost(err)
        except Exception as err:  # locked past the busy timeout, disk full, cannot open: spool it
            return self._spool_row(row, err)
        self._drain_spool()
        return True

    def _insert(self, conn: sqlite3.Connection, rows: list[dict[str, Any]], *, ignore_existing: bool) -> None:
        verb = "INSERT OR IGNORE" if ignore_existing else "INSERT"
        placeholders = ", ".join(f":{c}" for c in _COLUMNS)
        sql = f"{verb} INTO requests ({', '.join(_COLUMNS)}) VALUES ({placeholders})"
        if len(rows) == 1:
            conn.execute(sql, rows[0])
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(sql, rows)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _lost(self, err: object) -> bool:
        self.failures += 1
        logger.warning("traffic log write failed; the record is lost (%s total): %s", self.failures, err)
        return False

    def _spool_row(self, row: dict[str, Any], err: BaseException) -> bool:
        if self.spool is None:
            return self._lost(err)
        try:
            self.spool.append(row)
        except OSError as spool_err:
            return self._lost(f"{err}; the spool {self.spool.path} failed too: {spool_err}")
        self.spooled += 1
        logger.warning(
            "traffic log write failed (%s); the record is kept in %s and written to the log when it takes writes again "
            "(%d spooled so far)", err, self.spool.path, self.spooled,
        )  # fmt: skip
        return True

    def _drain_spool(self) -> None:
        """Write spooled rows once the database takes writes again (a ``stat`` when there are none)."""
        if self.spool is None or not self.spool.pending():
            return
        with self._lock:
            try:
                conn = self._connection()
            except Exception as err:  # noqa: BLE001 - still refused: the rows stay spooled
                logger.debug("traffic log spool not drained yet: %s", err)
                return
            self._drain_spool_into(conn)

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            conn = self._connection()
            conn.row_factory = sqlite3.Row
            try:
                return conn.execute(sql, args).fetchall()
            finally:
                conn.row_factory = None

    def count(self) -> int:
        return int(self._read("SELECT COUNT(*) AS n FROM requests")[0]["n"])

    def records(self, *, tier: str | None = None, category: str | None = None, limit: int | None = None) -> Iterator[LogRecord]:
        """Logged requests, oldest first, optionally filtered."""
        where, args = [], []
        for column, value in (("tier", tier), ("category", category)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        sql = "SELECT * FROM requests" + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY rowid"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        for row in self._read(sql, tuple(args)):
            yield _record(row)

    def pages(self, *, page_size: int = 1000, after_rowid: int = 0) -> Iterator[list[tuple[int, LogRecord]]]:
        """All logged requests oldest first as ``(rowid, record)`` pages, read by rowid ranges.

        Memory stays bounded by one page however long the log, and the lock that writers need is
        held for one page at a time, never for the whole scan (unlike :meth:`records`).
        """
        last = after_rowid
        while True:
            rows = self._read("SELECT rowid AS _rowid, * FROM requests WHERE rowid > ? ORDER BY rowid LIMIT ?", (last, page_size))
            if not rows:
                return
            page = []
            for row in rows:
                values = dict(row)
                rowid = values.pop("_rowid")
                page.append((rowid, _record_from(values)))
            last = page[-1][0]
            yield page

    def summary(self) -> list[dict[str, Any]]:
        """Requests, latency and cost per tier and category."""
        rows = self._read(
            """SELECT tier, category, COUNT(*) AS requests, AVG(latency_ms) AS mean_latency_ms,
                      SUM(COALESCE(cost_usd, 0)) AS cost_usd,
                      SUM(COALESCE(cloud_cost_usd_estimate, 0)) AS cloud_cost_usd_estimate,
                      SUM(error_type IS NOT NULL) AS errors
               FROM requests GROUP BY tier, category ORDER BY tier, category"""
        )
        return [dict(r) for r in rows]

    # -- feedback and live quality samples (schema 2) ----------------------------------------------

    def record_feedback(
        self, request_id: str, *, score: float | None, accepted: bool | None, correction: str | None
    ) -> None:
        """Store feedback on a logged request (raises if it cannot: the caller asked for it explicitly)."""
        row = {
            "request_id": request_id,
            "created_at": _now(),
            "score": score,
            "accepted": None if accepted is None else int(accepted),
            "correction": self._scrub(correction) if correction is not None else None,
        }
        with self._lock:
            self._connection().execute(
                "INSERT INTO feedback (request_id, created_at, score, accepted, correction) "
                "VALUES (:request_id, :created_at, :score, :accepted, :correction)",
                row,
            )

    def feedback(self) -> dict[str, dict[str, Any]]:
        """The latest feedback per request id: ``{"score", "accepted", "correction", "created_at"}``."""
        rows = self._read("SELECT * FROM feedback ORDER BY id")
        latest: dict[str, dict[str, Any]] = {}
        for r in rows:
            entry = dict(r)
            entry["accepted"] = None if entry["accepted"] is None else bool(entry["accepted"])
            latest[entry.pop("request_id")] = entry
        return latest

    def get(self, request_id: str) -> LogRecord | None:
        """One logged request by id."""
        rows = self._read("SELECT * FROM requests WHERE id = ?", (request_id,))
        return _record(rows[0]) if rows else None

    def record_quality_sample(
        self,
        *,
        kind: str,
        category: str,
        served_key: str,
        similarity: float,
        degenerate: bool,
        request_id: str | None = None,
        answer: str | None = None,
        cost_usd: float | None = None,
        detail: str | None = None,
    ) -> bool:
        """One scored live sample (shadow, audit, feedback); never raises, like :meth:`record`.

        ``answer`` is the text that was scored against the logged one (kept, scrubbed, only when
        messages are stored), so the pair can be read back like any logged answer.
        """
        stored = self._scrub(answer) if answer is not None and self._store_messages else None
        try:
            with self._lock:
                self._connection().execute(
                    "INSERT INTO quality_samples (created_at, request_id, kind, category, served_key, similarity, degenerate,"
                    " answer, cost_usd, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (_now(), request_id, kind, category, served_key, float(similarity), int(degenerate), stored, cost_usd, detail),
                )
            return True
        except Exception as err:
            self.failures += 1
            logger.warning("traffic log: quality sample not written (%s total failures): %s", self.failures, err)
            return False

    def quality_samples(self, *, per_category: int) -> list[dict[str, Any]]:
        """The newest ``per_category`` samples of every (served_key, category), oldest first."""
        rows = self._read(
            """SELECT * FROM (
                   SELECT *, ROW_NUMBER() OVER (PARTITION BY served_key, category ORDER BY id DESC) AS rank
                   FROM quality_samples)
               WHERE rank <= ? ORDER BY id""",
            (per_category,),
        )
        return [dict(r) for r in rows]

    def close(self) -> None:
        self._drain_spool()
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> TrafficLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
