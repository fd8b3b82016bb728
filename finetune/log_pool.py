"""The log pool: a traffic log's cleaned examples, kept between retrains so each reads only what is new.

Cleaning is the costly part of a dataset build (the degeneration guard judges every answer) and a
log only grows, so what cleaning kept (PII scrubbed, filtered, exact duplicates removed, the
first row of a prompt winning) is kept under ``<registry>/log_pool/<fingerprint>/`` with a cursor:
the last request row and the last feedback row read. An update reads the requests after the
cursor, re-derives the older rows that new feedback corrected or rejected, and forgets the rows
retention deleted. A cap keeps the examples with the smallest prompt hashes (a uniform sample that
does not depend on arrival order), decided before an answer is judged, so memory, and the
near-duplicate pass the snapshot runs over the pool, stay bounded whatever the log's size.

Whatever changes what the pool holds (the log, the filters, the categories, local answers, the
labelling classifier, the cap) is in the fingerprint, so a change starts a fresh pool. A pool
that is missing, unreadable or fails its checksum is read again from the log, with a warning,
never an error. One retrain at a time updates a pool.

Where it differs from reading the whole log: a row dropped as the duplicate of an earlier one is
not kept, so if feedback later rejects the earlier row the duplicate does not take its place (nor
does a prompt evicted by the cap come back when a pooled one is removed) until a full read; and on
PostgreSQL a row whose insert commits after a later row was read is missed likewise.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune.datasets import DatasetFilters, Example, _filter_reason, _label, _log_example, _scrubbed
from hybrid_common.errors import ArtifactError, ConfigError
from hybrid_common.files import MANIFEST_DIGEST_KEY, fsync_dir, read_manifest, sha256_file, write_lines_atomic, write_text_atomic
from hybrid_common.pii import PiiMatcher
from router.log_stores import is_database_url, masked_url
from router.traffic_log import LogRecord, TrafficLog

if TYPE_CHECKING:
    from finetune.config import RetrainConfig

__all__ = ["LogPool", "PoolUpdate"]

logger = logging.getLogger(__name__)

_FORMAT = "hybrid-router/log-pool"
_FORMAT_VERSION = 1
_POOL_FILE = "pool.jsonl"
_STATE_FILE = "state.json"
# Filters used only when a snapshot is split and near-deduplicated, not by cleaning: changing them
# must not throw away a pool (any other field, including one added later, starts a fresh pool).
_SNAPSHOT_ONLY_FILTERS = frozenset(
    {"near_duplicate_threshold", "shingle_words", "eval_percent", "max_eval_examples", "min_eval_per_category",
     "max_eval_per_category", "split_salt"}
)  # fmt: skip
_OVER_CAP = "over_pool_cap"
_NEW, _FULL = "new pool", "full read asked for"


@dataclass
class PoolUpdate:
    """What one :meth:`LogPool.update` read and changed."""

    after_rowid: int
    """The request cursor it read after (0: the whole log)."""
    rows_read: int = 0
    """Request rows read after the cursor."""
    feedback_rows: int = 0
    """Older rows read again because feedback on them arrived since the last update."""
    admitted: int = 0
    removed_by_feedback: int = 0
    removed_by_retention: int = 0
    full_read: bool = False
    reason: str = ""
    """Why the log was read from the start (a new pool, ``full``, an unreadable pool, a rewritten log)."""
    pool_size: int = 0


class LogPool:
    """The cleaned examples of one traffic log, updated incrementally; see the module docstring.

    ``root`` is the model registry directory; ``location`` the SQLite path or PostgreSQL URL.
    ``label_with`` is the classifier artifact that labels rows logged without a category (loaded
    only when such a row is read).
    """

    def __init__(
        self,
        root: str | Path,
        location: str | Path,
        *,
        filters: DatasetFilters | None = None,
        categories: Iterable[str] | None = None,
        include_local: bool = False,
        label_with: str | Path | None = None,
        max_examples: int = 100_000,
        page_size: int = 2000,
    ) -> None:
        if max_examples < 1:
            raise ConfigError(f"max_examples must be at least 1, got {max_examples}")
        self.location = location
        self.filters = filters or DatasetFilters()
        self.categories = None if categories is None else frozenset(categories)
        self.include_local = include_local
        self.label_with = None if label_with is None else Path(label_with)
        self.max_examples = max_examples
        self.page_size = page_size
        self.identity = self._identity()
        digest = hashlib.sha256(json.dumps(self.identity, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        self.fingerprint = digest[:16]
        self.path = Path(root) / "log_pool" / self.fingerprint
        self._pii = PiiMatcher(self.filters.pii_patterns) if self.filters.scrub_pii else None
        self._predict: Callable[[list[str]], Sequence[str | None]] | None = None
        self._reset()
        self._loaded = False

    @classmethod
    def for_retrain(cls, config: RetrainConfig) -> LogPool:
        """The pool ``router retrain`` keeps for ``config``'s log, in its registry."""
        return cls(
            config.registry_path, config.log_location, filters=config.filters, categories=config.categories,
            include_local=config.include_local_accepted, label_with=config.label_with, max_examples=config.max_pool_examples,
        )  # fmt: skip

    def _identity(self) -> dict[str, Any]:
        location = self.location
        log = masked_url(str(location)) if is_database_url(location) else str(Path(location).resolve())
        classifier = None
        if self.label_with is not None:
            try:  # the manifest's digest covers every file's checksum: cheap, and names the exact artifact
                classifier = read_manifest(self.label_with).get(MANIFEST_DIGEST_KEY)
            except ArtifactError as err:  # loading it fails later, with this message, if a row needs a label
                logger.debug("labelling classifier %s not identified: %s", self.label_with, err)
        return {
            "format_version": _FORMAT_VERSION,
            "log": log,
            "filters": self.filters.model_dump(mode="json", exclude=set(_SNAPSHOT_ONLY_FILTERS)),
            "categories": None if self.categories is None else sorted(self.categories),
            "include_local": self.include_local,
            "label_with": None if self.label_with is None else str(self.label_with.resolve()),
            "label_with_manifest": classifier,
            "max_examples": self.max_examples,
        }

    # -- contents ---------------------------------------------------------------------------------

    def _reset(self) -> None:
        self._entries: dict[int, Example] = {}
        self._by_key: dict[str, int] = {}
        self._heap: list[tuple[int, str]] = []  # (-hash, prompt_key): the largest first, removed lazily
        self._cursor: dict[str, Any] = {"rowid": 0, "request_id": None, "feedback_id": 0}
        self._dropped: dict[str, int] = {}
        self._sha256: str | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def examples(self) -> list[Example]:
        """The pooled examples in log order, as a full read of the log would have met them."""
        return [self._entries[rowid] for rowid in sorted(self._entries)]

    @property
    def dropped(self) -> dict[str, int]:
        """Examples cleaning dropped, per reason, over every row the pool has read."""
        return dict(self._dropped)

    @property
    def cursor(self) -> dict[str, Any]:
        """``{"rowid", "request_id", "feedback_id"}``: the last request and feedback rows read."""
        return dict(self._cursor)

    def _add(self, rowid: int, example: Example) -> None:
        self._entries[rowid] = example
        self._by_key[example.prompt_key] = rowid
        heapq.heappush(self._heap, (-int(example.prompt_key, 16), example.prompt_key))

    def _remove(self, rowid: int) -> None:
        example = self._entries.pop(rowid)
        if self._by_key.get(example.prompt_key) == rowid:
            del self._by_key[example.prompt_key]
        if len(self._heap) > 2 * len(self._by_key) + 64:  # removed keys pile up in the heap: rebuild it
            self._heap = [(-int(key, 16), key) for key in self._by_key]
            heapq.heapify(self._heap)

    def _largest_key(self) -> str:
        while self._heap[0][1] not in self._by_key:
            heapq.heappop(self._heap)
        return self._heap[0][1]

    def _drop(self, reason: str) -> None:
        self._dropped[reason] = self._dropped.get(reason, 0) + 1

    def _offer(self, rowid: int, example: Example) -> bool:
        """Clean ``example`` (row ``rowid``) as :func:`finetune.datasets.clean` would, the earlier row
        of a prompt winning; True if it entered the pool."""
        if self._pii is not None:
            example = _scrubbed(example, self._pii)
        key = example.prompt_key
        holder = self._by_key.get(key)
        if holder is not None and holder < rowid:
            self._drop("duplicate")  # the prompt is already kept: its answer need not be judged
            return False
        full = holder is None and len(self._by_key) >= self.max_examples
        if full and key > self._largest_key():
            self._drop(_OVER_CAP)  # outside the sample whatever its answer: never judged (the costly part)
            return False
        reason = _filter_reason(example, self.filters)
        if reason is not None:
            self._drop(reason)
            return False
        if holder is not None:  # a row read again (feedback) that precedes the one kept for its prompt
            self._remove(holder)
            self._drop("duplicate")
        self._add(rowid, example)
        if full:
            self._remove(self._by_key[self._largest_key()])
            self._drop(_OVER_CAP)
        return True

    # -- update -----------------------------------------------------------------------------------

    def update(self, log: TrafficLog | None = None, *, full: bool = False, progress: bool = False) -> PoolUpdate:
        """Bring the pool up to date with the log (opened from ``location`` when not given) and save it."""
        if log is None:
            if not is_database_url(self.location) and not Path(self.location).is_file():
                raise ArtifactError(f"no traffic log at {self.location}")
            with TrafficLog(self.location, spool=False) as opened:
                return self.update(opened, full=full, progress=progress)
        reason = _FULL if full else self._load()
        first = _first_rowid(log)
        if reason is None and not self._cursor_holds(log, first):
            reason = "the log was rewritten since the last read (row ids moved or restarted)"
        if reason is not None:
            expected = reason in (_FULL, _NEW)
            (logger.info if expected else logger.warning)("log pool %s: %s; reading the whole log", self.path, reason)
            self._reset()
        stats = PoolUpdate(after_rowid=self._cursor["rowid"], full_read=reason is not None, reason=reason or "")
        changed = reason is not None
        gone = [rowid for rowid in self._entries if first is None or rowid < first]
        for rowid in gone:  # deleted by retention (the oldest rows)
            self._remove(rowid)
        stats.removed_by_retention = len(gone)
        changed |= self._apply_feedback(log, stats)
        changed |= self._read_new(log, stats, progress)
        changed |= stats.removed_by_retention > 0
        stats.pool_size = len(self._entries)
        self._save(changed, fresh=reason is not None)
        return stats

    def _load(self) -> str | None:
        """Read the saved pool; None when it loaded, else why the log must be read from the start."""
        if self._loaded:
            return None
        self._reset()
        state_file, data = self.path / _STATE_FILE, self.path / _POOL_FILE
        if not state_file.is_file():
            return _NEW
        try:
            state = json.loads(state_file.read_text(encoding="utf-8"))
            if state.get("format") != _FORMAT or state.get("format_version") != _FORMAT_VERSION:
                return f"{state_file} is not a {_FORMAT} version {_FORMAT_VERSION} state"
            pending = data.with_name(data.name + ".next")
            if pending.is_file():  # a save was interrupted: finish it if its state was written, else drop it
                if sha256_file(pending) == state["sha256"]:
                    os.replace(pending, data)
                else:
                    pending.unlink()
            digest = hashlib.sha256()
            with data.open("rb") as fh:
                for line in fh:
                    digest.update(line)
                    entry = json.loads(line)
                    self._add(int(entry["rowid"]), Example.from_dict(entry["example"]))
            if digest.hexdigest() != state["sha256"] or len(self._entries) != state["count"]:
                raise ValueError(f"{data} does not match the checksum and count in {state_file}")
            cursor = state["cursor"]
            self._cursor = {"rowid": int(cursor["rowid"]), "request_id": cursor["request_id"], "feedback_id": int(cursor["feedback_id"])}
            self._dropped = {str(k): int(v) for k, v in state["dropped"].items()}
            self._sha256 = state["sha256"]
        except (OSError, ValueError, KeyError, TypeError, AttributeError, ConfigError) as err:
            self._reset()
            return f"the saved pool is unreadable ({err})"
        self._loaded = True
        return None

    def _cursor_holds(self, log: TrafficLog, first: int | None) -> bool:
        """Whether the cursor still points where it did: its row is there with the same id, or every
        row up to it is gone (retention). SQLite reuses row ids once the newest rows are gone."""
        rowid = self._cursor["rowid"]
        if rowid == 0 or first is None or first > rowid:
            return True
        page = next(log.pages(page_size=1, after_rowid=rowid - 1), [])
        return bool(page) and page[0][0] == rowid and page[0][1].id == self._cursor["request_id"]

    def _labelled(self, records: list[LogRecord]) -> None:
        if self.label_with is None:
            return

        def predict(queries: list[str]) -> Sequence[str | None]:
            if self._predict is None:  # loaded on the first unlabelled row: an update of labelled rows never loads it
                from classifiers import EmbeddingClassifier

                self._predict = EmbeddingClassifier.load(self.label_with).predict
            return self._predict(queries)

        _label(records, predict)

    def _apply_feedback(self, log: TrafficLog, stats: PoolUpdate) -> bool:
        """Re-derive the rows already read that feedback since the last update corrected or rejected."""
        changed = False
        after, read_up_to = self._cursor["feedback_id"], self._cursor["rowid"]
        while True:
            last, latest = log.feedback_since(after, limit=self.page_size)
            if last == after:
                break
            after = last
            # Newer rows are read below, with their feedback; a request retention deleted has no row.
            named = [(entry["rowid"], rid) for rid, entry in latest.items() if entry["rowid"] is not None and entry["rowid"] <= read_up_to]
            # In log order: each row then meets the earlier rows of its prompt in their final state.
            rows = [(rowid, record) for rowid, rid in sorted(named) if (record := log.get(rid)) is not None]
            self._labelled([record for _, record in rows])
            for rowid, record in rows:
                before = self._entries.get(rowid)
                if before is not None:
                    self._remove(rowid)
                example = _log_example(record, self.categories, self.include_local, latest[record.id])
                admitted = example is not None and self._offer(rowid, example)
                stats.removed_by_feedback += before is not None and not admitted
                stats.feedback_rows += 1
                changed |= admitted or before is not None
        self._cursor["feedback_id"] = after
        return changed

    def _read_new(self, log: TrafficLog, stats: PoolUpdate, progress: bool) -> bool:
        after = self._cursor["rowid"]
        # Feedback newer than the feedback cursor is applied by the next update; older feedback on
        # the rows read here is fetched page by page (none at all: no query).
        any_feedback = self._cursor["feedback_id"] > 0
        bar = _bar(log if after == 0 and progress else None, progress)
        admitted = 0
        for page in log.pages(page_size=self.page_size, after_rowid=after):
            records = [record for _, record in page]
            self._labelled(records)
            feedback = log.feedback_between(page[0][0] - 1, page[-1][0]) if any_feedback else {}
            for rowid, record in page:
                example = _log_example(record, self.categories, self.include_local, feedback.get(record.id))
                admitted += example is not None and self._offer(rowid, example)
            stats.rows_read += len(page)
            self._cursor["rowid"], self._cursor["request_id"] = page[-1][0], page[-1][1].id
            bar.update(len(page))
        bar.close()
        stats.admitted = admitted
        return self._cursor["rowid"] != after

    # -- files ------------------------------------------------------------------------------------

    def _save(self, changed: bool, *, fresh: bool) -> None:
        """Pool file under a side name, then the state naming its checksum, then the rename: a crash
        at any point leaves the old pool or the new one (``_load`` finishes or drops the rename)."""
        self.path.mkdir(parents=True, exist_ok=True)
        data = self.path / _POOL_FILE
        pending = data.with_name(data.name + ".next")
        if changed or self._sha256 is None or not data.is_file():
            self._sha256 = write_lines_atomic(pending, self._lines())
        else:
            pending = None
        state = {
            "format": _FORMAT,
            "format_version": _FORMAT_VERSION,
            "fingerprint": self.fingerprint,
            "identity": self.identity,
            "cursor": self._cursor,
            "count": len(self._entries),
            "dropped": self._dropped,
            "sha256": self._sha256,
            "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        write_text_atomic(self.path / _STATE_FILE, json.dumps(state, indent=2, sort_keys=True) + "\n")
        if pending is not None:
            os.replace(pending, data)
            fsync_dir(self.path)
        self._loaded = True
        if fresh:  # pools of earlier settings will not be read again: free their space
            for other in self.path.parent.iterdir():
                if other != self.path and other.is_dir():
                    shutil.rmtree(other, ignore_errors=True)
                    logger.info("log pool %s removed (settings changed)", other)

    def _lines(self) -> Iterator[str]:
        for rowid in sorted(self._entries):
            yield json.dumps({"rowid": rowid, "example": self._entries[rowid].to_dict()}, ensure_ascii=False, sort_keys=True) + "\n"


def _first_rowid(log: TrafficLog) -> int | None:
    """The oldest row still in the log (one indexed read), None when it is empty."""
    page = next(log.pages(page_size=1), [])
    return page[0][0] if page else None


def _bar(log: TrafficLog | None, progress: bool) -> Any:
    """A row progress bar for a whole-log read (silent when not a TTY or not asked for)."""
    from tqdm.auto import tqdm

    total = log.count() if log is not None else None
    return tqdm(total=total, unit="row", desc="reading the traffic log", disable=None if progress else True)
