"""The shadow/audit scheduler (router._sampling) on its own: idle-only, preemption, bounded queue, expiry.

The engine's real shadow and audit answers are tested in test_sampling_serving.py; here the work is
plain callables, so each scheduling rule can be shown to hold (and to fail when broken) in milliseconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import closing

import pytest

from router._request import build_request
from router._sampling import (
    ForegroundActivity,
    LocalShadow,
    QualitySampler,
    SampleJob,
    ScoredSample,
)
from router.config import QualityConfig


def job(kind: str = "shadow", **kw: object) -> SampleJob:
    request = build_request(model="gpt-4o", messages=[{"role": "user", "content": "where is my order?"}], max_input_chars=10_000)
    return SampleJob(kind, request, kw.pop("request_id", "chatcmpl-1"), "ORDER", "It ships today.", "gpt-4o", **kw)  # type: ignore[arg-type]


class Work:
    """The engine's side, played by callables that record what they were asked to do."""

    def __init__(self, *, pieces: int = 3, piece_s: float = 0.0) -> None:
        self.pieces, self.piece_s = pieces, piece_s
        self.recorded: list[ScoredSample] = []
        self.shadow_started = threading.Event()
        self.generated = 0
        self.audits = 0
        self.in_shadow = False

    def shadow(self, j: SampleJob, interrupted: Callable[[], bool]) -> LocalShadow | None:
        self.shadow_started.set()
        self.in_shadow = True
        try:
            for _ in range(self.pieces):
                time.sleep(self.piece_s)
                self.generated += 1
                if interrupted():
                    return None
            return LocalShadow("Your order ships today.", None, "model:test")
        finally:
            self.in_shadow = False

    def audit(self, j: SampleJob) -> tuple[str, float | None]:
        self.audits += 1
        return "It left the warehouse today.", 0.001

    def sampler(self, activity: ForegroundActivity, **config: object) -> closing[QualitySampler]:
        """The sampler under test, closed when the ``with`` block ends."""
        settings = {"idle_s": 0.0, **config}
        return closing(QualitySampler(
            QualityConfig(**settings), activity, shadow=self.shadow, audit=self.audit,
            score=lambda a, b: 0.5, record=self.recorded.append,
        ))  # fmt: skip


def test_a_shadow_answer_is_scored_and_recorded_when_the_router_is_idle() -> None:
    work, activity = Work(), ForegroundActivity()
    with work.sampler(activity) as sampler:
        assert sampler.offer(job())
        assert sampler.drain(5)
    (sample,) = work.recorded
    assert (sample.job.kind, sample.served_key, sample.similarity, sample.degenerate) == ("shadow", "model:test", 0.5, False)
    assert sample.answer == "Your order ships today." and sample.cost_usd is None
    assert sampler.stats.completed == 1


def test_a_shadow_answer_waits_until_the_foreground_has_been_idle() -> None:
    work, activity = Work(), ForegroundActivity()
    with work.sampler(activity, idle_s=0.2) as sampler:
        with activity.running():
            sampler.offer(job())
            assert not work.shadow_started.wait(0.3), "started while a foreground request was running"
        left = time.monotonic()
        assert work.shadow_started.wait(5)
        assert time.monotonic() - left >= 0.2  # and only after idle_s of quiet
        assert sampler.drain(5)
    assert len(work.recorded) == 1


def test_a_foreground_request_preempts_a_shadow_within_one_piece() -> None:
    work, activity = Work(pieces=500, piece_s=0.005), ForegroundActivity()
    with work.sampler(activity) as sampler:
        sampler.offer(job())
        assert work.shadow_started.wait(5)
        time.sleep(0.05)
        assert work.in_shadow
        with activity.running():
            assert not work.in_shadow  # it stepped aside before the foreground work began
            stopped_at = work.generated
            assert sampler.drain(5)
            assert work.generated == stopped_at  # and did not start again while it ran
    stats = sampler.stats
    assert stats.preempted == 1 and stats.completed == 0 and work.recorded == []
    assert stats.preempt_late_pieces_max <= 1
    assert activity.yield_waits == 1 and activity.yield_wait_s_max < 0.25


def test_foreground_work_waits_for_background_work_at_most_max_yield_wait() -> None:
    activity = ForegroundActivity(max_yield_wait_s=0.1)
    with activity.background():  # background work that never checks for interruption
        started = time.monotonic()
        with activity.running():
            waited = time.monotonic() - started
    assert 0.1 <= waited < 2.0 and activity.yield_waits == 1


def test_the_queue_is_bounded_and_drops_what_does_not_fit() -> None:
    work, activity = Work(), ForegroundActivity()
    with work.sampler(activity, sample_queue=2) as sampler:
        with activity.running():  # the worker holds one job waiting for idle; two more fit
            accepted = [sampler.offer(job(request_id=f"chatcmpl-{i}")) for i in range(6)]
            time.sleep(0.05)
        assert sampler.drain(5)
    stats = sampler.stats
    assert accepted.count(False) == stats.dropped_queue_full >= 3
    assert stats.completed == accepted.count(True) == len(work.recorded)


def test_a_job_not_started_in_time_is_dropped_under_load() -> None:
    work, activity = Work(), ForegroundActivity()
    with work.sampler(activity, sample_max_age_s=0.2) as sampler:
        with activity.running():
            sampler.offer(job())
            assert sampler.drain(5)  # expires while the foreground keeps the local tier busy
    assert sampler.stats.expired == 1 and work.recorded == [] and not work.shadow_started.is_set()


def test_an_audit_calls_the_cloud_without_waiting_but_scores_when_idle() -> None:
    work, activity = Work(), ForegroundActivity()
    with work.sampler(activity, idle_s=10.0) as sampler:  # idle_s applies to shadow answers only
        with activity.running():
            sampler.offer(job("audit", served_key="registry:v0002"))
            deadline = time.monotonic() + 5
            while work.audits == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert work.audits == 1 and work.recorded == []  # asked, not yet scored
        assert sampler.drain(5)
    (sample,) = work.recorded
    assert (sample.job.kind, sample.served_key, sample.answer, sample.cost_usd) == (
        "audit", "registry:v0002", "It left the warehouse today.", 0.001,
    )  # fmt: skip


def test_a_failing_job_is_counted_and_the_worker_goes_on() -> None:
    work, activity = Work(), ForegroundActivity()

    def broken(j: SampleJob, interrupted: Callable[[], bool]) -> LocalShadow | None:
        raise RuntimeError("native crash")

    with closing(QualitySampler(
        QualityConfig(idle_s=0.0), activity, shadow=broken, audit=work.audit, score=lambda a, b: 0.5, record=work.recorded.append
    )) as sampler:
        sampler.offer(job())
        sampler.offer(job("audit"))
        assert sampler.drain(5)
    assert sampler.stats.failed == 1 and sampler.stats.completed == 1


def test_close_stops_a_running_shadow_before_returning_and_refuses_new_jobs() -> None:
    work, activity = Work(pieces=20_000, piece_s=0.001), ForegroundActivity()  # 20 s unless stopped
    with work.sampler(activity) as sampler:
        sampler.offer(job())
        assert work.shadow_started.wait(5)
        sampler.close(timeout=15)
        assert not work.in_shadow  # the model may be freed now: nothing generates on it
        assert work.generated < 20_000
        assert not sampler.offer(job())


@pytest.mark.parametrize("field", ["shadow_rate", "audit_rate"])
def test_rates_are_shares(field: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        QualityConfig(**{field: 1.5})


def test_scorer_path_scores_with_an_untuned_classifier_s_encoder(classifier_path, tmp_path) -> None:
    """A router whose own classifier is fine-tuned can still score with a separate, untuned encoder."""
    from router._engine import Engine
    from router.config import RouterConfig

    config = RouterConfig(
        quality={"scorer_path": classifier_path / "encoder"}, log={"path": tmp_path / "log.db"}, warmup="lazy"
    )
    engine = Engine(config)
    try:
        same = engine.shadowing.answer_similarity("Your order ships today.", "Your order ships today.")
        other = engine.shadowing.answer_similarity("Your order ships today.", "The weather in Lisbon is sunny.")
    finally:
        engine.close()
    assert same == pytest.approx(1.0, abs=1e-3) and other < 0.5
