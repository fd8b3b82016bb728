"""The response cache in the request path: real Client, real diskcache directory, a recorded-answer
stand-in cloud on loopback (its request record proves what reached the cloud), SQLite log."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from evals.standin_cloud import LatencyModel, StandinCloud
from router import Client
from tests.conftest import user

COMPLAINT = "I do not know how to file a complaint"
COMPLAINT_PARAPHRASE = "i don't know how to file a complaint"
REVIEW = "I want to leave a review for your service"
REFUND_30 = "I want to leave a review about the refund of $30 for order 4411"
ANSWERS = {
    COMPLAINT: "I understand you are unsure how to file a complaint. Here is how to do it.",
    COMPLAINT_PARAPHRASE: "Filing a complaint is easy; here are the steps.",
    REVIEW: "Thank you for wanting to leave a review. You can do it on our website.",
    REFUND_30: "Thanks! Your review about the $30 refund for order 4411 is welcome.",
}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandinCloud]:
    work = tmp_path_factory.mktemp("recorded-cloud")
    answers = work / "answers.jsonl"
    answers.write_text("".join(json.dumps({"query": q, "answer": a}) + "\n" for q, a in ANSWERS.items()))
    with StandinCloud(answers=answers, record=work / "requests.jsonl", latency=LatencyModel.none()) as cloud:
        yield cloud


def cloud_requests(cloud: StandinCloud) -> list[dict[str, Any]]:
    return [json.loads(line)["body"] for line in cloud.record.read_text().splitlines() if line.strip()]


@pytest.fixture
def cached_config(make_config: Callable[..., Any], recorded: StandinCloud, tmp_path: Path) -> Callable[..., Any]:
    def build(**cache: Any) -> Any:
        route = {"litellm_model": recorded.litellm_model, "api_base": recorded.api_base, "api_key": "none", "pricing_model": "gpt-4o"}
        return make_config(
            models={"gpt-4o": route, "other-model": {**route, "litellm_model": "openai/another-model"}}, cache={"enabled": True, "path": tmp_path / "cache", "similarity": 0.9, **cache}
        )

    return build


def ask(client: Client, text: str, **kwargs: Any) -> Any:
    return client.chat.completions.create(model="gpt-4o", messages=user(text), max_tokens=64, **kwargs)


def test_a_repeated_question_is_answered_from_the_cache_for_free(cached_config: Callable[..., Any], recorded: StandinCloud) -> None:
    with Client(cached_config()) as client:
        sent = len(cloud_requests(recorded))
        first = ask(client, COMPLAINT)
        assert first.router.tier == "cloud" and first.router.category == "FEEDBACK"
        again = ask(client, "  i do NOT know how to file a   complaint ")  # case and spacing normalised
        assert again.router.tier == "cache"
        assert again.router.cached_from == first.id and again.router.cache_match == "exact"
        assert again.choices[0].message.content == first.choices[0].message.content
        assert again.router.cost_usd == 0.0 and again.router.cloud_cost_usd_estimate == first.router.cost_usd > 0
        assert len(cloud_requests(recorded)) == sent + 1  # the repeat never reached the cloud
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=user(COMPLAINT), max_tokens=64)
        # The header never names the request the answer came from: over HTTP that id is another caller's.
        assert raw.headers["x-router-tier"] == "cache" and raw.headers["x-router-cache"] == "hit; match=exact"
        row = client.traffic_log.get(again.id)
        assert row.tier == "cache" and row.cached_from == first.id and "cache hit (exact)" in row.detail
        summary = {(r["tier"], r["category"]): r["requests"] for r in client.traffic_log.summary()}
        assert summary[("cache", "FEEDBACK")] == 2 and summary[("cloud", "FEEDBACK")] == 1


def test_a_cached_answer_asked_for_as_a_stream_is_streamed(cached_config: Callable[..., Any]) -> None:
    with Client(cached_config()) as client:
        first = ask(client, REVIEW)
        chunks = list(ask(client, REVIEW, stream=True, stream_options={"include_usage": True}))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == first.choices[0].message.content
        assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 2  # pieces, not one blob
        assert chunks[-1].usage is not None and chunks[-1].router.tier == "cache"
        assert client.traffic_log.get(chunks[-1].id).cached_from == first.id


@pytest.mark.parametrize(
    "change",
    [
        {"max_tokens": 32},
        {"temperature": 0.3},
        {"stop": ["."]},
        {"user": "someone-else"},
        {"messages": [{"role": "system", "content": "Answer in French."}, *user(COMPLAINT)]},
        {"model": "other-model"},
    ],
)
def test_what_changes_the_answer_changes_the_key(cached_config: Callable[..., Any], change: dict[str, Any]) -> None:
    with Client(cached_config(mode="exact")) as client:
        ask(client, COMPLAINT)
        args = {"model": "gpt-4o", "messages": user(COMPLAINT), "max_tokens": 64, **change}
        assert client.chat.completions.create(**args).router.tier == "cloud"
        assert client.chat.completions.create(**args).router.tier == "cache"  # and that variant caches on its own


def test_one_users_answers_never_reach_another(cached_config: Callable[..., Any]) -> None:
    with Client(cached_config()) as client:
        ask(client, COMPLAINT, user="alice")
        assert ask(client, COMPLAINT, user="bob").router.tier == "cloud"
        assert ask(client, COMPLAINT_PARAPHRASE, user="carol").router.tier == "cloud"  # no semantic hit across scopes
        assert ask(client, COMPLAINT, user="alice").router.tier == "cache"


def test_private_and_pii_requests_are_never_cached(cached_config: Callable[..., Any], tmp_path: Path) -> None:
    card = "4111 1111 1111 1111"
    with Client(cached_config()) as client:
        for _ in range(2):
            private = client.chat.completions.create(model="gpt-4o", messages=user("How do I pay with my credit card?"), max_tokens=4)
            assert private.router.category == "PAYMENT" and private.router.tier == "local"
            pii = ask(client, f"{COMPLAINT} about card {card}")
            assert pii.router.tier == "local" and pii.router.reason.value == "pii_match"
        assert client._engine.cache_tier.cache.stats()["answers"] == 0
    stored = b"".join(p.read_bytes() for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert card.encode() not in stored and b"credit card" not in stored


def test_a_request_can_opt_out(cached_config: Callable[..., Any], recorded: StandinCloud) -> None:
    with Client(cached_config()) as client:
        ask(client, REVIEW)
        assert ask(client, REVIEW, extra_body={"cache": False}).router.tier == "cloud"
        assert all("cache" not in body for body in cloud_requests(recorded))  # the flag is ours, never the provider's
        ask(client, COMPLAINT, extra_body={"cache": False})
        assert ask(client, COMPLAINT).router.tier == "cloud"  # an opted-out answer was not stored either


def test_the_cache_is_off_unless_configured(make_config: Callable[..., Any], recorded: StandinCloud) -> None:
    route = {"litellm_model": recorded.litellm_model, "api_base": recorded.api_base, "api_key": "none"}
    with Client(make_config(models={"gpt-4o": route})) as client:
        ask(client, REVIEW)
        assert ask(client, REVIEW).router.tier == "cloud"
        assert client._engine.cache_tier is None


def test_a_paraphrase_is_a_semantic_hit_but_never_borrows_specifics(cached_config: Callable[..., Any]) -> None:
    with Client(cached_config(similarity=0.85)) as client:
        first = ask(client, COMPLAINT)
        hit = ask(client, COMPLAINT_PARAPHRASE)
        assert hit.router.tier == "cache" and hit.router.cache_match.startswith("semantic")
        assert hit.choices[0].message.content == first.choices[0].message.content
        ask(client, REFUND_30)  # its answer repeats "$30" and "4411"
        other = ask(client, "I want to leave a review about the refund for my order")
        assert other.router.tier != "cache" or "4411" not in other.choices[0].message.content
        two_turns = [*user(REVIEW), {"role": "assistant", "content": "Sure."}, *user(COMPLAINT_PARAPHRASE)]
        turns = client.chat.completions.create(model="gpt-4o", messages=two_turns, max_tokens=64)
        assert turns.router.tier == "cloud"  # semantic lookups are for single-turn requests by default


def test_a_rejected_answer_is_evicted(cached_config: Callable[..., Any]) -> None:
    with Client(cached_config(mode="exact")) as client:
        first = ask(client, COMPLAINT)
        hit = ask(client, COMPLAINT)
        assert hit.router.tier == "cache"
        client.feedback(hit.id, accepted=False)  # feedback on the served hit evicts the entry it came from
        assert ask(client, COMPLAINT).router.tier == "cloud"
        assert ask(client, COMPLAINT).router.tier == "cache"
        del first


def test_a_changed_models_mapping_does_not_serve_the_old_routes_answers(cached_config: Callable[..., Any], make_config: Callable[..., Any],
                                                                        recorded: StandinCloud, tmp_path: Path) -> None:  # fmt: skip
    with Client(cached_config()) as client:
        ask(client, REVIEW)
        assert ask(client, REVIEW).router.tier == "cache"
    moved = {"litellm_model": recorded.litellm_model, "api_base": recorded.api_base + "/", "api_key": "none"}
    config = make_config(models={"gpt-4o": moved}, cache={"enabled": True, "path": tmp_path / "cache"})
    with Client(config) as client:
        assert ask(client, REVIEW).router.tier == "cloud"


def test_deterministic_only_categories(cached_config: Callable[..., Any]) -> None:
    with Client(cached_config(categories={"FEEDBACK": {"deterministic_only": True}})) as client:
        ask(client, REVIEW, temperature=0.7)
        assert ask(client, REVIEW, temperature=0.7).router.tier == "cloud"
        ask(client, REVIEW, temperature=0)
        assert ask(client, REVIEW, temperature=0).router.tier == "cache"


def test_local_answers_are_cached_only_while_the_gate_trusts_them(make_config: Callable[..., Any], tmp_path: Path) -> None:
    query = "Where is my order?"
    cache = {"enabled": True, "path": tmp_path / "cache", "mode": "exact"}
    untrusted = make_config(cache=cache, quality={"overrides": {}})
    with Client(untrusted) as client:
        first = client.chat.completions.create(model="local", messages=user(query), max_tokens=4)
        assert first.router.tier == "local"
        assert client.chat.completions.create(model="local", messages=user(query), max_tokens=4).router.tier == "local"
    with Client(make_config(cache=cache)) as client:  # the test config trusts ORDER by override
        assert client.chat.completions.create(model="local", messages=user(query), max_tokens=4).router.tier == "local"
        hit = client.chat.completions.create(model="local", messages=user(query), max_tokens=4)
        assert hit.router.tier == "cache" and hit.router.model


def test_a_corrupt_cache_directory_is_rebuilt_never_failing_a_request(
    cached_config: Callable[..., Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "cache"
    with Client(cached_config()) as client:
        ask(client, REVIEW)
    (directory / "cache.db").write_bytes(b"this is not a database" * 100)
    for stale in directory.glob("cache.db-*"):
        stale.unlink()
    with caplog.at_level(logging.WARNING, logger="router.cache"), Client(cached_config()) as client:
        assert ask(client, REVIEW).router.tier == "cloud"
        assert ask(client, REVIEW).router.tier == "cache"  # the rebuilt cache works
    assert any("unreadable" in r.getMessage() for r in caplog.records)
    assert list(tmp_path.glob("cache.corrupt-*"))


@pytest.mark.slow
def test_a_promotion_or_rollback_invalidates_the_local_models_answers(make_config: Callable[..., Any], tmp_path: Path) -> None:
    import time

    from finetune.registry import ModelRegistry
    from tests.conftest import settle_local_swap
    from tests.finetune.conftest import write_tiny_adapter

    registry = ModelRegistry(tmp_path / "registry")
    registry.add(None, metrics={"similarity": 0.5})
    registry.add(write_tiny_adapter(tmp_path / "a1.gguf", seed=0), metrics={"similarity": 0.5})
    registry.promote("base")
    config = make_config(
        local={"registry_path": registry.root, "registry_poll_s": 0.05, "n_ctx": 512},
        cache={"enabled": True, "path": tmp_path / "cache", "mode": "exact"},
    )

    def ask_local(client: Client) -> Any:
        time.sleep(0.1)
        settle_local_swap(client)
        return client.chat.completions.create(model="local", messages=user("Where is my order?"), max_tokens=4, temperature=0)

    with Client(config) as client:
        first = ask_local(client)
        assert first.router.tier == "local" and first.router.category in ("ORDER", "DELIVERY")  # trusted by the test config
        assert ask_local(client).router.tier == "cache"
        new = registry.add(write_tiny_adapter(tmp_path / "a2.gguf", seed=1), metrics={"similarity": 0.5})
        registry.promote(new.version)
        promoted = ask_local(client)
        assert promoted.router.tier == "local" and promoted.router.adapter_version == new.version
        assert client._engine.cache_tier.cache.forget(first.id) is False  # the base model's entry is gone
        assert ask_local(client).router.tier == "cache"
        registry.promote("base")  # a rollback: what the newer version answered goes too
        rolled = ask_local(client)
        assert rolled.router.tier == "local" and rolled.router.adapter_version in (None, "base")
        assert client._engine.cache_tier.cache.forget(promoted.id) is False


def test_router_stats_shows_hit_rates_and_router_cache_stats_and_clear(
    cached_config: Callable[..., Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from router.cli import main

    with Client(cached_config(mode="exact")) as client:
        for text in (COMPLAINT, COMPLAINT, COMPLAINT, REVIEW):
            ask(client, text)
    log, cache = str(tmp_path / "traffic.sqlite3"), str(tmp_path / "cache")
    assert main(["stats", "--log", log]) == 0
    out = capsys.readouterr().out
    assert "cache hits" in out and any(line.split()[:3] == ["FEEDBACK", "2", "50%"] for line in out.splitlines())
    assert main(["cache", "--path", cache, "stats", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["answers"] == 2 and stats["by_tier_category"] == [{"tier": "cloud", "category": "FEEDBACK", "answers": 2}]
    assert main(["cache", "--path", cache, "clear"]) == 0
    assert "entries removed" in capsys.readouterr().out
    assert main(["cache", "--path", cache, "stats", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["answers"] == 0


def test_server_mode_honours_cache_control_and_says_when_it_hit(cached_config: Callable[..., Any]) -> None:
    import httpx

    from tests.conftest import serving

    body = {"model": "gpt-4o", "messages": user(REVIEW), "max_tokens": 64}
    with Client(cached_config(mode="exact")) as client, serving(client) as url, httpx.Client(base_url=url, timeout=120) as http:
        first = http.post("/v1/chat/completions", json=body)
        assert first.status_code == 200 and first.headers["x-router-tier"] == "cloud"
        fresh = http.post("/v1/chat/completions", json=body, headers={"Cache-Control": "no-cache"})
        assert fresh.headers["x-router-tier"] == "cloud" and "x-router-cache" not in fresh.headers
        hit = http.post("/v1/chat/completions", json=body)
        assert hit.headers["x-router-tier"] == "cache" and "match=exact" in hit.headers["x-router-cache"]
        assert hit.json()["choices"][0]["message"]["content"] == first.json()["choices"][0]["message"]["content"]
        assert http.post("/v1/chat/completions", json={**body, "cache": False}).headers["x-router-tier"] == "cloud"
        with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as streamed:
            assert streamed.headers["x-router-tier"] == "cache"
            events = [json.loads(line[6:]) for line in streamed.iter_lines() if line.startswith("data: {")]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert text == first.json()["choices"][0]["message"]["content"]


def test_async_clients_share_the_same_cache_rules(cached_config: Callable[..., Any]) -> None:
    import asyncio

    from router import AsyncClient

    async def run() -> list[Any]:
        async with AsyncClient(cached_config()) as client:
            first = await client.chat.completions.create(model="gpt-4o", messages=user(COMPLAINT), max_tokens=64)
            hit = await client.chat.completions.create(model="gpt-4o", messages=user(COMPLAINT), max_tokens=64)
            stream = await client.chat.completions.create(model="gpt-4o", messages=user(COMPLAINT), max_tokens=64, stream=True)
            chunks = [c async for c in stream]
            return [first, hit, chunks]

    first, hit, chunks = asyncio.run(run())
    assert first.router.tier == "cloud" and hit.router.tier == "cache" and hit.router.cached_from == first.id
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == first.choices[0].message.content
    assert chunks[-1].router.tier == "cache"


def test_private_answers_are_cached_only_when_explicitly_allowed(cached_config: Callable[..., Any]) -> None:
    query = "How do I pay with my credit card?"
    with Client(cached_config(mode="exact", cache_private=True)) as client:
        first = client.chat.completions.create(model="gpt-4o", messages=user(query), max_tokens=4)
        assert first.router.category == "PAYMENT" and first.router.tier == "local"  # private: never the cloud
        again = client.chat.completions.create(model="gpt-4o", messages=user(query), max_tokens=4)
        assert again.router.tier == "cache" and again.router.cached_from == first.id
