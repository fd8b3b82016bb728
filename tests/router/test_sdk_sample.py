"""An application written for the openai SDK runs unchanged against router.Client.

``support_bot`` is ordinary openai-python usage. It runs first against ``openai.OpenAI`` talking to
the loopback server (proving it is genuine SDK code), then against ``router.Client``.
"""

from __future__ import annotations

import threading
from typing import Any

import openai
import pytest

from router import Client

pytestmark = pytest.mark.slow


def support_bot(client: Any, model: str) -> dict[str, Any]:
    """Typical SDK usage: a completion, a streamed reply, error handling, raw headers, threads."""
    history = [{"role": "system", "content": "You are a helpful support agent."}]
    history.append({"role": "user", "content": "I would like to give feedback on your service"})
    completion = client.chat.completions.create(model=model, messages=history, max_tokens=8, temperature=0)
    reply = completion.choices[0].message
    history.append({"role": reply.role, "content": reply.content})
    history.append({"role": "user", "content": "Thanks. Anything else?"})

    streamed = []
    stream = client.chat.completions.create(model=model, messages=history, max_tokens=8, stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            streamed.append(chunk.choices[0].delta.content)

    try:
        client.chat.completions.create(model=model, messages=[{"role": "wizard", "content": "hi"}])
        rejected = False
    except openai.APIStatusError:  # OpenAI says 400; servers differ in the code, all raise this family
        rejected = True

    raw = client.chat.completions.with_raw_response.create(model=model, messages=history[:2], max_tokens=2)
    parsed = raw.parse()

    answers: list[str] = []

    def worker() -> None:
        r = client.with_options(timeout=60).chat.completions.create(model=model, messages=history[:2], max_tokens=3)
        answers.append(r.choices[0].message.content)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    return {
        "content_type": type(reply.content).__name__,
        "finish_reason": completion.choices[0].finish_reason in {"stop", "length"},
        "usage": completion.usage.total_tokens > 0,
        "streamed": bool(streamed),
        "rejected_bad_role": rejected,
        "raw_is_completion": isinstance(parsed, openai.types.chat.ChatCompletion),
        "threads": len(answers),
        "json": openai.types.chat.ChatCompletion.model_validate_json(completion.model_dump_json()).id == completion.id,
    }


def test_sdk_sample_against_real_openai_sdk_and_router(standin, make_config) -> None:
    sdk = openai.OpenAI(base_url=standin.api_base, api_key="none", max_retries=0)
    expected = support_bot(sdk, "standin")
    with Client(make_config()) as client:
        assert support_bot(client, "gpt-4o") == expected
        assert support_bot(client, "local") == expected
