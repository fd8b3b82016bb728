"""Quantization report: how often each quantization of a merged model answers like its F16 original.

A standard pre-deployment check. Every model answers the same frozen prompts greedily through
llama.cpp (as served); each quantized answer is then *identical* to the F16 answer, *similar*
(embedding cosine ≥ ``similar_at``), or *different*. Quality against the references, file size
and decode speed are reported alongside, so the size/quality trade is visible in one table.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune.evaluate import EvalConfig, evaluate_model, similarity_scores
from finetune.merge import merge_adapter, quantize_gguf

if TYPE_CHECKING:
    from finetune.datasets import Example
    from router.config import LocalConfig

__all__ = ["quantization_report"]


def quantization_report(
    base_gguf: str | Path,
    adapter_gguf: str | Path | None,
    examples: Sequence[Example],
    workdir: str | Path,
    *,
    kinds: Sequence[str] = ("Q8_0", "Q5_K_M", "Q4_K_M"),
    similar_at: float = 0.9,
    config: EvalConfig | None = None,
    serving: LocalConfig | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Merge, quantize to each of ``kinds``, answer ``examples`` with every model, compare to F16."""
    workdir = Path(workdir)
    f16 = merge_adapter(base_gguf, adapter_gguf, workdir / "merged-f16.gguf")
    reference = evaluate_model(examples, model_path=f16, config=config, serving=serving, progress=progress, label="F16")
    report: dict[str, Any] = {
        "examples": len(examples),
        "similar_at": similar_at,
        "models": {"F16": _summary(f16, reference.metrics)},
    }
    for kind in kinds:
        path = quantize_gguf(f16, workdir / f"merged-{kind.lower()}.gguf", kind)  # type: ignore[arg-type]
        quantized = evaluate_model(examples, model_path=path, config=config, serving=serving, progress=progress, label=kind)
        ours = [a.answer for a in quantized.answers]
        theirs = [a.answer for a in reference.answers]
        closeness = similarity_scores(ours, theirs, config.encoder_path if config else None)
        identical = sum(a == b for a, b in zip(ours, theirs, strict=True))
        similar = sum(a != b and s >= similar_at for a, b, s in zip(ours, theirs, closeness, strict=True))
        n = max(1, len(examples))
        report["models"][kind] = {
            **_summary(path, quantized.metrics),
            "identical_to_f16": identical / n,
            "similar_to_f16": similar / n,
            "different_from_f16": (len(examples) - identical - similar) / n,
        }
    return report


def _summary(path: Path, metrics: dict[str, float]) -> dict[str, Any]:
    return {
        "file_mb": round(path.stat().st_size / 2**20, 1),
        "similarity_to_reference": metrics["similarity"],
        "rouge_l": metrics["rouge_l"],
        "degenerate_rate": metrics["degenerate_rate"],
        "tokens_per_s": metrics["tokens_per_s"],
    }
