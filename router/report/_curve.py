"""The cost–quality curve on the user's own traffic: how much can go local before answers get worse.

Quality is a local answer's similarity to the cloud's answer to the same request (the shadow and
audit pairs the router logs), a degenerate local answer counting 0; the cloud's own answers are
the reference, so an all-cloud router scores 1.0 by definition. Sweeping the gate's similarity
floor from 1 down to 0, each category whose mean quality reaches the floor goes local; the curve
is the traffic share answered locally against the mean quality of all answers, each category
weighted by its share of the window's requests. Categories without a scored pair stay in the
cloud at every floor: nothing says how the local model answers them.

The call-performance threshold is the largest local share at which mean quality stays within
``target`` (95 %) of all-cloud.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["CostQualityCurve", "CurvePoint", "cost_quality_curve"]


@dataclass(frozen=True)
class CurvePoint:
    """One floor: the share of requests answered locally and the mean quality of all answers."""

    floor: float
    local_share: float
    quality: float
    local: tuple[str, ...]


@dataclass(frozen=True)
class CostQualityCurve:
    """The sweep (points by rising local share), the configured floor's point and the threshold."""

    points: tuple[CurvePoint, ...]
    operating: CurvePoint | None
    threshold: CurvePoint | None
    """The point with the largest local share whose quality is at least ``target``; None without samples."""
    target: float
    category_quality: dict[str, float]
    """Mean quality per category that has scored pairs."""

    @property
    def empty(self) -> bool:
        return not self.category_quality


def cost_quality_curve(
    requests: Mapping[str, float], samples: Mapping[str, Sequence[float]], *, floor: float, target: float = 0.95
) -> CostQualityCurve:
    """The curve for categories weighted by ``requests`` whose local answers scored ``samples`` (qualities in 0..1)."""
    total = float(sum(w for w in requests.values() if w > 0))
    quality = {c: sum(q) / len(q) for c, q in samples.items() if q and requests.get(c, 0) > 0}
    if total <= 0 or not quality:
        return CostQualityCurve((), None, None, target, quality)

    def at(threshold: float) -> CurvePoint:
        local = tuple(sorted(c for c, q in quality.items() if q >= threshold))
        share = sum(requests[c] for c in local) / total
        mean = sum(requests[c] * quality[c] for c in local) / total + (1.0 - share)
        return CurvePoint(threshold, share, mean, local)

    # The local set changes only at a category's mean: one point there, plus the all-cloud end.
    floors = sorted({*quality.values()}, reverse=True)
    points = (CurvePoint(math.inf, 0.0, 1.0, ()), *(at(f) for f in floors))
    points = tuple(sorted(points, key=lambda p: (p.local_share, -p.floor)))
    good = [p for p in points if p.quality >= target - 1e-12]
    threshold = max(good, key=lambda p: p.local_share) if good else None
    return CostQualityCurve(points, at(floor), threshold, target, quality)
