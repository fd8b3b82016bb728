"""Malformed requests raise OpenAI-style 400s and leave the log untouched."""

from __future__ import annotations

import openai
import pytest

from router import BadRequestError, Client, RouterConfig


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": "hello"}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": [], "content": "hi"}]}, "messages[0].role"),  # found by the fuzzer: was a TypeError
        ({"messages": [{"role": "user", "content": "\ud800"}]}, "messages[0].content"),  # lone surrogate: was a 500
        ({"messages": [{"role": "user", "content": 42}]}, "messages[0].content"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": ["hi"]}, "messages[0]"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]}, "messages[0].content[0].text"),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": 3.5}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"metadata": {"k": 1}}, "metadata"),
        ({"model": ""}, "model"),
        ({"messages": [{"role": "user", "content": "x" * 5001}]}, "messages"),
    ],
)
def test_bad_request_is_a_400_and_logs_nothing(tmp_path, kwargs, param) -> None:
    """Validation runs before any model or cloud is touched, so no model is configured or loaded here."""
    config = RouterConfig(
        warmup="lazy", cloud={"preimport": False}, routing={"max_input_chars": 5000}, log={"path": tmp_path / "log.db"}
    )
    with Client(config) as client:
        before = client.traffic_log.count()
        args = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], **kwargs}
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(**args)
        assert isinstance(info.value, BadRequestError)
        assert info.value.status_code == 400 and info.value.param == param
        assert info.value.body["type"] == "invalid_request_error"
        assert client.traffic_log.count() == before
