"""``router evaluate``: per-category quality evidence for the model the router serves, without a retrain.

A user who brings their own GGUF or adapter gets the same evidence a retrain records: the
configured local model (and adapter) answers a labelled set exactly as served, and the
per-category figures are recorded where the router's quality gate reads them: in the registry's
``version.json`` when the router serves a registry version, else in the evidence store under the
model's key (``quality.evidence_dir``). Running routers pick the new figures up for the next version
they serve, or at restart.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hybrid_common.errors import ConfigError

if TYPE_CHECKING:
    from finetune.datasets import Example
    from finetune.evaluate import EvalReport
    from router.config import RouterConfig

__all__ = ["EvidenceResult", "evaluate_served"]


@dataclass
class EvidenceResult:
    key: str
    recorded_in: Path
    report: EvalReport


def _examples(config: RouterConfig, data: Path | None, category_column: str | None) -> list[Example]:
    from finetune.datasets import FrozenEvalSet, examples_from_csv, examples_from_jsonl

    if data is not None:
        if data.suffix == ".jsonl":
            return examples_from_jsonl(data)
        return examples_from_csv(data, category_column=category_column or "category")
    registry = config.local.followed_registry or config.local.registry_path
    if registry is not None and FrozenEvalSet.exists(registry):
        return FrozenEvalSet.load(registry).examples
    raise ConfigError("no evaluation data: pass --data FILE (JSONL or CSV with a category column) or run `router retrain` first")


def evaluate_served(
    config: RouterConfig,
    *,
    data: Path | None = None,
    adapter: Path | None = None,
    category_column: str | None = None,
    progress: bool = True,
) -> EvidenceResult:
    """Evaluate the served model (or ``adapter``) per category and record the evidence for the gate."""
    from finetune.evaluate import EvalConfig, evaluate_model
    from finetune.registry import ModelRegistry
    from hybrid_common.files import sha256_file
    from router.backends import packaged_model_path
    from router.quality import model_key, write_evidence

    examples = _examples(config, data, category_column)
    if not examples:
        raise ConfigError("the evaluation data holds no examples")
    local = config.local
    registry = ModelRegistry(local.followed_registry) if local.followed_registry is not None and adapter is None else None
    serving = registry.serving(verify=True) if registry is not None else None
    if serving is not None and registry is not None:
        adapter_path = registry.adapter_path(serving.version)
        key = model_key(registry_version=serving.version, model_name="")
    else:
        adapter_path = adapter or local.adapter_path
        model_name = local.model_name or Path(local.model_path or packaged_model_path()).stem
        key = model_key(adapter_sha256=sha256_file(adapter_path) if adapter_path else None, model_name=model_name)
    report = evaluate_model(
        examples, model_path=local.model_path, adapter_path=adapter_path, config=EvalConfig(),
        serving=local, progress=progress, label=f"evaluating {key}",
    )  # fmt: skip
    fingerprint = hashlib.sha256("\n".join(e.prompt_key for e in examples).encode()).hexdigest()[:16]
    if serving is not None and registry is not None:
        registry.update_metrics(serving.version, report.metrics, eval_set=fingerprint, category_metrics=report.by_category)
        where = registry.versions_dir / serving.version / "version.json"
    else:
        source = str(data) if data is not None else "the registry's frozen evaluation set"
        where = write_evidence(
            config.quality.evidence_dir, key, category_metrics=report.by_category, metrics=report.metrics,
            source=f"{source} ({len(examples)} examples, eval set {fingerprint})",
        )  # fmt: skip
    return EvidenceResult(key, where, report)


def format_report(result: EvidenceResult, config: RouterConfig) -> str:
    """The per-category table ``router evaluate`` prints, with the verdict the router's gate gives on it."""
    from finetune.evaluate import followup_line
    from router.quality import QualityGate, evidence_from_metrics

    evidence = evidence_from_metrics(result.report.by_category, f"evaluation {result.recorded_in.name}")
    gate = QualityGate(config.quality, lambda _key: evidence)
    lines = [f"{result.key}: recorded in {result.recorded_in}", f"  {'category':<20}{'n':>5}{'similarity':>12}{'degenerate':>12}  gate"]
    for category, m in result.report.by_category.items():
        verdict = gate.verdict(result.key, category)
        state = "open" if verdict.open else (verdict.reason.value if verdict.reason else "closed")
        lines.append(f"  {category:<20}{m['examples']:>5.0f}{m['similarity']:>12.3f}{m['degenerate_rate']:>12.1%}  {state}")
    if (line := followup_line(result.report.metrics)) is not None:
        lines.append(f"  {line}")
    return "\n".join(lines)
