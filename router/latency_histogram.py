"""Latency as a histogram over fixed log-spaced buckets: what the log keeps per hour and tier (schema 9).

The traffic log cannot afford to sort a million latencies for a report, so its insert trigger
counts each request into one of :data:`BOUNDS_MS` (1 ms to about 130 s, each bound 12 % above the
last); a percentile read back from the counts, interpolated inside its bucket, is within about 6 %
of the exact one. The bounds are part of the stored data: never change them, add a new schema
version with a new table instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

__all__ = ["BOUNDS_MS", "RATIO", "bucket_sql", "bucket_of", "percentile"]

RATIO = 1.12
BOUNDS_MS: tuple[float, ...] = tuple(round(RATIO**i, 4) for i in range(105))
"""Upper bounds (exclusive) of buckets 0..104; bucket 105 holds everything from the last bound up."""


def bucket_sql(column: str) -> str:
    """A SQL expression (SQLite and PostgreSQL alike: a plain CASE) giving the bucket of ``column``."""
    whens = " ".join(f"WHEN {column} < {bound!r} THEN {i}" for i, bound in enumerate(BOUNDS_MS))
    return f"CASE {whens} ELSE {len(BOUNDS_MS)} END"


def bucket_of(latency_ms: float) -> int:
    """The bucket the SQL of :func:`bucket_sql` puts ``latency_ms`` in (for tests and readers)."""
    for i, bound in enumerate(BOUNDS_MS):
        if latency_ms < bound:
            return i
    return len(BOUNDS_MS)


def _edges(bucket: int) -> tuple[float, float]:
    low = 0.0 if bucket == 0 else BOUNDS_MS[bucket - 1]
    high = BOUNDS_MS[bucket] if bucket < len(BOUNDS_MS) else BOUNDS_MS[-1] * RATIO
    return low, high


def percentile(counts: Mapping[int, int], q: float) -> float | None:
    """The ``q``-th percentile (0-100) in milliseconds of the latencies counted per bucket; None if none.

    Interpolated geometrically inside the bucket that holds the rank (the buckets are log-spaced;
    the first, below 1 ms, linearly), so the error stays under half a bucket's width.
    """
    total = sum(counts.values())
    if total <= 0:
        return None
    rank = q / 100 * total
    seen = 0
    for bucket in sorted(counts):
        n = counts[bucket]
        if n <= 0:
            continue
        if seen + n >= rank:
            low, high = _edges(bucket)
            fraction = min(1.0, max(0.0, (rank - seen) / n))
            if low <= 0:
                return high * fraction
            return math.exp(math.log(low) + fraction * (math.log(high) - math.log(low)))
        seen += n
    return _edges(max(counts))[1]
