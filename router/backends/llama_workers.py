"""Worker threads that own llama.cpp contexts, fed by one bounded queue.

A llama.cpp context is not thread-safe, so each context has exactly one owner: a worker thread
that runs one generation at a time and pushes its pieces into the job's own unbounded queue.
Request threads never touch a context, which gives three properties a lock could not:

* a slow stream reader only delays itself: the worker decodes ahead into the job's queue
  (bounded by ``max_tokens``) and moves on to the next job;
* a full queue refuses a job at once (``LocalFailure("overloaded")``), so callers fall back or get
  a clear 503 instead of waiting out their deadline;
* ``close()`` stops intake, lets work in flight finish and frees each context on its own thread,
  so no context is freed under a decoding thread.

A worker stuck in native code past a job's deadline (plus ``hang_grace_s``) is retired and
replaced by a fresh one with a new context; the stuck thread frees its context if it ever returns.
The replacement is loaded by a background thread that retries with capped exponential back-off
when the load fails (the model file vanished, the context could not be allocated); while no live
worker is left, jobs are refused at once (``LocalFailure("overloaded")``, the same refusal as a
full queue: the caller falls back or gets a 503 with Retry-After) instead of each waiting out its
deadline. An exception in native code fails that job and rebuilds the worker's context.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from router.backends.base import GenerationParams, LocalFailure

__all__ = ["GenerationJob", "JobDone", "LlamaWorkerPool"]

logger = logging.getLogger("router")

_STOP = object()


@dataclass
class JobDone:
    """The last item of a job's output: how it ended and what it cost."""

    finish_reason: str
    completion_tokens: int
    adapter_version: str | None


@dataclass
class GenerationJob:
    """One generation: the prompt, its limits, and the queue its pieces arrive on."""

    tokens: list[int]
    params: GenerationParams
    max_tokens: int
    deadline: float
    out: queue.SimpleQueue[Any] = field(default_factory=queue.SimpleQueue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    started_at: float | None = None
    released: bool = False  # its queue slot was given back (once: by the worker, or by the watchdog)
    finish_by: float | None = None  # a routed request's latency budget (monotonic): the batch does not let later joiners break it
    adapter_version: str | None = None
    """The model version asked for: the batch's canary version runs on the canary adapter, anything else on the
    serving one (the worker pool serves one adapter); :class:`JobDone` says which version answered."""


@dataclass
class _Context:
    llama: Any
    adapter_version: str | None


class _Worker:
    def __init__(self, pool: LlamaWorkerPool, index: int, context: _Context) -> None:
        self.pool = pool
        self.index = index
        self.context: _Context | None = context
        self.job: GenerationJob | None = None
        self.retired = False
        self.next_context: _Context | None = None
        self.thread = threading.Thread(target=self._run, name=f"llama-worker-{index}", daemon=True)

    def _run(self) -> None:
        try:
            while True:
                job = self.pool._queue.get()
                if job is _STOP:
                    break
                if self.retired:  # replaced while stuck: hand the job on to a live worker
                    self.pool._queue.put(job)
                    break
                self._take_next_context()
                self.job = job
                try:
                    self._generate(job)
                finally:
                    self.job = None
                    self.pool._finished(job)
                if self.retired:
                    break
        finally:
            self._free()

    def _take_next_context(self) -> None:
        with self.pool._lock:
            new, self.next_context = self.next_context, None
        if new is not None:
            old, self.context = self.context, new
            if old is not None:
                old.llama.close()
            logger.info("local worker %d now serves adapter version %s", self.index, new.adapter_version)

    def _free(self) -> None:
        for ctx in (self.context, self.next_context):
            if ctx is not None:
                try:
                    ctx.llama.close()
                except Exception:  # noqa: BLE001 - freeing at shutdown must not raise
                    logger.debug("closing a llama context failed", exc_info=True)
        self.context = self.next_context = None

    def _generate(self, job: GenerationJob) -> None:
        if job.cancelled.is_set():
            return
        if time.monotonic() > job.deadline:
            job.out.put(LocalFailure("timeout", "waited in the local queue past the deadline"))
            return
        if self.context is None:  # rebuilt after a crash and the rebuild failed
            self._rebuild()
            if self.context is None:
                job.out.put(LocalFailure("error", "the local model could not be loaded"))
                return
        job.started_at = time.monotonic()
        llama, version = self.context.llama, self.context.adapter_version
        params = job.params
        parts: list[str] = []
        finish = "stop"
        chunks = None
        try:
            chunks = llama.create_completion(
                job.tokens,  # pre-tokenized: the prompt is not tokenized twice
                max_tokens=job.max_tokens,
                temperature=params.temperature if params.temperature is not None else 0.0,
                top_p=params.top_p if params.top_p is not None else 1.0,
                stop=[*self.pool.stop_sequences, *params.stop],
                seed=params.seed,
                frequency_penalty=params.frequency_penalty or 0.0,
                presence_penalty=params.presence_penalty or 0.0,
                stream=True,
            )
            for chunk in chunks:
                if job.cancelled.is_set() or self.retired:
                    break
                choice = chunk["choices"][0]
                if choice["text"]:
                    parts.append(choice["text"])
                    job.out.put(choice["text"])
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
            if chunks is not None:
                chunks.close()
            answer = "".join(parts).encode("utf-8")
            used = len(llama.tokenize(answer, add_bos=False, special=True)) if answer else 0
            job.out.put(JobDone(finish, used, version))
            if not job.cancelled.is_set():
                self.pool._observe(time.monotonic() - job.started_at)
        except Exception as err:  # noqa: BLE001 - a native failure fails this job, then the context is rebuilt
            logger.warning("local worker %d failed mid-generation (%s: %s); rebuilding its context", self.index, type(err).__name__, err)
            job.out.put(LocalFailure("error", f"{type(err).__name__}: {err}"))
            if not self.retired:
                self._rebuild()

    def _rebuild(self) -> None:
        old, self.context = self.context, None
        if old is not None:
            try:
                old.llama.close()
            except Exception:  # noqa: BLE001
                logger.debug("closing a failed llama context failed", exc_info=True)
        try:
            self.context = self.pool._new_context()
        except Exception as err:  # noqa: BLE001 - the next job retries the load
            logger.warning("local worker %d could not reload the model: %s", self.index, err)


class LlamaWorkerPool:
    """``workers`` threads, each owning one context from ``new_context()``, behind a queue of ``max_queue``.

    ``new_context()`` returns ``(llama, adapter_version)`` and is called off the request path
    (at start, after a crash, when replacing a hung worker, and by :meth:`swap`).
    """

    def __init__(
        self,
        new_context: Callable[[], tuple[Any, str | None]],
        *,
        workers: int,
        max_queue: int,
        hang_grace_s: float,
        stop_sequences: list[str],
        max_wait_s: float | None = None,
        respawn_backoff_s: float = 0.5,
        respawn_backoff_max_s: float = 30.0,
    ) -> None:
        self._factory = new_context
        self.respawn_backoff_s = respawn_backoff_s
        self.respawn_backoff_max_s = respawn_backoff_max_s
        self._missing = 0  # hung workers retired and not yet replaced
        self._respawner: threading.Thread | None = None
        self._stopping = threading.Event()  # set by close(): the respawner stops retrying
        self.respawn_failures = 0
        """Failed attempts to load a replacement worker's context (each retried after a back-off)."""
        self.max_queue = max_queue
        self.max_wait_s = max_wait_s
        self.service_s: float | None = None
        """Moving average of one generation's time on a worker (None until one has run)."""
        self.hang_grace_s = hang_grace_s
        self.stop_sequences = stop_sequences
        self._queue: queue.Queue[Any] = queue.Queue()
        self._lock = threading.Lock()
        self._pending = 0  # queued + running jobs
        self._closed = False
        self._idle = threading.Condition(self._lock)
        self._workers: list[_Worker] = []
        self.replaced_hung = 0
        contexts: list[_Context] = []
        try:  # every context loads before any worker starts, so a failed load leaves nothing running
            for _ in range(workers):
                contexts.append(self._new_context())
        except BaseException:
            for ctx in contexts:
                ctx.llama.close()
            raise
        for index, context in enumerate(contexts):
            self._start_worker(index, context)
        self._watchdog = threading.Thread(target=self._watch, name="llama-watchdog", daemon=True)
        self._watchdog.start()

    def _new_context(self) -> _Context:
        llama, version = self._factory()
        return _Context(llama, version)

    def _start_worker(self, index: int, context: _Context) -> None:
        worker = _Worker(self, index, context)
        self._workers.append(worker)
        worker.thread.start()

    # -- intake -----------------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Jobs waiting or running."""
        return self._pending

    def submit(self, job: GenerationJob) -> None:
        """Queue ``job``; ``LocalFailure("overloaded")`` at once when the queue is full."""
        with self._lock:
            if self._closed:
                raise LocalFailure("error", "the local tier is closed")
            running = sum(1 for w in self._workers if not w.retired)
            if running == 0:  # every worker hung and its replacement has not loaded yet
                raise LocalFailure("overloaded", "no local worker is running; a replacement is being loaded")
            if self._pending >= running + self.max_queue:
                raise LocalFailure("overloaded", f"{self._pending} local requests already waiting or running")
            if self.max_wait_s is not None and self.service_s is not None and self._pending >= running:
                expected = self._pending / max(1, running) * self.service_s
                if expected > self.max_wait_s:
                    raise LocalFailure(
                        "overloaded", f"about {expected:.1f} s of local work queued ahead ({self._pending} requests)"
                    )
            self._pending += 1
        self._queue.put(job)

    def _observe(self, seconds: float) -> None:
        with self._lock:
            self.service_s = seconds if self.service_s is None else 0.8 * self.service_s + 0.2 * seconds

    def _finished(self, job: GenerationJob) -> None:
        with self._lock:
            if not job.released:
                job.released = True
                self._pending -= 1
                self._idle.notify_all()

    # -- adapter swaps ----------------------------------------------------------------------------

    def swap(self, contexts: list[tuple[Any, str | None]]) -> None:
        """Give each live worker one prepared context; each takes it up between two jobs."""
        live = [w for w in self._workers if not w.retired]
        if len(contexts) != len(live):
            for llama, _ in contexts:
                llama.close()
            raise ValueError(f"swap needs {len(live)} contexts, got {len(contexts)}")
        with self._lock:
            stale = []
            for worker, (llama, version) in zip(live, contexts, strict=True):
                if worker.next_context is not None:
                    stale.append(worker.next_context)
                worker.next_context = _Context(llama, version)
        for ctx in stale:
            ctx.llama.close()

    @property
    def workers(self) -> int:
        return sum(1 for w in self._workers if not w.retired)

    # -- hangs ------------------------------------------------------------------------------------

    def _watch(self) -> None:
        while not self._closed:
            time.sleep(min(1.0, max(0.05, self.hang_grace_s / 4)))
            now = time.monotonic()
            for worker in list(self._workers):
                job = worker.job
                if worker.retired or job is None or job.started_at is None:
                    continue
                if now > job.deadline + self.hang_grace_s:
                    self._replace(worker, job)

    def _replace(self, worker: _Worker, job: GenerationJob) -> None:
        logger.warning(
            "local worker %d is stuck %.1f s past a deadline; replacing it with a fresh context",
            worker.index, time.monotonic() - job.deadline,
        )  # fmt: skip
        worker.retired = True
        job.cancelled.set()
        job.out.put(LocalFailure("timeout", "the local model hung and was replaced"))
        self._finished(job)  # its slot is free now; the stuck thread's own _finished() will not count it again
        self.replaced_hung += 1
        with self._lock:
            self._missing += 1
            if self._respawner is None or not self._respawner.is_alive():
                self._respawner = threading.Thread(target=self._respawn, name="llama-respawn", daemon=True)
                self._respawner.start()

    def _respawn(self) -> None:
        """Load contexts for the retired workers, retrying a failed load after a back-off that
        doubles up to ``respawn_backoff_max_s``: off the request path and off the watchdog."""
        delay = self.respawn_backoff_s
        while not self._stopping.is_set():
            with self._lock:
                if self._missing == 0:
                    self._respawner = None
                    return
            try:
                context = self._new_context()
            except Exception as err:  # noqa: BLE001 - retried after the back-off
                self.respawn_failures += 1
                logger.error("could not start a replacement local worker (%s); retrying in %.1f s", err, delay)
                self._refuse_queued()
                self._stopping.wait(delay)
                delay = min(self.respawn_backoff_max_s, delay * 2)
                continue
            delay = self.respawn_backoff_s
            with self._lock:
                if not self._closed:
                    self._missing -= 1
                    self._start_worker(len(self._workers), context)
                    logger.info("replacement local worker %d started", len(self._workers) - 1)
                    continue
            context.llama.close()  # closed while loading
            return
        self._refuse_queued()  # closing with no live worker: close() need not wait for these

    def _refuse_queued(self) -> None:
        """With no live worker left, fail the jobs already queued now rather than at their deadline."""
        with self._lock:
            if any(not w.retired for w in self._workers):
                return
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is _STOP:  # close() is under way: leave it for the workers
                self._queue.put(job)
                return
            job.out.put(LocalFailure("overloaded", "no local worker is running; a replacement is being loaded"))
            self._finished(job)

    # -- shutdown ---------------------------------------------------------------------------------

    def close(self, timeout_s: float) -> bool:
        """Refuse new jobs, wait up to ``timeout_s`` for those in flight, free every context.

        Returns False when a worker was still busy at the timeout: its context is then left to
        its own thread to free, never freed under it.
        """
        with self._lock:
            if self._closed:
                return True
            self._closed = True
            self._stopping.set()
            deadline = time.monotonic() + timeout_s
            while self._pending > 0 and time.monotonic() < deadline:
                self._idle.wait(timeout=max(0.0, deadline - time.monotonic()))
        for _ in self._workers:
            self._queue.put(_STOP)
        clean = True
        for worker in self._workers:
            if worker.retired:
                continue
            worker.thread.join(timeout=max(0.1, deadline - time.monotonic()))
            if worker.thread.is_alive():
                clean = False
                worker.retired = True
                logger.warning("local worker %d still busy at close; it frees its context when it returns", worker.index)
        return clean
