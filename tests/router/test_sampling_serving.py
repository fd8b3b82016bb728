"""Shadow and audit answers in a running router: real local model, the loopback stand-in cloud, SQLite.

What is checked: a shadow answer is generated, scored against the cloud's answer, logged with its
text and fed to the gate (and survives a restart); an audit answer calls the cloud and is logged
with its cost; requests that may not be sampled never are; a foreground local request preempts a
shadow answer within one token.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from router import Client, Reason
from tests.conftest import user

pytestmark = pytest.mark.slow

ORDER_QUERY = "I want to cancel the order I placed yesterday"
DELIVERY_QUERY = "how long does delivery to Spain take?"
SHADOW = {"overrides": {"DELIVERY": "trust", "PAYMENT": "trust"}, "shadow_rate": 1.0, "audit_rate": 0.0, "idle_s": 0.0}


def samples(path: Path) -> list[dict]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    rows = [dict(r) for r in conn.execute("SELECT * FROM quality_samples ORDER BY id")]
    conn.close()
    return rows


def test_a_shadow_answer_is_scored_against_the_cloud_logged_and_fed_to_the_gate(make_config, tmp_path: Path) -> None:
    config = make_config(quality=SHADOW)
    with Client(config) as client:
        r = client.chat.completions.create(model="auto", messages=user(ORDER_QUERY), max_tokens=24)
        assert (r.router.tier, r.router.reason) == ("cloud", Reason.LOCAL_QUALITY_UNPROVEN)
        assert client.wait_for_samples(120)
        key = client._engine.served_key()
        live = client._engine.gate.evidence(key, "ORDER")
        stats = client.sampling_stats()
    (sample,) = samples(config.log.path)
    assert (sample["kind"], sample["category"], sample["request_id"], sample["served_key"]) == ("shadow", "ORDER", r.id, key)
    assert sample["answer"] and sample["cost_usd"] is None and sample["detail"].startswith("guard: ")
    assert 0.0 <= sample["similarity"] <= 1.0
    assert live is not None and (live.source, live.samples) == ("live", 1)
    assert live.similarity == pytest.approx(sample["similarity"])
    assert stats is not None and (stats.completed, stats.preempted, stats.failed) == (1, 0, 0)

    with Client(config) as restarted:  # live evidence is reloaded from the log
        again = restarted._engine.gate.evidence(key, "ORDER")
    assert again is not None and again.samples == 1 and again.similarity == pytest.approx(sample["similarity"])


def test_a_follow_up_is_shadowed_with_its_conversation_and_counts_for_its_follow_ups_too(make_config) -> None:
    from router.quality import followup_key

    config = make_config(quality=SHADOW, classifier={"threshold": 0.6})  # "ok do it" alone is then an edge case
    conversation = [{"role": "user", "content": ORDER_QUERY}, {"role": "assistant", "content": "I can help with that."},
                    {"role": "user", "content": "ok do it"}]  # fmt: skip
    with Client(config) as client:
        r = client.chat.completions.create(model="auto", messages=conversation, max_tokens=24)
        assert (r.router.tier, r.router.reason, r.router.category) == ("cloud", Reason.LOCAL_QUALITY_UNPROVEN, "ORDER")
        assert client.wait_for_samples(120)
        key = client._engine.served_key()
        first_questions = client._engine.gate.evidence(key, "ORDER")
        follow_ups = client._engine.gate.evidence(key, followup_key("ORDER"))
    rows = samples(config.log.path)
    assert [(s["category"], s["request_id"]) for s in rows] == [("ORDER", r.id), (followup_key("ORDER"), r.id)]
    assert rows[0]["similarity"] == rows[1]["similarity"]
    assert first_questions is not None and follow_ups is not None and follow_ups.samples == 1
    with Client(config) as restarted:  # both windows are reloaded from the log
        assert restarted._engine.gate.evidence(key, followup_key("ORDER")).samples == 1


def test_requests_that_may_not_be_sampled_never_are(make_config) -> None:
    config = make_config(quality={**SHADOW, "audit_rate": 1.0})
    with Client(config) as client:
        # private: answered locally, never sent out (no audit)
        private = client.chat.completions.create(model="auto", messages=user("I need to change my payment method"), max_tokens=8)
        assert private.router.tier in ("local", "handoff")  # handoff: the base model's answer was rejected by the guard
        # forced local: no audit
        client.chat.completions.create(model="local", messages=user(DELIVERY_QUERY), max_tokens=8)
        # the app asked that it not be stored
        client.chat.completions.create(model="auto", messages=user(ORDER_QUERY), max_tokens=8, store=False)
        # the local tier cannot answer it (tools)
        tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}
        with_tools = client.chat.completions.create(model="auto", messages=user(ORDER_QUERY), max_tokens=8, tools=[tool])
        assert with_tools.router.tier == "cloud"  # litellm without its optional `mcp` package still sends tools
        assert client.wait_for_samples(60)
        stats = client.sampling_stats()
    assert stats is not None and stats.offered == 0
    assert samples(config.log.path) == []


def test_an_audit_answer_asks_the_cloud_and_logs_its_cost(make_config) -> None:
    config = make_config(quality={"shadow_rate": 0.0, "audit_rate": 1.0, "idle_s": 0.0})
    with Client(config) as client:
        r = client.chat.completions.create(model="auto", messages=user(DELIVERY_QUERY), max_tokens=16)
        assert (r.router.tier, r.router.reason) == ("local", Reason.LOCAL_CATEGORY)
        assert client.wait_for_samples(120)
        key = client._engine.served_key()
    (sample,) = samples(config.log.path)
    assert (sample["kind"], sample["category"], sample["request_id"], sample["served_key"]) == ("audit", "DELIVERY", r.id, key)
    assert sample["answer"] and sample["cost_usd"] > 0  # the cloud's answer, priced as gpt-4o
    assert sample["answer"] != r.choices[0].message.content or sample["similarity"] > 0.99


def test_a_foreground_local_request_preempts_a_shadow_answer_within_one_token(make_config) -> None:
    config = make_config(quality=SHADOW)
    with Client(config) as client:
        engine = client._engine
        client.chat.completions.create(model="auto", messages=user(ORDER_QUERY), max_tokens=256)
        deadline = time.monotonic() + 60
        while engine.local.queue_depth == 0 and time.monotonic() < deadline:
            time.sleep(0.005)  # the shadow answer (256 tokens) has the model
        assert engine.local.queue_depth == 1
        time.sleep(0.3)
        fg = client.chat.completions.create(model="auto", messages=user(DELIVERY_QUERY), max_tokens=8)
        assert fg.router.tier == "local"
        assert client.wait_for_samples(60)
        stats = client.sampling_stats()
    assert stats is not None and (stats.preempted, stats.completed) == (1, 0)
    assert stats.preempt_late_pieces_max <= 1
    assert samples(config.log.path) == []  # a preempted shadow is dropped, not half-scored


def test_a_local_answer_the_guard_rejected_counts_against_its_open_category(make_config) -> None:
    config = make_config(
        quality={"shadow_rate": 0.0, "audit_rate": 0.01, "idle_s": 0.0},
        local={"reject_echo": True, "degenerate_min_span": 48, "n_threads": 1},
    )
    with Client(config) as client:
        r = client.chat.completions.create(model="auto", messages=user(ORDER_QUERY), max_tokens=48)
        assert (r.router.reason, r.router.fallback_from, r.router.tier) == (Reason.LOCAL_CATEGORY, "local", "cloud")
        assert r.router.fallback_reason.startswith("degenerate")
        assert client.wait_for_samples(60)
        key = client._engine.served_key()
        live = client._engine.gate.evidence(key, "ORDER")
    (sample,) = samples(config.log.path)
    assert (sample["kind"], sample["request_id"], sample["served_key"], sample["degenerate"]) == ("fallback", r.id, key, 1)
    assert sample["answer"].strip() and sample["detail"].startswith("guard: degenerate")
    assert live is not None and live.degenerate_rate == 1.0
