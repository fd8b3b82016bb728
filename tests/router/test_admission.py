"""Latency-aware admission: routed requests go local only while the local tier would answer within
the budget; private and model="local" requests never spill; concurrent decisions see each other."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from router import Client, Reason
from router._admission import LocalAdmission, prompt_token_estimate
from router.backends.llama_batch import BatchScheduler, _Sequence, _StepTimes
from router.backends.llama_workers import GenerationJob
from router.backends.base import GenerationParams
from router.config import LocalConfig
from tests.conftest import user

ORDER_QUERY = "I want to cancel the order I placed yesterday"
PAYMENT_QUERY = "I cannot pay with my credit card, what payment methods do you accept?"


def test_the_budget_is_the_cloud_median_clamped_and_a_fixed_budget_wins() -> None:
    admission = LocalAdmission(LocalConfig(latency_budget_floor_s=1.0, latency_budget_cap_s=8.0))
    assert admission.budget_s() == 8.0  # nothing measured yet: the cap
    for seconds in (0.2, 0.3, 0.4):
        admission.observe_cloud(seconds)
    assert admission.budget_s() == 1.0  # a median of 0.3 s is below the floor
    for seconds in (3.0, 3.5, 4.0, 4.5):
        admission.observe_cloud(seconds)
    assert admission.budget_s() == 3.0  # the median of seven
    for _ in range(20):
        admission.observe_cloud(60.0)
    assert admission.budget_s() == 8.0
    assert LocalAdmission(LocalConfig(latency_budget_s=2.5)).budget_s() == 2.5


def test_decisions_count_admitted_busy_and_pending_so_simultaneous_callers_see_each_other() -> None:
    admission = LocalAdmission(LocalConfig(latency_budget_s=1.0))
    seen: list[int] = []

    def predict(ahead: int) -> float:
        seen.append(ahead)
        return 0.4 * (ahead + 1)  # each request admitted ahead makes this one slower

    decisions = [admission.decide(predict)[0] for _ in range(4)]
    assert decisions == [True, True, False, False] and seen == [0, 1, 2, 2]
    admission.handed_over()
    assert admission.decide(predict)[0] is True  # one reached the backend: a place is free again
    assert admission.decide(lambda ahead: None)[0] is True  # no estimate yet: admit and learn
    counts = admission.counts()
    assert (counts.admitted, counts.busy) == (4, 2) and counts.spill_share == pytest.approx(2 / 6)
    admission.finished_local(1.5, 1.0)
    admission.finished_local(0.5, 1.0)
    assert admission.counts().over_budget == 1


def test_the_prompt_estimate_grows_with_the_conversation() -> None:
    one = prompt_token_estimate(user("hello there"))
    two = prompt_token_estimate([*user("hello there"), {"role": "assistant", "content": "x" * 400}, *user("and?")])
    assert 0 < one < two and two - one >= 100


def _scheduler_with(live: list[tuple[int, float | None]], step_s: float) -> BatchScheduler:
    """A scheduler's bookkeeping only (no model): live sequences (tokens left, finish_by offset)."""
    scheduler = object.__new__(BatchScheduler)
    scheduler.max_sequences = 16
    scheduler.prefill_chunk = 128
    scheduler._times = _StepTimes(16)
    scheduler._adapter_path, scheduler.adapter_version, scheduler._canary = None, None, None  # one lane, the base model
    for size in range(1, 17):
        scheduler._times.observe(size, step_s * size)
    now = time.monotonic()
    scheduler._live = {}
    for seq, (left, finish_in) in enumerate(live):
        job = GenerationJob([1, 2, 3], GenerationParams(), left, now + 60, finish_by=None if finish_in is None else now + finish_in)
        scheduler._live[seq] = _Sequence(job, seq, [1, 2, 3], 3 + left, prefilled=3, last_token=5)
    return scheduler


def _newcomer(prompt_tokens: int = 3) -> GenerationJob:
    return GenerationJob(list(range(prompt_tokens)), GenerationParams(), 16, time.monotonic() + 60)


def test_a_joiner_waits_when_it_would_push_an_admitted_request_past_its_budget() -> None:
    # Two live sequences, 50 tokens left each: 1.0 s at 2 x 10 ms a step; one more makes a step
    # 3 x 10 ms: 1.5 s to go (1.8 s with the margin).
    assert _scheduler_with([(50, None), (50, None)], 0.01)._keeps_budgets(_newcomer())  # nobody was promised anything
    assert _scheduler_with([(50, 2.0), (50, None)], 0.01)._keeps_budgets(_newcomer())
    assert not _scheduler_with([(50, 1.2), (50, None)], 0.01)._keeps_budgets(_newcomer())


def test_a_request_already_late_still_holds_joiners_back() -> None:
    # 1.0 s to go without the joiner against 0.8 s left: each joiner would make it later still.
    assert not _scheduler_with([(50, 0.8), (50, None)], 0.01)._keeps_budgets(_newcomer())


def test_step_times_learn_what_a_prompt_token_adds_to_a_step() -> None:
    times = _StepTimes(16)
    assert times.prefill_s(300, 128, 0.05) == pytest.approx(3 * 0.05)  # nothing learnt: a step a chunk
    times.observe(2, 0.04)
    times.observe_prefill(2, 100, 0.04 + 0.2)  # 100 prompt tokens beside two decodes added 0.2 s
    assert times.prefill_s(300, 128, 0.05) == pytest.approx(0.6)
    times.observe(1, 0.03)
    times.observe_prefill(0, 50, 0.03 + 0.1)  # prompts alone: a one-sequence step is the weights' read
    assert times.prefill_s(1, 128, 0.05) == pytest.approx(0.8 * 0.002 + 0.2 * 0.002)
    assert times.prefill_s(0, 128, 0.05) == 0.0


def test_a_long_prompt_waits_where_a_short_one_joins_once_prefill_is_learnt() -> None:
    # Budget 2.0 s; with the joiner the rest of the answer takes 1.5 s of decode steps.
    scheduler = _scheduler_with([(50, 2.0), (50, None)], 0.01)
    long_prompt = _newcomer(400)
    assert scheduler._keeps_budgets(long_prompt)  # prefill unlearnt: four chunks look like four steps
    scheduler._times.observe_prefill(2, 100, 0.02 + 0.2)  # measured: 2 ms a prompt token
    assert scheduler._keeps_budgets(_newcomer(20))  # 1.2 x (1.5 + 0.04) s
    assert not scheduler._keeps_budgets(long_prompt)  # 1.2 x (1.5 + 0.8) s


def test_a_prediction_counts_the_prompts_that_share_its_steps() -> None:
    scheduler = _scheduler_with([(50, None)], 0.01)
    scheduler._lock = threading.Lock()
    scheduler._times.observe_prefill(1, 100, 0.01 + 0.2)  # 2 ms a prompt token
    import collections

    scheduler._waiting = collections.deque()
    # 64 tokens at two sequences (20 ms a step) and its own 100-token prompt.
    assert scheduler.predicted_seconds(100, 64) == pytest.approx(1.2 * (64 * 0.02 + 100 * 0.002))
    now = time.monotonic()
    scheduler._waiting.append(GenerationJob(list(range(300)), GenerationParams(), 8, now + 60, finish_by=now + 5))
    scheduler._waiting.append(GenerationJob(list(range(500)), GenerationParams(), 8, now + 60))  # promised no time
    # Both waiting jobs count as batch size (four sequences); only the budgeted one's prompt counts as
    # prefill sharing its steps: it starts first, and the one promised no time joins only while it
    # keeps the budgets.
    assert scheduler.predicted_seconds(100, 64) == pytest.approx(1.2 * (64 * 0.04 + 400 * 0.002))
    assert scheduler.predicted_seconds(100, 64, ahead=1) == pytest.approx(1.2 * (64 * 0.05 + 500 * 0.002))


@pytest.mark.slow
def test_a_busy_local_tier_sends_routed_requests_to_the_cloud_but_keeps_private_and_pinned_ones(make_config, monkeypatch) -> None:
    with Client(make_config(local={"latency_budget_s": 2.0})) as client:
        backend = client._engine.local
        predicted: dict[str, Any] = {"s": 30.0}
        monkeypatch.setattr(backend, "predicted_seconds", lambda *a, **k: predicted["s"])
        busy = client.chat.completions.create(model="auto", messages=user(ORDER_QUERY), max_tokens=4)
        assert (busy.router.tier, busy.router.reason) == ("cloud", Reason.LOCAL_BUSY)
        assert "predicted 30.0 s, budget 2.0 s" in busy.router.detail and busy.router.fallback_from is None
        private = client.chat.completions.create(model="auto", messages=user(PAYMENT_QUERY), max_tokens=4)
        assert (private.router.tier, private.router.reason) == ("local", Reason.PRIVATE_CATEGORY)
        pinned = client.chat.completions.create(model="local", messages=user(ORDER_QUERY), max_tokens=4)
        assert (pinned.router.tier, pinned.router.reason) == ("local", Reason.FORCED_LOCAL)
        predicted["s"] = 0.5
        admitted = client.chat.completions.create(model="auto", messages=user(ORDER_QUERY), max_tokens=4)
        assert (admitted.router.tier, admitted.router.reason) == ("local", Reason.LOCAL_CATEGORY)
        counts = client._engine.admission.counts()
        assert (counts.admitted, counts.busy) == (1, 1)


@pytest.mark.slow
def test_admitted_requests_tell_the_batch_their_budget_and_leave_nothing_pending(make_config) -> None:
    with Client(make_config(local={"latency_budget_s": 30.0})) as client:
        seen: list[float | None] = []
        batch = client._engine.local
        original = batch.generate

        def spy(*args: Any, **kwargs: Any) -> Any:
            seen.append(kwargs.get("finish_by"))
            return original(*args, **kwargs)

        batch.generate = spy  # type: ignore[method-assign]
        threads = [
            threading.Thread(target=client.chat.completions.create, kwargs={"model": "auto", "messages": user(ORDER_QUERY), "max_tokens": 4})
            for _ in range(3)
        ]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(seen) == 3 and all(f is not None and started + 29 < f < time.monotonic() + 30 for f in seen)
        assert client._engine.admission._pending == 0


def test_step_times_scale_every_size_by_how_much_slower_the_box_is_now() -> None:
    times = _StepTimes(16)
    times.observe(1, 0.02)
    times.observe(8, 0.06)
    assert times.at(1) == pytest.approx(0.02) and times.at(16) == pytest.approx(0.12)  # 16 from 8, linearly
    for _ in range(10):  # the box got busy: steps at 8 take twice as long
        times.observe(8, 0.12)
    assert times.at(1) > 0.03  # size 1 was not seen since, yet a new request there is predicted slower


def test_a_request_admitted_under_a_budget_joins_before_earlier_ones_promised_no_time() -> None:
    scheduler = _scheduler_with([], 0.01)
    scheduler._lock = threading.Lock()
    scheduler._wake = threading.Condition(scheduler._lock)
    scheduler._pending_swap = None
    scheduler._native = type("Native", (), {"new_sampler": lambda self, params: None, "forget": lambda self, seq: None})()
    scheduler.kv_tokens, scheduler.pad_multiple, scheduler.stop_sequences = 10_000, 4, []
    scheduler._prefixes = type("NoCache", (), {"cached_tokens": 0, "lookup": lambda self, prompt: None})()
    scheduler.max_sequences = 1
    now = time.monotonic()
    private = GenerationJob([1, 2, 3], GenerationParams(), 8, now + 60)
    routed = GenerationJob([1, 2, 3], GenerationParams(), 8, now + 60, finish_by=now + 5)
    import collections

    scheduler._waiting = collections.deque([private, routed])
    scheduler._admit()
    assert [s.job for s in scheduler._live.values()] == [routed] and list(scheduler._waiting) == [private]


def test_an_idle_local_tier_answers_even_when_the_cloud_is_faster_but_load_does_not_slow_it_past_the_cloud() -> None:
    admission = LocalAdmission(LocalConfig(latency_budget_floor_s=1.0))
    for _ in range(5):
        admission.observe_cloud(2.0)  # the cloud answers in 2 s
    # Alone, this answer takes 3 s locally: slower than the cloud, yet nothing else delays it.
    assert admission.decide(lambda ahead: 3.0, idle_s=3.0)[:2] == (True, 3.0)
    # Behind a busy batch it would take 5 s: the slowdown is load's, so the cloud answers.
    assert admission.decide(lambda ahead: 5.0, idle_s=3.0)[0] is False
    # A configured budget is a hard bound, idle or not.
    hard = LocalAdmission(LocalConfig(latency_budget_s=2.0))
    assert hard.decide(lambda ahead: 3.0, idle_s=3.0)[0] is False
