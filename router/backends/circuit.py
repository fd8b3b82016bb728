"""A circuit breaker per cloud route, so a provider that is down costs callers nothing but an error.

Retries with back-off protect one request; they do not stop every request from paying the full
retry ladder (and the provider from being hammered) during an outage. A breaker counts
consecutive retryable failures of one route (litellm model + endpoint)::

    closed ──N failures──► open ──reset_s passes──► half-open ──trial succeeds──► closed
                            ▲                           │
                            └──────trial fails──────────┘

While open, calls fail fast without touching the network; half-open lets exactly one trial call
through. The lock only guards a few counters (never I/O), so async code may use it directly.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Literal

__all__ = ["CircuitBreaker", "CircuitBreakers", "CircuitState"]

CircuitState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """One route's breaker: ask :meth:`allow` before each attempt, then report its outcome.

    ``clock`` is injectable so the state machine can be tested without sleeping.
    """

    def __init__(self, failures: int, reset_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.failures = failures
        self.reset_s = reset_s
        self._clock = clock
        self._lock = threading.Lock()
        self._state: CircuitState = "closed"
        self._streak = 0
        self._opened_at = 0.0
        self._trial = False  # a half-open trial call is in flight
        self.last_failure = ""

    @property
    def state(self) -> CircuitState:
        with self._lock:
            if self._state == "open" and self._clock() >= self._opened_at + self.reset_s:
                return "half_open"  # reported as it will behave for the next caller
            return self._state

    def retry_in_s(self) -> float:
        """Seconds until a call may be let through again (0 when one may go now)."""
        with self._lock:
            if self._state == "open":
                return max(0.0, self._opened_at + self.reset_s - self._clock())
            return 0.0

    def allow(self) -> bool:
        """May an attempt go to the network now? A True in half-open makes the caller the trial."""
        with self._lock:
            if self._state == "open":
                if self._clock() < self._opened_at + self.reset_s:
                    return False
                self._state, self._trial = "half_open", False
            if self._state == "half_open":
                if self._trial:
                    return False
                self._trial = True
            return True

    def succeeded(self) -> None:
        """The route answered (an error that is not the route's fault, such as a 400, counts too)."""
        with self._lock:
            self._state, self._streak, self._trial = "closed", 0, False

    def failed(self, reason: str) -> None:
        """A retryable failure: a connection error, a timeout, 429 or 5xx."""
        with self._lock:
            self.last_failure = reason
            if self._state == "open":
                return  # a call started before the circuit opened: the reset timer keeps running
            self._streak += 1
            if self._state == "half_open" or self._streak >= self.failures:
                self._state, self._opened_at, self._trial = "open", self._clock(), False

    def release(self) -> None:
        """The attempt ended without a verdict (cancelled): let another caller be the trial."""
        with self._lock:
            self._trial = False


class CircuitBreakers:
    """The breakers of every route that has failed, created on its first retryable failure.

    Route names can come from requests (any litellm model string), so the table is bounded:
    past ``max_routes`` the closed breakers are forgotten first, oldest first.
    """

    def __init__(self, failures: int, reset_s: float, *, max_routes: int = 256, clock: Callable[[], float] = time.monotonic) -> None:
        self._make = lambda: CircuitBreaker(failures, reset_s, clock=clock)
        self._max_routes = max_routes
        self._lock = threading.Lock()
        self._breakers: dict[str, CircuitBreaker] = {}

    def get(self, route: str) -> CircuitBreaker | None:
        """The route's breaker, or None while it has never failed (then every call may go)."""
        return self._breakers.get(route)

    def for_failure(self, route: str) -> CircuitBreaker:
        """The route's breaker, created for a failure to be recorded on."""
        with self._lock:
            breaker = self._breakers.get(route)
            if breaker is None:
                if len(self._breakers) >= self._max_routes:
                    self._forget_closed()
                breaker = self._breakers[route] = self._make()
            return breaker

    def _forget_closed(self) -> None:
        closed = [route for route, b in self._breakers.items() if b.state == "closed"]
        for route in closed[: max(1, len(closed) // 2)]:
            del self._breakers[route]

    def states(self) -> dict[str, CircuitState]:
        """Route → state, for metrics and logs."""
        with self._lock:
            breakers = list(self._breakers.items())
        return {route: breaker.state for route, breaker in breakers}
