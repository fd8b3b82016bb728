"""finetune: turn the router's traffic log into a better local model, promoted only when it wins.

``retrain(config)`` runs one cycle (dataset snapshot → LoRA training → GGUF adapter export →
evaluation as served → gate → promotion), reading only what the log gained since the last cycle
(``LogPool``); the pieces are public for custom pipelines. Names load on first access (PEP 562):
torch, transformers and peft are imported only by the functions that train or evaluate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hybrid_common.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "retrain": "finetune.retrain",
    "RetrainResult": "finetune.retrain",
    "RetrainConfig": "finetune.config",
    "Example": "finetune.datasets",
    "DatasetFilters": "finetune.datasets",
    "DatasetSnapshot": "finetune.datasets",
    "FrozenEvalSet": "finetune.datasets",
    "build_snapshot": "finetune.datasets",
    "clean": "finetune.datasets",
    "examples_from_log": "finetune.datasets",
    "iter_examples_from_log": "finetune.datasets",
    "LogPool": "finetune.log_pool",
    "PoolUpdate": "finetune.log_pool",
    "prune_snapshots": "finetune.datasets",
    "examples_from_jsonl": "finetune.datasets",
    "examples_from_csv": "finetune.datasets",
    "TrainConfig": "finetune.training",
    "TrainResult": "finetune.training",
    "load_base_model": "finetune.training",
    "train_lora": "finetune.training",
    "measure_logits_speedup": "finetune.training",
    "export_adapter": "finetune.export",
    "write_lora_gguf": "finetune.export",
    "EvalConfig": "finetune.evaluate",
    "EvalReport": "finetune.evaluate",
    "evaluate_model": "finetune.evaluate",
    "rouge_l": "finetune.evaluate",
    "GateConfig": "finetune.gate",
    "GateDecision": "finetune.gate",
    "decide": "finetune.gate",
    "ModelRegistry": "finetune.registry",
    "ModelVersion": "finetune.registry",
    "NoRollbackTargetError": "finetune.registry",
    "BASE_VERSION": "finetune.registry",
    "ClassifierRegistry": "finetune.classifier_registry",
    "ClassifierVersion": "finetune.classifier_registry",
    "split_bucket": "finetune.datasets",
    "update_classifier": "finetune.classifier_update",
    "evaluate_served": "finetune.evidence",
    "EvidenceResult": "finetune.evidence",
    "merge_adapter": "finetune.merge",
    "quantize_gguf": "finetune.merge",
    "quantization_report": "finetune.quant_report",
}

__all__, __getattr__, __dir__ = lazy_exports("finetune", _EXPORTS, globals())


if TYPE_CHECKING:
    from finetune.classifier_registry import ClassifierRegistry, ClassifierVersion
    from finetune.classifier_update import update_classifier
    from finetune.config import RetrainConfig
    from finetune.datasets import (
        DatasetFilters,
        DatasetSnapshot,
        Example,
        FrozenEvalSet,
        build_snapshot,
        clean,
        examples_from_csv,
        examples_from_jsonl,
        examples_from_log,
        iter_examples_from_log,
        prune_snapshots,
        split_bucket,
    )
    from finetune.evaluate import EvalConfig, EvalReport, evaluate_model, rouge_l
    from finetune.evidence import EvidenceResult, evaluate_served
    from finetune.export import export_adapter, write_lora_gguf
    from finetune.gate import GateConfig, GateDecision, decide
    from finetune.log_pool import LogPool, PoolUpdate
    from finetune.merge import merge_adapter, quantize_gguf
    from finetune.quant_report import quantization_report
    from finetune.registry import BASE_VERSION, ModelRegistry, ModelVersion, NoRollbackTargetError
    from finetune.retrain import RetrainResult, retrain
    from finetune.training import TrainConfig, TrainResult, load_base_model, measure_logits_speedup, train_lora
