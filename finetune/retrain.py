"""One retrain: traffic log → dataset snapshot → LoRA → GGUF adapter → evaluation → gate → promotion.

The log is read incrementally: a pool of its cleaned examples (:mod:`finetune.log_pool`) is
kept in the registry, so a run reads and cleans only the rows (and feedback) logged since the last.
Idempotent and safe to run from cron: too little new data, or a snapshot already trained on,
changes nothing; training happens in a run directory named after the snapshot and settings, so
an interrupted run resumes from its last checkpoint next time; the serving pointer is switched
(atomically, by the registry) only after the candidate has passed the gate on the frozen
evaluation set, evaluated with llama.cpp exactly as it will be served.
"""

from __future__ import annotations

import hashlib
import json
import itertools
import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from finetune.config import RetrainConfig
from finetune.datasets import (
    DatasetSnapshot,
    Example,
    build_snapshot,
    examples_from_csv,
    examples_from_jsonl,
    prune_snapshots,
)
from finetune.evaluate import evaluate_model, followup_line
from finetune.gate import GateDecision, decide
from finetune.log_pool import LogPool
from finetune.registry import BASE_VERSION, ModelRegistry, ModelVersion
from hybrid_common.errors import ConfigError

__all__ = ["RetrainResult", "retrain"]

logger = logging.getLogger(__name__)

Status = Literal["promoted", "canary", "rejected", "skipped"]


@dataclass
class RetrainResult:
    """What a retrain did, and why."""

    status: Status
    message: str
    dataset_id: str | None = None
    version: str | None = None
    serving_version: str | None = None
    candidate_metrics: dict[str, float] = field(default_factory=dict)
    serving_metrics: dict[str, float] = field(default_factory=dict)
    candidate_by_category: dict[str, dict[str, float]] = field(default_factory=dict)
    serving_by_category: dict[str, dict[str, float]] = field(default_factory=dict)
    decision: GateDecision | None = None
    train: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "decision"}
        out["gate_reasons"] = list(self.decision.reasons) if self.decision else []
        return out


def _load_sources(
    config: RetrainConfig, *, full: bool = False, progress: bool = False, log: Callable[[str], None] = print
) -> tuple[Iterator[Example], LogPool | None, list[str]]:
    """The extra sources' examples (read and cleaned each run), the log's pool brought up to date, and their names."""
    from router.log_stores import is_database_url, masked_url

    location = config.log_location
    on_server = is_database_url(location)
    if not on_server and not Path(location).exists() and not config.extra_sources:
        raise ConfigError(f"no traffic log at {location} and no extra sources to learn from")
    examples: list[Iterable[Example]] = []
    sources: list[str] = []
    pool = None
    if on_server or Path(location).exists():
        # Only what is new since the last retrain is read and cleaned; the pool keeps the rest.
        pool = LogPool.for_retrain(config)
        update = pool.update(full=full, progress=progress)
        new = f"{update.rows_read:,} new rows since rowid {update.after_rowid}"
        read = f"whole log read, {update.rows_read:,} rows" if update.full_read else new
        if update.feedback_rows:
            read += f", {update.feedback_rows:,} older rows read again for new feedback"
        log(f"log: {read} (pool {len(pool):,} examples)")
        where = masked_url(str(location)) if on_server else location
        sources.append(f"log:{where} (pool {pool.fingerprint}: {len(pool)} cleaned examples, {update.rows_read} rows read "
                       f"after rowid {update.after_rowid}, {update.feedback_rows} again for feedback)")  # fmt: skip
    for path in config.extra_sources:
        reader = examples_from_jsonl if path.suffix == ".jsonl" else examples_from_csv
        examples.append(reader(path))
        sources.append(f"file:{path}")
    return itertools.chain.from_iterable(examples), pool, sources


def _capped(train: list[Example], limit: int, seed: int) -> list[Example]:
    """At most ``limit`` examples, chosen reproducibly from the snapshot."""
    if len(train) <= limit:
        return list(train)
    chosen = list(train)
    random.Random(seed).shuffle(chosen)
    return chosen[:limit]


def _eval_fingerprint(snapshot: DatasetSnapshot) -> str:
    keys = "\n".join(e.prompt_key for e in snapshot.eval)
    return hashlib.sha256(keys.encode()).hexdigest()[:16]


def _metrics_for(
    registry: ModelRegistry, version: ModelVersion, snapshot: DatasetSnapshot, config: RetrainConfig, progress: bool
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """The version's metrics (overall, per category) on the current frozen set, evaluated (and stored) if missing."""
    fingerprint = _eval_fingerprint(snapshot)
    if version.train.get("eval_set") == fingerprint and version.metrics and version.category_metrics:
        return dict(version.metrics), dict(version.category_metrics)
    adapter = registry.adapter_path(version.version)
    report = evaluate_model(
        snapshot.eval, model_path=config.base_model, adapter_path=adapter, config=config.evaluation,
        serving=config.serving, progress=progress, label=f"evaluating {version.version}",
    )  # fmt: skip
    registry.update_metrics(version.version, report.metrics, eval_set=fingerprint, category_metrics=report.by_category)
    return report.metrics, report.by_category


def retrain(
    config: RetrainConfig | None = None,
    *,
    progress: bool = True,
    dry_run: bool = False,
    full: bool = False,
    log: Callable[[str], None] = print,
) -> RetrainResult:
    """Run one retrain cycle; see the module docstring for what it guarantees.

    ``full`` discards the log's pool and reads the whole log again (``router retrain --full``).
    """
    from finetune.export import export_adapter
    from finetune.training import load_base_model, measure_logits_speedup, train_lora

    config = config or RetrainConfig.from_router_config()
    registry = ModelRegistry(config.registry_path)
    examples, pool, sources = _load_sources(config, full=full, progress=progress, log=log)
    snapshot = build_snapshot(
        examples, config.registry_path, filters=config.filters, seed=config.training.seed, sources=sources,
        cleaned=pool.examples() if pool is not None else (), cleaned_dropped=pool.dropped if pool is not None else None,
    )  # fmt: skip
    log(f"dataset {snapshot.id}: {len(snapshot.train)} training examples, {len(snapshot.eval)} frozen evaluation examples")

    serving = registry.serving()
    serving_train = serving.train if serving is not None else {}
    serving_name = serving.version if serving is not None else BASE_VERSION
    trained = {v.dataset_id for v in registry.versions() if v.dataset_id}
    pruned = prune_snapshots(config.registry_path, keep=trained | {snapshot.id}, keep_latest=config.keep_snapshots)
    if pruned:
        log(f"deleted {len(pruned)} old dataset snapshot(s) no version was trained on")
    if snapshot.id in trained:
        return RetrainResult("skipped", f"already trained on dataset {snapshot.id}; nothing new", snapshot.id, serving_version=serving_name)
    seen = set(serving_train.get("train_sources", []))
    new = [e for e in snapshot.train if e.source not in seen]
    if len(new) < config.min_new_examples:
        return RetrainResult(
            "skipped", f"only {len(new)} new training examples (need {config.min_new_examples}); nothing changed",
            snapshot.id, serving_version=serving_name,
        )  # fmt: skip
    if not snapshot.eval:
        return RetrainResult(
            "skipped", "no frozen evaluation examples yet: no category has "
            f"{config.filters.min_eval_per_category} examples in the evaluation buckets; nothing changed",
            snapshot.id, serving_version=serving_name,
        )  # fmt: skip
    # Trained on the prompts the local model is served (local.history: a later turn as one question about its topic).
    train_set = [e.as_served(config.serving.history) for e in _capped(snapshot.train, config.max_train_examples, config.training.seed)]
    if dry_run:
        return RetrainResult("skipped", f"dry run: would train on {len(train_set)} examples from dataset {snapshot.id}", snapshot.id, serving_version=serving_name)
    base_model = str(config.base_model or "packaged")
    # Nothing promoted yet: the base model is what serves; it is registered (not promoted) to be measured.
    first_run = serving is None
    if serving is None:
        serving = registry.ensure_base(base_model=base_model)

    serving_metrics, serving_by_category = _metrics_for(registry, serving, snapshot, config, progress)
    run_dir = Path(config.registry_path) / "runs" / f"{snapshot.id}-{config.training.fingerprint()}"
    log(f"training on {len(train_set)} examples in {run_dir} (resumes if interrupted)")
    base = load_base_model(config.base_model, device=config.training.device)
    speedup: dict[str, float] = {}
    if config.measure_logits_speedup:
        speedup = measure_logits_speedup(train_set, config.training, base=base)
        log(f"response-only logits: {speedup['speedup']:.2f}x faster per step than full-sequence logits")
    started = time.perf_counter()
    result = train_lora(train_set, run_dir, config.training, base=base, progress=progress)
    del base
    adapter = export_adapter(result.adapter_dir, run_dir / "adapter.gguf")
    train_info = {
        **result.as_dict(),
        "wall_seconds": time.perf_counter() - started,
        "train_sources": sorted(e.source for e in train_set),
        "logits": speedup,
    }
    train_info.pop("history", None)
    candidate_report = evaluate_model(
        snapshot.eval, model_path=config.base_model, adapter_path=adapter, config=config.evaluation,
        serving=config.serving, progress=progress, label="evaluating candidate",
    )  # fmt: skip
    (run_dir / "evaluation.json").write_text(json.dumps(candidate_report.as_dict(), indent=1))
    decision = decide(candidate_report.metrics, serving_metrics, config.gate)
    for who, metrics in ((f"served {serving.version}", serving_metrics), ("candidate", candidate_report.metrics)):
        if (line := followup_line(metrics)) is not None:  # reported, not gated: the gate reads the overall figures
            log(f"{who}: {line}")
    version = registry.add(
        adapter, metrics=candidate_report.metrics, category_metrics=candidate_report.by_category, dataset_id=snapshot.id,
        train={**train_info, "eval_set": _eval_fingerprint(snapshot), "gate": decision.reasons},
        base_model=base_model,
    )  # fmt: skip
    outcome = RetrainResult(
        "rejected", "", snapshot.id, version.version, serving.version,
        candidate_metrics=candidate_report.metrics, serving_metrics=serving_metrics,
        candidate_by_category=candidate_report.by_category, serving_by_category=serving_by_category,
        decision=decision, train=train_info,
    )  # fmt: skip
    if decision.promote:
        if first_run:  # so that a rollback returns to the base model
            registry.promote(serving.version, reason="initial base model")
        if config.canary_share > 0:
            registry.start_canary(version.version, config.canary_share, reason="; ".join(decision.reasons))
            outcome.status = "canary"
            outcome.message = (
                f"{version.version} passed the offline gate and serves {config.canary_share:.0%} of local traffic as a "
                f"canary beside {serving.version}; running routers decide on live evidence: " + "; ".join(decision.reasons)
            )
            return outcome
        registry.promote(version.version, reason="; ".join(decision.reasons))
        outcome.status = "promoted"
        outcome.message = f"{version.version} promoted over {serving.version}: " + "; ".join(decision.reasons)
    else:
        outcome.message = f"{version.version} kept but not promoted; {serving.version} still serves: " + "; ".join(decision.reasons)
    return outcome
