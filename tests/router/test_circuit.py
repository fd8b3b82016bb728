"""The circuit breaker's state machine, on a hand-driven clock (no sleeping, no network)."""

from __future__ import annotations

import threading

from router.backends.circuit import CircuitBreaker, CircuitBreakers


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_n_consecutive_failures_and_a_success_resets_the_count() -> None:
    breaker = CircuitBreaker(3, 30.0, clock=Clock())
    breaker.failed("503")
    breaker.failed("503")
    breaker.succeeded()  # not consecutive any more
    breaker.failed("503")
    breaker.failed("503")
    assert breaker.state == "closed" and breaker.allow()
    breaker.failed("timeout")
    assert breaker.state == "open" and not breaker.allow()
    assert breaker.last_failure == "timeout" and breaker.retry_in_s() == 30.0


def test_half_open_lets_one_trial_through_and_its_outcome_decides() -> None:
    clock = Clock()
    breaker = CircuitBreaker(1, 10.0, clock=clock)
    breaker.failed("503")
    clock.now += 9.9
    assert not breaker.allow() and abs(breaker.retry_in_s() - 0.1) < 1e-9
    clock.now += 0.1
    assert breaker.state == "half_open"
    assert breaker.allow()  # the trial
    assert not breaker.allow()  # everyone else waits for its verdict
    breaker.failed("503")  # the trial failed: open for another full period
    assert breaker.state == "open" and breaker.retry_in_s() == 10.0
    clock.now += 10.0
    assert breaker.allow()
    breaker.succeeded()
    assert breaker.state == "closed" and breaker.allow() and breaker.allow()


def test_a_cancelled_trial_lets_another_caller_try() -> None:
    clock = Clock()
    breaker = CircuitBreaker(1, 1.0, clock=clock)
    breaker.failed("503")
    clock.now += 1.0
    assert breaker.allow() and not breaker.allow()
    breaker.release()
    assert breaker.allow()


def test_a_late_failure_does_not_extend_an_open_circuit() -> None:
    clock = Clock()
    breaker = CircuitBreaker(1, 5.0, clock=clock)
    breaker.failed("503")
    clock.now += 4.0
    breaker.failed("503")  # a call that started before the circuit opened
    assert abs(breaker.retry_in_s() - 1.0) < 1e-9


def test_concurrent_callers_get_exactly_one_trial() -> None:
    clock = Clock()
    breaker = CircuitBreaker(1, 1.0, clock=clock)
    breaker.failed("503")
    clock.now += 1.0
    barrier = threading.Barrier(8)
    allowed: list[bool] = []

    def call() -> None:
        barrier.wait()
        allowed.append(breaker.allow())

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(allowed) == [False] * 7 + [True]


def test_breakers_exist_only_for_failed_routes_and_stay_bounded() -> None:
    breakers = CircuitBreakers(1, 30.0, max_routes=4)
    assert breakers.get("openai/a@http://x/v1") is None and breakers.states() == {}
    breakers.for_failure("open-route").failed("503")
    for i in range(10):  # request-chosen model names must not grow the table without end
        breakers.for_failure(f"route-{i}")
    states = breakers.states()
    assert len(states) <= 4 and states["open-route"] == "open"
