"""The stand-in cloud's recorded-answer mode, reached through the router's real cloud path (litellm)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evals.standin_cloud import RECORDED_MODEL, UNKNOWN_QUERY_ANSWER, StandinCloud

pytestmark = pytest.mark.slow


def test_recorded_answers_through_the_router(tmp_path: Path) -> None:
    from router import Client, RouterConfig

    answers = tmp_path / "answers.jsonl"
    answers.write_text(
        json.dumps({"query": "where is my order?", "answer": "It ships tomorrow."}) + "\n"
        + json.dumps({"conversation": ["where is my order?", "ok do it"], "answer": "Cancelled."}) + "\n"
    )
    with StandinCloud(answers=answers, record=tmp_path / "requests.jsonl") as cloud:
        config = RouterConfig(
            models={"gpt-4o": {"litellm_model": cloud.litellm_model, "api_base": cloud.api_base, "api_key": "none", "always_cloud": True}},
            log={"path": tmp_path / "log.sqlite3"},
            warmup="lazy",
        )
        with Client(config) as client:
            known = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "where  is my order?"}])
            chunks = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "where is my order?"}], stream=True)
            streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            unknown = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "something else"}])
            history = [{"role": "user", "content": "where is my order?"}, {"role": "assistant", "content": "It ships tomorrow."}]
            follow_up = client.chat.completions.create(model="gpt-4o", messages=[*history, {"role": "user", "content": "ok  do it"}])
            elsewhere = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "ok do it"}])
        assert known.choices[0].message.content == "It ships tomorrow."
        assert known.router.tier == "cloud"
        assert streamed == "It ships tomorrow."
        assert unknown.choices[0].message.content == UNKNOWN_QUERY_ANSWER
        assert follow_up.choices[0].message.content == "Cancelled."  # found by its conversation
        assert elsewhere.choices[0].message.content == UNKNOWN_QUERY_ANSWER  # the same words in another conversation
        assert len(cloud.received()) == 5 and all(r["body"]["model"] == RECORDED_MODEL for r in cloud.received())
