"""client.feedback: stored against the logged request, survives restarts, feeds the quality gate and
the next dataset snapshot; a log written by the previous schema is migrated in place."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from router import AsyncClient, BadRequestError, Client, NotFoundError, PermissionDeniedError, RouterConfig
from router.traffic_log import SCHEMA_VERSION, LogRecord, TrafficLog
from router.types import Reason

QUESTION = [{"role": "user", "content": "where is my order?"}]


def config(tmp_path: Path, **quality: object) -> RouterConfig:
    return RouterConfig(
        local={"registry_path": None},
        cloud={"preimport": False},
        routing={"local_categories": ["ORDER"]},
        quality={"min_samples": 3, "live_window": 3, **quality},
        log={"path": tmp_path / "traffic.sqlite3"},
        warmup="lazy",
    )


def log_rows(path: Path) -> None:
    with TrafficLog(path) as log:
        for i, tier in enumerate(["local", "local", "local", "cloud"]):
            log.record(
                LogRecord(
                    id=f"chatcmpl-{i}", requested_model="auto", reason="local_category", stream=False, tier=tier,
                    category="ORDER", messages=QUESTION, response=f"Your order ships today ({i}).", finish_reason="stop",
                )  # fmt: skip
            )


def test_feedback_is_stored_scrubbed_and_survives_a_restart(tmp_path: Path) -> None:
    log_rows(tmp_path / "traffic.sqlite3")
    with Client(config(tmp_path)) as client:
        client.feedback("chatcmpl-3", accepted=True, correction="It ships today; key sk-abcdefghijklmnopqrstuvwx was leaked")
        client.feedback("chatcmpl-0", score=0.25)
    with TrafficLog(tmp_path / "traffic.sqlite3") as log:
        stored = log.feedback()
    assert stored["chatcmpl-3"]["accepted"] is True and "[SECRET]" in stored["chatcmpl-3"]["correction"]
    assert stored["chatcmpl-0"]["score"] == 0.25


def served_key(tmp_path: Path) -> str:
    with Client(config(tmp_path)) as client:
        return client._engine.served_key()


def log_shadow_samples(tmp_path: Path, key: str, similarity: float, n: int = 3) -> None:
    """Scored evidence (what shadow answers leave in the log) that opens ORDER for ``key``."""
    with TrafficLog(tmp_path / "traffic.sqlite3") as log:
        for i in range(n):
            log.record_quality_sample(kind="shadow", category="ORDER", served_key=key, similarity=similarity, degenerate=False, request_id=f"s-{i}")


def test_rejections_close_an_open_category_the_verdict_survives_a_restart_and_a_new_vote_replaces_the_old(tmp_path: Path) -> None:
    log_rows(tmp_path / "traffic.sqlite3")
    key = served_key(tmp_path)
    log_shadow_samples(tmp_path, key, 0.95)
    votes = {"overrides": {}, "min_votes": 3}
    with Client(config(tmp_path, **votes)) as client:
        assert client._engine.gate.verdict(key, "ORDER").open  # opened by the shadow answers
        for i in range(3):
            client.feedback(f"chatcmpl-{i}", accepted=False)
        verdict = client._engine.gate.verdict(key, "ORDER")
        assert not verdict.open and verdict.reason is Reason.LOCAL_QUALITY_BELOW_FLOOR and "0% of 3 votes" in verdict.detail
    with Client(config(tmp_path, **votes)) as again:  # a new process would see the same
        verdict = again._engine.gate.verdict(key, "ORDER")
        assert not verdict.open and "0% of 3 votes" in verdict.detail
        for i in range(3):  # the same users change their minds: each answer's latest vote is the one that counts
            again.feedback(f"chatcmpl-{i}", accepted=True)
        verdict = again._engine.gate.verdict(key, "ORDER")
        assert verdict.open and again._engine.gate.votes(key, "ORDER").votes == 3


def test_thirty_votes_on_one_answer_count_once(tmp_path: Path) -> None:
    log_rows(tmp_path / "traffic.sqlite3")
    key = served_key(tmp_path)
    with Client(config(tmp_path, overrides={}, min_votes=3, votes_can_open=True)) as client:
        for _ in range(30):
            client.feedback("chatcmpl-0", accepted=True)
        gate = client._engine.gate
        assert gate.votes(key, "ORDER").votes == 1 and not gate.verdict(key, "ORDER").open
    with TrafficLog(tmp_path / "traffic.sqlite3") as log:  # restored from the log, the same single vote
        assert [s["request_id"] for s in log.quality_samples(per_category=10)] == ["chatcmpl-0"]
    log_shadow_samples(tmp_path, key, 0.95)
    with Client(config(tmp_path, overrides={}, min_votes=3)) as client:
        for _ in range(30):  # and thirty rejections of one answer do not close an open category
            client.feedback("chatcmpl-1", accepted=False)
        assert client._engine.gate.verdict(key, "ORDER").open


def test_votes_alone_open_a_category_only_where_the_operator_allows_it(tmp_path: Path) -> None:
    log_rows(tmp_path / "traffic.sqlite3")
    key = served_key(tmp_path)
    with Client(config(tmp_path, overrides={}, min_votes=3)) as client:
        for i in range(3):
            client.feedback(f"chatcmpl-{i}", accepted=True)
        verdict = client._engine.gate.verdict(key, "ORDER")
        assert not verdict.open and verdict.reason is Reason.LOCAL_QUALITY_UNPROVEN and "votes alone" in verdict.detail
    with Client(config(tmp_path, overrides={}, min_votes=3, votes_can_open=True)) as client:
        assert client._engine.gate.verdict(key, "ORDER").open


def test_votes_and_similarities_have_separate_floors(tmp_path: Path) -> None:
    """A 0/1 vote is not averaged with cosine similarities: 0.8 similarity and three rejections close on the votes."""
    log_rows(tmp_path / "traffic.sqlite3")
    key = served_key(tmp_path)
    log_shadow_samples(tmp_path, key, 0.8)
    with Client(config(tmp_path, overrides={}, min_votes=3)) as client:
        for i in range(3):
            client.feedback(f"chatcmpl-{i}", accepted=True)
        gate = client._engine.gate
        assert gate.evidence(key, "ORDER").similarity == pytest.approx(0.8)  # votes never enter the similarity mean
        assert gate.votes(key, "ORDER").acceptance == 1.0 and gate.verdict(key, "ORDER").open


def test_feedback_is_taken_only_from_the_user_who_received_the_answer(tmp_path: Path) -> None:
    with TrafficLog(tmp_path / "traffic.sqlite3") as log:
        log.record(LogRecord(id="chatcmpl-a", requested_model="auto", reason="local_category", stream=False, tier="local",
                             category="ORDER", messages=QUESTION, response="Today.", user="alice"))  # fmt: skip
    with Client(config(tmp_path)) as client:
        with pytest.raises(PermissionDeniedError, match="only from the caller"):
            client.feedback("chatcmpl-a", accepted=True, user="mallory")
        client.feedback("chatcmpl-a", accepted=True, user="alice")
        client.feedback("chatcmpl-a", accepted=False)  # the application itself (no user) vouches for what it sends
    with Client(config(tmp_path, feedback_from="anyone")) as client:
        client.feedback("chatcmpl-a", score=0.5, user="mallory")
    with TrafficLog(tmp_path / "traffic.sqlite3") as log:
        assert log.feedback()["chatcmpl-a"]["score"] == 0.5


def test_feedback_on_a_cloud_answer_is_stored_but_says_nothing_about_the_local_model(tmp_path: Path) -> None:
    log_rows(tmp_path / "traffic.sqlite3")
    with Client(config(tmp_path)) as client:
        client.feedback("chatcmpl-3", accepted=False)
        assert client._engine.gate.evidence(client._engine.served_key(), "ORDER") is None
    with TrafficLog(tmp_path / "traffic.sqlite3") as log:
        assert log.quality_samples(per_category=10) == []


def test_bad_feedback_is_a_400_and_an_unknown_id_a_404(tmp_path: Path) -> None:
    log_rows(tmp_path / "traffic.sqlite3")
    with Client(config(tmp_path)) as client:
        for kwargs in ({}, {"score": 1.5}, {"score": True}, {"accepted": "yes"}, {"correction": "  "}):
            with pytest.raises(BadRequestError):
                client.feedback("chatcmpl-0", **kwargs)
        with pytest.raises(NotFoundError):
            client.feedback("chatcmpl-nope", accepted=True)


def test_async_client_feedback(tmp_path: Path) -> None:
    log_rows(tmp_path / "traffic.sqlite3")

    async def run() -> None:
        async with AsyncClient(config(tmp_path)) as client:
            await client.feedback("chatcmpl-1", accepted=True)

    asyncio.run(run())
    with TrafficLog(tmp_path / "traffic.sqlite3") as log:
        assert log.feedback()["chatcmpl-1"]["accepted"] is True


def test_corrections_and_verdicts_reach_the_next_dataset(tmp_path: Path) -> None:
    from finetune.datasets import examples_from_log

    log_rows(tmp_path / "traffic.sqlite3")
    with Client(config(tmp_path)) as client:
        client.feedback("chatcmpl-0", correction="Your order left our warehouse today; mail jane@example.com for help.")
        client.feedback("chatcmpl-1", accepted=True)
        client.feedback("chatcmpl-3", accepted=False)  # a rejected cloud answer is not a teacher answer
    examples = {e.source: e for e in examples_from_log(tmp_path / "traffic.sqlite3", include_local=True)}
    assert set(examples) == {"log:chatcmpl-0:correction", "log:chatcmpl-1"}
    assert examples["log:chatcmpl-0:correction"].answer.startswith("Your order left our warehouse")
    from finetune.datasets import clean

    (scrubbed, *_), _ = clean([examples["log:chatcmpl-0:correction"]])
    assert "[EMAIL]" in scrubbed.answer and "jane@" not in scrubbed.answer  # scrubbed like all training data


# The schema the first release wrote (user_version 1), verbatim.
V1_SCHEMA = """
CREATE TABLE requests (
    id TEXT PRIMARY KEY, created_at TEXT NOT NULL, requested_model TEXT NOT NULL, tier TEXT, backend TEXT,
    served_model TEXT, category TEXT, confidence REAL, reason TEXT NOT NULL, detail TEXT, fallback_from TEXT,
    fallback_reason TEXT, adapter_version TEXT, stream INTEGER NOT NULL, messages TEXT, params TEXT, response TEXT,
    finish_reason TEXT, prompt_tokens INTEGER, completion_tokens INTEGER, latency_ms REAL, ttft_ms REAL,
    classify_ms REAL, cost_usd REAL, cloud_cost_usd_estimate REAL, error_type TEXT, error_message TEXT, user TEXT,
    metadata TEXT, redacted INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX requests_created_at ON requests (created_at);
CREATE INDEX requests_tier_category ON requests (tier, category);
"""


def test_a_log_written_by_the_previous_schema_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(V1_SCHEMA)
    conn.execute(
        "INSERT INTO requests (id, created_at, requested_model, reason, stream, tier, category, messages, response, finish_reason) "
        "VALUES ('old-1', '2026-11-20T10:00:00', 'auto', 'edge_case', 0, 'cloud', 'ORDER', ?, 'It ships today.', 'stop')",
        ('[{"role": "user", "content": "where is my order?"}]',),
    )
    conn.execute("PRAGMA user_version=1")
    conn.commit()
    conn.close()

    with TrafficLog(path) as log:
        assert [r.id for r in log.records()] == ["old-1"]
        log.record_feedback("old-1", score=None, accepted=True, correction=None)
        assert log.feedback()["old-1"]["accepted"] is True
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 9
    conn.close()


# What schema 2 added (feedback, quality samples without their answer), verbatim.
V2_ADDITIONS = """
CREATE TABLE feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT, request_id TEXT NOT NULL, created_at TEXT NOT NULL, score REAL,
    accepted INTEGER, correction TEXT
);
CREATE INDEX feedback_request ON feedback (request_id);
CREATE TABLE quality_samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT, created_at TEXT NOT NULL, request_id TEXT, kind TEXT NOT NULL,
    category TEXT NOT NULL, served_key TEXT, similarity REAL NOT NULL, degenerate INTEGER NOT NULL
);
CREATE INDEX quality_samples_key ON quality_samples (served_key, category, id);
"""


def test_a_schema_2_log_keeps_its_samples_and_gains_their_answers(tmp_path: Path) -> None:
    path = tmp_path / "v2.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(V1_SCHEMA + V2_ADDITIONS)
    conn.execute(
        "INSERT INTO quality_samples (created_at, request_id, kind, category, served_key, similarity, degenerate) "
        "VALUES ('2026-11-28T10:00:00', 'old-1', 'feedback', 'ORDER', 'registry:v0001', 0.9, 0)"
    )
    conn.execute("PRAGMA user_version=2")
    conn.commit()
    conn.close()

    with TrafficLog(path) as log:
        log.record_quality_sample(
            kind="shadow", category="ORDER", served_key="registry:v0001", similarity=0.5, degenerate=True,
            request_id="new-1", answer="Your order ships today.", cost_usd=None, detail="guard: echo",
        )  # fmt: skip
        samples = log.quality_samples(per_category=10)
    assert [(s["kind"], s["similarity"], s["answer"]) for s in samples] == [
        ("feedback", 0.9, None),
        ("shadow", 0.5, "Your order ships today."),
    ]
    assert samples[1]["detail"] == "guard: echo" and samples[1]["degenerate"] == 1
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


def test_a_schema_3_log_gains_the_classifier_version_of_each_request(tmp_path: Path) -> None:
    path = tmp_path / "v3.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(V1_SCHEMA + V2_ADDITIONS + "ALTER TABLE quality_samples ADD COLUMN answer TEXT;"
                       "ALTER TABLE quality_samples ADD COLUMN cost_usd REAL; ALTER TABLE quality_samples ADD COLUMN detail TEXT;")  # fmt: skip
    conn.execute("INSERT INTO requests (id, created_at, requested_model, reason, stream) VALUES ('old-1', '2026-11-28', 'auto', 'edge_case', 0)")
    conn.execute("PRAGMA user_version=3")
    conn.commit()
    conn.close()
    with TrafficLog(path) as log:
        log.record(LogRecord(id="new-1", requested_model="auto", reason="local_category", stream=False, classifier_version="v0002"))
        assert [(r.id, r.classifier_version) for r in log.records()] == [("old-1", None), ("new-1", "v0002")]


@pytest.mark.slow
def test_a_cloud_answer_carries_the_logged_request_id_so_feedback_finds_it(make_config) -> None:
    from tests.conftest import user

    with Client(make_config(quality={"overrides": {}})) as client:
        r = client.chat.completions.create(model="auto", messages=user("I want to cancel the order I placed yesterday"), max_tokens=8)
        assert r.router.tier == "cloud" and r.id == r.router.request_id
        assert r.router.provider_response_id and r.router.provider_response_id != r.id
        client.feedback(r.id, accepted=True)
        chunks = list(client.chat.completions.create(model="auto", messages=user("I want to cancel my order"), max_tokens=8, stream=True))
        assert {c.id for c in chunks} == {chunks[-1].router.request_id}
        assert chunks[-1].router.tier == "cloud"
        assert client.traffic_log.feedback()[r.id]["accepted"] is True
