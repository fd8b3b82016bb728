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

import dataclasses
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
_CALIBRATION_MIN = 10  # admitted local answers observed before predictions are corrected
_CALIBRATION_QUANTILE = 0.9


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
    prediction_correction: float = 1.0
    """What predictions are multiplied by: how much slower recent admitted answers ran than predicted."""

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
        self._actual_over_predicted: deque[float] = deque(maxlen=_WINDOW)

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

    def prediction_correction(self) -> float:
        """The 90th percentile of recent admitted answers' actual over predicted time, at least 1.

        The backend predicts from the batch's step time alone; on a small box the server's own work
        under load (HTTP, classification, the log) takes cores from the decode: in ``make
        bench-load`` (2026-12-04, 64 callers) an admitted answer waited 1.1 s for its first token and
        took 1.8 s against a 1.0 s budget. Scaling predictions by
        what recent answers actually took keeps admitted answers inside their budget; it is 1 until
        ``_CALIBRATION_MIN`` answers were seen, and falls back as the overruns leave the window.
        """
        with self._lock:
            ratios = sorted(self._actual_over_predicted)
        if len(ratios) < _CALIBRATION_MIN:
            return 1.0
        return max(1.0, ratios[round(_CALIBRATION_QUANTILE * (len(ratios) - 1))])

    def decide(self, predict: Callable[[int], float | None], idle_s: float | None = None) -> tuple[bool, float, float | None]:
        """``(admit, budget_s, predicted_s)`` for a request whose local completion ``predict(ahead)``
        estimates, ``ahead`` being the requests admitted but not yet handed to the backend (callers
        deciding at the same moment must see each other). None from ``predict``: the backend cannot
        predict yet, so admit and learn. An admitted request is pending until :meth:`handed_over`.

        With the derived budget, ``idle_s`` (the request's time on an idle local tier) is its floor:
        admission refuses the slowdown that *load* adds, not a local model that is simply slower
        than the cloud (it would then never answer anything, and save nothing). A configured
        ``latency_budget_s`` is a hard bound. Both ``predict``'s answer and ``idle_s`` are scaled by
        :meth:`prediction_correction` (the returned prediction is the scaled one).
        """
        budget = self.budget_s()
        correction = self.prediction_correction()
        if self._config.latency_budget_s is None and idle_s is not None:
            budget = max(budget, correction * idle_s)
        with self._lock:  # one decision at a time: the next one counts this one as pending
            predicted = predict(self._pending)
            predicted = None if predicted is None else correction * predicted
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

    def finished_local(self, seconds: float, budget_s: float, predicted_s: float | None = None) -> None:
        """An admitted request's local answer is done: count it if it overran its budget, and learn
        from ``predicted_s`` (the backend's own prediction, before correction) how far off it was."""
        with self._lock:
            if seconds > budget_s:
                self._over_budget += 1
            if predicted_s is not None and predicted_s > 0:
                self._actual_over_predicted.append(seconds / predicted_s)

    def counts(self) -> AdmissionCounts:
        budget = self.budget_s()
        with self._lock:
            counts = AdmissionCounts(self._admitted, self._busy, self._over_budget, budget)
        return dataclasses.replace(counts, prediction_correction=self.prediction_correction())
