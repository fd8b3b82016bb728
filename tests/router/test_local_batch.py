"""The continuous batch: one llama.cpp context decoding many local requests, under load and faults.

The ``slow`` tests run the packaged model through :class:`BatchScheduler` over :class:`NativeBatch`
(and once through ``Client``). Faults are injected at the scheduler's own seams: one step's
``decode`` blocks or fails, one sequence's sampling raises, a context load fails. The bookkeeping
(the prefix cache, padding, stop strings) is also tested without a model.

How answers are compared. llama.cpp's batched arithmetic is not batch-invariant: a sequence's
logits depend on how many rows its step carries, on its row in the batch and on which KV cells
hold its tokens. Measured here (Gemma 3 270M Q4_K_M, 2 threads), the top-2 logit margin of a
sequence moves by up to 0.67 when other sequences join it (0.1-0.2 on average) and by up to 0.91
in a step padded to 8 rows, while the bitext adapter's answers are full of near ties (margins of
0.003-0.2 within 64 tokens): "I want to cancel the order I placed yesterday" answered alone and
beside three others parts at its 5th token (alone margin 0.03). What the logits do *not* depend on
is what the other sequences say (bit-identical with unrelated or random neighbours of the same
length), and a sequence decoded on a context whose cells are all free is bit-identical to one
decoded on a fresh context. So every comparison here is exact, against one of:

* a reference run with the very same schedule (same steps, rows and cells), e.g. the same batch in
  which the faulty sequence instead reaches its ``max_tokens`` at the step where the fault ended it;
* an answer produced alone on free cells, for a request that also runs alone (after a rebuild, a
  swap, a wait for KV room);
* an answer produced alone, for prompts whose greedy answer has no near tie at all: the base
  model's echo loops (``ECHOES``), which that rounding cannot flip;
* for a serving and a canary lane decoded beside each other (each in decodes of its own, their cells
  interleaved), an answer produced alone, for the echoes and for the bitext adapter's answer with
  the widest margins (``CANARY_QUESTION``), on a schedule fixed by actions at a given decode.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hybrid_common.chat import STOP_SEQUENCES, render_prompt
from router.backends._prefix_cache import PrefixCache, PrefixHit
from router.backends.base import GenerationParams, LocalFailure
from router.backends.llama_batch import BatchScheduler, _Lane, _Sequence, _StepTimes
from router.backends.llama_workers import GenerationJob, JobDone
from tests.conftest import user

ADAPTER = Path(__file__).resolve().parents[2] / "evals" / "adapters" / "bitext-support" / "adapter.gguf"

# Base model, no adapter: each is echoed in a loop with a top-2 margin of at least 1.25 logits at
# every one of its first 64 tokens (measured alone: 1.66, 1.43, 1.36, 1.36, 1.25). In batches of 2
# to 8 rows (padding included) their margins moved by 0.31-0.91 and no token changed, so a
# different answer here means a bug, not rounding.
ECHOES = ["Where is my order?", "Where is my account?", "Where is my invoice?", "Where is my delivery?", "What is my order status?"]

# With the bitext adapter: sensible support answers of 64 tokens or more (no early end).
SUPPORT = ["I want to cancel the order I placed yesterday", "How do I track my delivery?", "What payment methods do you accept?"]

SUPPORT_SYSTEM = (
    "You are the support assistant of an online shop that sells electronics and home goods. Answer politely, in "
    "short numbered steps when the customer must do something, never ask for a full card number or a password, and "
    "point to the Help Center for anything about returns older than 30 days. Orders ship within two working days."
)


# -- helpers -------------------------------------------------------------------------------------


def greedy(
    tokens: list[int], max_tokens: int, *, seconds: float = 120.0, version: str | None = None, **params: Any
) -> GenerationJob:
    """A job for ``tokens`` asking for adapter ``version``: greedy unless ``params`` say otherwise, due in ``seconds``."""
    params = {"temperature": 0.0, **params}
    return GenerationJob(tokens, GenerationParams(**params), max_tokens, time.monotonic() + seconds, adapter_version=version)


class Reader:
    """Reads one job's queue on its own thread as a caller would, timestamping every piece."""

    def __init__(self, job: GenerationJob, *, cancel_after: int | None = None) -> None:
        self.job = job
        self.pieces: list[tuple[float, str]] = []
        self.end: Any = None
        self._cancel_after = cancel_after
        self._done = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            while True:
                item = self.job.out.get(timeout=120)
                if not isinstance(item, str):
                    self.end = item
                    return
                self.pieces.append((time.monotonic(), item))
                if len(self.pieces) == self._cancel_after:
                    self.job.cancelled.set()  # the caller walks away (closed stream, guard, disconnect)
        finally:
            self._done.set()

    def wait(self, timeout_s: float = 120.0) -> Reader:
        assert self._done.wait(timeout_s), "the job never ended"
        return self

    @property
    def text(self) -> str:
        return "".join(piece for _, piece in self.pieces)

    @property
    def first_at(self) -> float:
        return self.pieces[0][0]

    @property
    def last_at(self) -> float:
        return self.pieces[-1][0]


def answer(scheduler: BatchScheduler, tokens: list[int], max_tokens: int, **params: Any) -> Reader:
    """One job, submitted and read to its end."""
    job = greedy(tokens, max_tokens, **params)
    reader = Reader(job)
    scheduler.submit(job)
    return reader.wait()


def run_together(scheduler: BatchScheduler, jobs: list[GenerationJob], *, cancel_after: dict[int, int] | None = None) -> list[Reader]:
    """Run ``jobs`` admitted at one step (queued under the scheduler's lock, then woken): the batch
    then has the same shape, step for step, every time these jobs run on a fresh scheduler."""
    readers = [Reader(job, cancel_after=(cancel_after or {}).get(i)) for i, job in enumerate(jobs)]
    with scheduler._wake:
        scheduler._waiting.extend(jobs)
        scheduler._wake.notify_all()
    return [reader.wait() for reader in readers]


def until(condition: Callable[[], Any], seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.005)
    return bool(condition())


@dataclass
class Ended:
    job: GenerationJob
    generated: int
    failure: LocalFailure | None
    finish: str
    at: float


@pytest.fixture
def ended(monkeypatch: pytest.MonkeyPatch) -> list[Ended]:
    """Every sequence the scheduler ends, with the tokens it had generated by then."""
    record: list[Ended] = []
    real_end = BatchScheduler._end

    def spy(self: BatchScheduler, sequence: _Sequence, failure: LocalFailure | None, *, finish: str = "stop") -> None:
        record.append(Ended(sequence.job, sequence.generated, failure, finish, time.monotonic()))
        real_end(self, sequence, failure, finish=finish)

    monkeypatch.setattr(BatchScheduler, "_end", spy)
    return record


@pytest.fixture(scope="module")
def model_path() -> Path:
    from router.backends.llama_cpp import packaged_model_path

    return packaged_model_path()


@pytest.fixture(scope="module")
def tokens(model_path: Path) -> Iterator[Callable[[list[dict[str, str]]], list[int]]]:
    """Messages to prompt tokens, as the llama.cpp backend renders and tokenizes them."""
    from llama_cpp import Llama

    vocab = Llama(model_path=str(model_path), vocab_only=True, n_ctx=128, verbose=False)

    def encode(messages: list[dict[str, str]]) -> list[int]:
        return vocab.tokenize(render_prompt(messages).encode("utf-8"), add_bos=True, special=True)

    yield encode
    vocab.close()


def build_scheduler(
    model_path: Path,
    adapter: Path | None = ADAPTER,
    version: str | None = "A",
    *,
    max_sequences: int = 4,
    kv_tokens: int = 1024,
    prefill_chunk: int = 64,
    prefix_slots: int = 0,
    pad_multiple: int = 4,
    hang_grace_s: float = 10.0,
    seq_ids: int | None = None,
    broken_loads: list[int] | None = None,
) -> BatchScheduler:
    """A scheduler over the packaged model (2 threads, a small KV budget)."""
    from router.backends.llama_native import NativeBatch, NativeContextSettings

    def new_native(adapter_path: Path | None) -> NativeBatch:
        if broken_loads and broken_loads[0] > 0:  # the next n loads fail, as if the model file vanished
            broken_loads[0] -= 1
            raise FileNotFoundError("injected: the model file vanished")
        return NativeBatch(settings, adapter_path)

    settings = NativeContextSettings(
        model_path=model_path,
        kv_tokens=kv_tokens,
        n_seq_max=seq_ids or max_sequences + prefix_slots + 1,
        n_batch=prefill_chunk + max_sequences + pad_multiple,
        n_threads=2,
    )
    return BatchScheduler(
        new_native,
        adapter_path=adapter,
        adapter_version=version,
        max_sequences=max_sequences,
        max_queue=4,
        kv_tokens=kv_tokens,
        prefill_chunk=prefill_chunk,
        prefix_slots=prefix_slots,
        prefix_min_tokens=32,
        pad_multiple=pad_multiple,
        hang_grace_s=hang_grace_s,
        stop_sequences=list(STOP_SEQUENCES),
        respawn_backoff_s=0.05,
    )


@pytest.fixture
def batch(model_path: Path) -> Iterator[Callable[..., BatchScheduler]]:
    """Build schedulers with :func:`build_scheduler`; closed after the test."""
    made: list[BatchScheduler] = []

    def build(*args: Any, **kwargs: Any) -> BatchScheduler:
        scheduler = build_scheduler(model_path, *args, **kwargs)
        made.append(scheduler)
        return scheduler

    yield build
    for scheduler in made:
        assert scheduler.close(30)


# -- the bookkeeping, without a model ------------------------------------------------------------


def test_the_prefix_cache_finds_the_longest_cached_start_and_leaves_one_token_to_decode() -> None:
    cache = PrefixCache([7, 8, 9], min_tokens=4)
    short, long = list(range(100, 110)), [*range(100, 108), 1, 2, 3]
    assert cache.lookup(short) is None and cache.misses == 1  # nothing cached yet
    first = cache.store(short)
    assert first is not None and first[1] is None  # a free id, nothing evicted
    second = cache.store(long)
    assert second is not None and second[0] != first[0]
    assert cache.store(short) is None and cache.store(short[:6]) is None  # already covered
    assert cache.store([1, 2, 3]) is None  # shorter than min_tokens: not worth cells
    assert cache.cached_tokens == len(short) + len(long)

    # [100..107, 1, 9]: 9 tokens in common with `long`, 8 with `short`
    assert cache.lookup([*range(100, 108), 1, 9]) == PrefixHit(second[0], 9)
    # the whole of a cached prompt: all but its last token, so the new sequence gets its own logits
    assert cache.lookup(short) == PrefixHit(first[0], len(short) - 1)
    # a shared start shorter than min_tokens is no hit
    assert cache.lookup([100, 101, 102, 5, 5, 5]) is None
    assert (cache.hits, cache.misses, cache.reused_tokens) == (2, 2, 9 + len(short) - 1)


def test_the_prefix_cache_evicts_the_least_recently_used_prompt_and_clears() -> None:
    cache = PrefixCache([7, 8], min_tokens=2)
    a, b, c, d = [1, 1, 1, 1], [2, 2, 2, 2], [3, 3, 3, 3], [4, 4, 4, 4]
    seq_a, _ = cache.store(a) or (None, None)
    seq_b, _ = cache.store(b) or (None, None)
    assert cache.lookup([*a, 9]) is not None  # `a` is now the most recently used
    assert cache.store(c) == (seq_b, seq_b)  # full: `b`'s id is reused, and its cells must be freed
    assert cache.lookup([*b, 9]) is None and cache.lookup([*c, 9]) == PrefixHit(seq_b, 4)
    assert cache.evict_oldest() == seq_a  # `a` is older than `c` now
    assert cache.store(d) == (seq_a, None)  # its id was freed: nothing to evict
    assert sorted(cache.clear()) == sorted([seq_a, seq_b])
    assert cache.cached_tokens == 0 and cache.lookup([*c, 9]) is None and cache.evict_oldest() is None
    assert cache.store(a) is not None and cache.store(b) is not None  # both ids free again


def test_padding_rounds_pure_decode_steps_above_one_tile_to_whole_tiles() -> None:
    scheduler = object.__new__(BatchScheduler)  # _padding reads pad_multiple only
    scheduler.pad_multiple = 4
    assert [scheduler._padding(n, n) for n in range(1, 13)] == [0, 0, 0, 0, 3, 2, 1, 0, 3, 2, 1, 0]
    assert scheduler._padding(70, 6) == 0  # a step carrying a prefill chunk is not padded
    for off in (0, 1):
        scheduler.pad_multiple = off
        assert [scheduler._padding(n, n) for n in range(1, 13)] == [0] * 12


def test_stop_strings_are_held_back_until_decided_and_never_sent() -> None:
    scheduler = object.__new__(BatchScheduler)  # _push_text needs no context
    job = GenerationJob([1], GenerationParams(), 16, time.monotonic() + 60)
    sequence = _Sequence(job, 0, [1], 17, stops=["<end_of_turn>", "STOP"])

    def push(piece: str, *, final: bool = False) -> tuple[bool, list[str]]:
        sequence.text += piece
        stopped = scheduler._push_text(sequence, final=final)
        sent = []
        while not job.out.empty():
            sent.append(job.out.get_nowait())
        return stopped, sent

    assert push("Hello S") == (False, ["Hello "])  # "S" may start "STOP": held back
    assert push("TAY <") == (False, ["STAY "])  # not a stop after all; "<" may start <end_of_turn>
    assert push("b>") == (False, ["<b>"])
    assert push("then STO") == (False, ["then "])
    assert push("P, and more") == (True, [])  # the stop string and what follows are never sent
    assert sequence.text == "Hello STAY <b>then " and sequence.emitted == len(sequence.text)

    job2 = GenerationJob([1], GenerationParams(), 16, time.monotonic() + 60)
    last = _Sequence(job2, 1, [1], 17, stops=["STOP"])
    last.text = "ends with ST"
    assert scheduler._push_text(last, final=True) is False  # the last piece: nothing left to wait for
    assert job2.out.get_nowait() == "ends with ST"


# -- joining and leaving -------------------------------------------------------------------------


@pytest.mark.slow
def test_a_request_joins_a_running_batch_and_both_answer_exactly_as_alone(batch, tokens) -> None:
    # The base model's echo loops (see ECHOES). With the adapter's near ties, answers produced alone
    # and in a batch can part by rounding alone (observed: of five support questions answered alone
    # and four at a time, three parted, the earliest at its 5th token): flaky, not stricter.
    scheduler = batch(None, "base")
    long_prompt, joining_prompt = tokens(user(ECHOES[0])), tokens(user(ECHOES[1]))
    alone_long, alone_joining = answer(scheduler, long_prompt, 64), answer(scheduler, joining_prompt, 40)
    assert alone_long.end == JobDone("length", 64, "base") and alone_joining.end == JobDone("length", 40, "base")

    first = Reader(greedy(long_prompt, 64))
    scheduler.submit(first.job)
    assert until(lambda: len(first.pieces) >= 3)  # decoding alone
    joining = Reader(greedy(joining_prompt, 40))
    scheduler.submit(joining.job)
    assert until(lambda: scheduler.stats().live == 2)  # both in one batch
    first.wait()
    joining.wait()

    assert first.first_at < joining.first_at < first.last_at  # joined mid-answer ...
    assert joining.last_at < first.last_at  # ... and left first: the other then decoded alone again
    assert (first.text, first.end) == (alone_long.text, alone_long.end)
    assert (joining.text, joining.end) == (alone_joining.text, alone_joining.end)
    assert until(lambda: scheduler.depth == 0)  # both slots given back (just after their JobDone)


@pytest.mark.slow
def test_padding_rows_fill_a_decode_step_and_leave_the_sequences_and_the_cells_as_they_were(batch, tokens, monkeypatch) -> None:
    scheduler = batch(None, "base", max_sequences=8)  # pad_multiple 4: 5 decoding rows become 8
    prompts = [tokens(user(q)) for q in ECHOES]
    alone = [answer(scheduler, prompt, 32) for prompt in prompts]
    native, scratch = scheduler._native, scheduler._scratch_seq
    steps: list[tuple[int, int, int]] = []  # (rows, dummy rows, scratch cells left from an earlier step)
    real_decode = native.decode

    def decode(entries: list[tuple[int, int, int, bool]]) -> int:
        left = native._lib.llama_memory_seq_pos_max(native._memory, scratch) + 1
        steps.append((len(entries), sum(seq == scratch for _, _, seq, _ in entries), left))
        return real_decode(entries)

    monkeypatch.setattr(native, "decode", decode)
    together = run_together(scheduler, [greedy(prompt, 32) for prompt in prompts])

    padded = [(rows, dummies) for rows, dummies, _ in steps if dummies]
    assert len(padded) >= 30 and set(padded) == {(8, 3)}  # every pure decode step of five sequences
    assert all(left == 0 for _, _, left in steps)  # the dummy rows' cells were freed after each step
    for mine, theirs in zip(together, alone, strict=True):
        assert (mine.text, mine.end) == (theirs.text, theirs.end)


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["cancelled", "deadline", "sampling error"])
def test_one_sequence_ending_early_leaves_the_others_exactly_as_without_it(fault, batch, tokens, ended, monkeypatch) -> None:
    prompts = [tokens(user(q)) for q in SUPPORT]
    faulty = batch()
    victim = greedy(prompts[1], 64, seconds=0.5 if fault == "deadline" else 120.0)  # after the model loaded
    jobs = [greedy(prompts[0], 40), victim, greedy(prompts[2], 40)]
    if fault == "sampling error":
        real_sample = BatchScheduler._sample

        def sample(self: BatchScheduler, sequence: _Sequence, index: int) -> int:
            if sequence.job is victim and sequence.generated == 5:
                raise RuntimeError("injected sampling failure")
            return real_sample(self, sequence, index)

        monkeypatch.setattr(BatchScheduler, "_sample", sample)
    outcome = run_together(faulty, jobs, cancel_after={1: 3} if fault == "cancelled" else None)

    (stopped,) = [e for e in ended if e.job is victim]
    end = outcome[1].end
    if fault == "cancelled":
        assert stopped.finish == "cancelled" and isinstance(end, JobDone) and 3 <= stopped.generated < 64
    elif fault == "deadline":
        assert isinstance(end, LocalFailure) and end.kind == "timeout" and 0 < stopped.generated < 64
        assert outcome[1].pieces  # it was decoding when its deadline passed
    else:
        assert isinstance(end, LocalFailure) and end.kind == "error" and "injected sampling failure" in end.detail
        assert stopped.generated == 5
    assert faulty._native is not None and faulty.workers == 1  # no rebuild: the context goes on serving

    # The reference: the same batch, in which the victim reaches max_tokens at the step where the
    # fault ended it (a cancellation or deadline is seen at the start of the next step; a sampling
    # error at the step whose token it failed to sample), so every step has the same rows and cells.
    last = stopped.generated + (1 if fault == "sampling error" else 0)
    reference = run_together(batch(), [greedy(prompts[0], 40), greedy(prompts[1], last), greedy(prompts[2], 40)])
    for mine, theirs in zip(outcome[::2], reference[::2], strict=True):
        assert mine.end == theirs.end == JobDone("length", 40, "A")
        assert mine.text == theirs.text
    assert reference[1].text.startswith(outcome[1].text)  # the victim's own pieces, up to its end


@pytest.mark.slow
def test_the_guard_cutting_one_client_request_ends_its_sequence_and_leaves_the_others_intact(tmp_path, tokens, ended) -> None:
    from router import Client, RouterConfig

    local = {
        "n_threads": 2, "n_ctx": 512, "max_sequences": 4, "kv_tokens": 1024, "prefix_cache": 0,
        "registry_path": None, "reject_echo": True,
    }  # fmt: skip
    config = RouterConfig(local=local, cloud={"preimport": False}, log={"path": tmp_path / "traffic.sqlite3"}, warmup="lazy")
    with Client(config) as client:
        backend = client._engine.local
        backend.load()
        scheduler = backend.batch
        assert scheduler is not None  # the default local tier is the batch
        # Beside the guarded request, two jobs straight on the same scheduler (through Client the
        # guard would cut these base-model echoes too), first answered alone.
        beside_prompts = [tokens(user(q)) for q in ECHOES[1:3]]
        alone = [answer(scheduler, prompt, 64) for prompt in beside_prompts]
        beside = [Reader(greedy(prompt, 64)) for prompt in beside_prompts]
        for reader in beside:
            scheduler.submit(reader.job)
        assert until(lambda: all(reader.pieces for reader in beside))

        cut = client.chat.completions.create(model="local", messages=user(ECHOES[0]), max_tokens=64)
        assert cut.router.tier == "local" and cut.router.degenerate == "echoed the question"  # forced local: served cut short
        for reader in beside:
            reader.wait()

    guarded = tokens(user(ECHOES[0]))
    (stopped,) = [e for e in ended if e.job.tokens == guarded]
    assert stopped.finish == "cancelled" and stopped.generated < 32  # the reader left; the batch dropped it
    assert stopped.at < min(reader.last_at for reader in beside)  # while the others went on decoding
    for mine, theirs in zip(beside, alone, strict=True):
        assert mine.end == theirs.end == JobDone("length", 64, None)
        assert mine.text == theirs.text


# -- native faults -------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_step_stuck_past_a_deadline_replaces_the_context_and_the_next_request_is_served(batch, tokens, monkeypatch) -> None:
    scheduler = batch(hang_grace_s=0.5)
    prompt = tokens(user(SUPPORT[1]))
    expected = answer(scheduler, prompt, 24)  # alone on free cells: what the replacement must answer
    # The context that hangs is itself a rebuilt one (after a failed decode): the stuck thread must
    # free the context it is stuck in, not the one it started with.
    first = scheduler._native
    monkeypatch.setattr(first, "decode", lambda entries: -1)
    assert answer(scheduler, prompt, 8).end.kind == "error"
    assert until(lambda: scheduler._native not in (None, first))  # rebuilt on the scheduler thread
    native = scheduler._native
    assert first._ctx is None
    armed, hanging, release = threading.Event(), threading.Event(), threading.Event()
    real_decode = native.decode

    def decode(entries: list[tuple[int, int, int, bool]]) -> int:
        if armed.is_set() and not hanging.is_set():
            hanging.set()
            release.wait(60)  # stuck in "native code" until the test lets go
        return real_decode(entries)

    monkeypatch.setattr(native, "decode", decode)
    try:
        victim = Reader(greedy(prompt, 64, seconds=1.0))
        scheduler.submit(victim.job)
        assert until(lambda: victim.pieces)
        armed.set()
        assert hanging.wait(10)
        victim.wait(30)
        assert isinstance(victim.end, LocalFailure) and victim.end.kind == "timeout" and "hung" in victim.end.detail
        assert scheduler.replaced_hung == 1
        assert until(lambda: scheduler.workers == 1)  # the replacement context loaded in the background
        assert scheduler._native is not native
        again = answer(scheduler, prompt, 24)
        assert (again.text, again.end) == (expected.text, expected.end)
    finally:
        release.set()
    assert until(lambda: native._ctx is None)  # the stuck thread frees its own context once it returns


@pytest.mark.slow
def test_a_failed_decode_fails_its_step_and_the_rebuilt_context_serves_the_waiting_job(batch, tokens, monkeypatch) -> None:
    scheduler = batch(max_sequences=2)
    prompts = [tokens(user(q)) for q in SUPPORT]
    expected = answer(scheduler, prompts[2], 24)  # alone on a fresh context, as it will run after the rebuild
    native = scheduler._native
    calls = itertools.count(1)
    real_decode = native.decode
    monkeypatch.setattr(native, "decode", lambda entries: -1 if next(calls) == 4 else real_decode(entries))

    # Two sequences decode (call 1 prefills both, calls 2-3 decode, call 4 fails); the third waits for an id.
    failed_a, failed_b, waited = run_together(scheduler, [greedy(prompts[0], 48), greedy(prompts[1], 48), greedy(prompts[2], 24)])
    for failed in (failed_a, failed_b):
        assert isinstance(failed.end, LocalFailure) and failed.end.kind == "error" and "returned -1" in failed.end.detail
        assert failed.pieces  # they were mid-answer
    assert scheduler._native is not native and native._ctx is None  # rebuilt; the failed context freed
    assert (waited.text, waited.end) == (expected.text, expected.end)


@pytest.mark.slow
def test_a_context_that_fails_to_rebuild_is_reloaded_in_the_background_and_served_by_one_thread(batch, tokens, monkeypatch) -> None:
    broken = [0]
    scheduler = batch(broken_loads=broken)
    prompt = tokens(user(SUPPORT[1]))
    expected = answer(scheduler, prompt, 16)
    native = scheduler._native
    monkeypatch.setattr(native, "decode", lambda entries: -1)
    broken[0] = 2  # the rebuild and the first background retry fail

    failed = answer(scheduler, prompt, 16)
    assert isinstance(failed.end, LocalFailure) and failed.end.kind == "error"
    meanwhile = greedy(prompt, 16)
    try:  # no context yet: refused at once, or (submitted before the rebuild failed) refused from the queue
        scheduler.submit(meanwhile)
        refusal = meanwhile.out.get(timeout=10)
    except LocalFailure as err:
        refusal = err
    assert isinstance(refusal, LocalFailure) and refusal.kind == "overloaded"

    assert until(lambda: scheduler.workers == 1)
    again = answer(scheduler, prompt, 16)
    assert (again.text, again.end) == (expected.text, expected.end)
    assert scheduler.respawn_failures == 1 and broken == [0]
    schedulers = [t for t in threading.enumerate() if t.name.removeprefix("llama-batch-").isdigit()]
    assert len(schedulers) == 1  # the thread that failed to rebuild left; one thread owns the new context


# -- adapters, KV budget, prefix reuse, per-request parameters -------------------------------------


def _live_and_waiting(scheduler: BatchScheduler) -> tuple[int, int]:
    stats = scheduler.stats()
    return stats.live, stats.waiting


def _bad_shapes_adapter(path: Path) -> Path:
    """A LoRA file with a valid layout whose tensors do not fit this model: llama.cpp refuses it."""
    from finetune.export import write_lora_gguf

    tensors = {"blk.0.attn_q.weight.lora_a": np.ones((4, 17), np.float32), "blk.0.attn_q.weight.lora_b": np.ones((5, 4), np.float32)}
    return write_lora_gguf(tensors, path, alpha=4.0)


@pytest.mark.slow
def test_an_adapter_swap_drains_the_batch_on_the_old_adapter_and_a_refused_one_changes_nothing(batch, tokens, tmp_path) -> None:
    from tests.finetune.conftest import write_tiny_adapter

    other = write_tiny_adapter(tmp_path / "b.gguf", seed=0)
    question = tokens(user(SUPPORT[1]))
    expected_b = answer(batch(other, "B"), question, 24)
    scheduler = batch(ADAPTER, "A")
    expected_a = answer(scheduler, question, 24)
    assert expected_a.text != expected_b.text  # the two adapters answer differently

    assert scheduler.swap_adapter(tmp_path / "missing.gguf", "missing").result(30) is False
    assert scheduler.swap_adapter(_bad_shapes_adapter(tmp_path / "bad.gguf"), "bad").result(30) is False
    kept = answer(scheduler, question, 24)
    assert (kept.text, kept.end) == (expected_a.text, expected_a.end)  # still adapter A, labelled A
    assert scheduler.stats().adapter_version == "A"

    running = [Reader(greedy(tokens(user(q)), 48)) for q in SUPPORT]
    for reader in running:
        scheduler.submit(reader.job)
    assert until(lambda: all(reader.pieces for reader in running))
    swapped = scheduler.swap_adapter(other, "B")
    late = Reader(greedy(question, 24))
    scheduler.submit(late.job)
    assert until(lambda: _live_and_waiting(scheduler) == (3, 1))  # draining: it waits
    for reader in running:
        reader.wait()
    late.wait()

    assert swapped.result(30) is True and scheduler.stats().adapter_version == "B"
    assert all(isinstance(reader.end, JobDone) and reader.end.adapter_version == "A" for reader in running)  # on A
    assert late.first_at > max(reader.last_at for reader in running)  # started once they were done ...
    assert (late.text, late.end) == (expected_b.text, expected_b.end)  # ... on B, labelled B
    assert answer(scheduler, question, 4).end.adapter_version == "B"


@pytest.mark.slow
def test_the_kv_budget_refuses_what_can_never_fit_and_runs_what_fits_only_alone_one_after_the_other(batch, tokens) -> None:
    kv_tokens, pad = 128, 4
    scheduler = batch(kv_tokens=kv_tokens, pad_multiple=pad)
    first, second = tokens(user(SUPPORT[1])), tokens(user(SUPPORT[2]))
    room = kv_tokens - pad  # cells a sequence may take: a padded step needs up to `pad` more
    assert len(first) + 56 <= room < len(first) + len(second) + 2 * 56  # each fits, both do not
    expected = [answer(scheduler, first, 56), answer(scheduler, second, 56)]

    for too_long in (room - len(first) + 1, kv_tokens - len(first)):
        with pytest.raises(LocalFailure) as refused:
            scheduler.submit(greedy(first, too_long))
        assert refused.value.kind == "overloaded" and "KV cells" in refused.value.detail
    widest = Reader(greedy(first, room - len(first), seconds=30), cancel_after=2)  # exactly the room: admitted
    scheduler.submit(widest.job)
    assert isinstance(widest.wait().end, JobDone) and len(widest.pieces) >= 2

    readers = [Reader(greedy(first, 56)), Reader(greedy(second, 56))]
    for reader in readers:
        scheduler.submit(reader.job)
    assert until(lambda: readers[0].pieces)
    stats = scheduler.stats()
    assert (stats.live, stats.waiting, stats.kv_reserved) == (1, 1, len(first) + 56)
    for reader in readers:
        reader.wait()
    assert readers[1].first_at > readers[0].last_at  # one after the other
    assert [(r.text, r.end) for r in readers] == [(e.text, e.end) for e in expected]


@pytest.mark.slow
def test_a_follow_up_reuses_the_cached_conversation_and_answers_exactly_as_without_the_cache(batch, tokens) -> None:
    first_turn = [{"role": "system", "content": SUPPORT_SYSTEM}, {"role": "user", "content": "Where is my order?"}]
    opening = tokens(first_turn)
    assert len(opening) >= 64
    # Both contexts alike (same sequence ids, same batch size), chunk boundaries at the end of the
    # cached prompt: the follow-up's copied cells then hold exactly what its own prefill computes,
    # and its remaining prompt lands in the same cells, so the two answers must be identical.
    on = batch(prefix_slots=2, prefill_chunk=len(opening), seq_ids=7)
    off = batch(prefix_slots=0, prefill_chunk=len(opening), seq_ids=7)
    reply = answer(on, opening, 32)
    assert answer(off, opening, 32).text == reply.text

    follow_up = tokens([*first_turn, {"role": "assistant", "content": reply.text}, {"role": "user", "content": "It has been a week."}])
    assert follow_up[: len(opening)] == opening
    reused = answer(on, follow_up, 32)
    assert (on.stats().prefix_hits, on.stats().prefix_misses) == (1, 1)
    fresh = answer(off, follow_up, 32)
    assert off.stats().prefix_hits == 0
    assert (reused.text, reused.end) == (fresh.text, fresh.end)

    # Another question after the same system prompt starts with the same cells.
    sibling = tokens([{"role": "system", "content": SUPPORT_SYSTEM}, {"role": "user", "content": "Can I pay by bank transfer?"}])
    shared = next(i for i, (a, b) in enumerate(zip(sibling, opening, strict=False)) if a != b)
    assert shared >= 64
    assert isinstance(answer(on, sibling, 4).end, JobDone) and on.stats().prefix_hits == 2


@pytest.mark.slow
def test_a_request_s_own_stop_strings_and_penalties_apply_to_its_sequence(batch, tokens) -> None:
    scheduler = batch()
    question = tokens(user(SUPPORT[1]))
    plain = answer(scheduler, question, 24)
    cut = plain.text.index("delivery")
    stopped = answer(scheduler, question, 24, stop=("delivery",))
    assert stopped.text == plain.text[:cut] and stopped.end.finish_reason == "stop"
    penalised = answer(scheduler, question, 24, frequency_penalty=1.5, presence_penalty=0.5)
    assert isinstance(penalised.end, JobDone) and penalised.end.completion_tokens > 0
    assert penalised.text != plain.text  # the penalties sampler is in the chain
    seeded = [answer(scheduler, question, 16, temperature=0.9, seed=7).text for _ in range(2)]
    assert seeded[0] == seeded[1]  # a seeded draw repeats


@pytest.mark.slow
def test_a_cached_prompt_stops_at_the_sliding_window_so_its_cells_cannot_be_handed_to_another_sequence(batch, tokens) -> None:
    # Gemma 3's sliding-window layers (window 512) may give a cell that fell out of a sequence's window
    # to another sequence: a cached prompt longer than the window could lose cells a reuse needs.
    long_system = " ".join([SUPPORT_SYSTEM] * 12)
    first = tokens([{"role": "system", "content": long_system}, {"role": "user", "content": "Where is my order?"}])
    second = tokens([{"role": "system", "content": long_system}, {"role": "user", "content": "Can I pay by bank transfer?"}])
    shared = next(i for i, (a, b) in enumerate(zip(first, second, strict=False)) if a != b)
    assert shared > 600
    on = batch(prefix_slots=2, prefill_chunk=512, kv_tokens=4096, seq_ids=7)
    off = batch(prefix_slots=0, prefill_chunk=512, kv_tokens=4096, seq_ids=7)
    assert on._native.prefix_limit == 512
    answer(on, first, 4)
    assert [len(p) for p in on._prefixes._entries.values()] == [512]
    reused, fresh = answer(on, second, 24), answer(off, second, 24)
    assert on._prefixes.reused_tokens == 512
    assert (reused.text, reused.end) == (fresh.text, fresh.end)


# -- a canary lane beside the serving adapter ----------------------------------------------------

# With the bitext adapter, the support answer with the widest top-2 margins we found: at least 0.76
# logits over its first 12 tokens alone (most support questions have near ties of 0.01-0.2). A base
# model sequence decoded beside it, in decodes of its own, moves its cells: measured, its margins
# moved by up to 0.83 and no token changed. The schedules below are fixed (the actions run at a
# given decode), so each two-lane answer is the same on every run.
CANARY_QUESTION = "I want to speak to a human"
LANE_TOKENS = {"base": 16, "A": 12}


@pytest.fixture(scope="module")
def alone(model_path: Path, tokens: Callable[[list[dict[str, str]]], list[int]]) -> dict[str, Reader]:
    """Each lane's answer from a scheduler serving only that adapter, one sequence: the base model's
    echo of ``ECHOES[0]`` ("base") and the bitext adapter's answer to ``CANARY_QUESTION`` ("A")."""
    answers = {}
    for adapter, version, question in ((None, "base", ECHOES[0]), (ADAPTER, "A", CANARY_QUESTION)):
        scheduler = build_scheduler(model_path, adapter, version)
        try:
            answers[version] = answer(scheduler, tokens(user(question)), LANE_TOKENS[version])
        finally:
            assert scheduler.close(30)
    assert answers["base"].end == JobDone("length", 16, "base") and answers["A"].end == JobDone("length", 12, "A")
    return answers


def log_decodes(
    native: Any, monkeypatch: pytest.MonkeyPatch, actions: dict[int, Callable[[], None]] | None = None
) -> list[tuple[Path | None, frozenset[int]]]:
    """Record each decode's adapter and sequence ids. ``actions[n]`` runs on the scheduler thread just
    before the n-th decode, so what it changes lands at the same step on every run."""
    log: list[tuple[Path | None, frozenset[int]]] = []
    real_decode, calls = native.decode, itertools.count(1)

    def decode(entries: list[tuple[int, int, int, bool]]) -> int:
        action = (actions or {}).get(next(calls))
        if action is not None:
            action()
        log.append((native.adapter_path, frozenset(seq for _, _, seq, _ in entries)))
        return real_decode(entries)

    monkeypatch.setattr(native, "decode", decode)
    return log


def adapters_of(log: list[tuple[Path | None, frozenset[int]]], seq: int) -> set[Path | None]:
    return {adapter for adapter, seqs in log if seq in seqs}


def test_a_job_takes_the_canary_lane_only_for_the_canary_s_version_and_two_lanes_cost_two_decodes() -> None:
    scheduler = object.__new__(BatchScheduler)  # _lane_of reads the lanes, _step_time the step times
    serving = _Lane(Path("serving.gguf"), "v1")
    scheduler._adapter_path, scheduler.adapter_version, scheduler._canary = serving.path, serving.version, None
    assert scheduler._lane_of(greedy([1], 4, version="v2")) == serving  # no lane: the serving adapter
    scheduler._canary = canary = _Lane(Path("canary.gguf"), "v2")
    assert scheduler._lane_of(greedy([1], 4, version="v2")) is canary
    for other in (None, "v1", "v0"):
        assert scheduler._lane_of(greedy([1], 4, version=other)) == serving
    scheduler._canary = _Lane(Path("canary.gguf"), "v1")  # a canary of the serving version: the serving one wins
    assert scheduler._lane_of(greedy([1], 4, version="v1")) == serving

    scheduler._times = _StepTimes(4)
    scheduler._times.observe(1, 0.05)
    scheduler._times.observe(3, 0.08)
    assert scheduler._step_time(collections.Counter({serving.path: 3})) == pytest.approx(0.08)
    assert scheduler._step_time(collections.Counter({serving.path: 3, canary.path: 1})) == pytest.approx(0.13)


@pytest.mark.slow
def test_a_serving_and_a_canary_job_decoded_together_each_answer_as_their_adapter_alone(batch, tokens, alone, monkeypatch) -> None:
    scheduler = batch(None, "base")
    assert scheduler.set_canary(ADAPTER, "A").result(30) is True
    assert scheduler.canary_version == scheduler.stats().canary_version == "A"
    log = log_decodes(scheduler._native, monkeypatch)
    jobs = [greedy(tokens(user(ECHOES[0])), 16), greedy(tokens(user(CANARY_QUESTION)), 12, version="A")]
    serving, canary = run_together(scheduler, jobs)

    assert (serving.text, serving.end) == (alone["base"].text, JobDone("length", 16, "base"))
    assert (canary.text, canary.end) == (alone["A"].text, JobDone("length", 12, "A"))
    assert {seqs for _, seqs in log} == {frozenset({0}), frozenset({1})}  # never in one decode ...
    assert adapters_of(log, 0) == {None} and adapters_of(log, 1) == {ADAPTER}  # ... each under its own adapter
    assert scheduler.canary_version == "A" and scheduler.stats().canary_live == 0
    # Every canary decode shares its step with a serving one; the lane already applied goes first, so
    # each such step switches adapters once (decoding the lanes in a fixed order would switch twice).
    switches = sum(a != b for (a, _), (b, _) in itertools.pairwise(log))
    assert switches == sum(adapter == ADAPTER for adapter, _ in log) == 12


@pytest.mark.slow
def test_removing_the_canary_lets_its_sequences_finish_and_sends_its_version_to_the_serving_adapter(
    batch, tokens, alone, ended, monkeypatch
) -> None:
    scheduler = batch(None, "base")
    assert scheduler.set_canary(ADAPTER, "A").result(30) is True
    native = scheduler._native
    late = Reader(greedy(tokens(user(ECHOES[0])), 16, version="A"))  # asks for the canary once it is gone
    seen: dict[str, Any] = {}

    def remove() -> None:  # the canary job is decoding alone (decode 1 was its prompt)
        seen["removal"] = removal = scheduler.set_canary(None, None)
        removal.add_done_callback(lambda _: seen.setdefault("resolved_at", time.monotonic()))
        seen["stats"] = scheduler.stats()
        with scheduler._wake:
            scheduler._waiting.append(late.job)

    log = log_decodes(native, monkeypatch, {4: remove})
    in_flight = Reader(greedy(tokens(user(CANARY_QUESTION)), 12, version="A"))
    scheduler.submit(in_flight.job)
    in_flight.wait()
    late.wait()

    assert seen["stats"].canary_version is None and seen["stats"].canary_live == 1  # closed to new jobs at once
    assert (in_flight.text, in_flight.end) == (alone["A"].text, JobDone("length", 12, "A"))  # finished on the canary
    assert (late.text, late.end) == (alone["base"].text, JobDone("length", 16, "base"))  # the serving adapter answered
    assert adapters_of(log, 0) == {ADAPTER} and adapters_of(log, 1) == {None}
    (finished,) = [e for e in ended if e.job is in_flight.job]
    assert seen["removal"].result(30) is True and seen["resolved_at"] > finished.at
    assert native.loaded_adapters == frozenset()  # the canary's adapter freed once its sequence finished
    assert answer(scheduler, tokens(user(ECHOES[0])), 4, version="Z").end == JobDone("length", 4, "base")  # any other version


@pytest.mark.slow
def test_promoting_the_canary_serves_new_jobs_at_once_and_frees_the_old_adapter_after_its_sequences(
    batch, tokens, alone, ended, monkeypatch, tmp_path
) -> None:
    from tests.finetune.conftest import write_tiny_adapter

    old_adapter = write_tiny_adapter(tmp_path / "old.gguf", seed=0)
    scheduler = batch(old_adapter, "T")
    assert scheduler.set_canary(ADAPTER, "A").result(30) is True
    native = scheduler._native
    handle = native._adapters[ADAPTER]
    new = Reader(greedy(tokens(user(CANARY_QUESTION)), 12))  # asks for no version: whatever serves
    seen: dict[str, Any] = {}

    def promote() -> None:  # the old adapter's job is decoding alone
        seen["promotion"] = promotion = scheduler.swap_adapter(ADAPTER, "A")
        promotion.add_done_callback(lambda _: seen.setdefault("promoted_at", time.monotonic()))
        with scheduler._wake:
            scheduler._waiting.append(new.job)

    log = log_decodes(native, monkeypatch, {4: promote})
    old = Reader(greedy(tokens(user(ECHOES[0])), 16))
    scheduler.submit(old.job)
    old.wait()
    new.wait()

    (old_end,) = [e for e in ended if e.job is old.job]
    assert seen["promotion"].result(30) is True and seen["promoted_at"] < old_end.at  # no drain ...
    assert new.first_at < old.last_at  # ... the promoted adapter answered beside the old one
    assert (new.text, new.end) == (alone["A"].text, JobDone("length", 12, "A"))
    assert isinstance(old.end, JobDone) and old.end.adapter_version == "T" and old_end.generated > 3
    assert adapters_of(log, 0) == {old_adapter} and adapters_of(log, 1) == {ADAPTER}  # the old job on the old adapter
    assert scheduler.canary_version is None and scheduler.stats().adapter_version == "A"
    assert until(lambda: native.loaded_adapters == {ADAPTER})  # the old adapter freed after its job ...
    assert native._adapters[ADAPTER] is handle  # ... and the promoted one never reloaded


@pytest.mark.slow
def test_a_refused_canary_resolves_false_and_leaves_the_lanes_as_they_were(batch, tokens, alone, tmp_path) -> None:
    scheduler = batch(None, "base")
    bad = _bad_shapes_adapter(tmp_path / "bad.gguf")
    assert scheduler.set_canary(tmp_path / "missing.gguf", "missing").result(30) is False
    assert scheduler.set_canary(bad, "bad").result(30) is False
    assert scheduler.canary_version is None and scheduler._native.loaded_adapters == frozenset()
    kept = answer(scheduler, tokens(user(ECHOES[0])), 16, version="bad")
    assert (kept.text, kept.end) == (alone["base"].text, alone["base"].end)  # served and labelled by the serving adapter

    assert scheduler.set_canary(ADAPTER, "A").result(30) is True
    assert scheduler.set_canary(bad, "bad").result(30) is False
    assert scheduler.canary_version == "A" and scheduler._native.loaded_adapters == {ADAPTER}  # the lane there stays


@pytest.mark.slow
def test_a_context_rebuilt_after_a_failed_decode_serves_both_lanes_again(batch, tokens, alone, monkeypatch) -> None:
    scheduler = batch(None, "base")
    assert scheduler.set_canary(ADAPTER, "A").result(30) is True
    native = scheduler._native
    monkeypatch.setattr(native, "decode", lambda entries: -1)
    question = tokens(user(CANARY_QUESTION))

    failed = answer(scheduler, question, 12, version="A")
    assert isinstance(failed.end, LocalFailure) and failed.end.kind == "error"
    assert until(lambda: scheduler._native not in (None, native)) and native._ctx is None
    assert scheduler._native.loaded_adapters == {ADAPTER} and scheduler.canary_version == "A"
    canary, serving = answer(scheduler, question, 12, version="A"), answer(scheduler, tokens(user(ECHOES[0])), 16)
    assert (canary.text, canary.end) == (alone["A"].text, alone["A"].end)
    assert (serving.text, serving.end) == (alone["base"].text, alone["base"].end)


@pytest.mark.slow
def test_a_finished_or_cancelled_sequence_is_not_load_for_the_next_request(batch, tokens, monkeypatch) -> None:
    """A conversation's next turn is sent the moment the last answer ends: admission must then see an
    idle batch, not the answer that just ended (it spilled such turns to the cloud as local_busy)."""
    scheduler = batch()
    prompt = tokens(user(SUPPORT[1]))
    answer(scheduler, prompt, 8)  # a step time is known from here on
    job = greedy(prompt, 8)
    scheduler.submit(job)
    seen_at_end = None
    while seen_at_end is None:
        item = job.out.get(timeout=60)
        if isinstance(item, JobDone):
            seen_at_end = scheduler.stats().live  # read the moment the caller hears it ended
    assert seen_at_end == 0
    assert scheduler.predicted_seconds(len(prompt), 64) == scheduler.idle_seconds(len(prompt), 64) is not None

    native = scheduler._native
    held, blocked, release = threading.Event(), threading.Event(), threading.Event()
    real_decode = native.decode

    def decode(entries: list[tuple[int, int, int, bool]]) -> int:
        if held.is_set():
            blocked.set()
            release.wait(60)  # the scheduler is stuck before a step until the test lets go
        return real_decode(entries)

    monkeypatch.setattr(native, "decode", decode)
    walking_away = Reader(greedy(prompt, 64))
    scheduler.submit(walking_away.job)
    try:
        assert until(lambda: len(walking_away.pieces) >= 2)
        held.set()
        assert blocked.wait(10)
        idle = scheduler.idle_seconds(len(prompt), 64)  # the step times stay as they are while the steps are held
        assert scheduler.predicted_seconds(len(prompt), 64) > idle  # a live neighbour slows a newcomer
        walking_away.job.cancelled.set()  # the caller closed its stream; the sequence leaves at the next step
        assert scheduler.stats().live == 1
        assert scheduler.predicted_seconds(len(prompt), 64) == idle
    finally:
        release.set()
    walking_away.wait()


def test_torch_loaded_beside_the_local_model_is_warned_about_once(monkeypatch: Any, caplog: Any) -> None:
    """torch's own libgomp.so.1 is the OpenMP runtime llama.cpp then uses: serving beside it decodes slower."""
    import sys
    import types

    from router.backends import llama_native

    monkeypatch.setattr(llama_native, "_torch_warned", False)
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert not llama_native.warn_if_torch_shares_openmp()  # no torch: nothing to say
    monkeypatch.setitem(sys.modules, "torch", types.ModuleType("torch"))
    with caplog.at_level("WARNING", logger="router"):
        assert llama_native.warn_if_torch_shares_openmp()
        assert not llama_native.warn_if_torch_shares_openmp()  # once per process
    assert [r.getMessage() for r in caplog.records if "OpenMP" in r.getMessage()][0].startswith("torch is loaded")


@pytest.mark.slow
def test_a_steps_greedy_tokens_read_in_one_call_match_reading_each_row_alone(model_path, tokens) -> None:
    from router.backends.llama_native import NativeBatch, NativeContextSettings

    settings = NativeContextSettings(model_path=model_path, kv_tokens=1024, n_seq_max=4, n_batch=256, n_threads=2)
    native = NativeBatch(settings, None)
    try:
        prompts = [tokens(user(q)) for q in SUPPORT]
        entries = [(t, pos, seq, pos == len(p) - 1) for seq, p in enumerate(prompts) for pos, t in enumerate(p)]
        entries += [(0, pos, 3, False) for pos in range(5)]  # rows that want no logits, as padding does
        assert native.decode(entries) == 0
        last_rows = [i for i, entry in enumerate(entries) if entry[3]]
        alone = [  # each row read on its own, through llama-cpp-python's own binding
            int(np.ctypeslib.as_array(native._lib.llama_get_logits_ith(native._ctx, i), shape=(native.n_vocab,)).argmax())
            for i in last_rows
        ]
        assert native.argmax_many(last_rows) == alone  # one numpy call over the rows that lie in a row
        assert native.argmax_many(last_rows[::-1]) == alone[::-1]  # out of order: read one by one
        assert [native.argmax(i) for i in last_rows] == alone
    finally:
        native.close()
