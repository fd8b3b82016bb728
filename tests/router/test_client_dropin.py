"""The drop-in contract: the OpenAI chat-completions surface, answered by real backends."""

from __future__ import annotations

import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from router import Client, Reason, Stream
from tests.conftest import user

pytestmark = pytest.mark.slow

ALL_PARAMS = dict(
    temperature=0.0, top_p=0.9, max_completion_tokens=6, stop=["\n\n"], seed=7, n=1,
    user="user-1", metadata={"team": "support"}, timeout=60,
)  # fmt: skip


# A conversation with every role an app sends: system prompt, history, the new question.
HISTORY = [
    {"role": "system", "content": "You are a support agent."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello, how can I help?"},
    {"role": "user", "content": "I want to give feedback about your service"},
]


@pytest.mark.parametrize("model", ["local", "gpt-4o"])
def test_every_drop_in_parameter_is_accepted(client: Client, model: str) -> None:
    r = client.chat.completions.create(model=model, messages=HISTORY, **ALL_PARAMS)
    assert isinstance(r, ChatCompletion)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert isinstance(r.choices[0].message.content, str)
    assert r.usage.completion_tokens <= 6 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.router.tier == ("local" if model == "local" else "cloud")
    assert r.router.latency_ms > 0
    # Routing metadata rides along without breaking the schema.
    again = ChatCompletion.model_validate_json(r.model_dump_json())
    assert again.choices[0].message.content == r.choices[0].message.content
    assert again.router["tier"] == r.router.tier


def test_max_tokens_and_seed_are_honoured_locally(client: Client) -> None:
    kwargs = dict(model="local", messages=user("Tell me about shipping options"), max_tokens=5, temperature=0.9, seed=3)
    a = client.chat.completions.create(**kwargs)
    b = client.chat.completions.create(**kwargs)
    assert a.usage.completion_tokens <= 5 and a.choices[0].finish_reason == "length"
    assert a.choices[0].message.content == b.choices[0].message.content  # same seed, same sample


@pytest.mark.parametrize("model", ["local", "gpt-4o"])
def test_stream_iterates_like_the_sdk(client: Client, model: str) -> None:
    log = client.traffic_log
    before = log.count()
    with client.chat.completions.create(
        model=model, messages=user("feedback: your app is great"), max_tokens=6, stream=True, stream_options={"include_usage": True}
    ) as stream:
        assert isinstance(stream, Stream)
        chunks = list(stream)
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert log.count() == before + 1
    row = list(log.records())[-1]
    assert row.stream and row.response == text and row.tier == chunks[0].router.tier


def test_stream_without_usage_has_no_usage_chunk(client: Client) -> None:
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=user("feedback please"), max_tokens=4, stream=True))
    assert len(chunks) >= 2 and all(c.usage is None for c in chunks) and all(c.choices for c in chunks)
    # The cost came with the usage chunk the caller did not ask for: it still reaches the last chunk's routing info.
    last = chunks[-1].router
    assert last.tier == "cloud" and last.cost_usd is not None and last.latency_ms is not None


def test_closing_a_stream_early_releases_the_model_and_logs(client: Client) -> None:
    before = client.traffic_log.count()
    stream = client.chat.completions.create(model="local", messages=user("Write a long story"), max_tokens=60, stream=True)
    next(iter(stream))
    stream.close()
    assert client.traffic_log.count() == before + 1
    r = client.chat.completions.create(model="local", messages=user("hi"), max_tokens=3)  # lock was released
    assert r.router.tier == "local"


def test_with_options_and_raw_response(client: Client) -> None:
    fast = client.with_options(timeout=30, max_retries=0)
    assert fast.config is client.config and fast.traffic_log is client.traffic_log
    raw = fast.chat.completions.with_raw_response.create(model="local", messages=user("hello"), max_tokens=3)
    completion = raw.parse()
    assert isinstance(completion, ChatCompletion)
    assert raw.headers["x-router-tier"] == "local" and raw.headers["x-request-id"] == completion.id
    assert raw.headers["x-router-reason"] == Reason.FORCED_LOCAL.value
    raw_stream = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=user("I want to leave a review about your customer service"), max_tokens=3, stream=True)
    assert raw_stream.headers["x-router-tier"] == "cloud"
    assert any(c.choices and c.choices[0].delta.content for c in raw_stream.parse())


def test_not_given_sentinels_are_treated_as_absent(client: Client) -> None:
    import openai

    r = client.chat.completions.create(model="local", messages=user("hi"), max_tokens=3, temperature=openai.NOT_GIVEN)
    assert r.router.tier == "local"


def test_openai_message_objects_in_history(client: Client) -> None:
    first = client.chat.completions.create(model="local", messages=user("hi"), max_tokens=3)
    follow = client.chat.completions.create(
        model="local", messages=[*user("hi"), first.choices[0].message, *user("and then?")], max_tokens=3
    )
    assert follow.router.tier == "local"


def test_litellm_chunk_logging_is_off_and_a_callers_litellm_callback_still_sees_the_finished_stream(client: Client) -> None:
    """litellm's per-chunk logging (a thread task and event loop per chunk) is switched off; a sync success
    callback the application registered with litellm still gets each finished stream, once."""
    import threading

    import litellm

    seen: list[str] = []
    done = threading.Event()

    def callback(kwargs, response, start, end) -> None:  # litellm's custom-callback signature
        seen.append(response.choices[0].message.content or "")
        done.set()

    litellm.success_callback.append(callback)
    try:
        chunks = list(client.chat.completions.create(model="gpt-4o", messages=user("feedback: the app is slow"), max_tokens=8, stream=True))
        assert litellm.disable_streaming_logging is True
        assert done.wait(10), "the finished stream never reached the callback"
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert seen == [text]
    finally:
        litellm.success_callback.remove(callback)


def test_litellm_chunk_logging_can_be_left_on() -> None:
    import litellm

    from router.backends import CloudBackend
    from router.config import CloudConfig

    try:
        CloudBackend(CloudConfig(litellm_chunk_logging=True))._streaming_litellm()
        assert litellm.disable_streaming_logging is False
        CloudBackend(CloudConfig())._streaming_litellm()
        assert litellm.disable_streaming_logging is True
    finally:
        litellm.disable_streaming_logging = True
