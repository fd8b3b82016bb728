"""Continuous batching: one llama.cpp context decodes every live local request in one batch.

One decode step reads the model's weights once for all live sequences (on Gemma 3 270M the
262k-token output layer is most of a step), so 16 sequences decode at about 2.5 times the
aggregate speed of one on two cores. The scheduler thread owns the context; each step it

* admits waiting jobs while a sequence id and KV room are free (FIFO: a job that does not fit
  waits, and the ones behind it wait too, so a long prompt is not starved);
* gives each new sequence the longest cached prompt that starts its own (:mod:`._prefix_cache`)
  and prefills the rest in chunks of ``prefill_chunk`` tokens *beside* the decoding sequences, so
  a long prompt never stalls the others for more than one chunk;
* decodes one token of every decoding sequence plus those chunks in one ``llama_decode`` (one per
  adapter in use, see below);
* samples each sequence with its own sampler (temperature, top_p, seed, penalties; plain greedy
  is a numpy argmax), turns tokens into text, applies stop strings, and pushes the pieces into
  the job's own queue, exactly what the one-sequence worker pool pushed;
* ends a sequence alone when its reader stopped reading (the guard rejected it, the caller went
  away, the deadline passed), when it hits a stop or ``max_tokens``, or when its own sampling
  raised; its cells are freed at once and a waiting job takes its place at the next step.

A failed ``llama_decode`` (a native error) fails the sequences of that batch, which share the
step, and rebuilds the context; waiting jobs are kept. A step stuck in native code past a live
job's deadline plus ``hang_grace_s`` retires the scheduler thread (it frees its context if it ever
returns) and a fresh one is loaded in the background; until it is up, jobs are refused at once.

Adapters: a sequence's cells were computed under the LoRA it started with, so every decode of it
runs under that adapter; llama.cpp applies one adapter set per ``llama_decode``. The context holds
the serving adapter and, during a canary rollout, a second one (*lane*) for the jobs that ask for
the canary's version (``GenerationJob.adapter_version``; ``JobDone`` reports the version that
answered). Both share the context, the KV budget and the cores:

* a step decodes each lane in its own ``llama_decode`` under its adapter, one after the other, and
  samples that lane before the next decode overwrites the logits. A step carrying both lanes thus
  costs about two smaller decodes: on Gemma 3 270M the output layer, most of a small decode, is read
  once per lane, and switching adapters makes llama.cpp re-plan its compute graph inside the next
  decode. Measured here (2 threads, 8,192 KV cells, batches of 148): a decode of one sequence took
  15.5 ms, 20.1 ms right after a switch (the re-planning alone about 4 ms; up to 12 ms with the
  cores busy); four sequences 37 ms, 42 ms after a switch. The lane already applied goes first, so
  a two-lane step switches once. How many steps carry both lanes depends on the concurrency more
  than on the canary's share: with share p and n live sequences, about 1 - (1-p)^n - p^n of them
  (a 10 % canary: 18 % of steps at 2 sequences, 81 % at 16). At a full batch, one canary sequence
  then adds its own small decode and a switch, about 20 ms, to a step of about 100 ms. Step times
  are learnt per decode, and a step's predicted time is the sum over its lanes;
* the lanes share the prefill budget of a step; cached prompts (:mod:`._prefix_cache`) were
  computed under the serving adapter and serve only its sequences;
* a promotion of a new adapter *drains* the serving lane: no serving sequence starts, the ones in
  flight finish on the old adapter, then the new one is loaded and the waiting jobs start on it (the
  wait is at most one answer; canary jobs go on meanwhile). Promoting the canary needs no drain: its
  lane becomes the serving one at once and the old adapter is freed when its last sequence ends;
  removing the canary (a rollback) sends its version's new jobs to the serving adapter and frees it
  once its sequences finished. A rebuilt context loads both lanes' adapters again.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from router.backends.llama_native import NativeBatch, PieceDecoder, TokenSampler
from router.backends._prefix_cache import PrefixCache
from router.backends.base import LocalFailure
from router.backends.llama_workers import GenerationJob, JobDone

__all__ = ["BatchScheduler", "BatchStats"]

logger = logging.getLogger("router")

# Predictions are decode steps at the learnt speed plus prefill at its learnt cost a token; the margin
# covers what neither sees (stop-string hold-back, a step that rounds up to a tile, the box's noise).
_PREDICTION_MARGIN = 1.2


@dataclass(frozen=True)
class BatchStats:
    """What the batch is doing now, for admission, ``router stats`` and ``/metrics``."""

    live: int
    waiting: int
    kv_reserved: int
    kv_tokens: int
    step_s: float | None
    """Recent time of one step at the current batch size, its lanes' decodes summed (None before any)."""
    sequence_tokens_per_s: float | None
    """Tokens one sequence gets per second at the current batch size."""
    prefix_hits: int
    prefix_misses: int
    adapter_version: str | None
    canary_version: str | None
    """The canary lane's version (None: no lane)."""
    canary_live: int
    """Live sequences started on a canary lane (a removed lane's included until they finish)."""


@dataclass(frozen=True)
class _Lane:
    """An adapter new sequences start on: its file (None: the base model) and its version label."""

    path: Path | None
    version: str | None


@dataclass
class _Sequence:
    job: GenerationJob
    seq: int
    prompt: list[int]
    reserved: int
    adapter: Path | None = None  # its KV cells are computed under this adapter, so every decode of it is too
    version: str | None = None  # what its JobDone reports
    canary: bool = False  # started on the canary lane (cleared when that lane is promoted)
    prefilled: int = 0  # prompt positions already in the KV memory
    last_token: int | None = None  # sampled, not yet decoded
    generated: int = 0
    sampler: TokenSampler | None = None
    text: str = ""
    emitted: int = 0  # characters of text already pushed to the job
    stops: list[str] = field(default_factory=list)  # the scheduler's stop strings plus the request's own
    decoder: PieceDecoder = field(default_factory=PieceDecoder)

    @property
    def decoding(self) -> bool:
        return self.last_token is not None

    @property
    def unprefilled(self) -> int:
        """Prompt tokens not yet in the KV memory."""
        return len(self.prompt) - self.prefilled


class _StepTimes:
    """One decode's time per number of sequences in it: the speed a new sequence would get (a step
    is one decode per adapter in use, see :meth:`BatchScheduler._step_time`).

    Each size keeps its quiet time (the fastest its moving average has been); a common *slowdown*,
    the recent steps' time over their size's quiet time, scales every size. A size not seen for a
    while is then still predicted as slow as the box is now (busy with HTTP and classification, say),
    not as it was when that size was last seen.

    Prefill is learnt apart, as seconds a prompt token: a step carrying prefill minus the decode it
    would have been without it. Prefill is compute-bound where a small decode is bound by reading
    the weights, so it is far dearer than its share of steps suggests: measured here (Gemma 3 270M,
    2 threads) a 128-token chunk added 210-360 ms to a step of 33-61 ms, about 1.6-2.8 ms a token.
    Counting a chunk as one step, as predictions did first, under-predicted a 403-token prompt's
    64-token answer on an idle batch by a third (predicted over actual 0.64, margin included; 1.09
    with prefill learnt; six answers each, measured side by side on 2026-12-04).
    """

    def __init__(self, sizes: int) -> None:
        self._average: list[float | None] = [None] * (sizes + 1)
        self._quiet: list[float | None] = [None] * (sizes + 1)
        self._slowdown = 1.0
        self._prefill_token_s: float | None = None

    def observe(self, size: int, seconds: float) -> None:
        old = self._average[size]
        average = seconds if old is None else 0.8 * old + 0.2 * seconds
        self._average[size] = average
        quiet = self._quiet[size]
        self._quiet[size] = average if quiet is None else min(quiet, average)
        self._slowdown = min(8.0, max(1.0, 0.8 * self._slowdown + 0.2 * seconds / self._quiet[size]))

    def at(self, size: int) -> float | None:
        """The step time at ``size`` sequences now: its quiet time (else the nearest measured size's,
        scaled linearly) times the current slowdown."""
        size = max(1, min(size, len(self._quiet) - 1))
        known = [(abs(s - size), s, t) for s, t in enumerate(self._quiet) if t is not None]
        if not known:
            return None
        _, near, seconds = min(known)
        return (seconds * max(1.0, size / max(1, near)) if size > near else seconds) * self._slowdown

    def observe_prefill(self, decoding: int, tokens: int, seconds: float) -> None:
        """A decode that carried ``tokens`` prompt tokens beside ``decoding`` decoding sequences took
        ``seconds``; what it took beyond the decode alone (one sequence's step when none decoded: the
        weights are read either way) is those tokens' cost."""
        base = self.at(max(1, decoding))
        if base is None or tokens <= 0:
            return
        per_token = max(0.0, seconds - base) / tokens
        old = self._prefill_token_s
        self._prefill_token_s = per_token if old is None else 0.8 * old + 0.2 * per_token

    def prefill_s(self, tokens: int, chunk: int, step: float) -> float:
        """Seconds ``tokens`` prompt tokens add to the steps that carry them: the learnt cost a token,
        or, before any prefill was seen, one step a chunk."""
        if tokens <= 0:
            return 0.0
        if self._prefill_token_s is None:
            return -(-tokens // max(1, chunk)) * step
        return tokens * self._prefill_token_s


class BatchScheduler:
    """Continuous batching over one context from ``new_native(adapter_path)``.

    The same intake contract as :class:`~router.backends.llama_workers.LlamaWorkerPool`:
    :meth:`submit` queues a :class:`GenerationJob` or refuses at once with
    ``LocalFailure("overloaded")``; pieces, then a :class:`JobDone` or a :class:`LocalFailure`,
    arrive on the job's queue.
    """

    def __init__(
        self,
        new_native: Callable[[Path | None], NativeBatch],
        *,
        adapter_path: Path | None,
        adapter_version: str | None,
        max_sequences: int,
        max_queue: int,
        kv_tokens: int,
        prefill_chunk: int,
        prefix_slots: int,
        prefix_min_tokens: int,
        pad_multiple: int,
        hang_grace_s: float,
        stop_sequences: list[str],
        respawn_backoff_s: float = 0.5,
        respawn_backoff_max_s: float = 30.0,
    ) -> None:
        self._new_native = new_native
        self.max_sequences = max_sequences
        self.max_queue = max_queue
        self.kv_tokens = kv_tokens
        self.prefill_chunk = prefill_chunk
        self.pad_multiple = pad_multiple
        self._scratch_seq = max_sequences + prefix_slots  # padding entries, freed after each step
        self.hang_grace_s = hang_grace_s
        self.stop_sequences = [s for s in stop_sequences if s]
        self.respawn_backoff_s = respawn_backoff_s
        self.respawn_backoff_max_s = respawn_backoff_max_s
        self._prefix_slots = prefix_slots
        self._prefix_min_tokens = prefix_min_tokens
        self._adapter_path = adapter_path
        self.adapter_version = adapter_version
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._waiting: collections.deque[GenerationJob] = collections.deque()
        self._live: dict[int, _Sequence] = {}
        self._pending_swap: tuple[Path | None, str | None, Future[bool]] | None = None
        self._canary: _Lane | None = None
        self._pending_canary: tuple[Path | None, str, Future[bool]] | None = None
        self._releases: list[tuple[Path | None, Future[bool]]] = []  # removed canary lanes whose sequences still run
        self._closed = False
        self._generation = 0  # bumped when a stuck scheduler thread is retired
        self._running = False  # a scheduler thread with a loaded context is serving
        self._step_started: float | None = None
        self._times = _StepTimes(max_sequences)
        self._greedy: dict[int, int] = {}  # this step's greedy tokens by batch entry (read in one call)
        self._native: NativeBatch | None = new_native(adapter_path)
        self._prefixes = self._new_prefix_cache()
        self.replaced_hung = 0
        self.respawn_failures = 0
        self.completed = 0
        self.service_s: float | None = None
        """Moving average of one answer's time (compatibility with the worker pool's figure)."""
        self._start_thread()
        self._watchdog = threading.Thread(target=self._watch, name="llama-batch-watchdog", daemon=True)
        self._watchdog.start()

    def _new_prefix_cache(self) -> PrefixCache:
        slots = list(range(self.max_sequences, self.max_sequences + self._prefix_slots))
        return PrefixCache(slots, min_tokens=self._prefix_min_tokens)

    def _start_thread(self) -> None:
        self._running = True
        generation = self._generation
        thread = threading.Thread(target=self._run, args=(generation,), name=f"llama-batch-{generation}", daemon=True)
        self._thread = thread
        thread.start()

    # -- intake -----------------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Jobs waiting or decoding."""
        return len(self._waiting) + len(self._live)

    @property
    def workers(self) -> int:
        return 1 if self._running else 0

    def submit(self, job: GenerationJob) -> None:
        """Queue ``job``; ``LocalFailure("overloaded")`` at once when the queue is full or no
        context is up, or when it could never fit the KV budget (its prompt plus ``max_tokens``)."""
        need = len(job.tokens) + job.max_tokens
        room = self.kv_tokens - self.pad_multiple  # what _kv_free() offers with nothing live or cached
        with self._lock:
            if self._closed:
                raise LocalFailure("error", "the local tier is closed")
            if not self._running:
                raise LocalFailure("overloaded", "the local model is being reloaded")
            if need > room:
                raise LocalFailure("overloaded", f"needs {need} KV cells; the batch has {room}")
            if len(self._waiting) + len(self._live) >= self.max_sequences + self.max_queue:
                raise LocalFailure("overloaded", f"{self.depth} local requests already waiting or running")
            self._waiting.append(job)
            self._wake.notify_all()

    @property
    def canary_version(self) -> str | None:
        """The version new jobs asking for it start on beside the serving adapter (None: no canary lane)."""
        canary = self._canary
        return canary.version if canary is not None else None

    def stats(self) -> BatchStats:
        with self._lock:
            live = len(self._live)
            reserved = sum(s.reserved for s in self._live.values())
            waiting = len(self._waiting)
            lanes = self._lane_sizes()
            canary_live = sum(s.canary for s in self._live.values())
        step = self._step_time(lanes)
        return BatchStats(
            live=live,
            waiting=waiting,
            kv_reserved=reserved,
            kv_tokens=self.kv_tokens,
            step_s=step,
            sequence_tokens_per_s=(1.0 / step) if step else None,
            prefix_hits=self._prefixes.hits,
            prefix_misses=self._prefixes.misses,
            adapter_version=self.adapter_version,
            canary_version=self.canary_version,
            canary_live=canary_live,
        )

    def _lane_sizes(
        self, extra: int = 0, adapter: Path | None = None, live: list[_Sequence] | None = None
    ) -> collections.Counter[Path | None]:
        """Live sequences (all, or ``live``) per adapter (under the lock), plus ``extra`` newcomers on ``adapter``."""
        sizes = collections.Counter(s.adapter for s in (self._live.values() if live is None else live))
        if extra:
            sizes[adapter] += extra
        return sizes

    def _step_time(self, lanes: collections.Counter[Path | None]) -> float | None:
        """One step's time for these sequences per adapter: one decode per adapter in use, so a step
        carrying a canary lane costs two smaller decodes (and one adapter switch, inside them)."""
        times = [self._times.at(n) for n in lanes.values() if n > 0] or [self._times.at(1)]
        return None if any(t is None for t in times) else sum(t for t in times if t is not None)

    def predicted_seconds(self, prompt_tokens: int, max_tokens: int, *, ahead: int = 0) -> float | None:
        """How long a job submitted now (behind ``ahead`` jobs about to be submitted) would take to
        finish: its wait for a free sequence and ``max_tokens`` steps at the batch size it would join,
        plus the prefill that shares its steps: its own prompt, the rest of the live sequences'
        prompts, and the prompts of the jobs that start before it (other budgeted ones waiting and
        the ``ahead`` ones, taken as long as its own). Jobs promised no time join later only while
        they keep it within its budget (:meth:`_keeps_budgets`). None before any step."""
        with self._lock:
            # A cancelled sequence (its caller closed the stream) leaves at the next step: not load.
            live = [s for s in self._live.values() if not s.job.cancelled.is_set()]
            waiting = len(self._waiting) + ahead
            size = min(self.max_sequences, len(live) + waiting + 1)
            lanes = self._lane_sizes(size - len(live), self._adapter_path, live)  # newcomers: mostly the serving lane
            prompts = sum(s.unprefilled for s in live)
            prompts += sum(len(j.tokens) for j in self._waiting if j.finish_by is not None)
        prompts += (ahead + 1) * prompt_tokens
        step = self._step_time(lanes)
        if step is None:
            return None
        wait_steps = 0
        ahead = len(live) + waiting + 1 - self.max_sequences
        if ahead > 0:  # it waits for the ahead-th sequence to finish
            remaining = sorted(max(0, s.job.max_tokens - s.generated) for s in live)
            wait_steps = remaining[min(ahead, len(remaining)) - 1] if remaining else 0
            wait_steps += (ahead // max(1, self.max_sequences)) * max_tokens
        prefill = self._times.prefill_s(prompts, self.prefill_chunk, step)
        return _PREDICTION_MARGIN * ((wait_steps + max_tokens) * step + prefill)

    def idle_seconds(self, prompt_tokens: int, max_tokens: int) -> float | None:
        """What the same job would take on an idle batch: the floor of any prediction, load aside."""
        step = self._times.at(1)
        if step is None:
            return None
        return _PREDICTION_MARGIN * (max_tokens * step + self._times.prefill_s(prompt_tokens, self.prefill_chunk, step))

    # -- adapter swaps and the canary lane -------------------------------------------------------

    def swap_adapter(self, adapter_path: Path | None, version: str | None) -> Future[bool]:
        """Serve ``adapter_path`` for new jobs.

        A new adapter *drains* the serving lane: no serving sequence starts (canary ones still do),
        the ones in flight finish on the old adapter, then the new one is loaded. Promoting the
        canary (``adapter_path`` is its file) needs no drain: its loaded adapter serves new jobs at
        once and the old serving adapter is freed once its sequences finished. The future resolves
        True once the new adapter serves, or False when llama.cpp refused it (the old one then keeps
        serving).
        """
        future: Future[bool] = Future()
        with self._lock:
            if self._closed:
                future.set_result(False)
                return future
            superseded = self._pending_swap
            self._pending_swap = (adapter_path, version, future)
            self._wake.notify_all()
        if superseded is not None:
            superseded[2].set_result(False)
        return future

    def set_canary(self, adapter_path: Path | None, version: str | None) -> Future[bool]:
        """Serve ``adapter_path`` beside the serving adapter to the jobs that ask for ``version``.

        Resolves True once loaded, False when llama.cpp refused it (a canary lane already there then
        stays). ``version`` None removes the lane: jobs asking for its version go to the serving
        adapter at once, its sequences in flight finish on it, then its adapter is freed and the
        future resolves True.
        """
        future: Future[bool] = Future()
        with self._lock:
            if self._closed:
                future.set_result(False)
                return future
            superseded, self._pending_canary = self._pending_canary, None
            removed = None
            if version is None:
                removed, self._canary = self._canary, None
                if removed is not None:
                    self._releases.append((removed.path, future))
            else:
                self._pending_canary = (adapter_path, version, future)
            self._wake.notify_all()
        if superseded is not None:
            superseded[2].set_result(False)
        if version is None and removed is None:
            future.set_result(True)  # no lane to remove
        return future

    def _lane_of(self, job: GenerationJob) -> _Lane:
        """The lane a job starts on (under the lock): the canary's when it asks for the canary's version
        and the serving adapter has another one, else the serving adapter."""
        canary, asked = self._canary, job.adapter_version
        if canary is not None and asked is not None and asked == canary.version and asked != self.adapter_version:
            return canary
        return _Lane(self._adapter_path, self.adapter_version)

    def _apply_canary(self) -> None:
        native = self._native
        with self._lock:
            if native is None:  # no context (being rebuilt): it stays pending for the next one
                return
            pending, self._pending_canary = self._pending_canary, None
        if pending is None:
            return
        path, version, future = pending
        try:
            if path is not None:
                native.load_adapter(path)
        except Exception as err:  # noqa: BLE001 - a refused canary leaves the lanes as they were
            logger.warning("canary version %s failed to load (%s); %s keeps its traffic", version, err, self.adapter_version)
            future.set_result(False)
            return
        with self._lock:
            self._canary = _Lane(path, version)  # the one it replaces is freed once its sequences finished
        future.set_result(True)

    def _apply_swap(self) -> None:
        native = self._native
        with self._lock:
            pending = self._pending_swap
            if native is None or pending is None:  # no context (being rebuilt): the swap stays pending for the next one
                return
            path, version, future = pending
            canary = self._canary
            promotion = canary is not None and path == canary.path
            if not promotion and any(s.adapter == self._adapter_path for s in self._live.values()):
                return  # draining: the serving sequences in flight finish on the old adapter first
            self._pending_swap = None
        if not promotion and path is not None:
            try:
                native.load_adapter(path)
            except Exception as err:  # noqa: BLE001 - a bad promotion leaves the serving adapter in place
                logger.warning("registry version %s failed to load (%s); still serving %s", version, err, self.adapter_version)
                future.set_result(False)
                return
        for seq in self._prefixes.clear():  # computed under the old adapter
            native.forget(seq)
        with self._lock:
            if promotion:
                self._canary = None
                for sequence in self._live.values():
                    if sequence.canary and sequence.adapter == path:
                        sequence.canary = False  # now on the serving adapter
            self._adapter_path, self.adapter_version = path, version
        future.set_result(True)

    def _release_adapters(self) -> None:
        """Free the adapters no lane offers and no live sequence runs on (a removed canary, the old
        serving adapter after a promotion), then resolve the removals whose sequences all finished."""
        native = self._native
        loaded = native.loaded_adapters if native is not None else frozenset()
        with self._lock:
            offered = {self._adapter_path} | ({self._canary.path} if self._canary is not None else set())
            if not self._releases and loaded <= offered:
                return  # the usual step: nothing to free
            keep = offered | {s.adapter for s in self._live.values()}
            still = {s.adapter for s in self._live.values() if s.canary}
            done = [future for path, future in self._releases if path not in still]
            self._releases = [(path, future) for path, future in self._releases if path in still]
        if native is not None:
            for path in native.loaded_adapters - keep:
                native.free_adapter(path)
        for future in done:
            future.set_result(True)

    def _restore_canary(self, native: NativeBatch) -> None:
        """Load the canary lane's adapter into a rebuilt context; when it no longer loads, the lane goes."""
        canary = self._canary
        if canary is None or canary.path is None:
            return
        try:
            native.load_adapter(canary.path)
        except Exception as err:  # noqa: BLE001 - its jobs then go to the serving adapter
            logger.warning("canary version %s failed to reload (%s); the serving lane takes its traffic", canary.version, err)
            with self._lock:
                if self._canary is canary:
                    self._canary = None

    # -- the scheduler loop -----------------------------------------------------------------------

    def _run(self, generation: int) -> None:
        native = self._native
        try:
            while True:
                with self._lock:
                    while (
                        generation == self._generation  # a retired thread leaves at once, freeing its context
                        and not self._closed
                        and not self._live
                        and not self._waiting
                        and self._pending_swap is None
                        and self._pending_canary is None
                        and not self._releases
                    ):
                        self._wake.wait()
                    if generation != self._generation:
                        return
                    native = self._native  # _rebuild may have replaced it: free this one if retired in it
                    if self._closed and not self._live and not self._waiting:
                        return
                if self._pending_canary is not None:
                    self._apply_canary()
                if self._pending_swap is not None:
                    self._apply_swap()  # at once for a promoted canary, else once the serving lane drained
                self._admit()
                if self._live:
                    self._step(generation)
                elif self._waiting and self._pending_swap is None:
                    time.sleep(0.001)  # the head job is waiting for KV room freed by cancellations
                if generation == self._generation:  # a thread retired in this step leaves the new context alone
                    self._release_adapters()
        finally:
            if generation != self._generation and native is not None:
                native.close()  # retired while stuck: nobody else will free it

    def _keeps_budgets(self, job: GenerationJob, adapter: Path | None = None) -> bool:
        """Whether ``job`` joining now (on ``adapter``) leaves every live request that was admitted
        under a latency budget (``job.finish_by``) within it: the rest of each one's answer at the
        step time of the larger batch, plus the prompts still to prefill beside it, ``job``'s own
        included. Admission predicted each of them at the batch size of its moment; requests that
        may not spill (private, ``model="local"``) would otherwise join later and slow them past it.
        One already predicted past its budget still holds joiners back: each of them would make it
        later still (tried: letting them in made such an answer take 6.8 s instead of about 2)."""
        bound = [s for s in self._live.values() if s.job.finish_by is not None]
        if not bound:
            return True
        step = self._step_time(self._lane_sizes(1, adapter))
        if step is None:
            return True
        prompts = sum(s.unprefilled for s in self._live.values())
        joined = self._times.prefill_s(prompts + len(job.tokens), self.prefill_chunk, step)
        now = time.monotonic()
        for sequence in bound:
            left = sequence.job.max_tokens - sequence.generated
            if now + _PREDICTION_MARGIN * (left * step + joined) > sequence.job.finish_by:
                return False
        return True

    def _kv_free(self) -> int:
        reserved = sum(s.reserved for s in self._live.values())
        return self.kv_tokens - reserved - self._prefixes.cached_tokens - self.pad_multiple

    def _next_job(self) -> GenerationJob | None:
        """The job to start next (under the lock). A request admitted under a latency budget goes
        first: the others (private, ``model="local"``) were promised no time, only a place in the
        queue. While the serving lane drains for a swap, only canary jobs start."""
        waiting: collections.deque[GenerationJob] | list[GenerationJob] = self._waiting
        if self._pending_swap is not None:
            waiting = [j for j in waiting if self._lane_of(j) is self._canary]
        if not waiting:
            return None
        return next((j for j in waiting if j.finish_by is not None), waiting[0])

    def _uses_prefix_cache(self, sequence: _Sequence) -> bool:
        """Cached prompts were computed under the serving adapter: only its own sequences share them."""
        return not sequence.canary and sequence.adapter == self._adapter_path

    def _admit(self) -> None:
        if self._native is None:
            return
        while True:
            with self._lock:
                if len(self._live) >= self.max_sequences:
                    return
                job = self._next_job()
                if job is None:
                    return
                if job.cancelled.is_set():
                    self._waiting.remove(job)
                    continue
                lane = self._lane_of(job)
                if not self._keeps_budgets(job, lane.path):
                    return  # one more sequence would make an admitted request miss its budget: wait
                need = len(job.tokens) + job.max_tokens
                while need > self._kv_free():
                    seq = self._prefixes.evict_oldest()
                    if seq is None:
                        return  # waits for a live sequence to finish
                    self._native.forget(seq)
                self._waiting.remove(job)
                seq_id = next(i for i in range(self.max_sequences) if i not in self._live)
                stops = [*self.stop_sequences, *(s for s in job.params.stop if s)]
                sequence = _Sequence(
                    job, seq_id, list(job.tokens), need, lane.path, lane.version, lane is self._canary, stops=stops
                )
                self._live[seq_id] = sequence
            if time.monotonic() > job.deadline:
                self._end(sequence, LocalFailure("timeout", "waited in the local queue past the deadline"))
                continue
            job.started_at = time.monotonic()
            try:
                sequence.sampler = self._native.new_sampler(job.params)
            except Exception as err:  # noqa: BLE001 - this request fails alone
                self._end(sequence, LocalFailure("error", f"{type(err).__name__}: {err}"))
                continue
            hit = self._prefixes.lookup(sequence.prompt) if self._uses_prefix_cache(sequence) else None
            if hit is not None:
                self._native.copy_prefix(hit.seq, seq_id, hit.length)
                sequence.prefilled = hit.length

    def _step(self, generation: int) -> None:
        """One token for every decoding sequence and a prefill chunk, one ``llama_decode`` per adapter.

        A sequence's cells were computed under its own adapter and llama.cpp applies one adapter set
        per decode, so each lane is decoded alone and its owners advanced before the next lane's
        decode overwrites the logits. The lane under the adapter already applied goes first: with two
        lanes, a step then switches adapters once, not twice. The lanes share the prefill budget.
        """
        native = self._native
        assert native is not None
        lanes: dict[Path | None, list[_Sequence]] = {}
        for sequence in list(self._live.values()):
            if not self._should_stop(sequence):
                lanes.setdefault(sequence.adapter, []).append(sequence)
        budget = max(1, self.prefill_chunk)
        for adapter in sorted(lanes, key=lambda path: path != native.adapter_path):
            entries: list[tuple[int, int, int, bool]] = []
            owners: list[tuple[_Sequence, int]] = []  # (sequence, entry index) that want logits
            decoding = 0
            for sequence in lanes[adapter]:
                if sequence.decoding:
                    owners.append((sequence, len(entries)))
                    entries.append((sequence.last_token, len(sequence.prompt) + sequence.generated - 1, sequence.seq, True))
                    decoding += 1
            for sequence in lanes[adapter]:
                if sequence.decoding or budget <= 0:
                    continue
                start = sequence.prefilled
                chunk = sequence.prompt[start : start + budget]
                for offset, token in enumerate(chunk):
                    last = start + offset == len(sequence.prompt) - 1
                    if last:
                        owners.append((sequence, len(entries)))
                    entries.append((token, start + offset, sequence.seq, last))
                sequence.prefilled += len(chunk)
                budget -= len(chunk)
            if entries and not self._decode(generation, adapter, entries, owners, decoding):
                return  # failed or retired: the next step starts over

    def _decode(
        self,
        generation: int,
        adapter: Path | None,
        entries: list[tuple[int, int, int, bool]],
        owners: list[tuple[_Sequence, int]],
        decoding: int,
    ) -> bool:
        """Decode one lane's entries under its adapter and advance their owners; False when the
        decode failed or the scheduler was retired meanwhile."""
        native = self._native
        assert native is not None
        padding = self._padding(len(entries), decoding)
        entries.extend((0, pos, self._scratch_seq, False) for pos in range(padding))
        self._step_started = time.monotonic()
        try:
            native.apply_adapter(adapter)  # a no-op when already applied; a switch re-plans the graph in the decode
            code = native.decode(entries)
        except Exception as err:  # noqa: BLE001 - a native failure fails this step's sequences
            code = -999
            logger.warning("llama_decode raised %s: %s", type(err).__name__, err)
        finally:
            with self._lock:  # atomic with _replace_stuck: either it retires this step, or the step is over
                elapsed = time.monotonic() - (self._step_started or 0.0)
                self._step_started = None
                retired = generation != self._generation
        if retired:
            return False  # retired while the step ran: the new scheduler owns the jobs now
        if padding:
            native.forget(self._scratch_seq)
        if code != 0:
            self._failed_step(code, owners, entries)
            return False
        prefilled = len(entries) - padding - decoding
        if decoding and not prefilled:
            # One lane's decode, at its own size; with two lanes _step_time sums them. The lanes take
            # turns going second, so each lane's average carries about half a switch.
            self._times.observe(decoding, elapsed)
        elif prefilled:
            self._times.observe_prefill(decoding, prefilled, elapsed)
        greedy = [index for sequence, index in owners if sequence.sampler is None]
        try:
            self._greedy = dict(zip(greedy, native.argmax_many(greedy), strict=True))  # one GIL release, not one a row
        except Exception as err:  # noqa: BLE001 - each sequence then samples (and fails) alone
            logger.warning("reading the step's greedy tokens failed (%s: %s)", type(err).__name__, err)
            self._greedy = {}
        for sequence, index in owners:
            try:
                self._advance(sequence, index)
            except Exception as err:  # noqa: BLE001 - one sequence's failure ends it alone
                logger.warning("local sequence %d failed (%s: %s); the others continue", sequence.seq, type(err).__name__, err)
                self._end(sequence, LocalFailure("error", f"{type(err).__name__}: {err}"))
        return True

    def _padding(self, size: int, decoding: int) -> int:
        """Dummy entries that round a pure decode step up to a multiple of ``pad_multiple``.

        CPU matrix kernels work on tiles of rows: measured here, 6 sequences took 70 ms a step and
        8 took 59 ms (13-15 slower than 16 likewise). Above one tile, padding to whole tiles is
        cheaper than the ragged shape. Steps carrying a prefill chunk are long already: not padded.
        """
        multiple = self.pad_multiple
        if multiple <= 1 or size != decoding or size <= multiple or size % multiple == 0:
            return 0
        return multiple - size % multiple

    def _should_stop(self, sequence: _Sequence) -> bool:
        job = sequence.job
        if job.cancelled.is_set():
            self._end(sequence, None, finish="cancelled")
            return True
        if time.monotonic() > job.deadline:
            self._end(sequence, LocalFailure("timeout", "local generation passed its deadline"))
            return True
        return False

    def _sample(self, sequence: _Sequence, index: int) -> int:
        native = self._native
        assert native is not None
        if sequence.sampler is None:
            token = self._greedy.pop(index, None)
            return native.argmax(index) if token is None else token
        return native.sample(sequence.sampler, index)

    def _advance(self, sequence: _Sequence, index: int) -> None:
        """Take the sequence's next token from the step's logits and push its text."""
        native = self._native
        assert native is not None
        if not sequence.decoding and self._uses_prefix_cache(sequence):  # its prompt just finished: cache it
            self._cache_prompt(sequence)
        token = self._sample(sequence, index)
        if native.is_end(token):
            self._end(sequence, None, finish="stop")
            return
        sequence.generated += 1
        sequence.last_token = token
        sequence.text += sequence.decoder.feed(native.piece(token))
        if self._push_text(sequence, final=False):
            self._end(sequence, None, finish="stop")
        elif sequence.generated >= sequence.job.max_tokens:
            sequence.text += sequence.decoder.flush()
            stopped = self._push_text(sequence, final=True)
            self._end(sequence, None, finish="stop" if stopped else "length")

    def _push_text(self, sequence: _Sequence, *, final: bool) -> bool:
        """Push the text no stop string can still claim; True when a stop string ended it."""
        text = sequence.text
        search_from = max(0, sequence.emitted - max((len(s) for s in sequence.stops), default=0))
        cut = None
        for stop in sequence.stops:
            found = text.find(stop, search_from)
            if found != -1 and (cut is None or found < cut):
                cut = found
        if cut is not None:
            end = cut
            sequence.text = text[:cut]  # the stop string and what follows it are never sent (_end flushes the rest)
        elif final:
            end = len(text)
        else:
            end = len(text) - self._held_back(text, sequence.stops)
        if end > sequence.emitted:
            sequence.job.out.put(text[sequence.emitted : end])
            sequence.emitted = end
        return cut is not None

    @staticmethod
    def _held_back(text: str, stops: list[str]) -> int:
        """Characters at the end of ``text`` that could be the start of a stop string."""
        longest = 0
        for stop in stops:
            for n in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:n]):
                    longest = n
                    break
        return longest

    def _cache_prompt(self, sequence: _Sequence) -> None:
        native = self._native
        assert native is not None
        prompt = sequence.prompt[: native.prefix_limit] if native.prefix_limit else sequence.prompt
        slot = self._prefixes.store(prompt)
        if slot is None:
            return
        seq, evicted = slot
        if evicted is not None:
            native.forget(evicted)
        native.copy_prefix(sequence.seq, seq, len(prompt))

    def _end(self, sequence: _Sequence, failure: LocalFailure | None, *, finish: str = "stop") -> None:
        """End one sequence. It leaves the batch before its caller hears that it ended, so a request
        sent right after the answer (the next turn of a conversation) finds the batch without it,
        and admission does not count it as load."""
        job = sequence.job
        try:
            if sequence.sampler is not None:
                sequence.sampler.close()
                sequence.sampler = None
            if self._native is not None:
                self._native.forget(sequence.seq)
        finally:
            with self._lock:
                self._live.pop(sequence.seq, None)
                job.released = True
                self._wake.notify_all()
            if failure is not None:
                job.out.put(failure)
            else:
                if finish != "cancelled" and sequence.emitted < len(sequence.text):
                    job.out.put(sequence.text[sequence.emitted :])
                    sequence.emitted = len(sequence.text)
                job.out.put(JobDone(finish if finish != "cancelled" else "stop", sequence.generated, sequence.version))
                if finish != "cancelled" and job.started_at is not None:
                    seconds = time.monotonic() - job.started_at
                    self.service_s = seconds if self.service_s is None else 0.8 * self.service_s + 0.2 * seconds
                    self.completed += 1

    def _failed_step(self, code: int, owners: list[tuple[_Sequence, int]], entries: list[tuple[int, int, int, bool]]) -> None:
        if code == 1:  # no KV room for this step: end the newest sequence, the others go on
            newest = max(self._live.values(), key=lambda s: s.job.started_at or 0.0)
            logger.warning("the KV memory is full; ending the newest local sequence")
            self._end(newest, LocalFailure("overloaded", "the local KV memory is full"))
            for sequence in self._live.values():  # undo this step's prefill bookkeeping
                if not sequence.decoding:
                    sequence.prefilled = min(sequence.prefilled, self._prefilled_before(sequence, entries))
            return
        logger.warning("llama_decode failed (code %d); failing the %d sequences of the step and rebuilding", code, len(self._live))
        for sequence in list(self._live.values()):
            self._end(sequence, LocalFailure("error", f"llama_decode returned {code}"))
        self._rebuild()

    @staticmethod
    def _prefilled_before(sequence: _Sequence, entries: list[tuple[int, int, int, bool]]) -> int:
        positions = [pos for _, pos, seq, _ in entries if seq == sequence.seq]
        return min(positions) if positions else sequence.prefilled

    def _rebuild(self) -> None:
        old, self._native = self._native, None
        if old is not None:
            try:
                old.close()
            except Exception:  # noqa: BLE001
                logger.debug("closing a failed llama context failed", exc_info=True)
        self._prefixes = self._new_prefix_cache()
        try:
            native = self._new_native(self._adapter_path)
            self._restore_canary(native)
            self._native = native
        except Exception as err:  # noqa: BLE001 - the respawner retries
            logger.error("could not reload the local model (%s)", err)
            with self._lock:
                self._generation += 1  # this thread exits; the respawner starts the next (never two on one context)
                self._running = False
            threading.Thread(target=self._respawn, name="llama-batch-respawn", daemon=True).start()

    # -- hangs ------------------------------------------------------------------------------------

    def _watch(self) -> None:
        while not self._closed:
            time.sleep(min(1.0, max(0.05, self.hang_grace_s / 4)))
            started = self._step_started
            if started is None or not self._running:
                continue
            now = time.monotonic()
            with self._lock:
                deadlines = [s.job.deadline for s in self._live.values()]
            if deadlines and now > min(deadlines) + self.hang_grace_s and now - started > self.hang_grace_s:
                self._replace_stuck(started)

    def _replace_stuck(self, started: float) -> None:
        with self._lock:
            if self._step_started != started:
                return  # that step ended meanwhile: the scheduler is not stuck
            logger.warning("the local batch is stuck in one step for %.1f s; replacing its context", time.monotonic() - started)
            self._generation += 1
            self._running = False
            live, self._live = list(self._live.values()), {}
            self._native = None  # the stuck thread frees it if it ever returns
            self._step_started = None
        for sequence in live:
            sequence.job.cancelled.set()
            sequence.job.out.put(LocalFailure("timeout", "the local model hung and was replaced"))
            sequence.job.released = True
        self.replaced_hung += 1
        self._prefixes = self._new_prefix_cache()
        threading.Thread(target=self._respawn, name="llama-batch-respawn", daemon=True).start()

    def _respawn(self) -> None:
        """Load a fresh context off the request path, retrying with a doubling back-off; jobs that
        arrive meanwhile are refused, and the ones already waiting are failed rather than left to
        their deadlines."""
        delay = self.respawn_backoff_s
        self._refuse_waiting()
        while not self._closed:
            try:
                native = self._new_native(self._adapter_path)
                self._restore_canary(native)
            except Exception as err:  # noqa: BLE001 - retried after the back-off
                self.respawn_failures += 1
                logger.error("could not start a replacement local context (%s); retrying in %.1f s", err, delay)
                self._refuse_waiting()
                time.sleep(delay)
                delay = min(self.respawn_backoff_max_s, delay * 2)
                continue
            with self._lock:
                if self._closed:
                    native.close()
                    return
                self._native = native
                self._start_thread()
            logger.info("the local batch context was reloaded")
            return

    def _refuse_waiting(self) -> None:
        with self._lock:
            waiting, self._waiting = list(self._waiting), collections.deque()
        for job in waiting:
            job.out.put(LocalFailure("overloaded", "the local model is being reloaded"))
            job.released = True

    # -- shutdown ---------------------------------------------------------------------------------

    def close(self, timeout_s: float) -> bool:
        """Refuse new jobs, let the live and waiting ones finish (up to ``timeout_s``), free the context.

        Returns False when the scheduler was still busy at the timeout: its context is then left to
        its own thread to free, never freed under it.
        """
        with self._lock:
            if self._closed:
                return True
            self._closed = True
            self._wake.notify_all()
            pending = [p for p in (self._pending_swap, self._pending_canary) if p is not None]
            self._pending_swap = self._pending_canary = None
        for _, _, future in pending:
            future.set_result(False)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            with self._lock:
                self._generation += 1  # the thread frees its context when it returns
            logger.warning("the local batch was still busy at close; it frees its context when it returns")
            freed = False
        else:
            native, self._native = self._native, None
            if native is not None:
                native.close()
            freed = True
        with self._lock:
            releases, self._releases = self._releases, []
        for _, future in releases:
            future.set_result(freed)  # a removed canary goes with the context
        return freed
