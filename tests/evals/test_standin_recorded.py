"""The stand-in cloud's recorded-answer mode, reached through the router's real cloud path (litellm) and over HTTP.

Timing is asserted from below only (an answer never comes sooner than its latency model allows):
the machine is shared, so an upper bound on a duration could fail for reasons of its own.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from evals.standin_cloud import RECORDED_MODEL, UNKNOWN_QUERY_ANSWER, StandinCloud
from evals.standin_latency import LatencyModel, estimate_tokens

pytestmark = pytest.mark.slow  # each test starts a server


def test_recorded_answers_through_the_router(tmp_path: Path) -> None:
    from router import Client, RouterConfig

    answers = tmp_path / "answers.jsonl"
    answers.write_text(
        json.dumps({"query": "where is my order?", "answer": "It ships tomorrow."}) + "\n"
        + json.dumps({"conversation": ["where is my order?", "ok do it"], "answer": "Cancelled."}) + "\n"
    )
    with StandinCloud(answers=answers, record=tmp_path / "requests.jsonl", latency=LatencyModel.none()) as cloud:
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


# 25 words, about 33 tokens: 0.65 s at 50 tokens/s after a 0.3 s first token.
QUESTION = "how long does delivery take?"
ANSWER = "Delivery usually takes three to five business days. You will get an email with the tracking number as soon as your parcel leaves our warehouse."
FIXED = LatencyModel(ttft_s=0.3, tokens_per_s=50.0, jitter=0.0)
SLACK = 0.98  # the lower bounds leave room for clock granularity, never for a shorter delay


@pytest.fixture(scope="module")
def paced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandinCloud]:
    work = tmp_path_factory.mktemp("paced")
    answers = work / "answers.jsonl"
    answers.write_text(json.dumps({"query": QUESTION, "answer": ANSWER}) + "\n", encoding="utf-8")
    with StandinCloud(answers=answers, record=work / "requests.jsonl", latency=FIXED) as cloud:
        yield cloud


def ask(cloud: StandinCloud, *, stream: bool) -> tuple[float, float, float, str]:
    """Seconds to the first and to the last content chunk, to the whole answer, and the answer, for one request over HTTP."""
    body = {"model": RECORDED_MODEL, "messages": [{"role": "user", "content": QUESTION}], "stream": stream}
    started = time.perf_counter()
    with httpx.Client(timeout=30) as http:
        if not stream:
            r = http.post(f"{cloud.api_base}/chat/completions", json=body)
            elapsed = time.perf_counter() - started
            return elapsed, elapsed, elapsed, r.json()["choices"][0]["message"]["content"]
        first, last, text = None, 0.0, ""
        with http.stream("POST", f"{cloud.api_base}/chat/completions", json=body) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    chunk = json.loads(line.removeprefix("data: "))
                    if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                        last = time.perf_counter() - started
                        first = first if first is not None else last
                        text += chunk["choices"][0]["delta"]["content"]
        assert first is not None
        return first, last, time.perf_counter() - started, text


def expected_total_s() -> float:
    return FIXED.ttft_s + estimate_tokens(ANSWER) / FIXED.tokens_per_s


@pytest.mark.parametrize("stream", [True, False])
def test_an_answer_waits_for_its_first_token_then_comes_at_the_token_rate(paced: StandinCloud, stream: bool) -> None:
    first, last, total, text = ask(paced, stream=stream)
    assert text == ANSWER
    assert first >= SLACK * (FIXED.ttft_s if stream else expected_total_s())
    # The last word comes once the words before it have been generated: paced, not all at once.
    assert last >= SLACK * (expected_total_s() - estimate_tokens("warehouse.") / FIXED.tokens_per_s)
    assert total >= SLACK * expected_total_s()


@pytest.mark.parametrize("stream", [True, False])
def test_concurrent_requests_overlap_as_at_a_real_provider(paced: StandinCloud, stream: bool) -> None:
    single = ask(paced, stream=stream)[2]
    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: ask(paced, stream=stream), range(8)))
    together = time.perf_counter() - started
    assert all(text == ANSWER and total >= SLACK * expected_total_s() for *_, total, text in results)
    # Served one after another, eight answers would take 8x one; overlapping, about 1x.
    assert together < 4 * single
