"""``make quant-report``: quantization report for the adapter ``make demo-retrain`` promoted.

Merges the promoted adapter into the base (F16), re-quantizes to Q8_0 / Q5_K_M / Q4_K_M with
llama.cpp, answers the first ``--examples`` prompts of the frozen evaluation set with each, and
writes ``evals/results/quantization.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "quantization.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", type=Path, default=Path(".demo-retrain/registry"))
    parser.add_argument("--examples", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from finetune.datasets import FrozenEvalSet
    from finetune.evaluate import EvalConfig
    from finetune.quant_report import quantization_report
    from finetune.registry import ModelRegistry
    from router.backends import packaged_model_path
    from router.config import LocalConfig

    registry = ModelRegistry(args.registry)
    serving = registry.serving()
    if serving is None:
        print(f"nothing is served from {args.registry}; run `make demo-retrain` first", file=sys.stderr)
        return 1
    examples = FrozenEvalSet.load(args.registry).examples[: args.examples]
    report = quantization_report(
        packaged_model_path(), registry.adapter_path(serving.version), examples, args.registry / "quantization",
        config=EvalConfig(n_threads=2),
        serving=LocalConfig(default_max_tokens=args.max_tokens, max_tokens=max(256, args.max_tokens)),
    )  # fmt: skip
    report["adapter_version"] = serving.version
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'model':<8}{'MB':>8}{'identical':>11}{'similar':>9}{'different':>11}{'sim→ref':>9}{'tok/s':>8}")
    for name, row in report["models"].items():
        print(
            f"{name:<8}{row['file_mb']:>8.0f}{row.get('identical_to_f16', 1.0):>11.0%}{row.get('similar_to_f16', 0.0):>9.0%}"
            f"{row.get('different_from_f16', 0.0):>11.0%}{row['similarity_to_reference']:>9.3f}{row['tokens_per_s']:>8.1f}"
        )
    print(f"written to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
