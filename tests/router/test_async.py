"""AsyncClient: the same contract with await, including streams and fallback."""

from __future__ import annotations

import asyncio

import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from router import AsyncClient, AsyncStream
from tests.conftest import user

pytestmark = [pytest.mark.slow, pytest.mark.asyncio]


async def test_async_create_and_stream(make_config) -> None:
    async with AsyncClient(make_config()) as client:
        local = await client.chat.completions.create(model="auto", messages=user("I want to cancel my order"), max_tokens=4)
        assert isinstance(local, ChatCompletion) and local.router.tier == "local"
        cloud = await client.chat.completions.create(model="gpt-4o", messages=user("I want to leave a review about your customer service"), max_tokens=4)
        assert cloud.router.tier == "cloud" and cloud.choices[0].message.content is not None
        for model in ("local", "gpt-4o"):
            stream = await client.chat.completions.create(
                model=model, messages=user("feedback"), max_tokens=4, stream=True, stream_options={"include_usage": True}
            )
            assert isinstance(stream, AsyncStream)
            async with stream:
                chunks = [c async for c in stream]
            assert all(isinstance(c, ChatCompletionChunk) for c in chunks) and chunks[-1].usage is not None
        raw = await client.chat.completions.with_raw_response.create(model="local", messages=user("hi"), max_tokens=2)
        assert raw.headers["x-router-tier"] == "local" and raw.parse().router.tier == "local"
        assert client.traffic_log.count() == 5


async def test_concurrent_async_requests_are_all_served(make_config) -> None:
    async with AsyncClient(make_config()) as client:
        results = await asyncio.gather(
            *[client.chat.completions.create(model="local", messages=user(f"question {i}"), max_tokens=3) for i in range(4)]
        )
        assert len({r.id for r in results}) == 4 and all(r.router.tier == "local" for r in results)


async def test_async_local_failure_falls_back(make_config) -> None:
    async with AsyncClient(make_config(local={"timeout_s": 0.001})) as client:
        client.warmup()
        r = await client.chat.completions.create(model="auto", messages=user("I want to cancel my order"), max_tokens=8)
        assert r.router.tier == "cloud" and r.router.fallback_from == "local"


async def test_nothing_blocking_runs_on_the_event_loop(make_config, tmp_path, caplog) -> None:
    """asyncio's debug mode reports every callback that holds the loop: model loads, adapter
    checksums, cache and log I/O must all run on worker threads, construction included."""
    import logging

    loop = asyncio.get_running_loop()
    debug, slow = loop.get_debug(), loop.slow_callback_duration
    loop.set_debug(True)
    loop.slow_callback_duration = 0.5  # a model load takes seconds; a scheduling hiccup on a busy 2-core box does not
    caplog.set_level(logging.WARNING, logger="asyncio")
    config = make_config(warmup="eager", cache={"enabled": True, "path": tmp_path / "cache"})
    try:
        async with AsyncClient(config) as client:  # eager warm-up inside a running loop: must not load here
            await asyncio.to_thread(client.warmup)
            for model, text in (("auto", "I want to cancel my order"), ("gpt-4o", "I want to leave a review about your customer service")):
                for _ in range(2):  # the second is a cache hit
                    await client.chat.completions.create(model=model, messages=user(text), max_tokens=4)
                stream = await client.chat.completions.create(model=model, messages=user(text), max_tokens=4, stream=True)
                async with stream:
                    [c async for c in stream]
            await client.feedback((await client.chat.completions.create(model="local", messages=user("hi"), max_tokens=2)).id, accepted=True)
    finally:
        loop.set_debug(debug)
        loop.slow_callback_duration = slow
    held = [r.getMessage() for r in caplog.records if r.name == "asyncio" and "took" in r.getMessage()]
    assert held == []
