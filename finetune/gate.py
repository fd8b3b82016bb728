"""The promotion gate: a retrained adapter replaces the served model only when it is measurably better.

A retrain that merely matches the served model is not worth the risk of a swap, so the candidate
must beat it on the primary metric by a margin, may not give back ROUGE-L, and must clear
absolute floors (degenerate answers, broken format, optional latency) whatever it is compared to.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["GateConfig", "GateDecision", "decide"]

_EPS = 1e-9


class GateConfig(BaseModel):
    """Thresholds a candidate must meet to be promoted."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    primary_metric: str = Field("similarity", description="Metric the candidate must improve on the served model.")
    min_improvement: float = Field(
        0.01, ge=0, description="Absolute gain on the primary metric required over the served model."
    )
    max_regression: float = Field(0.02, ge=0, description="Largest ROUGE-L drop against the served model tolerated.")
    min_similarity: float = Field(0.0, ge=0, le=1, description="Floor on mean cosine similarity to the references.")
    min_rouge_l: float = Field(0.0, ge=0, le=1, description="Floor on mean ROUGE-L F1.")
    max_degenerate_rate: float = Field(0.05, ge=0, le=1, description="Ceiling on the share of degenerate answers.")
    min_format_valid_rate: float = Field(0.9, ge=0, le=1, description="Floor on the share of well-formed answers.")
    max_latency_p50_ms: float | None = Field(None, gt=0, description="Ceiling on median local latency; None = no limit.")


@dataclass
class GateDecision:
    """Whether to promote, and why, in sentences a person reviewing a retrain can act on."""

    promote: bool
    reasons: list[str] = field(default_factory=list)
    candidate: dict[str, float] = field(default_factory=dict)
    serving: dict[str, float] | None = None

    def __str__(self) -> str:
        verdict = "promote" if self.promote else "keep the served model"
        return f"{verdict}: " + "; ".join(self.reasons)


def _value(metrics: Mapping[str, float], key: str) -> float | None:
    value = metrics.get(key)
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def decide(
    candidate: Mapping[str, float], serving: Mapping[str, float] | None, config: GateConfig | None = None
) -> GateDecision:
    """Compare a candidate's evaluation metrics with the served model's (None: nothing served yet).

    ``reasons`` lists the failed checks when the candidate is refused, else what it passed.
    """
    config = config or GateConfig()
    failed: list[str] = []
    passed: list[str] = []

    def floor(key: str, limit: float, *, ceiling: bool = False) -> None:
        value = _value(candidate, key)
        if value is None:
            failed.append(f"candidate has no {key} metric")
        elif ceiling and value > limit + _EPS:
            failed.append(f"{key} {value:.4f} is above the ceiling {limit:.4f}")
        elif not ceiling and value < limit - _EPS:
            failed.append(f"{key} {value:.4f} is below the floor {limit:.4f}")
        else:
            passed.append(f"{key} {value:.4f} within {'ceiling' if ceiling else 'floor'} {limit:.4f}")

    floor("similarity", config.min_similarity)
    floor("rouge_l", config.min_rouge_l)
    floor("degenerate_rate", config.max_degenerate_rate, ceiling=True)
    floor("format_valid_rate", config.min_format_valid_rate)
    if config.max_latency_p50_ms is not None:
        floor("latency_p50_ms", config.max_latency_p50_ms, ceiling=True)

    primary = config.primary_metric
    if serving is None:
        passed.append("no model is being served yet, so the floors decide")
    else:
        cand, base = _value(candidate, primary), _value(serving, primary)
        if cand is None or base is None:
            who = "candidate" if cand is None else "served model"
            failed.append(f"the {who} has no {primary} metric to compare")
        elif cand - base < config.min_improvement - _EPS:
            failed.append(
                f"{primary} {cand:.4f} vs served {base:.4f}: gain {cand - base:+.4f} is below the required "
                f"{config.min_improvement:+.4f}"
            )
        else:
            passed.append(f"{primary} {cand:.4f} vs served {base:.4f}: gain {cand - base:+.4f}")
        cand_r, base_r = _value(candidate, "rouge_l"), _value(serving, "rouge_l")
        if cand_r is not None and base_r is not None:
            if base_r - cand_r > config.max_regression + _EPS:
                failed.append(
                    f"rouge_l {cand_r:.4f} vs served {base_r:.4f}: drop {base_r - cand_r:.4f} exceeds the allowed "
                    f"{config.max_regression:.4f}"
                )
            else:
                passed.append(f"rouge_l {cand_r:.4f} vs served {base_r:.4f}: no regression beyond {config.max_regression:.4f}")
        elif base_r is None and cand_r is not None:
            passed.append("served model has no rouge_l metric; regression not checked")
    return GateDecision(
        promote=not failed,
        reasons=failed or passed,
        candidate={k: float(v) for k, v in candidate.items()},
        serving=None if serving is None else {k: float(v) for k, v in serving.items()},
    )
