"""The local tier under load and faults: bounded queue, slow readers, close, hangs and crashes.

Every test runs the real packaged model in llama.cpp. Faults are injected by wrapping the real
``Llama`` a worker is given: a decode that blocks until released (a hang) or raises after a few
pieces (a crash in the native layer); the model itself still does the work.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from router import APITimeoutError, Client, OverloadedError
from router.backends.llama_cpp import LlamaCppBackend
from tests.conftest import user

pytestmark = pytest.mark.slow

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
    """``faults["next"] = "hang" | "crash"`` arms the next generation; ``faults["contexts"]`` lists every context made."""
    plan: dict[str, Any] = {"release": threading.Event(), "hanging": threading.Event(), "contexts": []}
    real_new = LlamaCppBackend._new_llama

    def new_llama(self: LlamaCppBackend, adapter_path: Any, *, vocab_only: bool = False) -> Any:
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


def test_a_full_queue_refuses_at_once_and_routed_requests_fall_back(make_config, faults) -> None:
    with Client(make_config(local={"workers": 1, "max_queue": 0, "retry_after_s": 3})) as client:
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


def test_a_slow_stream_reader_does_not_hold_up_other_local_requests(make_config) -> None:
    with Client(make_config(local={"workers": 1, "max_queue": 2, "timeout_s": 60})) as client:
        client.warmup()
        slow = client.chat.completions.create(model="local", messages=user("Tell me about shipping."), max_tokens=48, stream=True)
        first = next(iter(slow))  # the reader then walks away for a while
        other = client.chat.completions.create(model="local", messages=user(ORDER_QUERY), max_tokens=16)
        assert other.router.tier == "local" and other.choices[0].message.content
        rest = list(slow)
        assert rest[-1].choices == [] or rest[-1].choices[0].finish_reason is not None
        assert first.router.tier == "local"


def test_close_waits_for_the_generation_in_flight(make_config, faults) -> None:
    client = Client(make_config(local={"workers": 1, "max_queue": 2}))
    client.warmup()
    stream = client.chat.completions.create(model="local", messages=user("Tell me about delivery."), max_tokens=40, stream=True)
    chunks = [next(iter(stream))]
    closer, box = _in_thread(client.close)
    closer.join(60)
    assert "error" not in box
    chunks += list(stream)  # the worker finished this answer before its context was freed
    assert chunks[-1].choices == [] or chunks[-1].choices[0].finish_reason in {"stop", "length"}
    assert all(ctx.closed for ctx in faults["contexts"])


def test_a_hung_worker_is_replaced_and_the_tier_recovers(make_config, faults) -> None:
    local = {"workers": 1, "max_queue": 2, "timeout_s": 2.0, "hang_grace_s": 0.5}
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


def test_a_crash_mid_generation_falls_back_and_the_context_is_rebuilt(make_config, faults) -> None:
    with Client(make_config(local={"workers": 1, "max_queue": 2})) as client:
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
