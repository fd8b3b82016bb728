"""What a request may change: nothing of the cloud call's transport, credentials or answer; a
conversation is as private as its most private turn; a private answer the guard rejects is handed off."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from evals.security_eval import control_keys, probe_control_keys
from evals.standin_cloud import LatencyModel, StandinCloud
from router import BadRequestError, Client, NotFoundError, PrivacyError, RouterConfig
from tests.conftest import bitext_rows


@pytest.fixture(scope="module")
def recorded_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[StandinCloud, StandinCloud]]:
    """Two recorded-answer servers on loopback: the configured cloud, and a trap nothing may reach."""
    work = tmp_path_factory.mktemp("trust")
    answers = work / "answers.jsonl"
    answers.write_text(json.dumps({"query": "where is my order?", "answer": "It ships today."}) + "\n", encoding="utf-8")
    none = LatencyModel.none()  # these tests check where requests go, not how fast answers come
    with StandinCloud(answers=answers, record=work / "cloud.jsonl", latency=none) as cloud, StandinCloud(answers=answers, record=work / "trap.jsonl", latency=none) as trap:
        yield cloud, trap


def bare_config(cloud: StandinCloud, tmp_path: Path, **route: Any) -> RouterConfig:
    """No classifier, no local model load: named models go straight to the configured cloud."""
    return RouterConfig(
        models={"gpt-4o": {"litellm_model": cloud.litellm_model, "api_base": cloud.api_base, "api_key": "sk-operator-000000000000", **route}},
        cloud={"default_model": "gpt-4o", "preimport": False, "max_retries": 0},
        routing={"route_named_models": False},
        log={"path": tmp_path / "traffic.sqlite3"},
        warmup="lazy",
    )


def test_every_litellm_control_keyword_is_refused_and_reaches_nothing(recorded_pair: tuple[StandinCloud, StandinCloud], tmp_path: Path) -> None:
    cloud, trap = recorded_pair
    keys = control_keys()  # from the installed litellm: a keyword a new release adds is tried too
    assert len(keys) >= 20 and {"api_base", "api_key", "mock_response", "base_url", "custom_llm_provider", "num_retries"} <= set(keys)
    with Client(bare_config(cloud, tmp_path)) as client:
        ok = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "where is my order?"}], max_tokens=8)
        assert ok.choices[0].message.content == "It ships today."  # the configured endpoint answers: the probe can see a request
        figures = probe_control_keys(client, keys, cloud, trap)
    assert figures["control_keys_honoured"] == 0, figures["control_keys_honoured_names"]
    assert figures["control_keys_otherwise_answered"] == []
    assert figures["control_keys_refused"] + len(figures["control_keys_sdk_options_accepted_not_forwarded"]) == len(keys)
    assert trap.received() == []


def test_an_unknown_parameter_is_a_400_naming_it_and_a_route_can_allow_provider_options(recorded_pair: tuple[StandinCloud, StandinCloud], tmp_path: Path) -> None:
    cloud, _ = recorded_pair
    question = [{"role": "user", "content": "where is my order?"}]
    with Client(bare_config(cloud, tmp_path)) as client:
        with pytest.raises(BadRequestError, match="Unrecognized request argument supplied: top_k") as refused:
            client.chat.completions.create(model="gpt-4o", messages=question, top_k=5)
        assert refused.value.body["param"] == "top_k"
        with pytest.raises(BadRequestError, match="messages\\[0\\]"):
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi", "api_base": "x"}])
        with pytest.raises(NotFoundError, match="does not exist"):  # a model name is not a way to pick another provider
            client.chat.completions.create(model="ollama/llama3", messages=question)
    before = len(cloud.received())
    with Client(bare_config(cloud, tmp_path, extra_params=["top_k"])) as client:
        client.chat.completions.create(model="gpt-4o", messages=question, top_k=5, max_tokens=8)
    assert cloud.received()[before]["body"]["top_k"] == 5  # sent in the provider's body, as the route allows


def test_a_route_can_never_allow_a_control_keyword() -> None:
    from hybrid_common.errors import ConfigError
    from router.config import ModelRoute

    for name in ("api_base", "mock_response", "num_retries", "api_key_env"):
        with pytest.raises((ValueError, ConfigError)):
            ModelRoute(litellm_model="openai/x", extra_params=(name,))


# --------------------------------------------------------------------------- private conversations

PAYMENT_FIRST = "what payment methods do you accept?"
FOLLOW_UP = "and is there a fee for the second one?"


def _conversation(*turns: str) -> list[dict[str, str]]:
    messages: list[dict[str, str]] = []
    for i, text in enumerate(turns):
        if i:
            messages.append({"role": "assistant", "content": "We accept cards and bank transfers."})
        messages.append({"role": "user", "content": text})
    return messages


@pytest.mark.slow
def test_an_earlier_private_turn_keeps_the_whole_conversation_local(make_config: Callable[..., Any], standin: Any) -> None:
    other = next(r["instruction"] for r in bitext_rows() if r["category"] == "FEEDBACK")  # a cloud category on its own
    before = len(standin.received())
    with Client(make_config()) as client:
        alone = client.chat.completions.create(model="auto", messages=_conversation(other), max_tokens=4)
        assert alone.router.tier == "cloud"
        sent = len(standin.received())
        for follow_up in (FOLLOW_UP, other):
            r = client.chat.completions.create(model="auto", messages=_conversation(PAYMENT_FIRST, follow_up), max_tokens=4)
            assert r.router.tier in ("local", "handoff") and r.router.reason.value in ("private_category", "private_handoff")
            assert "PAYMENT (an earlier turn, messages[0])" in r.router.detail
        r = client.chat.completions.create(model="auto", messages=_conversation("my card 4111 1111 1111 1111 123 was declined", other), max_tokens=4)
        assert r.router.reason.value in ("pii_match", "private_handoff") and "card_number in messages[0]" in r.router.detail
        image = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}
        with pytest.raises(PrivacyError):  # a last turn without text does not hide a private earlier one
            client.chat.completions.create(model="auto", messages=[*_conversation(PAYMENT_FIRST, "see"), image], max_tokens=4)
        engine = client._engine
        encoded = engine._turns.encoded
        client.chat.completions.create(model="auto", messages=_conversation(PAYMENT_FIRST, FOLLOW_UP, "thanks"), max_tokens=4)
        assert engine._turns.encoded == encoded + 1  # earlier turns come from the turn cache: one new encoder input
    assert len(standin.received()) == sent and sent == before + 1  # nothing of the private conversations went out


@pytest.mark.slow
def test_a_private_answer_the_guard_rejects_is_handed_off(make_config: Callable[..., Any]) -> None:
    # The packaged base model echoes the question: with the echo check on, the guard rejects its answer.
    config = make_config(local={"reject_echo": True, "degenerate_min_span": 48})
    with Client(config) as client:
        for stream in (False, True):
            if stream:
                chunks = list(client.chat.completions.create(model="auto", messages=_conversation(PAYMENT_FIRST), max_tokens=48, stream=True))
                text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                info = chunks[-1].router
            else:
                r = client.chat.completions.create(model="auto", messages=_conversation(PAYMENT_FIRST), max_tokens=48)
                text, info = r.choices[0].message.content, r.router
            assert info.reason.value == "private_handoff" and info.tier == "handoff", (info, text)
            assert text == config.quality.handoff_message and "local answer rejected" in info.detail
        row = client.traffic_log.get(info.request_id)
        assert row.reason == "private_handoff" and row.response == config.quality.handoff_message


def test_feedback_over_http_is_taken_from_the_key_that_received_the_answer(recorded_pair: tuple[StandinCloud, StandinCloud], tmp_path: Path) -> None:
    from evals.security_eval import serving
    from router.server.app import caller_id
    from router.traffic_log import LogRecord, TrafficLog

    cloud, _ = recorded_pair
    alice, mallory, operator = "key-alice-0000000000", "key-mallory-00000000", "key-operator-0000000"
    config = bare_config(cloud, tmp_path).model_copy(
        update={"server": RouterConfig(server={"api_keys": [alice, mallory], "operator_keys": [operator]}).server}
    )
    with Client(config) as client, serving(client) as http:
        answered = http.post("/v1/chat/completions", headers={"Authorization": f"Bearer {alice}"},
                             json={"model": "gpt-4o", "messages": [{"role": "user", "content": "where is my order?"}], "max_tokens": 8})  # fmt: skip
        response_id = answered.json()["id"]
        assert client.traffic_log.get(response_id).caller == caller_id(alice) != caller_id(mallory)

        def vote(key: str) -> int:
            return http.post("/v1/feedback", headers={"Authorization": f"Bearer {key}"}, json={"response_id": response_id, "accepted": True}).status_code

        assert vote(mallory) == 403  # knowing the id is not enough
        assert vote(alice) == 204 and vote(operator) == 204
    with TrafficLog(tmp_path / "traffic.sqlite3") as log:
        assert log.feedback()[response_id]["accepted"] is True


@pytest.mark.slow
def test_an_earlier_private_turn_keeps_the_conversation_local_over_http(make_config: Callable[..., Any], standin: Any) -> None:
    from evals.security_eval import serving

    with Client(make_config()) as client, serving(client) as http:
        sent = len(standin.received())
        body = {"model": "auto", "messages": _conversation(PAYMENT_FIRST, FOLLOW_UP), "max_tokens": 4}
        r = http.post("/v1/chat/completions", json=body)
        assert r.status_code == 200 and r.headers["x-router-tier"] in ("local", "handoff")
        assert "earlier turn" in r.json()["router"]["detail"]
        bad = http.post("/v1/chat/completions", json={**body, "api_base": "http://127.0.0.1:9/v1"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "api_base"
        assert len(standin.received()) == sent
