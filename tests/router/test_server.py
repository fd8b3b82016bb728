"""``router serve``: the official openai SDK and curl against a live server on loopback, real tiers behind it."""

from __future__ import annotations

import json
import re
import shlex
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from router import Client

pytestmark = pytest.mark.slow

TOKEN = "test-bearer-token-0123456789"
README = Path(__file__).resolve().parents[2] / "README.md"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    def __init__(self, client: Client, server: Any, url: str) -> None:
        self.client, self.server, self.url = client, server, url

    @property
    def state(self) -> Any:
        return self.server.config.app.state.router

    def sdk(self, token: str | None = TOKEN) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=token or "none", max_retries=0, timeout=120)

    def http(self, token: str | None = TOKEN) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120)


@pytest.fixture
def serve(make_config: Callable[..., Any], standin: Any) -> Iterator[Callable[..., Served]]:
    from router.server import build_server

    started: list[tuple[Client, Any, threading.Thread]] = []

    def start(**server: Any) -> Served:
        pinned = {"litellm_model": standin.litellm_model, "api_base": standin.api_base, "api_key": "sk-test-not-a-real-key-000000", "always_cloud": True}
        client = Client(make_config(server={"api_keys": [TOKEN], **server}, models={"pinned-cloud": pinned}))
        port = _free_port()
        instance = build_server(client, port=port, log_level="warning")
        thread = threading.Thread(target=instance.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        while not instance.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        started.append((client, instance, thread))
        return Served(client, instance, f"http://127.0.0.1:{port}")

    yield start
    for client, instance, thread in started:
        instance.should_exit = True
        thread.join(timeout=60)
        client.close()


def _wait_ready(http: httpx.Client) -> None:
    deadline = time.monotonic() + 120
    while http.get("/ready").status_code != 200:
        assert time.monotonic() < deadline, "never became ready"
        time.sleep(0.1)


def test_the_openai_sdk_gets_routed_answers_streamed_or_not(serve: Callable[..., Served]) -> None:
    served = serve()
    sdk = served.sdk()
    cloud = sdk.chat.completions.create(model="pinned-cloud", messages=[{"role": "user", "content": "Say hi"}], max_tokens=8)
    assert cloud.object == "chat.completion" and cloud.choices[0].message.content
    assert cloud.router["tier"] == "cloud"  # routing facts ride along in the body (an extra field)
    local = sdk.chat.completions.with_raw_response.create(model="local", messages=[{"role": "user", "content": "Hello"}], max_tokens=4)
    assert local.headers["x-router-tier"] == "local" and local.headers["x-request-id"] == local.parse().id
    assert local.parse().usage.completion_tokens <= 4

    chunks = list(sdk.chat.completions.create(model="local", messages=[{"role": "user", "content": "Hello"}], max_tokens=4, stream=True))
    assert chunks and all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1  # one completion, its id the logged request's
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)
    streamed_cloud = sdk.chat.completions.create(model="pinned-cloud", messages=[{"role": "user", "content": "Say hi"}], max_tokens=8, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in streamed_cloud if c.choices)
    assert text.strip()

    # The request was logged and feedback reaches it over HTTP.
    with served.http() as http:
        assert http.post("/v1/feedback", json={"response_id": local.parse().id, "accepted": True}).status_code == 204
        missing = http.post("/v1/feedback", json={"response_id": "chatcmpl-nope", "accepted": True})
        assert missing.status_code == 404 and missing.json()["error"]["param"] == "response_id"
    log = served.client.traffic_log
    assert log is not None and log.count() >= 4


def test_errors_have_openais_shape_and_status(serve: Callable[..., Served]) -> None:
    served = serve(max_body_bytes=4096)
    with pytest.raises(openai.AuthenticationError):
        served.sdk(token="wrong-token").chat.completions.create(model="local", messages=[{"role": "user", "content": "hi"}])
    with served.http(token=None) as anonymous:
        r = anonymous.post("/v1/chat/completions", json={"model": "local", "messages": []})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert anonymous.get("/health").json() == {"status": "ok"}  # probes need no token
    with served.http() as http:
        cases = {
            "not json": (b"{not json", 400),
            "not an object": (b"[1, 2]", 400),
            "invalid utf-8": (b'{"model": "\xff"}', 400),
            "too large": (b'{"model": "local", "messages": [], "pad": "' + b"x" * 5000 + b'"}', 413),
            "no model": (json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode(), 400),
            "no messages": (json.dumps({"model": "local"}).encode(), 400),
            "unknown role": (json.dumps({"model": "local", "messages": [{"role": "wizard", "content": "hi"}]}).encode(), 400),
            "parameter named self": (json.dumps({"model": "local", "self": 1, "messages": [{"role": "user", "content": "hi"}]}).encode(), 400),
            "negative max_tokens": (json.dumps({"model": "local", "max_tokens": -5, "messages": [{"role": "user", "content": "hi"}]}).encode(), 400),
        }
        for name, (body, status) in cases.items():
            r = http.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
            assert r.status_code == status, (name, r.status_code, r.text)
            error = r.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["message"], name
    # A model name that is not configured goes to litellm as a provider model name (as with Client); one
    # litellm cannot place is the caller's error, a 400.
    with pytest.raises(openai.BadRequestError):
        served.sdk().chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])


def test_models_readiness_and_metrics_without_secrets(serve: Callable[..., Served]) -> None:
    served = serve()
    sdk = served.sdk()
    assert {"auto", "local", "gpt-4o", "pinned-cloud"} <= {m.id for m in sdk.models.list()}
    with served.http() as http:
        _wait_ready(http)
        sdk.chat.completions.create(model="pinned-cloud", messages=[{"role": "user", "content": "Say hi"}], max_tokens=4)
        sdk.chat.completions.create(model="local", messages=[{"role": "user", "content": "Hello"}], max_tokens=2)
        text = http.get("/metrics").text
    assert re.search(r'router_requests_total\{category="[A-Z_]*",status="200",tier="cloud"\} 1\b', text), text
    assert 'router_request_duration_seconds_count{tier="local"} 1' in text
    assert "router_queue_depth 0" in text and "router_log_write_failures 0" in text
    assert TOKEN not in text and "sk-test-not-a-real-key" not in text


def test_a_full_server_answers_503_overloaded_at_once(serve: Callable[..., Served]) -> None:
    served = serve(max_concurrency=1, max_waiting=0, retry_after_s=3)
    with served.http() as holder, served.http() as other:
        body = {"model": "local", "stream": True, "max_tokens": 64, "messages": [{"role": "user", "content": "Tell me a story"}]}
        with holder.stream("POST", "/v1/chat/completions", json=body) as stream:
            assert stream.status_code == 200
            next(stream.iter_lines())  # the first event: the slot is held until the stream ends
            started = time.perf_counter()
            r = other.post("/v1/chat/completions", json={"model": "pinned-cloud", "messages": [{"role": "user", "content": "hi"}]})
            waited = time.perf_counter() - started
            assert r.status_code == 503 and r.headers["retry-after"] == "3", r.text
            assert r.json()["error"]["code"] == "overloaded"
            assert waited < 10  # refused, not queued behind the stream (generous: a noisy machine)
        # The stream was abandoned mid-way: its slot comes back.
        deadline = time.monotonic() + 60
        while served.state.in_flight:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert other.post("/v1/chat/completions", json={"model": "pinned-cloud", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}).status_code == 200


def test_sigterm_drains_requests_in_flight(serve: Callable[..., Served]) -> None:
    import signal

    served = serve(drain_s=60)
    with served.http() as http:
        _wait_ready(http)
        body = {"model": "local", "stream": True, "max_tokens": 24, "messages": [{"role": "user", "content": "Tell me a story"}]}
        with http.stream("POST", "/v1/chat/completions", json=body) as stream:
            lines = stream.iter_lines()
            first = next(lines)
            served.server.handle_exit(signal.SIGTERM, None)
            assert served.state.draining and not served.state.ready
            rest = [first, *lines]
    events = [line[len("data: ") :] for line in rest if line.startswith("data: ")]
    assert events[-1] == "[DONE]"  # the request in flight finished after the signal
    assert any(json.loads(e)["choices"] and json.loads(e)["choices"][0].get("finish_reason") for e in events[:-1])


def _readme_curls() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Serving over HTTP", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL)
    return [b for b in blocks if b.lstrip().startswith("curl")]


def test_the_readmes_curl_examples_run(serve: Callable[..., Served]) -> None:
    served = serve(api_keys=[])
    commands = _readme_curls()
    assert len(commands) == 3
    outputs = []
    for command in commands:
        argv = shlex.split(command.replace("\\\n", " ").replace("http://127.0.0.1:8000", served.url))
        done = subprocess.run([*argv, "--fail-with-body", "--max-time", "120"], check=False, capture_output=True, text=True, timeout=150)
        assert done.returncode == 0, (command, done.stdout, done.stderr)
        outputs.append(done.stdout)
    assert json.loads(outputs[0])["object"] == "chat.completion"
    events = [line[len("data: ") :] for line in outputs[1].splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and json.loads(events[0])["object"] == "chat.completion.chunk"
    assert json.loads(outputs[2])["object"] == "list"


# The drop-in contract of tests/router/test_client_dropin.py, through the official SDK over HTTP.


@pytest.mark.parametrize("model", ["local", "gpt-4o"])
def test_every_drop_in_parameter_is_accepted_over_http(serve: Callable[..., Served], model: str) -> None:
    from tests.router.test_client_dropin import ALL_PARAMS, HISTORY

    sdk = serve().sdk()
    r = sdk.chat.completions.create(model=model, messages=HISTORY, **ALL_PARAMS)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert isinstance(r.choices[0].message.content, str)
    assert r.usage.completion_tokens <= 6 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.router["tier"] == ("local" if model == "local" else "cloud")


def test_seed_and_usage_chunk_over_http(serve: Callable[..., Served]) -> None:
    served = serve()
    sdk = served.sdk()
    kwargs: dict[str, Any] = dict(model="local", messages=[{"role": "user", "content": "Tell me about shipping options"}], max_tokens=5, temperature=0.9, seed=3)
    a, b = sdk.chat.completions.create(**kwargs), sdk.chat.completions.create(**kwargs)
    assert a.choices[0].finish_reason == "length" and a.choices[0].message.content == b.choices[0].message.content
    before = served.client.traffic_log.count()
    chunks = list(
        sdk.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "feedback: your app is great"}], max_tokens=6,
                                    stream=True, stream_options={"include_usage": True})  # fmt: skip
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert served.client.traffic_log.count() == before + 1
    row = list(served.client.traffic_log.records())[-1]
    assert row.stream and row.response == text
    plain = list(sdk.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "feedback please"}], max_tokens=4, stream=True))
    assert len(plain) >= 2 and all(c.usage is None for c in plain)
