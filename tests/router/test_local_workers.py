"""The local tier under load and faults: bounded queue, slow readers, close, hangs and crashes.

The ``slow`` tests run the real packaged model in llama.cpp. Faults are injected by wrapping the
real ``Llama`` a worker is given: a decode that blocks until released (a hang) or raises after a few
pieces (a crash in the native layer), or a load that fails; the model itself still does the work.
The pool's own bookkeeping (replacing a hung worker whose replacement will not load) is also
tested without a model, with a stand-in context that echoes a fixed answer.

Every test here pins ``local.max_sequences = 1``: that is the worker pool, the only path that calls
``Llama.create_completion`` (what ``FaultyLlama`` wraps). The continuous batch that serves by default
is tested in ``test_local_batch.py``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from router import APITimeoutError, Client, OverloadedError
from router.backends.base import GenerationParams, LocalFailure
from router.backends.llama_cpp import LlamaCppBackend
from router.backends.llama_workers import GenerationJob, JobDone, LlamaWorkerPool
from tests.conftest import user

ORDER_QUERY = "I want to cancel the order I placed yesterday"


class FaultyLlama:
    """A real ``Llama`` whose next ``create_completion`` hangs until released, or crashes mid-stream."""

    def __init__(self, real: Any, plan: dict[str, Any]) -> None:
        self._real = real
        self._plan = plan
        self.closed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def create_completion(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        fault = self._plan.pop("next", None)
        if fault == "hang":
            self._plan["hanging"].set()
            self._plan["release"].wait(120)
        chunks = self._real.create_completion(*args, **kwargs)
        if fault == "crash":
            return self._crash_after(chunks, 2)
        return chunks

    @staticmethod
    def _crash_after(chunks: Iterator[Any], n: int) -> Iterator[Any]:
        for i, chunk in enumerate(chunks):
            if i == n:
                raise RuntimeError("injected decode failure")
            yield chunk

    def close(self) -> None:
        self.closed = True
        self._real.close()


@pytest.fixture
def faults(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """``faults["next"] = "hang" | "crash"`` arms the next generation; ``faults["failing_loads"] = n`` fails the
    next n context loads; ``faults["contexts"]`` lists every context made."""
    plan: dict[str, Any] = {"release": threading.Event(), "hanging": threading.Event(), "contexts": []}
    real_new = LlamaCppBackend._new_llama

    def new_llama(self: LlamaCppBackend, adapter_path: Any, *, vocab_only: bool = False) -> Any:
        if not vocab_only and plan.get("failing_loads", 0) > 0:
            plan["failing_loads"] -= 1
            plan["failed_loads"] = plan.get("failed_loads", 0) + 1
            raise FileNotFoundError("injected: the model file vanished")
        llama = real_new(self, adapter_path, vocab_only=vocab_only)
        if vocab_only:
            return llama
        wrapped = FaultyLlama(llama, plan)
        plan["contexts"].append(wrapped)
        return wrapped

    monkeypatch.setattr(LlamaCppBackend, "_new_llama", new_llama)
    yield plan
    plan["release"].set()


def _in_thread(fn: Any) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = fn()
        except BaseException as err:  # noqa: BLE001 - handed to the test
            box["error"] = err
        box["done_at"] = time.monotonic()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


@pytest.mark.slow
def test_a_full_queue_refuses_at_once_and_routed_requests_fall_back(make_config, faults) -> None:
    with Client(make_config(local={"workers": 1, "max_sequences": 1, "max_queue": 0, "retry_after_s": 3})) as client:
        client.warmup()
        faults["next"] = "hang"  # holds the only worker until released
        busy, box = _in_thread(lambda: client.chat.completions.create(model="local", messages=user("Say hello."), max_tokens=8))
        assert faults["hanging"].wait(30)

        refused_at = time.monotonic()
        with pytest.raises(OverloadedError) as refused:  # forced local: nowhere else to go
            client.chat.completions.create(model="local", messages=user(ORDER_QUERY), max_tokens=8)
        assert refused.value.status_code == 503 and refused.value.retry_after_s == 3
        assert "busy" in str(refused.value)

        routed = client.chat.completions.create(model="auto", messages=user(ORDER_QUERY), max_tokens=8)
        assert (routed.router.tier, routed.router.fallback_from) == ("cloud", "local")
        assert routed.router.fallback_reason.startswith("overloaded")
        assert "done_at" not in box  # both were answered while the worker was still held

        faults["release"].set()
        busy.join(60)
        assert box["done_at"] > refused_at and box["result"].choices[0].message.content
        rows = list(client.traffic_log.records())
        assert [r.error_type for r in rows if r.requested_model == "local"].count("OverloadedError") == 1


@pytest.mark.slow
def test_a_slow_stream_reader_does_not_hold_up_other_local_requests(make_config) -> None:
    with Client(make_config(local={"workers": 1, "max_sequences": 1, "max_queue": 2, "timeout_s": 60})) as client:
        client.warmup()
        slow = client.chat.completions.create(model="local", messages=user("Tell me about shipping."), max_tokens=48, stream=True)
        first = next(iter(slow))  # the reader then walks away for a while
        other = client.chat.completions.create(model="local", messages=user(ORDER_QUERY), max_tokens=16)
        assert other.router.tier == "local" and other.choices[0].message.content
        rest = list(slow)
        assert rest[-1].choices == [] or rest[-1].choices[0].finish_reason is not None
        assert first.router.tier == "local"


@pytest.mark.slow
def test_close_waits_for_the_generation_in_flight(make_config, faults) -> None:
    client = Client(make_config(local={"workers": 1, "max_sequences": 1, "max_queue": 2}))
    client.warmup()
    stream = client.chat.completions.create(model="local", messages=user("Tell me about delivery."), max_tokens=40, stream=True)
    chunks = [next(iter(stream))]
    closer, box = _in_thread(client.close)
    closer.join(60)
    assert "error" not in box
    chunks += list(stream)  # the worker finished this answer before its context was freed
    assert chunks[-1].choices == [] or chunks[-1].choices[0].finish_reason in {"stop", "length"}
    assert all(ctx.closed for ctx in faults["contexts"])


@pytest.mark.slow
def test_a_hung_worker_is_replaced_and_the_tier_recovers(make_config, faults) -> None:
    local = {"workers": 1, "max_sequences": 1, "max_queue": 2, "timeout_s": 2.0, "hang_grace_s": 0.5}
    with Client(make_config(local=local)) as client:
        client.warmup()
        faults["next"] = "hang"
        with pytest.raises(APITimeoutError):
            client.chat.completions.create(model="local", messages=user("Say hello."), max_tokens=8)
        routed = client.chat.completions.create(model="auto", messages=user(ORDER_QUERY), max_tokens=8)
        assert routed.router.tier in {"cloud", "local"}  # cloud while the stuck worker is being replaced
        deadline = time.monotonic() + 20
        while client._engine.local.replaced_hung_workers == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client._engine.local.replaced_hung_workers == 1
        recovered = client.chat.completions.create(model="local", messages=user(ORDER_QUERY), max_tokens=8)
        assert recovered.router.tier == "local" and recovered.choices[0].message.content
        stuck = faults["contexts"][0]
        faults["release"].set()  # the stuck decode returns: its worker frees its own context and exits
        deadline = time.monotonic() + 30
        while not stuck.closed and time.monotonic() < deadline:
            time.sleep(0.1)
        assert stuck.closed and len(faults["contexts"]) == 2


@pytest.mark.slow
def test_a_crash_mid_generation_falls_back_and_the_context_is_rebuilt(make_config, faults) -> None:
    with Client(make_config(local={"workers": 1, "max_sequences": 1, "max_queue": 2})) as client:
        client.warmup()
        faults["next"] = "crash"
        routed = client.chat.completions.create(model="auto", messages=user(ORDER_QUERY), max_tokens=16)
        assert (routed.router.tier, routed.router.fallback_from) == ("cloud", "local")
        assert "injected decode failure" in routed.router.fallback_reason
        deadline = time.monotonic() + 30
        while len(faults["contexts"]) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert faults["contexts"][0].closed and len(faults["contexts"]) == 2  # rebuilt
        again = client.chat.completions.create(model="local", messages=user(ORDER_QUERY), max_tokens=8)
        assert again.router.tier == "local" and again.choices[0].message.content


@pytest.mark.slow
def test_a_hung_worker_whose_replacement_will_not_load_refuses_at_once_until_a_retry_loads(make_config, faults) -> None:
    local = {"workers": 1, "max_sequences": 1, "max_queue": 2, "timeout_s": 2.0, "hang_grace_s": 0.5}
    with Client(make_config(local=local)) as client:
        client.warmup()
        faults["next"], faults["failing_loads"] = "hang", 3  # retried after 0.5, 1 and 2 s of back-off
        with pytest.raises(APITimeoutError):
            client.chat.completions.create(model="local", messages=user("Say hello."), max_tokens=8)
        deadline = time.monotonic() + 20
        while faults.get("failed_loads", 0) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        asked = time.monotonic()
        with pytest.raises(OverloadedError) as refused:  # forced local: a 503 now, not a wait for the deadline
            client.chat.completions.create(model="local", messages=user(ORDER_QUERY), max_tokens=8)
        assert time.monotonic() - asked < 1.0 and refused.value.retry_after_s is not None
        routed = client.chat.completions.create(model="auto", messages=user(ORDER_QUERY), max_tokens=8)
        assert (routed.router.tier, routed.router.fallback_from) == ("cloud", "local")
        assert routed.router.fallback_reason.startswith("overloaded")
        deadline = time.monotonic() + 30
        while len(faults["contexts"]) < 2 and time.monotonic() < deadline:  # the fourth load succeeds
            time.sleep(0.1)
        time.sleep(0.2)  # its worker starts right after the load
        recovered = client.chat.completions.create(model="local", messages=user(ORDER_QUERY), max_tokens=8)
        assert recovered.router.tier == "local" and recovered.choices[0].message.content
        assert faults["failed_loads"] == 3 and len(faults["contexts"]) == 2


# -- the pool's own logic, with a stand-in context ---------------------------------------------------


class EchoContext:
    """Stands in for a ``Llama`` in tests of the pool's bookkeeping: answers "ok", or blocks first while ``hold`` is unset."""

    def __init__(self, hold: threading.Event | None = None) -> None:
        self.hold = hold
        self.closed = False

    def create_completion(self, tokens: list[int], **kwargs: Any) -> Iterator[dict[str, Any]]:
        if self.hold is not None:
            self.hold.wait(60)
        return self._chunks()

    @staticmethod
    def _chunks() -> Iterator[dict[str, Any]]:
        yield {"choices": [{"text": "ok", "finish_reason": None}]}
        yield {"choices": [{"text": "", "finish_reason": "stop"}]}

    def tokenize(self, text: bytes, add_bos: bool = False, special: bool = True) -> list[int]:
        return list(text)

    def close(self) -> None:
        self.closed = True


def _job(seconds: float) -> GenerationJob:
    return GenerationJob([1, 2, 3], GenerationParams(), 8, time.monotonic() + seconds)


def _until(condition: Any, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return bool(condition())


def test_a_failed_replacement_is_retried_in_the_background_and_the_pool_refuses_until_it_loads() -> None:
    hold, broken = threading.Event(), threading.Event()
    loads: list[tuple[float, str, bool]] = []  # (when, on which thread, succeeded)

    def new_context() -> tuple[Any, str | None]:
        first = not loads
        loads.append((time.monotonic(), threading.current_thread().name, first or not broken.is_set()))
        if first:
            return EchoContext(hold), "v1"  # the worker that will hang
        if broken.is_set():
            raise FileNotFoundError("model.gguf: no such file")
        return EchoContext(), "v1"

    pool = LlamaWorkerPool(
        new_context, workers=1, max_queue=4, hang_grace_s=0.05, stop_sequences=[],
        respawn_backoff_s=0.02, respawn_backoff_max_s=0.16,
    )  # fmt: skip
    try:
        broken.set()
        hung, queued = _job(0.1), _job(30)
        pool.submit(hung)
        pool.submit(queued)  # waits behind the hung job
        assert isinstance(hung.out.get(timeout=10), LocalFailure)  # the hang is detected, the worker retired
        refusal = queued.out.get(timeout=5)  # at the first failed load, not after its 30 s deadline
        assert isinstance(refusal, LocalFailure) and refusal.kind == "overloaded"
        assert _until(lambda: pool.respawn_failures >= 5)
        asked = time.monotonic()
        with pytest.raises(LocalFailure) as refused:
            pool.submit(_job(30))
        assert refused.value.kind == "overloaded" and time.monotonic() - asked < 0.5
        assert pool.workers == 0 and pool.depth == 0
        retries = loads[1:]
        assert all(thread == "llama-respawn" for _, thread, _ in retries)  # never a request thread, nor the watchdog
        gaps = [b[0] - a[0] for a, b in zip(retries, retries[1:], strict=False)]
        assert gaps[0] >= 0.015 and gaps[2] >= 0.06 and max(gaps) < 0.16 + 1.0  # doubling, then capped

        broken.clear()
        assert _until(lambda: pool.workers == 1)
        served = _job(10)
        pool.submit(served)
        assert served.out.get(timeout=10) == "ok"
        done = served.out.get(timeout=10)
        assert isinstance(done, JobDone) and done.finish_reason == "stop"
        assert pool.replaced_hung == 1 and sum(ok for _, _, ok in loads) == 2
    finally:
        hold.set()
        pool.close(5)
