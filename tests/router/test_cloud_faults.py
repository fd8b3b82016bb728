"""Cloud faults injected on loopback: 429/5xx with and without ``Retry-After``, hangs, refused connections.

The provider is :class:`~tests.router.scripted_cloud.ScriptedCloud` reached through litellm exactly as a
real one (``openai/flaky`` at ``http://127.0.0.1:PORT/v1``); nothing in litellm is mocked. Waits and
attempts are measured on the server's side. The route is pinned to the cloud (``always_cloud``), so no
classifier or local model is needed; the one test of the local tier uses the ``openai_compatible``
backend, also on loopback.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path
from typing import Any

import openai
import pytest

from router import (
    APIConnectionError,
    APITimeoutError,
    AsyncClient,
    Client,
    CloudUnavailableError,
    InternalServerError,
    RateLimitError,
    RouterConfig,
)
from tests.conftest import user
from tests.router.scripted_cloud import Reply, ScriptedCloud, closed_port_api_base

pytestmark = pytest.mark.slow  # starts loopback servers; the file runs in seconds

ROUTE = "flaky"
QUESTION = user("Where is my parcel?")


def config_for(api_base: str, tmp_path: Path, *, local: dict[str, Any] | None = None, **cloud: Any) -> RouterConfig:
    """A cloud-only router: one pinned route to ``api_base``, no retries and no back-off unless asked."""
    settings = {"default_model": ROUTE, "max_retries": 0, "backoff_initial_s": 0.0, "timeout_s": 5.0, "preimport": False}
    return RouterConfig(
        models={ROUTE: {"litellm_model": f"openai/{ROUTE}", "api_base": api_base, "api_key": "none", "always_cloud": True}},
        cloud={**settings, **cloud},
        local=local or {},
        log={"path": tmp_path / "traffic.sqlite3"},
        warmup="lazy",
    )


@pytest.fixture(scope="module", autouse=True)
def _litellm_imported() -> None:
    """Import litellm once up front, so no measured call pays for the import."""
    from router.backends.cloud import _import_litellm

    _import_litellm()


@pytest.fixture
def cloud() -> Iterator[ScriptedCloud]:
    with ScriptedCloud() as server:
        yield server


def ask(client: Client, **kwargs: Any) -> Any:
    return client.chat.completions.create(model=ROUTE, messages=QUESTION, max_tokens=8, **kwargs)


def fail_fast(client: Client) -> tuple[CloudUnavailableError, float]:
    started = time.monotonic()
    with pytest.raises(CloudUnavailableError) as info:
        ask(client)
    return info.value, time.monotonic() - started


def route_key(cloud: ScriptedCloud) -> str:
    return f"openai/{ROUTE}@{cloud.api_base}"


# -- Retry-After and back-off ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "header", "value", "at_least_s"),
    [
        (429, "Retry-After", "1", 1.0),
        (503, "retry-after-ms", "400", 0.4),
        (500, "Retry-After", "date", 0.8),  # an HTTP date 2 s ahead, whole seconds: 1-2 s less the round trip
    ],
)
def test_retry_after_from_the_provider_is_honoured(cloud, tmp_path, status, header, value, at_least_s) -> None:
    """Back-off is zero here, so any wait between the attempts is the provider's Retry-After."""
    if value == "date":
        value = formatdate(time.time() + 2, usegmt=True)
    cloud.script(Reply(status, {header: value}))
    with Client(config_for(cloud.api_base, tmp_path, max_retries=2)) as client:
        answer = ask(client)
    assert answer.choices[0].message.content == "Your order is on its way."
    assert cloud.requests == 2
    assert at_least_s <= cloud.gaps()[0] < at_least_s + 2.5


def test_without_retry_after_the_jittered_backoff_applies(cloud, tmp_path) -> None:
    cloud.script(Reply(500), Reply(503))
    with Client(config_for(cloud.api_base, tmp_path, max_retries=2, backoff_initial_s=0.2, backoff_max_s=1.0)) as client:
        ask(client)
    first, second = cloud.gaps()
    assert 0.1 <= first < 1.0 and 0.2 <= second < 1.5  # 0.2 then 0.4 s, each jittered down to half


def test_a_retry_after_past_the_cap_or_the_deadline_is_not_waited_for(cloud, tmp_path) -> None:
    cloud.script(default=Reply(429, {"Retry-After": "120"}))
    with Client(config_for(cloud.api_base, tmp_path, max_retries=3, retry_after_max_s=5.0)) as client:
        started = time.monotonic()
        with pytest.raises(RateLimitError):
            ask(client)
        assert cloud.requests == 1 and time.monotonic() - started < 1.0
        # Under the cap, but longer than this request's own timeout: raised at once too.
        cloud.script(default=Reply(429, {"Retry-After": "3"}))
        started = time.monotonic()
        with pytest.raises(RateLimitError):
            ask(client, timeout=1.0)
        assert cloud.requests == 2 and time.monotonic() - started < 1.0


# -- the circuit breaker -----------------------------------------------------------------------


def test_the_circuit_opens_after_n_failures_then_fails_fast_without_a_request(cloud, tmp_path) -> None:
    cloud.script(default=Reply(503))
    with Client(config_for(cloud.api_base, tmp_path, breaker_failures=3, breaker_reset_s=30.0)) as client:
        for _ in range(3):
            with pytest.raises(InternalServerError) as provider:
                ask(client)
            assert not isinstance(provider.value, CloudUnavailableError) and provider.value.status_code == 503
        error, elapsed = fail_fast(client)
        assert cloud.requests == 3 and elapsed < 0.5
        # The clear error: a 503 an OpenAI client already handles, naming the route and when it is retried.
        assert isinstance(error, openai.InternalServerError) and error.status_code == 503
        assert error.code == "cloud_circuit_open" and error.route == route_key(cloud)
        assert route_key(cloud) in str(error) and "InternalServerError" in str(error)
        assert 25.0 < error.retry_after_s <= 30.0 and "next trial call goes through in" in str(error)
        assert client._engine.cloud.breaker_states() == {route_key(cloud): "open"}
        row = list(client.traffic_log.records())[-1]
        assert (row.tier, row.error_type) == ("cloud", "CloudUnavailableError")
        with pytest.raises(CloudUnavailableError):  # streams fail fast the same way, at create
            ask(client, stream=True)
    assert cloud.requests == 3


def test_the_retry_ladder_stops_once_the_circuit_opens(cloud, tmp_path) -> None:
    cloud.script(default=Reply(500))
    config = config_for(cloud.api_base, tmp_path, max_retries=5, breaker_failures=2)
    with Client(config) as client, pytest.raises(CloudUnavailableError) as info:
        ask(client)
    assert cloud.requests == 2  # not 6
    assert isinstance(info.value.__cause__, InternalServerError)  # chained to the provider's last answer


def test_half_open_trial_closes_on_success_and_reopens_on_failure(cloud, tmp_path) -> None:
    cloud.script(default=Reply(503))
    with Client(config_for(cloud.api_base, tmp_path, breaker_failures=2, breaker_reset_s=0.5)) as client:
        for _ in range(2):
            with pytest.raises(InternalServerError):
                ask(client)
        error, _ = fail_fast(client)
        time.sleep(error.retry_after_s)
        # Still down: the one trial reaches the provider, fails, and the circuit opens again.
        with pytest.raises(InternalServerError):
            ask(client)
        assert cloud.requests == 3
        error, _ = fail_fast(client)
        assert cloud.requests == 3
        # Recovered: after the reset the trial succeeds and closes the circuit for everyone.
        cloud.script(default=Reply())
        time.sleep(error.retry_after_s)
        assert client._engine.cloud.breaker_states() == {route_key(cloud): "half_open"}
        assert ask(client).choices[0].message.content == "Your order is on its way."
        assert client._engine.cloud.breaker_states() == {route_key(cloud): "closed"}
        ask(client)
    assert cloud.requests == 5


def test_half_open_lets_exactly_one_concurrent_caller_through(cloud, tmp_path) -> None:
    cloud.script(default=Reply(503))
    with Client(config_for(cloud.api_base, tmp_path, breaker_failures=1, breaker_reset_s=0.3)) as client:
        with pytest.raises(InternalServerError):
            ask(client)
        cloud.script(default=Reply(delay_s=1.0))  # recovered, but slow: the trial is still in flight
        time.sleep(0.35)
        barrier = threading.Barrier(4)
        outcomes: list[str] = []

        def call() -> None:
            barrier.wait()
            try:
                ask(client)
                outcomes.append("answered")
            except CloudUnavailableError as err:
                outcomes.append("trial in flight" if "a trial call is testing it now" in str(err) else str(err))

        threads = [threading.Thread(target=call) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(outcomes) == ["answered"] + ["trial in flight"] * 3
    assert cloud.requests == 2


def test_a_hanging_provider_times_out_then_opens_the_circuit(cloud, tmp_path) -> None:
    cloud.script(default=Reply(delay_s=10.0))
    with Client(config_for(cloud.api_base, tmp_path, timeout_s=0.3, breaker_failures=2)) as client:
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(APITimeoutError):
                ask(client)
            assert time.monotonic() - started < 2.0
        error, elapsed = fail_fast(client)
    assert cloud.requests == 2 and elapsed < 0.5 and "APITimeoutError" in str(error)


def test_refused_connections_open_the_circuit(tmp_path) -> None:
    with Client(config_for(closed_port_api_base(), tmp_path, max_retries=1, breaker_failures=2)) as client:
        with pytest.raises((APIConnectionError, InternalServerError)) as first:
            ask(client)  # two attempts, both refused: the second opens the circuit
        assert not isinstance(first.value, CloudUnavailableError)
        error, elapsed = fail_fast(client)
        assert elapsed < 0.5 and client._engine.cloud.breaker_states() == {error.route: "open"}


async def _async_faults(cloud: ScriptedCloud, config: RouterConfig) -> tuple[list[BaseException], float]:
    async with AsyncClient(config) as client:
        # Retry-After is honoured on the async path too (the first request), then the circuit opens.
        answer = await client.chat.completions.create(model=ROUTE, messages=QUESTION, max_tokens=8)
        assert answer.choices[0].message.content == "Your order is on its way."
        with pytest.raises(InternalServerError):  # two attempts, both 502: the second opens the circuit
            await client.chat.completions.create(model=ROUTE, messages=QUESTION, max_tokens=8)
        started = time.monotonic()
        calls = [client.chat.completions.create(model=ROUTE, messages=QUESTION, max_tokens=8, stream=i % 2 == 1) for i in range(6)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        return results, time.monotonic() - started


def test_async_client_honours_retry_after_and_fails_fast(cloud, tmp_path) -> None:
    cloud.script(Reply(429, {"retry-after-ms": "300"}), Reply(), default=Reply(502))
    config = config_for(cloud.api_base, tmp_path, max_retries=1, breaker_failures=2)
    results, elapsed = asyncio.run(_async_faults(cloud, config))
    assert cloud.gaps()[0] >= 0.3
    # Six concurrent calls (half of them streams) on the open circuit: all fail fast, none reaches the provider.
    assert all(isinstance(r, CloudUnavailableError) for r in results) and elapsed < 1.0
    assert cloud.requests == 4  # 429 then the answer; two 502s


# -- what stays up, and what operators see ---------------------------------------------------------


def test_local_requests_are_served_while_the_cloud_circuit_is_open(cloud, tmp_path) -> None:
    """The local tier (here the openai_compatible backend on loopback) never consults the cloud's circuit."""
    cloud.script(default=Reply(503))
    with ScriptedCloud(default=Reply(text="Your parcel left the depot this morning.")) as local_server:
        local = {"backend": "openai_compatible", "base_url": local_server.api_base, "remote_model": "gemma"}
        config = config_for(cloud.api_base, tmp_path, local=local, breaker_failures=1)
        with Client(config) as client:
            with pytest.raises(InternalServerError):
                ask(client)
            fail_fast(client)
            private = user("My email is jane.doe@example.com, where is my parcel?")  # PII: must stay on this machine
            for model in ("auto", "local"):
                answer = client.chat.completions.create(model=model, messages=private, max_tokens=8)
                assert answer.router.tier == "local" and "depot" in answer.choices[0].message.content
        assert local_server.requests == 2
    assert cloud.requests == 1


def test_server_reports_the_open_circuit_in_metrics_and_as_a_503(cloud, tmp_path) -> None:
    import httpx

    from tests.conftest import serving

    cloud.script(default=Reply(503))
    with Client(config_for(cloud.api_base, tmp_path, breaker_failures=1, breaker_reset_s=30.0)) as client, \
            serving(client, warm=False) as url, httpx.Client(base_url=url, timeout=30) as http:  # fmt: skip
        assert "router_cloud_circuit_open{" not in http.get("/metrics").text
        body = {"model": ROUTE, "messages": QUESTION, "max_tokens": 8}
        assert http.post("/v1/chat/completions", json=body).status_code == 503  # the provider's own 503
        refused = http.post("/v1/chat/completions", json=body)
        metrics = http.get("/metrics").text
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "cloud_circuit_open"
    assert 25 <= int(refused.headers["Retry-After"]) <= 30
    assert f'router_cloud_circuit_open{{route="{route_key(cloud)}"}} 1' in metrics
    assert cloud.requests == 1
