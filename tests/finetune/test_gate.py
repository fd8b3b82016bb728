from __future__ import annotations

import pytest
from pydantic import ValidationError

from finetune.gate import GateConfig, GateDecision, decide

GOOD = {"similarity": 0.70, "rouge_l": 0.30, "degenerate_rate": 0.0, "format_valid_rate": 1.0, "latency_p50_ms": 900.0}


def with_(**changes: float) -> dict[str, float]:
    return {**GOOD, **changes}


def test_better_candidate_is_promoted() -> None:
    decision = decide(with_(similarity=0.75), GOOD, GateConfig())
    assert isinstance(decision, GateDecision) and decision.promote
    assert any("gain +0.0500" in r for r in decision.reasons)
    assert decision.serving == GOOD and decision.candidate["similarity"] == 0.75


def test_worse_candidate_is_refused() -> None:
    decision = decide(with_(similarity=0.65), GOOD)
    assert not decision.promote
    assert any("similarity" in r and "below the required" in r for r in decision.reasons)


def test_margin_is_required() -> None:
    assert not decide(with_(similarity=0.705), GOOD).promote
    assert decide(with_(similarity=0.71), GOOD).promote  # exactly the margin passes
    assert decide(with_(similarity=0.705), GOOD, GateConfig(min_improvement=0.0)).promote


def test_rouge_regression_is_refused() -> None:
    decision = decide(with_(similarity=0.80, rouge_l=0.27), GOOD)
    assert not decision.promote and any("rouge_l" in r and "exceeds" in r for r in decision.reasons)
    assert decide(with_(similarity=0.80, rouge_l=0.285), GOOD).promote


@pytest.mark.parametrize(
    ("changes", "config", "word"),
    [
        ({"degenerate_rate": 0.10}, GateConfig(), "degenerate_rate"),
        ({"format_valid_rate": 0.5}, GateConfig(), "format_valid_rate"),
        ({"similarity": 0.3}, GateConfig(min_similarity=0.5), "similarity"),
        ({"rouge_l": 0.1}, GateConfig(min_rouge_l=0.2), "rouge_l"),
        ({"latency_p50_ms": 5000.0}, GateConfig(max_latency_p50_ms=2000), "latency_p50_ms"),
    ],
)
def test_floors_apply_even_without_a_served_model(changes: dict[str, float], config: GateConfig, word: str) -> None:
    decision = decide(with_(**changes), None, config)
    assert not decision.promote
    assert any(word in r for r in decision.reasons), decision.reasons


def test_first_candidate_passing_floors_is_promoted() -> None:
    decision = decide(GOOD, None)
    assert decision.promote and decision.serving is None


def test_missing_or_nan_metrics_refuse() -> None:
    assert not decide({"similarity": 0.9}, None).promote
    assert not decide(with_(similarity=float("nan")), GOOD).promote
    decision = decide(with_(similarity=0.9), {"rouge_l": 0.3})
    assert not decision.promote and any("served model has no similarity" in r for r in decision.reasons)


def test_config_is_validated() -> None:
    with pytest.raises(ValidationError):
        GateConfig(max_degenerate_rate=2.0)
    assert GateConfig.model_fields["min_improvement"].description
