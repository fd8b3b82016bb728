"""Shadow and audit answers: live quality evidence gathered off the request path.

* **shadow**: for a sample of cloud answers in a local category the gate keeps closed, the local
  tier answers the same request too, and the pair is scored. Enough good shadow answers open the
  category (:mod:`router.quality`); an untuned model's never will.
* **audit**: for a sample of local answers in an open category, the cloud answers too, so an open
  category keeps being measured and closes when its answers degrade.
* **fallback**: every local answer the guard rejected in an open category (the cloud answered
  instead) is scored against the cloud's answer and counts as degenerate: without it an open
  category would be judged only on the answers that passed the guard.

The foreground never waits for this work. Jobs go to a bounded queue (a full queue drops the new
job). A job not started within ``sample_max_age_s`` is dropped. A shadow answer starts only once
the local cores have been idle for ``idle_s``. It stops within one token when a foreground request
arrives, and the job is then dropped, not retried: a busy router does no shadow work. An audit is a
network call and does not wait, but its scoring (the encoder runs on the same cores) does.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Literal

from router._request import ChatRequest
from router.config import QualityConfig

__all__ = ["ForegroundActivity", "LocalShadow", "QualitySampler", "SampleJob", "SamplerStats", "ScoredSample"]

logger = logging.getLogger("router")

SampleKind = Literal["shadow", "audit", "fallback"]


class ForegroundActivity:
    """Foreground work in flight on the local cores (classification, local generation), and the
    background work that must step aside for it.

    Entering foreground work waits, at most ``max_yield_wait_s``, for background work on the same
    cores to step aside: a shadow answer stops after the token being decoded (tens of
    milliseconds on a small model), so a query is classified, and a local answer generated, on
    cores nobody else is using. Without the wait, that last token would run beside the
    classifier and slow it by half (``make bench``: classify p99 under generation).
    """

    def __init__(self, *, max_yield_wait_s: float = 0.25) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._background = 0
        self._arrivals = 0  # only grows: a change means foreground work started meanwhile
        self._last_arrival = 0.0
        self._last_left = time.monotonic()
        self.max_yield_wait_s = max_yield_wait_s
        self.yield_waits = 0
        self.yield_wait_s_max = 0.0

    @contextmanager
    def running(self) -> Iterator[None]:
        """Mark foreground work for the duration of the block (background work yields to it)."""
        with self._cond:
            self._active += 1
            self._arrivals += 1
            self._last_arrival = now = time.monotonic()
            if self._background:
                deadline = now + self.max_yield_wait_s
                while self._background and (remaining := deadline - time.monotonic()) > 0:
                    self._cond.wait(remaining)
                self.yield_waits += 1
                self.yield_wait_s_max = max(self.yield_wait_s_max, time.monotonic() - now)
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._last_left = time.monotonic()
                self._cond.notify_all()

    @contextmanager
    def background(self) -> Iterator[None]:
        """Mark background work on the local cores; it must check :meth:`interrupted_since` often."""
        with self._cond:
            self._background += 1
        try:
            yield
        finally:
            with self._cond:
                self._background -= 1
                self._cond.notify_all()

    @property
    def last_arrival(self) -> float:
        """``time.monotonic()`` when foreground work last started."""
        return self._last_arrival

    def interrupted_since(self, mark: int) -> bool:
        """Whether foreground work is running, or has run, since :meth:`wait_idle` returned ``mark``."""
        return self._active > 0 or self._arrivals != mark

    def wait_idle(self, idle_s: float, *, until: float, stop: threading.Event) -> int | None:
        """Block until no foreground work has run for ``idle_s``; return a mark for :meth:`interrupted_since`.

        ``None`` once ``time.monotonic()`` passes ``until`` or ``stop`` is set.
        """
        with self._cond:
            while not stop.is_set():
                now = time.monotonic()
                if now >= until:
                    return None
                if self._active == 0 and now - self._last_left >= idle_s:
                    return self._arrivals
                wait = idle_s - (now - self._last_left) if self._active == 0 else until - now
                self._cond.wait(max(0.001, min(wait, until - now, 0.5)))
        return None

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()


@dataclass(frozen=True)
class SampleJob:
    """A served answer to measure against the other tier's answer to the same request."""

    kind: SampleKind
    request: ChatRequest
    request_id: str
    category: str
    answer: str
    """The answer served: the cloud's (shadow) or the local model's (audit)."""
    cloud_model: str
    served_key: str | None = None
    """Audit, fallback: the local model that answered. Shadow: read when the shadow answer is generated."""
    local_answer: str | None = None
    """Fallback: the local answer the guard rejected (the cloud's ``answer`` was served instead)."""
    problem: str | None = None
    """Fallback: why the guard rejected it."""
    topic_start: int | None = None
    """A later turn: the message index that opened its topic (the local prompt is shaped as served)."""
    canary_arm: str | None = None
    """Audit of a request counted in a running canary: its arm and version (:mod:`router._canary_serving`)."""
    canary_version: str | None = None
    enqueued: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class LocalShadow:
    """What the local tier answered in the background."""

    text: str
    degenerate: str | None
    served_key: str


@dataclass(frozen=True)
class ScoredSample:
    """One finished job: what is recorded in the gate and the traffic log."""

    job: SampleJob
    served_key: str
    similarity: float
    degenerate: bool
    answer: str
    """The answer produced in the background: the local one (shadow) or the cloud's (audit)."""
    cost_usd: float | None
    detail: str


@dataclass
class SamplerStats:
    """Counts since the router started; ``router stats`` shows the logged samples instead."""

    offered: int = 0
    completed: int = 0
    dropped_queue_full: int = 0
    expired: int = 0
    preempted: int = 0
    failed: int = 0
    preempt_late_pieces_max: int = 0
    """Most pieces a shadow generated after a foreground request arrived (the promise: at most 1)."""

    def copy(self) -> SamplerStats:
        return SamplerStats(**{f.name: getattr(self, f.name) for f in fields(self)})


class _Preempted(Exception):
    pass


class QualitySampler:
    """A bounded queue and one daemon worker thread that turns sample jobs into scored samples.

    :mod:`router._shadowing` supplies the work as callables, so this class holds only the scheduling rules:
    ``shadow(job, interrupted)`` generates locally, checking ``interrupted()`` after every piece
    and returning ``None`` when it stopped for the foreground; ``audit(job)`` returns the cloud's
    answer and its cost; ``score(a, b)`` is the similarity of two answers; ``record`` stores a result.
    """

    def __init__(
        self,
        config: QualityConfig,
        activity: ForegroundActivity,
        *,
        shadow: Callable[[SampleJob, Callable[[], bool]], LocalShadow | None],
        audit: Callable[[SampleJob], tuple[str, float | None]],
        score: Callable[[str, str], float],
        record: Callable[[ScoredSample], None],
    ) -> None:
        self.config = config
        self.activity = activity
        self._shadow = shadow
        self._audit = audit
        self._score = score
        self._record = record
        self._queue: queue.Queue[SampleJob | None] = queue.Queue(maxsize=config.sample_queue)
        self._stats = SamplerStats()
        self._stats_lock = threading.Lock()
        self._pending = 0
        self._pending_cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()

    @property
    def stats(self) -> SamplerStats:
        with self._stats_lock:
            return self._stats.copy()

    def _count(self, name: str, by: int = 1) -> None:
        with self._stats_lock:
            setattr(self._stats, name, getattr(self._stats, name) + by)

    def offer(self, job: SampleJob) -> bool:
        """Queue ``job`` without blocking; ``False`` (and counted) when the queue is full or closed."""
        if self._stop.is_set():
            return False
        self._count("offered")
        with self._pending_cond:
            self._pending += 1
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self._done()
            self._count("dropped_queue_full")
            return False
        self._ensure_worker()
        return True

    def _ensure_worker(self) -> None:
        with self._thread_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="router-quality-sampler", daemon=True)
                self._thread.start()

    def _done(self) -> None:
        with self._pending_cond:
            self._pending -= 1
            self._pending_cond.notify_all()

    def drain(self, timeout: float) -> bool:
        """Wait until every queued job has finished (or been dropped); ``False`` on timeout."""
        end = time.monotonic() + timeout
        with self._pending_cond:
            while self._pending:
                remaining = end - time.monotonic()
                if remaining <= 0:
                    return False
                self._pending_cond.wait(remaining)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker: the job running stops at its next check; queued jobs are dropped."""
        self._stop.set()
        self.activity.wake()
        with self._thread_lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                pass  # the worker sees _stop after its current job
            thread.join(timeout)

    # -- the worker ---------------------------------------------------------------------------

    def _work(self) -> None:
        while not self._stop.is_set():
            job = self._queue.get()
            if job is None:
                break
            try:
                self._run(job)
            except _Preempted:
                self._count("preempted")
            except Exception as err:  # a failed sample costs evidence, never the router
                self._count("failed")
                logger.warning("quality sampler: %s sample of %s failed: %s", job.kind, job.request_id, err)
            finally:
                self._done()
        while True:  # closed: what is still queued is dropped
            try:
                if self._queue.get_nowait() is not None:
                    self._done()
            except queue.Empty:
                break

    def _run(self, job: SampleJob) -> None:
        until = job.enqueued + self.config.sample_max_age_s
        if job.kind == "shadow":
            mark = self.activity.wait_idle(self.config.idle_s, until=until, stop=self._stop)
            if mark is None:
                self._count("expired")
                return
            late = _LatePieces(self.activity, mark, self._stop)
            with self.activity.background():
                shadow = self._shadow(job, late)
            with self._stats_lock:
                self._stats.preempt_late_pieces_max = max(self._stats.preempt_late_pieces_max, late.late_pieces)
            if shadow is None:
                raise _Preempted
            local, cloud, key, degenerate, cost = shadow.text, job.answer, shadow.served_key, shadow.degenerate, None
            produced = local
        elif job.kind == "fallback":  # both answers are known: only the scoring is left
            local, cloud, key, cost = job.local_answer or "", job.answer, job.served_key or "", None
            degenerate, produced = job.problem or "degenerate", local
        else:
            if time.monotonic() >= until or self._stop.is_set():
                self._count("expired")
                return
            cloud, cost = self._audit(job)
            local, key, degenerate, produced = job.answer, job.served_key or "", None, cloud
        similarity = self._scored(local, cloud) if local.strip() and cloud.strip() else 0.0
        if similarity is None:
            self._count("expired")
            return
        detail = f"guard: {degenerate}" if degenerate else "guard: passed"
        self._record(ScoredSample(job, key, similarity, degenerate is not None, produced, cost, detail))
        self._count("completed")


    def _scored(self, local: str, cloud: str) -> float | None:
        """Score the pair in an idle moment (the encoder runs on the cores the foreground uses);
        ``None`` if none came in time. A request arriving meanwhile waits for it, like for a token."""
        if self.activity.wait_idle(0.0, until=time.monotonic() + self.config.sample_max_age_s, stop=self._stop) is None:
            return None
        with self.activity.background():
            return self._score(local, cloud)


class _LatePieces:
    """The ``interrupted`` callable given to a shadow generation; measures how late it stopped.

    It is called after every generated piece. When it first says stop, ``late_pieces`` counts the
    pieces that finished after the foreground request arrived: the promise is at most one (the
    token being decoded when the request came in).
    """

    def __init__(self, activity: ForegroundActivity, mark: int, stop: threading.Event) -> None:
        self._activity = activity
        self._mark = mark
        self._stop = stop
        self._finished: list[float] = []
        self.late_pieces = 0

    def __call__(self) -> bool:
        self._finished.append(time.monotonic())
        if self._stop.is_set():  # the router is closing: stop before the model is freed
            return True
        if not self._activity.interrupted_since(self._mark):
            return False
        arrival = self._activity.last_arrival
        self.late_pieces = sum(1 for t in self._finished if t > arrival)
        return True
