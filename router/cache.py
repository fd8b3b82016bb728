"""The response cache: a directory on disk (diskcache over SQLite) shared by threads and processes.

Three kinds of entry live in it, all JSON (``diskcache.JSONDisk``: nothing in the directory is
ever unpickled):

* ``a:<key>`` — a :class:`CachedAnswer` under its exact key (:mod:`router._cache_keys`);
* ``r:<request id>`` — the key an answer was stored or served under, so feedback that rejects
  a served answer can evict it;
* ``v:<n>`` — the embedding of a cached question, its semantic partition and its key, numbered by
  the counter ``seq``. Each process keeps the vectors it has read in memory and reads only the
  ones numbered after them, so a semantic lookup is one counter read and a matrix product.

The in-memory index is bounded: at most ``max_index_entries`` vectors across partitions, the least
recently looked-up partitions (then a partition's oldest vectors) dropped first. A lookup reads at
most ``min(max_index_entries, 256)`` new vectors, oldest first, skipping any backlog too large to be
held anyway; a process that is far behind (just started, or other processes wrote a lot) catches
up over its next lookups. That is done on the request thread, bounded, rather than by a background
thread: there is no thread to own and stop per cache, and one lookup's cost stays fixed. Either
limit can only turn a semantic hit into a miss, never serve a wrong answer: a vector names a key
whose answer is read, and checked, at lookup time.

Every entry carries a tag naming what produced the answer's route (``local:<served model>`` or
``cloud:<route>``): a promotion or rollback of the local model evicts its tag. An answer evicted
or expired takes its vectors with it (a vector whose answer is gone is dropped when met).

A cache fault never fails a request: a locked cache is a miss, a corrupt directory is moved aside
and rebuilt with a warning.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import shutil
import sqlite3
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from router._cache_keys import unsupported_specifics

__all__ = ["CacheHit", "CachedAnswer", "ResponseCache"]

logger = logging.getLogger("router.cache")

_SEMANTIC_CANDIDATES = 8  # nearest questions checked before giving up (a gone or too-specific answer skips one)
_REFRESH_BATCH = 256  # new vectors one lookup reads at most (each a small SQLite read)


@dataclass(frozen=True)
class CachedAnswer:
    """One served answer and where it came from."""

    text: str
    finish_reason: str
    tier: str
    model: str
    request_id: str
    category: str | None
    question: str
    adapter_version: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cloud_cost_usd_estimate: float | None = None
    created: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> CachedAnswer | None:
        try:
            return cls(**data)
        except TypeError:  # written by another release: a miss, not a failure
            return None


@dataclass(frozen=True)
class CacheHit:
    answer: CachedAnswer
    key: str
    match: Literal["exact", "semantic"]
    similarity: float | None = None

    @property
    def label(self) -> str:
        return "exact" if self.match == "exact" else f"semantic {self.similarity:.3f}"


class _Partition:
    """The in-memory vectors of one semantic partition, in a matrix grown by doubling: adding a
    vector costs amortised O(1), not a copy of every vector already there."""

    def __init__(self, dim: int) -> None:
        self.keys: list[str] = []
        self._matrix = np.zeros((2, dim), dtype=np.float32)  # small: a bounded index may hold many tiny partitions

    def add(self, key: str, vector: np.ndarray) -> None:
        if len(self.keys) == len(self._matrix):
            grown = np.zeros((2 * len(self._matrix), self._matrix.shape[1]), dtype=np.float32)
            grown[: len(self.keys)] = self._matrix
            self._matrix = grown
        self._matrix[len(self.keys)] = vector
        self.keys.append(key)

    def nearest(self, query: np.ndarray, k: int) -> list[tuple[float, str]]:
        if not self.keys:
            return []
        sims = self._matrix[: len(self.keys)] @ query
        top = np.argpartition(-sims, k - 1)[:k] if len(sims) > k else np.arange(len(sims))  # O(n), not a full sort
        top = top[np.argsort(-sims[top])]
        return [(float(sims[i]), self.keys[i]) for i in top]

    def drop(self, key: str) -> int:
        """Forget ``key`` (its answer is gone); rare, so a compaction is fine. Returns the vectors removed."""
        keep = [i for i, k in enumerate(self.keys) if k != key]
        removed = len(self.keys) - len(keep)
        self._matrix[: len(keep)] = self._matrix[keep]
        self.keys = [self.keys[i] for i in keep]
        return removed

    def drop_oldest(self, n: int) -> None:
        """Forget the ``n`` vectors added first (the index is over its bound)."""
        rest = len(self.keys) - n
        self._matrix[:rest] = self._matrix[n : len(self.keys)]
        self.keys = self.keys[n:]


def _encode(vector: np.ndarray) -> str:
    return base64.b64encode(np.asarray(vector, dtype=np.float32).tobytes()).decode("ascii")


def _decode(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=np.float32)


class ResponseCache:
    """Answers by exact key and by nearest question; see the module docstring for the layout."""

    def __init__(
        self, path: str | Path, *, size_limit_bytes: int, timeout_s: float = 0.05, max_index_entries: int = 100_000
    ) -> None:
        if max_index_entries < 1:
            raise ValueError("max_index_entries must be at least 1")
        self.path = Path(path)
        self._size_limit = int(size_limit_bytes)
        self._timeout_s = timeout_s
        self.max_index_entries = int(max_index_entries)
        self._lock = threading.Lock()
        self._cache: Any = None
        self._partitions: OrderedDict[str, _Partition] = OrderedDict()  # least recently looked up first
        self._indexed = 0  # vectors held in memory, across partitions
        self._loaded_seq = 0

    @property
    def index_entries(self) -> int:
        """Question vectors this process holds in memory (at most ``max_index_entries``)."""
        return self._indexed

    # -- the directory ----------------------------------------------------------------------------

    def _open(self) -> Any:
        import diskcache

        return diskcache.Cache(
            str(self.path), size_limit=self._size_limit, eviction_policy="least-recently-stored",
            timeout=self._timeout_s, disk=diskcache.JSONDisk, disk_compress_level=1, tag_index=True,
        )  # fmt: skip

    @property
    def store(self) -> Any:
        """The open diskcache (opened on first use; a corrupt directory is rebuilt here)."""
        if self._cache is None:
            with self._lock:
                if self._cache is None:
                    try:
                        self._cache = self._open()
                    except sqlite3.DatabaseError as err:
                        self._cache = self._rebuilt(err)
        return self._cache

    def _rebuilt(self, err: BaseException) -> Any:
        aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
        logger.warning("response cache %s is unreadable (%s); moved to %s and started empty", self.path, err, aside)
        if self._cache is not None:
            try:
                self._cache.close()
            except Exception as close_err:  # noqa: BLE001 - it is being discarded anyway
                logger.debug("closing the unreadable cache: %s", close_err)
        try:
            self.path.rename(aside)
        except OSError:
            shutil.rmtree(self.path, ignore_errors=True)
        self._partitions.clear()
        self._indexed = 0
        self._loaded_seq = 0
        return self._open()

    def _guarded(self, what: str, action: Any, default: Any = None) -> Any:
        """Run one cache operation; a fault is logged and ``default`` returned, never raised."""
        import diskcache

        try:
            return action(self.store)
        except diskcache.Timeout:
            logger.debug("response cache busy during %s; skipped", what)
        except sqlite3.OperationalError as err:
            logger.warning("response cache %s failed: %s", what, err)
        except sqlite3.DatabaseError as err:  # malformed file: rebuild once, answer this one uncached
            with self._lock:
                self._cache = self._rebuilt(err)
        except (OSError, ValueError, TypeError) as err:
            logger.warning("response cache %s failed: %s", what, err)
        return default

    # -- reads -------------------------------------------------------------------------------------

    def get(self, key: str) -> CacheHit | None:
        """The answer stored under the exact ``key``."""
        data = self._guarded("lookup", lambda c: c.get(f"a:{key}"))
        answer = CachedAnswer.from_json(data) if data is not None else None
        return CacheHit(answer, key, "exact") if answer is not None else None

    def similar(self, partition: str, embedding: np.ndarray, *, threshold: float, question: str) -> CacheHit | None:
        """The answer to the nearest cached question in ``partition`` at cosine ≥ ``threshold``,
        unless it repeats something specific to its own question that ``question`` lacks."""
        self._guarded("index refresh", self._refresh)
        with self._lock:
            found = self._partitions.get(partition)
            if found is not None:
                self._partitions.move_to_end(partition)  # recently used: evicted last
            candidates = found.nearest(np.asarray(embedding, dtype=np.float32), _SEMANTIC_CANDIDATES) if found else []
        for similarity, key in candidates:
            if similarity < threshold:
                break
            hit = self.get(key)
            if hit is None:  # evicted, expired or invalidated
                with self._lock:
                    if found is not None and self._partitions.get(partition) is found:
                        self._indexed -= found.drop(key)
                continue
            if unsupported_specifics(hit.answer.text, hit.answer.question, question):
                continue
            return CacheHit(hit.answer, key, "semantic", similarity)
        return None

    def _refresh(self, cache: Any) -> None:
        """Read some of the vectors stored since the last refresh (by any process): at most one
        batch, oldest first, after skipping what the bounded index could not hold anyway."""
        latest = int(cache.get("seq", 0) or 0)
        with self._lock:
            if latest < self._loaded_seq:  # the directory was cleared or rebuilt underneath us
                self._partitions.clear()
                self._indexed = 0
                self._loaded_seq = 0
            start = self._loaded_seq
        if latest == start:
            return
        first = max(start, latest - self.max_index_entries) + 1  # older ones would be evicted on arrival
        last = min(latest, first - 1 + min(_REFRESH_BATCH, self.max_index_entries))
        loaded = []
        for n in range(first, last + 1):
            entry = cache.get(f"v:{n}")
            if entry is not None:
                loaded.append(entry)
        with self._lock:
            if self._loaded_seq != start:
                return  # another thread refreshed meanwhile
            for entry in loaded:
                self._add_vector(entry["p"], entry["k"], _decode(entry["e"]))
            self._loaded_seq = last
            self._evict()

    def _add_vector(self, partition: str, key: str, vector: np.ndarray) -> None:
        target = self._partitions.get(partition)
        if target is None:
            target = self._partitions[partition] = _Partition(len(vector))
        target.add(key, vector)
        self._indexed += 1

    def _evict(self) -> None:
        """Back under ``max_index_entries``: whole partitions, least recently looked up first, then
        the oldest vectors of the last one. Down to 90% of the bound, so trimming one large
        partition (a copy of its matrix) happens once per many additions, not at every one."""
        if self._indexed <= self.max_index_entries:
            return
        target = self.max_index_entries - self.max_index_entries // 10
        while self._indexed > target:
            name, oldest = next(iter(self._partitions.items()))
            excess = self._indexed - target
            if len(oldest.keys) <= excess:
                del self._partitions[name]
                self._indexed -= len(oldest.keys)
            else:
                oldest.drop_oldest(excess)
                self._indexed -= excess

    # -- writes ------------------------------------------------------------------------------------

    def put(
        self,
        key: str,
        answer: CachedAnswer,
        *,
        ttl_s: float,
        tag: str,
        partition: str | None = None,
        embedding: np.ndarray | None = None,
    ) -> bool:
        """Store ``answer`` under ``key`` (and its question's vector in ``partition``); False if the cache refused."""

        def write(cache: Any) -> bool:
            cache.set(f"a:{key}", answer.to_json(), expire=ttl_s, tag=tag)
            cache.set(f"r:{answer.request_id}", key, expire=ttl_s, tag=tag)
            if partition is not None and embedding is not None:
                with cache.transact():  # a cross-process counter (JSONDisk values cannot use incr)
                    n = int(cache.get("seq", 0) or 0) + 1
                    cache.set("seq", n)
                cache.set(f"v:{n}", {"p": partition, "k": key, "e": _encode(embedding)}, expire=ttl_s, tag=tag)
            return True

        return bool(self._guarded("store", write, False))

    def note_served(self, request_id: str, key: str, *, ttl_s: float, tag: str) -> None:
        """Remember which entry a hit served, so feedback on the hit can evict it."""
        self._guarded("store", lambda c: c.set(f"r:{request_id}", key, expire=ttl_s, tag=tag))

    def forget(self, request_id: str) -> bool:
        """Evict the answer that ``request_id`` stored or was served; whether there was one."""

        def delete(cache: Any) -> bool:
            key = cache.get(f"r:{request_id}")
            if key is None:
                return False
            cache.delete(f"r:{request_id}")
            return bool(cache.delete(f"a:{key}"))

        return bool(self._guarded("evict", delete, False))

    def invalidate(self, tag: str) -> int:
        """Evict every entry produced under ``tag`` (e.g. a local model version); entries removed."""
        return int(self._guarded("invalidate", lambda c: c.evict(tag), 0) or 0)

    def clear(self) -> int:
        """Remove every entry; how many there were."""
        with self._lock:
            self._partitions.clear()
            self._indexed = 0
            self._loaded_seq = 0
        return int(self._guarded("clear", lambda c: c.clear(), 0) or 0)

    # -- reporting ---------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Entries, bytes on disk, and answers per tier and category (a scan: for the CLI, not the request path)."""

        def scan(cache: Any) -> dict[str, Any]:
            by: dict[tuple[str, str], int] = {}
            answers = 0
            for name in cache.iterkeys():
                if not isinstance(name, str) or not name.startswith("a:"):
                    continue
                data = cache.get(name)
                answer = CachedAnswer.from_json(data) if data is not None else None
                if answer is None:
                    continue
                answers += 1
                slot = (answer.tier, answer.category or "-")
                by[slot] = by.get(slot, 0) + 1
            return {
                "path": str(self.path), "answers": answers, "entries": len(cache), "bytes": cache.volume(),
                "size_limit_bytes": self._size_limit,
                "by_tier_category": [{"tier": t, "category": c, "answers": n} for (t, c), n in sorted(by.items())],
            }  # fmt: skip

        return self._guarded("stats", scan, {"path": str(self.path), "answers": 0, "entries": 0, "bytes": 0, "by_tier_category": []})

    def close(self) -> None:
        with self._lock:
            if self._cache is not None:
                self._cache.close()
                self._cache = None
