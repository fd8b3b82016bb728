"""The stand-in cloud's latency model as pure logic: the draws, the chunk schedule, the flags (no server, no timing)."""

from __future__ import annotations

import random
import statistics

import pytest
from pydantic import ValidationError

from evals.standin_cloud import _latency_args, _latency_from_args, _parser, _token_cap
from evals.standin_latency import (
    TOKENS_PER_WORD,
    LatencyModel,
    RequestTiming,
    chunk_offsets,
    estimate_tokens,
)


def test_the_defaults_are_the_published_gpt_4o_mini_figures() -> None:
    model = LatencyModel()
    assert (model.enabled, model.ttft_s, model.tokens_per_s, model.jitter) == (True, 0.45, 75.0, 0.25)


def test_a_seeded_draw_is_reproducible_and_keeps_the_configured_figures_as_medians() -> None:
    model = LatencyModel(seed=7)
    first = [model.draw(random.Random(model.seed)) for _ in range(3)]
    rng_a, rng_b = random.Random(7), random.Random(7)
    run_a, run_b = [model.draw(rng_a) for _ in range(2001)], [model.draw(rng_b) for _ in range(2001)]
    assert run_a == run_b
    assert first[0] == first[1] == first[2] == run_a[0]
    assert run_a != [model.draw(random.Random(8)) for _ in range(2001)]  # another seed, other delays
    # TTFT and speed get factors of their own: a slow start does not imply a slow answer.
    assert any(t.ttft_s / model.ttft_s != t.tokens_per_s / model.tokens_per_s for t in run_a)
    assert statistics.median(t.ttft_s for t in run_a) == pytest.approx(model.ttft_s, rel=0.05)
    assert statistics.median(t.tokens_per_s for t in run_a) == pytest.approx(model.tokens_per_s, rel=0.05)
    assert min(t.ttft_s for t in run_a) < 0.8 * model.ttft_s < 1.25 * model.ttft_s < max(t.ttft_s for t in run_a)  # jitter is applied


def test_without_jitter_every_request_gets_the_configured_figures() -> None:
    rng = random.Random(0)
    assert {LatencyModel(ttft_s=0.3, tokens_per_s=50.0, jitter=0.0).draw(rng) for _ in range(5)} == {RequestTiming(0.3, 50.0)}


def test_no_latency_means_no_delay_and_draws_nothing() -> None:
    rng = random.Random(3)
    state = rng.getstate()
    timing = LatencyModel.none().draw(rng)
    assert rng.getstate() == state
    assert timing.total_s(estimate_tokens("a long answer " * 200)) == 0.0
    assert chunk_offsets(timing, ("word " * 50).split(" ")) == [0.0] * 52


def test_chunks_come_at_ttft_then_at_the_token_rate_and_close_when_a_plain_answer_would() -> None:
    timing = RequestTiming(ttft_s=0.3, tokens_per_s=50.0)
    pieces = ["It", "ships\ntomorrow,", "maybe."]  # as the stand-in cuts a stream: on spaces
    step = TOKENS_PER_WORD / 50.0
    assert chunk_offsets(timing, pieces) == pytest.approx([0.3, 0.3 + step, 0.3 + 3 * step, 0.3 + 4 * step])
    assert chunk_offsets(timing, pieces)[-1] == pytest.approx(timing.total_s(estimate_tokens(" ".join(pieces))))


def test_the_schedule_stops_where_a_provider_capped_at_max_tokens_would() -> None:
    timing = RequestTiming(ttft_s=0.3, tokens_per_s=50.0)
    pieces = ("word " * 40).strip().split(" ")  # 52 estimated tokens
    capped = chunk_offsets(timing, pieces, max_tokens=10)
    assert capped[-1] == pytest.approx(0.3 + 10 / 50.0)
    assert capped[-1] == pytest.approx(timing.total_s(estimate_tokens(" ".join(pieces)), 10))  # as a non-streamed answer
    assert capped[-1] < chunk_offsets(timing, pieces)[-1]
    assert len(capped) == len(pieces) + 1  # every piece is still sent: the content is not cut
    assert chunk_offsets(timing, pieces, max_tokens=1000) == chunk_offsets(timing, pieces)  # a cap above the answer changes nothing


@pytest.mark.parametrize(
    ("body", "cap"),
    [
        ({}, None),
        ({"max_tokens": 10}, 10),
        ({"max_completion_tokens": 12}, 12),
        ({"max_tokens": 30, "max_completion_tokens": 12}, 12),
        ({"max_tokens": 0, "max_completion_tokens": "5"}, None),
        ({"max_tokens": True, "max_completion_tokens": None}, None),
    ],
)
def test_the_cap_is_the_smaller_of_max_tokens_and_max_completion_tokens(body: dict[str, object], cap: int | None) -> None:
    assert _token_cap(body) == cap


@pytest.mark.parametrize("bad", [{"ttft_s": -0.1}, {"tokens_per_s": 0.0}, {"jitter": -1.0}, {"ttfts": 1.0}])
def test_an_impossible_model_is_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        LatencyModel(**bad)


@pytest.mark.parametrize("model", [LatencyModel(), LatencyModel.none(), LatencyModel(ttft_s=0.3, tokens_per_s=50.0, jitter=0.0, seed=11)])
def test_standin_cloud_hands_the_subprocess_the_same_model(model: LatencyModel) -> None:
    args = _parser().parse_args(["--record", "requests.jsonl", "--answers", "answers.jsonl", *_latency_args(model)])
    assert _latency_from_args(args) == model
