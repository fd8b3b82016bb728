"""Latency-aware admission: a routed request goes local only while the local tier would answer it
about as fast as the cloud does.

A batch serves everyone a little slower as it grows; past some size a new request would wait longer
for its local answer than the cloud takes. The backend predicts the request's completion (its wait
for a free sequence, its prefill and ``max_tokens`` steps at the batch size it would join); when that
exceeds the budget the request goes to the cloud now (reason ``local_busy``) instead of queueing.
Private and ``model="local"`` requests never spill: they queue up to the bound, then get a 503.

The budget is ``local.latency_budget_s`` when set, else the rolling median of the cloud route's own
recent answers, clamped to ``[latency_budget_floor_s, latency_budget_cap_s]`` (the cap also serves
until the cloud has answered anything), and never below the request's own time on an idle local
tier: ``local_busy`` means busy, and an idle local tier answers even where the cloud is faster
(else a local model slower than the cloud would save nothing).
"""

from __future__ import annotations

import statistics
import threading
from collections import deque
from dataclasses import dataclass

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hybrid_common.chat import message_text
from router.config import LocalConfig

__all__ = ["AdmissionCounts", "LocalAdmission", "prompt_token_estimate"]

_WINDOW = 200  # recent cloud answers the median is taken over


def prompt_token_estimate(messages: Sequence[Mapping[str, Any]]) -> int:
    """About the prompt's tokens without tokenizing (4 characters a token, plus each turn's
    markers): prefill is a small part of a prediction, and admission runs on every routed request."""
    return sum(len(message_text(m.get("content"))) // 4 + 6 for m in messages) + 2


@dataclass(frozen=True)
class AdmissionCounts:
    """Admission decisions since start, for ``/metrics`` and benchmarks."""

    admitted: int
    busy: int
    """Routed requests sent to the cloud because the local tier was predicted too slow."""
    over_budget: int
    """Admitted requests whose local answer still took longer than the budget they were admitted under."""
    budget_s: float

    @property
    def spill_share(self) -> float:
        decided = self.admitted + self.busy
        return self.busy / decided if decided else 0.0


class LocalAdmission:
    """The budget and the decision; thread-safe (request threads call it concurrently)."""

    def __init__(self, config: LocalConfig) -> None:
        self._config = config
        self._cloud_s: deque[float] = deque(maxlen=_WINDOW)
        self._lock = threading.Lock()
        self._admitted = 0
        self._busy = 0
        self._over_budget = 0
        self._pending = 0

    def observe_cloud(self, seconds: float) -> None:
        """A cloud answer's total latency (first attempts that succeeded)."""
        with self._lock:
            self._cloud_s.append(seconds)

    def budget_s(self) -> float:
        config = self._config
        if config.latency_budget_s is not None:
            return config.latency_budget_s
        with self._lock:
            recent = list(self._cloud_s)
        if not recent:
            return config.latency_budget_cap_s
        return min(config.latency_budget_cap_s, max(config.latency_budget_floor_s, statistics.median(recent)))

    def decide(self, predict: Callable[[int], float | None], idle_s: float | None = None) -> tuple[bool, float, float | None]:
        """``(admit, budget_s, predicted_s)`` for a request whose local completion ``predict(ahead)``
        estimates, ``ahead`` being the requests admitted but not yet handed to the backend (callers
        deciding at the same moment must see each other). None from ``predict``: the backend cannot
        predict yet, so admit and learn. An admitted request is pending until :meth:`handed_over`.

        With the derived budget, ``idle_s`` (the request's time on an idle local tier) is its floor:
        admission refuses the slowdown that *load* adds, not a local model that is simply slower
        than the cloud (it would then never answer anything, and save nothing). A configured
        ``latency_budget_s`` is a hard bound.
        """
        budget = self.budget_s()
        if self._config.latency_budget_s is None and idle_s is not None:
            budget = max(budget, idle_s)
        with self._lock:  # one decision at a time: the next one counts this one as pending
            predicted = predict(self._pending)
            admit = predicted is None or predicted <= budget
            if admit:
                self._admitted += 1
                self._pending += 1
            else:
                self._busy += 1
        return admit, budget, predicted

    def handed_over(self) -> None:
        """An admitted request reached the backend (or will not): it is no longer pending."""
        with self._lock:
            self._pending = max(0, self._pending - 1)

    def finished_local(self, seconds: float, budget_s: float) -> bool:
        """An admitted request's local answer is done: count it if it overran its budget (True)."""
        if seconds <= budget_s:
            return False
        with self._lock:
            self._over_budget += 1
        return True

    def counts(self) -> AdmissionCounts:
        budget = self.budget_s()
        with self._lock:
            return AdmissionCounts(self._admitted, self._busy, self._over_budget, budget)
