"""Ship the adapter ``make demo-retrain`` promoted, with its evidence, for ``make demo`` (``make ship-adapter``).

Training inside the demo does not fit its time (900 examples take about 30 minutes on 2 cores), so
the demo serves this shipped output of the retrain loop instead. This script:

1. copies the promoted adapter from the retrain demo's registry to ``evals/adapters/bitext-support/``;
2. evaluates it exactly as served (``finetune.evaluate``, the router's ``[local]`` settings with
   256-token answers) on the registry's frozen evaluation set, per category: the evidence the
   quality gate reads when the demo registers the adapter;
3. writes ``manifest.json`` (checksums, base model, training facts, the prompt keys it was
   trained on, so the demo can replay only queries it never saw, and the metrics) and the
   answers to ``evals/corpora/tuned_answers.jsonl`` (the guard's tuned-answer corpus).

``--check`` instead evaluates a freshly retrained adapter the same way and compares its metrics
with the shipped manifest: rebuilding must reproduce them within ±0.02 (``make adapter-check``).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SHIPPED = HERE / "adapters" / "bitext-support"
TUNED_CORPUS = HERE / "corpora" / "tuned_answers.jsonl"
ANSWER_TOKENS = 256
TOLERANCE = 0.02
COMPARED = ("similarity", "rouge_l", "degenerate_rate", "format_valid_rate")


EXTRA_PER_CATEGORY = 30


def held_out_extras(registry: Path, trained_keys: set[str], frozen: list[Any]) -> list[Any]:
    """Never-trained Bitext examples for each trained category the frozen set has no block for.

    A category whose evaluation buckets held fewer than 30 examples in the retrain's traffic got no
    frozen block; it is measured here on 30 queries the adapter never saw (not in its training
    snapshot, not frozen), so every category it serves has evidence.
    """
    from evals.demo import LOCAL_CATEGORIES, load_bitext
    from finetune.datasets import Example

    frozen_keys = {e.prompt_key for e in frozen}
    covered = {e.category for e in frozen}
    extras: list[Any] = []
    for category in LOCAL_CATEGORIES:
        if category in covered:
            continue
        candidates = [
            Example(({"role": "user", "content": r["instruction"]},), r["response"], category, f"bitext-held-out:{i}")
            for i, r in enumerate(load_bitext())
            if r["category"] == category
        ]
        fresh = {e.prompt_key: e for e in candidates if e.prompt_key not in trained_keys and e.prompt_key not in frozen_keys}
        extras += [fresh[k] for k in sorted(fresh)][:EXTRA_PER_CATEGORY]
    return extras


def evaluate(registry: Path, version: str) -> tuple[Any, Any, list[Any]]:
    """The version's answers, evaluated as served, to the registry's frozen set plus held-out extras
    for categories without a frozen block; (report, registry, examples)."""
    from finetune.datasets import DatasetSnapshot, FrozenEvalSet
    from finetune.evaluate import EvalConfig, evaluate_model
    from finetune.registry import ModelRegistry
    from router.config import LocalConfig

    reg = ModelRegistry(registry)
    frozen = FrozenEvalSet.load(registry).examples
    snapshot = DatasetSnapshot.load(registry / "datasets" / str(reg.get(version).dataset_id))
    examples = frozen + held_out_extras(registry, {e.prompt_key for e in snapshot.train}, frozen)
    report = evaluate_model(
        examples, adapter_path=reg.adapter_path(version), config=EvalConfig(n_threads=2),
        serving=LocalConfig(default_max_tokens=ANSWER_TOKENS, registry_path=None), label=f"evaluating {version}",
    )  # fmt: skip
    return report, reg, examples


def ship(registry: Path, version: str | None) -> dict[str, Any]:
    from finetune.datasets import DatasetSnapshot
    from finetune.registry import ModelRegistry
    from hybrid_common.files import sha256_file, write_text_atomic
    from router.backends import packaged_model_path

    version = version or ModelRegistry(registry).serving().version  # type: ignore[union-attr]
    report, reg, examples = evaluate(registry, version)
    record = reg.get(version)
    snapshot = DatasetSnapshot.load(registry / "datasets" / str(record.dataset_id))
    SHIPPED.mkdir(parents=True, exist_ok=True)
    adapter = SHIPPED / "adapter.gguf"
    shutil.copyfile(reg.adapter_path(version), adapter)  # type: ignore[arg-type]
    manifest = {
        "name": "bitext-support",
        "adapter_file": adapter.name,
        "adapter_sha256": sha256_file(adapter),
        "base_model": packaged_model_path().name,
        "base_sha256": sha256_file(packaged_model_path()),
        "source_version": version,
        "dataset_id": record.dataset_id,
        "train": {k: record.train.get(k) for k in ("examples", "steps", "epochs", "seconds", "tokens_per_s", "lora_r", "lora_alpha")},
        "train_prompt_keys": sorted({e.prompt_key for e in snapshot.train}),
        "answer_tokens": ANSWER_TOKENS,
        "evaluation": {
            "frozen_examples": sum(1 for e in examples if not e.source.startswith("bitext-held-out")),
            "held_out_extra": dict(Counter(e.category for e in examples if e.source.startswith("bitext-held-out"))),
        },
        "metrics": report.metrics,
        "category_metrics": report.by_category,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "produced_by": "make demo-retrain && make ship-adapter",
    }
    write_text_atomic(SHIPPED / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    TUNED_CORPUS.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps({"question": e.query, "category": e.category, "answer": a.answer, "degenerate": a.degenerate}, ensure_ascii=False)
        for e, a in zip(examples, report.answers, strict=True)
    ]
    write_text_atomic(TUNED_CORPUS, "\n".join(lines) + "\n")
    return manifest


def check(registry: Path, version: str | None) -> int:
    """Rebuilt adapter vs the shipped manifest: every compared metric within ±TOLERANCE."""
    from finetune.registry import ModelRegistry

    shipped = json.loads((SHIPPED / "manifest.json").read_text(encoding="utf-8"))
    version = version or ModelRegistry(registry).serving().version  # type: ignore[union-attr]
    report, _, _ = evaluate(registry, version)
    failures = []
    for key in COMPARED:
        delta = report.metrics[key] - shipped["metrics"][key]
        status = "ok" if abs(delta) <= TOLERANCE else "DIFFERS"
        print(f"{key:<20} shipped {shipped['metrics'][key]:.3f}  rebuilt {report.metrics[key]:.3f}  delta {delta:+.3f}  {status}")
        if status != "ok":
            failures.append(key)
    for category, metrics in sorted(report.by_category.items()):  # shown, not judged: 30 answers each
        was = shipped["category_metrics"].get(category, {}).get("similarity")
        if was is not None:
            print(f"  {category:<18} similarity shipped {was:.3f}  rebuilt {metrics['similarity']:.3f}  delta {metrics['similarity'] - was:+.3f}")
    print("reproduced within ±0.02" if not failures else f"not reproduced: {', '.join(failures)}")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", type=Path, default=Path(".demo-retrain/registry"))
    parser.add_argument("--version", help="registry version (default: the one serving)")
    parser.add_argument("--check", action="store_true", help="compare a rebuilt adapter with the shipped manifest")
    args = parser.parse_args(argv)
    if args.check:
        return check(args.registry, args.version)
    manifest = ship(args.registry, args.version)
    print(json.dumps({k: manifest[k] for k in ("adapter_sha256", "metrics", "category_metrics")}, indent=1))
    print(f"shipped to {SHIPPED}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
