"""The traffic log: one SQLite row per request, the data ``finetune/`` trains from.

Durability and isolation from serving are the design constraints:

* each request is one ``INSERT`` in its own transaction, so a row is either whole or absent;
* WAL with ``synchronous=NORMAL`` means a committed row survives a crash of this process;
* :meth:`TrafficLog.record` never raises, and waits for the database at most ``busy_timeout_s``
  once. A row the database will not take now (locked past the busy timeout, disk full, server
  down) goes to a local spool (:mod:`router.log_spool`), fsynced before the request's response is
  returned; only a row that not even the spool could take is counted in ``failures`` (``lost``)
  and dropped, with a warning.
* A refused write opens a circuit: later writes go to the spool at once instead of each waiting
  out the busy timeout in turn. A background drainer retries the database every
  ``retry_interval_s`` (reconnecting to a restarted PostgreSQL server), closes the circuit, and
  writes the spool back in batches of ``drain_batch`` rows, off the request path.
* Reads (and feedback, which the caller asked for explicitly) cannot be spooled: while the
  database is unreachable they raise :class:`~hybrid_common.errors.LogUnavailableError` (HTTP 503).

Secrets that look like API keys are always scrubbed from stored text; other PII optionally, with
the same matcher routing uses (:class:`hybrid_common.pii.PiiMatcher`), so the log blanks exactly
what routing would have kept on the machine.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from hybrid_common.pii import PiiMatcher
from router.log_spool import LogSpool
from router.log_stores import SCHEMA_VERSION, LogStore, is_database_url, is_unavailable, masked_url, open_store

__all__ = ["LogRecord", "TrafficLog"]

logger = logging.getLogger(__name__)

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
    cached_from: str | None = None
    """A cache hit: the id of the request whose answer was served (schema 6)."""
    caller: str | None = None
    """Who sent the request over HTTP (a fingerprint of its API key, never the key; schema 7): feedback
    on the answer is taken from the same caller only."""
    topic_start: int | None = None
    """A later turn of a conversation: the index of the message that opened its topic (schema 8); a
    retrain renders the local prompt from it as served (``local.history = "topic"``)."""


_COLUMNS = [f.name for f in fields(LogRecord)]
_SELECT = ", ".join(f'"{c}"' for c in _COLUMNS)  # quoted: "user" is a reserved word in PostgreSQL


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _record_from(values: dict[str, Any]) -> LogRecord:
    values.pop("seq", None)  # PostgreSQL's cursor column
    for column in _JSON_COLUMNS:
        if values[column] is not None:
            values[column] = json.loads(values[column])
    values["stream"] = bool(values["stream"])
    values["redacted"] = bool(values["redacted"])
    return LogRecord(**values)


_PERIOD_WIDTH = {"hour": 13, "day": 10}  # characters of 'YYYY-MM-DDTHH' a period keeps


def _period_width(by: str) -> int:
    if by not in _PERIOD_WIDTH:
        raise ValueError(f"by must be 'hour' or 'day', not {by!r}")
    return _PERIOD_WIDTH[by]


def _day_window(since: str | None, until: str | None, column: str = "created_at") -> tuple[str, tuple[str, ...]]:
    """The WHERE clause bounding an ISO-timestamp ``column`` to the days ``since`` .. ``until`` (inclusive)."""
    where, args = [], []
    if since is not None:
        where.append(f"{column} >= ?")
        args.append(since[:10])
    if until is not None:
        where.append(f"{column} < ?")
        args.append(until[:10] + "T99")  # the whole last day: timestamps are ISO 8601 strings
    return ("WHERE " + " AND ".join(where) if where else ""), tuple(args)


def _hour_window(since: str | None, until: str | None) -> tuple[str, tuple[str, ...]]:
    """The WHERE clause bounding the hourly tables to the days ``since`` .. ``until`` (inclusive)."""
    return _day_window(since, until, "hour")


def _latest_feedback(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Feedback rows (oldest first) as the latest entry per request id, ``accepted`` as a bool."""
    latest: dict[str, dict[str, Any]] = {}
    for r in rows:
        entry = dict(r)
        entry["accepted"] = None if entry["accepted"] is None else bool(entry["accepted"])
        latest[entry.pop("request_id")] = entry
    return latest


class TrafficLog:
    """Append-only request log in SQLite (a path) or PostgreSQL (a ``postgresql://`` URL); safe to
    share between threads, and, on PostgreSQL, between processes and machines."""

    def __init__(
        self,
        location: str | Path,
        *,
        spool_path: str | Path | None = None,
        store_messages: bool = True,
        redact_patterns: Mapping[str, str] | PiiMatcher | None = None,
        spool: bool = True,
        busy_timeout_s: float = 5.0,
        synchronous: str = "normal",
        retain_days: float | None = None,
        retry_interval_s: float = 1.0,
        drain_batch: int = 500,
    ) -> None:
        self.url = str(location) if is_database_url(location) else None
        self.path = Path(location) if self.url is None else Path(spool_path or "traffic-log")
        """The SQLite file; for a PostgreSQL log, where its local spool is kept."""
        self.failures = 0
        """Rows that could not be written at all (not even to the spool): lost."""
        self.spooled = 0
        """Rows that went to the spool because the database refused them (since this object was made)."""
        spool_file = Path(spool_path) if spool_path is not None else self.path.with_name(self.path.name + ".spool")
        self.spool: LogSpool | None = LogSpool(spool_file) if spool else None
        self._busy_timeout_s = busy_timeout_s
        if synchronous not in ("normal", "full"):
            raise ValueError(f"synchronous must be 'normal' or 'full', not {synchronous!r}")
        self._synchronous = synchronous.upper()
        self._retain_days = retain_days
        self._next_prune = 0.0  # monotonic time of the next retention pass (the first write runs one)
        self._store_messages = store_messages
        if redact_patterns is None or isinstance(redact_patterns, PiiMatcher):
            self._redact = redact_patterns
        else:
            self._redact = PiiMatcher(redact_patterns) if redact_patterns else None
        self._lock = threading.Lock()
        self._store: LogStore | None = None
        self._retry_interval_s = retry_interval_s
        self._drain_batch = drain_batch
        self._down: str | None = None
        """Why the database refused, while the circuit is open (writes then spool without trying it)."""
        self._drainer: threading.Thread | None = None
        self._drainer_guard = threading.Lock()  # taken after self._lock when both are held
        self._closing = threading.Event()

    @property
    def location(self) -> str:
        """The SQLite path, or the PostgreSQL URL with its password masked."""
        return self._store.location if self._store is not None else (self.url and masked_url(self.url)) or str(self.path)

    def _connection(self) -> LogStore:
        """The open store (call under ``self._lock``); opening it hands a leftover spool to the drainer."""
        if self._store is None:
            self._store = open_store(self.url or self.path, busy_timeout_s=self._busy_timeout_s, synchronous=self._synchronous)
            if self.spool is not None and self.spool.pending():
                self._kick()  # rows an earlier process could not write, e.g. before a crash
        return self._store

    @contextlib.contextmanager
    def _using(self) -> Iterator[LogStore]:
        """The store, under the lock. A database that cannot be reached or written opens the circuit and
        raises :class:`~hybrid_common.errors.LogUnavailableError` (HTTP 503, not a 500); a connection lost
        for good (a server restart) is dropped, so the next use reconnects."""
        with self._lock:
            try:
                yield self._connection()
            except Exception as err:
                self._forget_broken_store()
                if not is_unavailable(err):
                    raise
                self._trip(err)
                from hybrid_common.errors import LogUnavailableError

                raise LogUnavailableError(
                    f"the traffic log {self.location} is unavailable: {err}", location=self.location,
                    retry_after_s=max(1.0, self._retry_interval_s),
                ) from err  # fmt: skip

    def _forget_broken_store(self) -> None:
        if self._store is not None and self._store.broken:
            with contextlib.suppress(Exception):
                self._store.close()
            self._store = None

    def _trip(self, err: BaseException) -> None:
        """Open the circuit: writes spool at once until the drainer finds the database taking writes again."""
        if self._down is None:
            kept = f"records are kept in {self.spool.path}" if self.spool is not None else "records are lost (no spool)"
            logger.warning(
                "traffic log %s refused a write (%s); %s until it takes writes again (retried every %.1f s)",
                self.location, err, kept, self._retry_interval_s,
            )  # fmt: skip
        self._down = f"{type(err).__name__}: {err}"
        self._kick()

    def _pending(self) -> bool:
        return self.spool is not None and self.spool.pending()

    def _kick(self) -> None:
        """Start the background drainer unless it is running (or the log is closing)."""
        with self._drainer_guard:
            if self._drainer is None and not self._closing.is_set():
                self._drainer = threading.Thread(target=self._drain_loop, name="traffic-log-drainer", daemon=True)
                self._drainer.start()

    def _drain_loop(self) -> None:
        """Retry the database every ``retry_interval_s`` while it refuses, and empty the spool; then stop."""
        rest = self._down is not None  # a database that just refused gets the interval before the next try
        while not (rest and self._closing.wait(self._retry_interval_s)) and not self._closing.is_set():
            self.drain()
            with self._drainer_guard:
                if self._down is None and not self._pending():
                    self._drainer = None
                    return
            rest = True
        with self._drainer_guard:
            self._drainer = None

    def drain(self) -> int:
        """Retry a database that refused writes, then write the spooled rows to it; rows written.

        At most ``drain_batch`` rows per transaction, each under the lock on its own, so a request's
        write waits for one batch at most. The background drainer calls this (and :meth:`close`);
        if the database refuses again the rows stay spooled, and a redone drain skips the ones
        already written.
        """
        was_down = self._down is not None
        if not was_down and not self._pending():
            return 0
        try:
            # Probed before the spool's lock is taken, so writers spooling meanwhile never wait behind a drain
            # that the database refuses.
            with self._using() as store:
                store.probe()
                self._down = None
        except Exception as err:  # noqa: BLE001 - still refused: the circuit stays open
            self._trip(err)
            logger.debug("traffic log %s still refuses writes: %s", self.location, err)
            return 0
        if was_down:
            logger.warning("traffic log %s takes writes again", self.location)
        if self.spool is None or not self.spool.pending():
            return 0
        try:
            drained = self.spool.drain(self._insert_spooled)
        except Exception as err:  # noqa: BLE001 - the rows stay spooled; an outage has opened the circuit
            logger.debug("traffic log spool not drained yet: %s", err)
            return 0
        if drained:
            logger.warning("traffic log: %d spooled record(s) written to %s", drained, self.location)
        return drained

    def _insert_spooled(self, rows: list[dict[str, Any]]) -> None:
        for start in range(0, len(rows), self._drain_batch):
            # Rows spooled by an older release lack the newer columns: those default to NULL.
            batch = [{c: r.get(c) for c in _COLUMNS} for r in rows[start : start + self._drain_batch]]
            with self._using() as store:
                store.insert_requests(_COLUMNS, batch, ignore_existing=True)

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
        """Write one row atomically, or spool it durably; False (and ``failures`` + 1) if neither worked.

        Waits for the database at most ``busy_timeout_s``, once: while the circuit is open the row
        goes straight to the spool.
        """
        try:
            row = self._row(record)
        except Exception as err:  # the log must never fail a request, whatever went wrong
            return self._lost(err)
        outcome = self._insert(row) if self._down is None else None
        if isinstance(outcome, BaseException):  # e.g. the id is already logged: a bug, not an outage
            return self._lost(outcome)
        if outcome is None:  # refused or known down: spool it
            return self._spool_row(row)
        if self._pending():
            self._kick()  # e.g. rows another process spooled: drained in the background
        if self._retain_days is not None and time.monotonic() >= self._next_prune:
            self._next_prune = time.monotonic() + 3600
            threading.Thread(target=self._prune_quietly, name="traffic-log-retention", daemon=True).start()
        return True

    def _insert(self, row: dict[str, Any]) -> bool | BaseException | None:
        """Insert one request row: True once written, the error if the database rejects the row itself,
        None if the database refused (or the lock stayed taken past ``busy_timeout_s``)."""
        wait_s = max(self._busy_timeout_s, 0.1)  # another thread's write holds the lock for milliseconds
        if not self._lock.acquire(timeout=wait_s):
            logger.warning("traffic log busy for over %.1f s; the record is spooled", wait_s)
            return None
        try:
            if self._down is not None:  # a writer this one waited behind found the database down
                return None
            store = self._connection()
            store.insert_requests(_COLUMNS, [row], ignore_existing=False)
            return True
        except Exception as err:
            if self._store is not None and isinstance(err, self._store.integrity_errors):
                return err
            self._forget_broken_store()
            self._trip(err)  # under the lock, so the writers queued behind this one spool at once
            return None
        finally:
            self._lock.release()

    def _prune_quietly(self) -> None:
        try:
            assert self._retain_days is not None
            self.prune(self._retain_days)
        except Exception as err:  # noqa: BLE001 - retention retries next hour; serving is unaffected
            logger.warning("traffic log retention pass failed: %s", err)

    def import_records(self, records: Iterable[LogRecord], *, batch: int = 10_000) -> int:
        """Bulk-write ``records`` (another log's rows, a synthesised log), ``batch`` per transaction;
        rows whose id is already logged are skipped. Returns the rows handed in. Raises on failure:
        an import is not a request and is not spooled."""
        handed, rows = 0, []
        for record in records:
            rows.append(self._row(record))
            handed += 1
            if len(rows) >= batch:
                with self._using() as store:
                    store.insert_requests(_COLUMNS, rows, ignore_existing=True)
                rows = []
        if rows:
            with self._using() as store:
                store.insert_requests(_COLUMNS, rows, ignore_existing=True)
        return handed

    def _lost(self, err: object) -> bool:
        self.failures += 1
        logger.warning("traffic log write failed; the record is lost (%s total): %s", self.failures, err)
        return False

    def _spool_row(self, row: dict[str, Any]) -> bool:
        """Keep a row the database did not take, fsynced, and have the drainer write it later."""
        reason = self._down or "the log was busy"
        if self.spool is None:
            return self._lost(reason)
        try:
            self.spool.append(row)
        except OSError as spool_err:
            return self._lost(f"{reason}; the spool {self.spool.path} failed too: {spool_err}")
        self.spooled += 1
        logger.debug("traffic log record %s spooled (%d so far): %s", row.get("id"), self.spooled, reason)
        self._kick()
        return True

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with self._using() as store:
            return store.query(sql, args)

    def _rowid(self) -> str:
        with self._using() as store:
            return store.rowid

    def count(self) -> int:
        return int(self._read("SELECT COUNT(*) AS n FROM requests")[0]["n"])

    def records(
        self,
        *,
        tier: str | None = None,
        category: str | None = None,
        limit: int | None = None,
        since: str | None = None,
        until: str | None = None,
    ) -> Iterator[LogRecord]:
        """Logged requests, oldest first, optionally filtered (``since`` / ``until``: ISO times, ``until`` exclusive).

        Reads every match at once: for a long log prefer :meth:`pages`.
        """
        where, args = [], []
        for column, value in (("tier", tier), ("category", category)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        for clause, value in (("created_at >= ?", since), ("created_at < ?", until)):
            if value is not None:
                where.append(clause)
                args.append(value)
        sql = f"SELECT {_SELECT} FROM requests" + (f" WHERE {' AND '.join(where)}" if where else "") + f" ORDER BY {self._rowid()}"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        for row in self._read(sql, tuple(args)):
            yield _record_from(row)

    def pages(
        self, *, page_size: int = 1000, after_rowid: int = 0, since: str | None = None
    ) -> Iterator[list[tuple[int, LogRecord]]]:
        """Logged requests oldest first as ``(rowid, record)`` pages, read by rowid ranges.

        Memory stays bounded by one page however long the log, and the lock that writers need is
        held for one page at a time, never for the whole scan (unlike :meth:`records`). Resume
        from a cursor with ``after_rowid`` (the last rowid seen); ``since`` (ISO time) skips older rows.
        """
        last = after_rowid
        window = " AND created_at >= ?" if since is not None else ""
        rowid = self._rowid()
        sql = f"SELECT {rowid} AS _rowid, {_SELECT} FROM requests WHERE {rowid} > ?{window} ORDER BY {rowid} LIMIT ?"
        while True:
            args: tuple[Any, ...] = (last, since, page_size) if since is not None else (last, page_size)
            rows = self._read(sql, args)
            if not rows:
                return
            page = []
            for row in rows:
                values = dict(row)
                cursor = values.pop("_rowid")
                page.append((cursor, _record_from(values)))
            last = page[-1][0]
            yield page

    def summary(self, *, since: str | None = None, until: str | None = None) -> list[dict[str, Any]]:
        """Requests, latency and cost per tier and category, from the running totals (no scan).

        ``since`` / ``until`` (``YYYY-MM-DD``, inclusive) bound the days counted; rows that
        retention has deleted are still counted.
        """
        where, args = [], []
        if since is not None:
            where.append("day >= ?")
            args.append(since[:10])
        if until is not None:
            where.append("day <= ?")
            args.append(until[:10])
        rows = self._read(
            f"""SELECT NULLIF(tier, '') AS tier, NULLIF(category, '') AS category, CAST(SUM(requests) AS BIGINT) AS requests,
                       SUM(latency_ms_sum) / NULLIF(SUM(latency_n), 0) AS mean_latency_ms,
                       SUM(cost_usd) AS cost_usd, SUM(cloud_cost_usd_estimate) AS cloud_cost_usd_estimate,
                       CAST(SUM(errors) AS BIGINT) AS errors
                FROM request_totals {"WHERE " + " AND ".join(where) if where else ""}
                GROUP BY tier, category ORDER BY tier, category""",
            tuple(args),
        )
        return [dict(r) for r in rows]

    def reason_counts(self, *, since: str | None = None, until: str | None = None) -> dict[str, int]:
        """Requests per routing reason (``local_busy`` spills among them). Unlike :meth:`summary`
        this reads the requests themselves (over the ``created_at`` index when bounded), so it counts
        only rows retention has kept and costs a scan of the days asked for."""
        where, args = _day_window(since, until)
        rows = self._read(f"SELECT reason, CAST(COUNT(*) AS BIGINT) AS n FROM requests {where} GROUP BY reason ORDER BY reason", args)
        return {r["reason"]: int(r["n"]) for r in rows}

    def hourly(self, *, since: str | None = None, until: str | None = None, by: str = "hour") -> list[dict[str, Any]]:
        """Requests, cost, all-cloud estimate, cache hits and errors per period and tier, from the hourly
        running totals (schema 9; no scan): the time series of ``router report``.

        ``by`` is ``"hour"`` (periods ``YYYY-MM-DDTHH``, UTC) or ``"day"`` (``YYYY-MM-DD``); ``since`` /
        ``until`` bound the days as in :meth:`summary`. Rows deleted by retention before the log
        reached schema 9 have no hourly totals (their days still count in :meth:`summary`).
        """
        where, args = _hour_window(since, until)
        rows = self._read(
            f"""SELECT substr(hour, 1, {_period_width(by)}) AS period, NULLIF(tier, '') AS tier,
                       CAST(SUM(requests) AS BIGINT) AS requests, SUM(cost_usd) AS cost_usd,
                       SUM(cloud_cost_usd_estimate) AS cloud_cost_usd_estimate,
                       CAST(SUM(cache_hits) AS BIGINT) AS cache_hits, CAST(SUM(errors) AS BIGINT) AS errors
                FROM request_hourly {where} GROUP BY 1, 2 ORDER BY 1, 2""",
            args,
        )
        return [dict(r) for r in rows]

    def latency_histogram(self, *, since: str | None = None, until: str | None = None, by: str = "hour") -> list[dict[str, Any]]:
        """Requests per latency bucket (:mod:`router.latency_histogram`), period and tier, from the running
        histogram (schema 9; no scan); :func:`router.latency_histogram.percentile` reads percentiles from it."""
        where, args = _hour_window(since, until)
        rows = self._read(
            f"""SELECT substr(hour, 1, {_period_width(by)}) AS period, NULLIF(tier, '') AS tier, bucket, CAST(SUM(n) AS BIGINT) AS n
                FROM latency_hourly {where} GROUP BY 1, 2, 3 ORDER BY 1, 2, 3""",
            args,
        )
        return [dict(r) for r in rows]

    def quality_samples_between(self, *, since: str | None = None, until: str | None = None) -> list[dict[str, Any]]:
        """Every scored sample and vote recorded in the days ``since`` .. ``until`` (inclusive), oldest first,
        without the answers' text: a sampled few per request at most, so a window's worth is small."""
        where, args = _day_window(since, until)
        rows = self._read(
            f"""SELECT id, created_at, request_id, kind, category, served_key, similarity, degenerate, cost_usd
                FROM quality_samples {where} ORDER BY id""",
            args,
        )
        return [dict(r) for r in rows]

    def prune(self, retain_days: float, *, batch: int = 5000) -> int:
        """Delete requests (and their feedback and quality samples) older than ``retain_days``; rows deleted.

        In batches, each its own short transaction, so writers wait at most one batch. The running
        totals keep counting what was deleted.
        """
        cutoff = (datetime.now(timezone.utc) - timedelta(days=retain_days)).isoformat()
        deleted = 0
        while True:
            with self._lock:
                store = self._connection()
                n = store.execute(
                    f"DELETE FROM requests WHERE {store.rowid} IN (SELECT {store.rowid} FROM requests WHERE created_at < ? LIMIT ?)",
                    (cutoff, batch),
                )
            deleted += n
            if n < batch:
                break
        with self._lock:
            store = self._connection()
            store.execute("DELETE FROM feedback WHERE created_at < ?", (cutoff,))
            store.execute("DELETE FROM quality_samples WHERE created_at < ?", (cutoff,))
        if deleted:
            logger.info("traffic log %s: %d requests older than %s days deleted (retention)", self.location, deleted, retain_days)
        return deleted

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
        with self._using() as store:
            store.execute(
                "INSERT INTO feedback (request_id, created_at, score, accepted, correction) "
                "VALUES (:request_id, :created_at, :score, :accepted, :correction)",
                row,
            )

    def feedback(self) -> dict[str, dict[str, Any]]:
        """The latest feedback per request id: ``{"score", "accepted", "correction", "created_at"}``."""
        return _latest_feedback(self._read("SELECT * FROM feedback ORDER BY id"))

    def feedback_since(self, after_id: int = 0, *, limit: int | None = None) -> tuple[int, dict[str, dict[str, Any]]]:
        """Feedback newer than ``after_id`` (the feedback table's id), latest per request, and the last id read.

        For a reader that keeps what it read (finetune's log pool): feedback can correct or reject a
        row read long ago. Each entry also carries ``rowid``, the request's :meth:`pages` cursor
        (None once retention deleted it). ``limit`` bounds the feedback rows read; call again with
        the id returned to read on (it equals ``after_id`` when there was nothing new).
        """
        rowid = self._rowid()
        sql = (f"SELECT f.*, r.{rowid} AS rowid FROM feedback f LEFT JOIN requests r ON r.id = f.request_id "
               f"WHERE f.id > ? ORDER BY f.id")  # fmt: skip
        rows = self._read(sql + (f" LIMIT {int(limit)}" if limit is not None else ""), (after_id,))
        return (int(rows[-1]["id"]) if rows else after_id), _latest_feedback(rows)

    def feedback_between(self, after_rowid: int, last_rowid: int) -> dict[str, dict[str, Any]]:
        """The latest feedback on each request whose cursor is in ``(after_rowid, last_rowid]``: one page's."""
        rowid = self._rowid()
        return _latest_feedback(self._read(
            f"SELECT * FROM feedback WHERE request_id IN (SELECT id FROM requests WHERE {rowid} > ? AND {rowid} <= ?) ORDER BY id",
            (after_rowid, last_rowid),
        ))  # fmt: skip

    def get(self, request_id: str) -> LogRecord | None:
        """One logged request by id."""
        rows = self._read(f"SELECT {_SELECT} FROM requests WHERE id = ?", (request_id,))
        return _record_from(rows[0]) if rows else None

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
            with self._using() as store:
                store.execute(
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
        """The newest ``per_category`` scored samples and votes of every (served_key, category), oldest first.

        Votes (``kind = 'feedback'``) are a window of their own, with only the latest vote on each
        response: repeated votes on one answer neither count twice nor push other evidence out.
        """
        rows = self._read(
            """SELECT * FROM (
                   SELECT *, ROW_NUMBER() OVER (PARTITION BY served_key, category, kind = 'feedback' ORDER BY id DESC) AS rank
                   FROM quality_samples
                   WHERE kind NOT LIKE 'canary%' AND (kind <> 'feedback' OR id IN (SELECT MAX(id) FROM quality_samples WHERE kind = 'feedback' GROUP BY request_id))
               ) AS ranked
               WHERE rank <= ? ORDER BY id""",
            (per_category,),
        )
        return [dict(r) for r in rows]

    def canary_samples(self, *, since: str, served_keys: Sequence[str]) -> list[dict[str, Any]]:
        """A canary's logged observations (kinds ``canary_answer`` and ``canary_audit``) of the given
        models since ``since`` (ISO time), oldest first: what a restarted router resumes it from."""
        if not served_keys:
            return []
        marks = ", ".join("?" for _ in served_keys)
        rows = self._read(
            f"SELECT kind, category, served_key, similarity, degenerate, detail FROM quality_samples "
            f"WHERE kind LIKE 'canary%' AND created_at >= ? AND served_key IN ({marks}) ORDER BY id",
            (since, *served_keys),
        )
        return [dict(r) for r in rows]

    def close(self) -> None:
        """Stop the drainer, write what is spooled if the database takes it now, and disconnect.

        The log stays usable: a later call reconnects.
        """
        self._closing.set()
        drainer = self._drainer
        if drainer is not None:
            drainer.join()
        self.drain()
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None
        self._closing.clear()

    def __enter__(self) -> TrafficLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def copy_log(source: TrafficLog, destination: TrafficLog, *, page_size: int = 5000, progress: bool = False) -> dict[str, int]:
    """Copy ``source`` into ``destination`` (e.g. a SQLite log into PostgreSQL), page by page.

    Requests keep their ids and times (the destination's running totals count them) and ones the
    destination already has are skipped, so an interrupted copy can simply be run again. Feedback
    and quality samples are copied only into a destination that has none yet, as they have no
    identity of their own to deduplicate by.
    """
    from tqdm import tqdm

    copied = {"requests": 0, "feedback": 0, "quality samples": 0}
    bar = tqdm(total=source.count(), unit="row", desc="copying requests", disable=not progress)
    for page in source.pages(page_size=page_size):
        destination.import_records((record for _, record in page), batch=page_size)
        copied["requests"] += len(page)
        bar.update(len(page))
    bar.close()
    extras = (
        ("feedback", "SELECT request_id, created_at, score, accepted, correction FROM feedback ORDER BY id"),
        ("quality samples", "SELECT created_at, request_id, kind, category, served_key, similarity, degenerate, answer, cost_usd, detail "
                            "FROM quality_samples ORDER BY id"),
    )  # fmt: skip
    for what, select in extras:
        table = "feedback" if what == "feedback" else "quality_samples"
        if destination._read(f"SELECT COUNT(*) AS n FROM {table}")[0]["n"]:
            logger.warning("copy: %s already has %s; not copied again", destination.location, what)
            continue
        rows = source._read(select)
        if rows:
            columns = list(rows[0])
            with destination._lock:
                store = destination._connection()
                for row in rows:
                    store.execute(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(':' + c for c in columns)})", row)
        copied[what] = len(rows)
    return copied
