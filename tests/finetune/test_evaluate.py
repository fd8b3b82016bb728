"""Evaluation generates exactly as the router serves: same settings, same guarded loop, same text."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune.datasets import Example
from finetune.evaluate import EvalConfig, EvalReport, ScoredAnswer, evaluate_model, followup_line, summarise, summarise_by_category
from finetune.gate import decide
from tests.conftest import bitext_rows, user


def test_removed_generation_keys_point_to_the_router_config() -> None:
    with pytest.raises(ValueError, match="local.n_ctx"):
        EvalConfig.model_validate({"n_ctx": 1024})
    assert EvalConfig(n_threads=2).n_threads == 2


def _scored(similarity: float, *, followup: bool, category: str = "ORDER") -> ScoredAnswer:
    return ScoredAnswer("s", "answer", "reference", similarity, 0.3, None, True, 20, 1.0, category, followup)


def test_follow_ups_are_summarised_apart_from_first_questions(tmp_path: Path) -> None:
    from finetune.evidence import EvidenceResult, format_report
    from router.config import RouterConfig

    answers = [_scored(0.9, followup=False), _scored(0.7, followup=False), _scored(0.2, followup=True), _scored(0.4, followup=True, category="REFUND")]
    metrics = summarise(answers)
    assert metrics["similarity"] == pytest.approx(0.55) and metrics["examples"] == 4  # the gate's figures: all answers
    assert metrics["followup_count"] == 2
    assert metrics["followup_similarity"] == pytest.approx(0.3) and metrics["first_turn_similarity"] == pytest.approx(0.8)
    refund = summarise_by_category(answers)["REFUND"]
    assert (refund["followup_count"], refund["followup_similarity"], refund["first_turn_similarity"]) == (1, pytest.approx(0.4), 0.0)

    assert followup_line(metrics) == "follow-ups 2 of 4: similarity 0.300 (first questions 0.800)"
    assert followup_line(refund) == "follow-ups 1 of 1: similarity 0.400 (first questions -)"
    assert followup_line(summarise(answers[:2])) == "follow-ups 0 of 2: similarity - (first questions 0.800)"
    assert followup_line({"similarity": 0.5, "examples": 3}) is None  # measured before follow-ups were counted
    report = EvalReport(metrics, answers, summarise_by_category(answers))
    text = format_report(EvidenceResult("model:m", tmp_path / "model_m.json", report), RouterConfig())
    assert text.splitlines()[-1].strip() == followup_line(metrics)
    # Reported, not gated: the promotion decision reads the same figures as before.
    before = {k: v for k, v in metrics.items() if not k.startswith(("followup", "first_turn"))}
    worse = {**metrics, "followup_similarity": 0.0}
    assert decide(worse, before).promote == decide(before, before).promote
    assert decide(worse, before).reasons == decide(before, before).reasons


@pytest.mark.slow
def test_evaluation_answers_are_the_served_answers(tmp_path: Path) -> None:
    from router import Client, RouterConfig

    rows = [r for r in bitext_rows() if r["category"] in {"ORDER", "SHIPPING"}][:6]
    # Follow-ups too: the whole conversation is answered, and the guard judges it with its earlier turns.
    cases = [(user(r["instruction"]), r) for r in rows] + [
        ([*user(r["instruction"]), {"role": "assistant", "content": r["response"]}, *user("ok, and how long will that take?")], r)
        for r in rows[:2]
    ]
    local = {"n_threads": 1, "default_max_tokens": 100, "registry_path": None}
    config = RouterConfig(local=local, cloud={"preimport": False}, log={"path": tmp_path / "log.db"}, warmup="lazy")
    with Client(config) as client:  # model="local": no fallback, the guard's cut is what is served
        served = [client.chat.completions.create(model="local", messages=messages) for messages, _ in cases]
    examples = [Example(tuple(m), r["response"], r["category"], f"row-{i}") for i, (m, r) in enumerate(cases)]
    report = evaluate_model(examples, serving=config.local, config=EvalConfig(n_threads=1), progress=False)

    assert [a.followup for a in report.answers] == [False] * 6 + [True] * 2
    assert report.metrics["followup_count"] == 2
    assert [a.answer for a in report.answers] == [r.choices[0].message.content for r in served]
    assert [a.degenerate for a in report.answers] == [r.router.degenerate for r in served]
    assert [a.completion_tokens for a in report.answers] == [r.usage.completion_tokens for r in served]
    # The untuned base model echoes and loops: the comparison covers answers the guard cut short.
    assert any(a.degenerate for a in report.answers)
