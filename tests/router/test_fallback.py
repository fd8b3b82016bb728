"""A local failure, timeout or degenerate answer falls back to the cloud; a cloud failure to local."""

from __future__ import annotations

import pytest

from router import APIConnectionError, APITimeoutError, Client, InternalServerError, Reason
from tests.conftest import user
from tests.router.scripted_cloud import Reply, ScriptedCloud

pytestmark = pytest.mark.slow

ORDER_QUERY = "I want to cancel the order I placed yesterday"


def test_broken_local_model_falls_back_to_cloud(make_config, tmp_path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf file")
    with Client(make_config(local={"model_path": broken})) as client:
        r = client.chat.completions.create(model="auto", messages=user(ORDER_QUERY), max_tokens=4)
        assert (r.router.tier, r.router.fallback_from, r.router.reason) == ("cloud", "local", Reason.LOCAL_CATEGORY)
        assert r.router.fallback_reason.startswith("error")
        row = list(client.traffic_log.records())[-1]
        assert row.fallback_from == "local" and row.tier == "cloud" and row.error_type is None
        # Forced local has nowhere to go: the failure surfaces as an OpenAI-style 500.
        with pytest.raises(InternalServerError):
            client.chat.completions.create(model="local", messages=user("hi"), max_tokens=4)


def test_local_timeout_falls_back_to_cloud(make_config) -> None:
    with Client(make_config(local={"timeout_s": 0.001, "reject_echo": False, "degenerate_min_span": 4000})) as client:
        client.warmup()
        r = client.chat.completions.create(model="auto", messages=user(ORDER_QUERY), max_tokens=30)
        assert r.router.tier == "cloud" and r.router.fallback_reason.startswith("timeout")
        with pytest.raises(APITimeoutError):
            client.chat.completions.create(model="local", messages=user(ORDER_QUERY), max_tokens=30)


def test_degenerate_local_answer_falls_back_to_cloud(make_config) -> None:
    # The packaged *base* model repeats the question in a loop: exactly what the guard is for.
    with Client(make_config(local={"degenerate_min_span": 48})) as client:
        r = client.chat.completions.create(model="auto", messages=user("Where is my order?"), max_tokens=60)
        assert r.router.tier == "cloud" and r.router.fallback_from == "local"
        assert r.router.fallback_reason in {"degenerate: repetition loop", "degenerate: echoed the question"}
        # Forced local cannot fall back: the answer stops where the loop began, and says so.
        forced = client.chat.completions.create(model="local", messages=user("Where is my order?"), max_tokens=60)
        assert forced.router.tier == "local" and forced.router.degenerate in {"repetition loop", "echoed the question"}
        assert forced.choices[0].finish_reason == "stop" and forced.usage.completion_tokens < 60
        assert "degenerate" in list(client.traffic_log.records())[-1].detail


def test_streaming_falls_back_before_the_first_chunk(make_config) -> None:
    with Client(make_config(local={"timeout_s": 0.001})) as client:
        client.warmup()
        chunks = list(client.chat.completions.create(model="auto", messages=user(ORDER_QUERY), max_tokens=5, stream=True))
    assert chunks[0].router.tier == "cloud" and chunks[0].router.fallback_from == "local"


def test_cloud_failure_falls_back_to_local_or_raises(make_config) -> None:
    dead = {"litellm_model": "openai/standin", "api_base": "http://127.0.0.1:9/v1", "api_key": "x", "pricing_model": "gpt-4o"}
    cloud = {"default_model": "gpt-4o", "backoff_initial_s": 0.0, "max_retries": 1}
    review = user("I want to leave a review about your service")
    with Client(make_config(models={"gpt-4o": dead}, cloud=cloud)) as client:
        # A category the local model has no evidence for gets the cloud's error, not an unchecked local answer ...
        with pytest.raises((APIConnectionError, InternalServerError)):
            client.chat.completions.create(model="gpt-4o", messages=review, max_tokens=4)
    trusted = {"overrides": {"FEEDBACK": "trust", "ORDER": "trust"}}
    with Client(make_config(models={"gpt-4o": dead}, cloud=cloud, quality=trusted)) as client:
        # ... while a proven (here: trusted) category whose cloud is down is answered locally rather than failing ...
        r = client.chat.completions.create(model="gpt-4o", messages=review, max_tokens=4)
        assert (r.router.tier, r.router.fallback_from, r.router.category) == ("local", "cloud", "FEEDBACK")
        # ... unless the local tier cannot serve it: then the OpenAI-style error surfaces (litellm
        # reports a refused connection as a 500, others as a connection error).
        with pytest.raises((APIConnectionError, InternalServerError)) as info:
            client.chat.completions.create(
                model="gpt-4o", messages=user("hello"), max_tokens=4, response_format={"type": "json_object"}
            )
        row = list(client.traffic_log.records())[-1]
        assert row.error_type == type(info.value).__name__ and row.tier == "cloud"


@pytest.mark.parametrize("mode", ["complete", "stream", "acomplete", "astream"])
def test_cloud_then_local_failure_is_one_path_in_every_driver(mode, tmp_path, classifier_path) -> None:
    """Cloud refuses, the local fallback fails: every driver tries the cloud once and reports the cloud's
    error chained to the local failure (the async stream used to fall back to the cloud a second time)."""
    import asyncio

    from router import AsyncClient, BadRequestError, RouterConfig
    from router.backends import LocalFailure

    cloud = ScriptedCloud(default=Reply(400))  # refuses every request, and counts them
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf file")
    config = RouterConfig(
        models={"gpt-4o": {"litellm_model": "openai/refuser", "api_base": cloud.api_base, "api_key": "sk-test-000000000000"}},
        cloud={"default_model": "gpt-4o", "max_retries": 0, "backoff_initial_s": 0.0, "preimport": False},
        local={"model_path": broken},
        classifier={"path": classifier_path},
        routing={"local_categories": ["ORDER"]},
        # A cloud-routed category the local tier may answer if the cloud fails (the gate must allow it).
        quality={"overrides": {"FEEDBACK": "trust"}},
        log={"path": tmp_path / "traffic.sqlite3"},
        warmup="lazy",
    )
    kwargs = {"model": "gpt-4o", "messages": user("I want to leave a review about your service"), "max_tokens": 4}
    try:
        with pytest.raises(BadRequestError) as info:
            if mode in ("complete", "stream"):
                with Client(config) as client:
                    result = client.chat.completions.create(**kwargs, stream=mode == "stream")
                    if mode == "stream":
                        list(result)
            else:

                async def run() -> None:
                    async with AsyncClient(config) as client:
                        result = await client.chat.completions.create(**kwargs, stream=mode == "astream")
                        if mode == "astream":
                            [chunk async for chunk in result]

                asyncio.run(run())
        assert cloud.requests == 1
        assert isinstance(info.value.__cause__, LocalFailure) and info.value.__cause__.kind == "error"
        with Client(config) as reader:
            row = list(reader.traffic_log.records())[-1]
        assert (row.reason, row.category, row.fallback_from, row.error_type) == ("category_not_local", "FEEDBACK", "cloud", "BadRequestError")
    finally:
        cloud.close()


def test_a_stream_whose_opening_degenerates_is_answered_by_the_cloud(make_config) -> None:
    """The untuned model echoes the question: the held-back opening is judged before any chunk is sent."""
    with Client(make_config(local={"reject_echo": True, "degenerate_min_span": 48})) as client:
        chunks = list(client.chat.completions.create(model="auto", messages=user("Where is my order?"), max_tokens=60, stream=True))
        assert chunks[0].router.tier == "cloud" and chunks[0].router.fallback_from == "local"
        assert chunks[0].router.fallback_reason == "degenerate: echoed the question"
        assert {c.router.tier for c in chunks} == {"cloud"}  # nothing of the local echo was sent


def test_an_unheld_stream_sends_its_opening_at_once_and_a_later_echo_cuts_it(make_config) -> None:
    """local.stream_hold = false: the first token is not held for the echo check, so the echo the guard
    finds later can no longer go to the cloud unseen: the stream is cut and the log says why."""
    with Client(make_config(local={"reject_echo": True, "degenerate_min_span": 48, "stream_hold": False})) as client:
        chunks = list(client.chat.completions.create(model="auto", messages=user("Where is my order?"), max_tokens=60, stream=True))
        assert {c.router.tier for c in chunks} == {"local"}
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text.strip(), "the opening went out before the guard judged it"
        assert chunks[-1].choices[0].finish_reason == "stop"
        assert chunks[-1].router.degenerate == "echoed the question"  # the caller is told, not only the log
        row = list(client.traffic_log.records())[-1]
        assert row.tier == "local" and row.fallback_from is None
        assert row.error_type == "InternalServerError" and "cut short (degenerate" in row.error_message
