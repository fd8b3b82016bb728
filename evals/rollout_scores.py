"""Scored answers of two model versions on the same logged queries: what a canary replay draws from.

A canary decision rests on live audits: a local answer, the cloud's answer to the same request,
and their similarity. Here the local answers are real ones, generated as served (llama.cpp, the
GGUF base, the adapter, the guard; :func:`finetune.evaluate.evaluate_model`) by each version for
the same Bitext queries of the demo's replay pool (queries the shipped adapter never trained on),
and the "cloud answer" is the Bitext reference, which is what the demo's stand-in cloud returns.
Each query keeps only its row number in the Bitext file, its category and, per version, the
similarity and the guard's verdict: the table is committed (no dataset text is copied), and the
replay (:mod:`evals.rollout_eval`) and the tests read the query texts from ``../shared``.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

from evals.demo import BITEXT, LOCAL_CATEGORIES, SHIPPED_ADAPTER, load_bitext, split

REPLAY_TABLE = Path(__file__).resolve().parent / "results" / "rollout_replay.json"
# The untuned base model; the adapter shipped by make demo-retrain; and that adapter at half its LoRA
# scale (alpha / 2): a weaker version whose answers are mostly well-formed, so only audits can tell.
VERSIONS = ("base", "shipped", "weaker")
WEAKER_SCALE = 0.5


def replay_queries(n: int, seed: int = 0) -> list[tuple[int, dict[str, str]]]:
    """``n`` (row number, row) of the demo's replay pool in the local categories, drawn with ``seed``."""
    rows = load_bitext()
    _, _, replay = split(rows)
    index = {id(r): i for i, r in enumerate(rows)}
    pool = [(index[id(r)], r) for r in replay if r["category"] in LOCAL_CATEGORIES]
    random.Random(seed).shuffle(pool)
    return sorted(pool[:n])


def scaled_adapter(adapter: Path, scale: float, workdir: Path) -> Path:
    """A copy of ``adapter`` whose LoRA update is ``scale`` times as strong (its alpha scaled)."""
    import gguf

    from finetune.export import write_lora_gguf

    reader = gguf.GGUFReader(str(adapter))
    alpha_field = reader.fields["adapter.lora.alpha"]
    alpha = float(alpha_field.parts[alpha_field.data[0]][0])
    tensors = {t.name: t.data.copy() for t in reader.tensors}
    out = workdir / f"{adapter.stem}-scale{scale:g}.gguf"
    workdir.mkdir(parents=True, exist_ok=True)
    write_lora_gguf(tensors, out, alpha=alpha * scale)
    return out


def score_versions(n: int, *, max_tokens: int, concurrency: int, workdir: Path, only: tuple[str, ...] = VERSIONS,
                   into: dict[str, Any] | None = None) -> dict[str, Any]:
    from finetune.datasets import Example
    from finetune.evaluate import evaluate_model
    from router.config import LocalConfig

    manifest = json.loads((SHIPPED_ADAPTER / "manifest.json").read_text(encoding="utf-8"))
    shipped = SHIPPED_ADAPTER / manifest["adapter_file"]
    adapters = {"base": None, "shipped": shipped, "weaker": scaled_adapter(shipped, WEAKER_SCALE, workdir)}
    queries = replay_queries(n)
    examples = [
        Example(({"role": "user", "content": row["instruction"]},), row["response"], row["category"], source=str(i))
        for i, row in queries
    ]
    serving = LocalConfig(default_max_tokens=max_tokens)
    table: dict[str, Any] = into or {
        "source": str(BITEXT.name), "max_tokens": max_tokens, "rows": [i for i, _ in queries],
        "categories": [row["category"] for _, row in queries], "versions": {},
    }  # fmt: skip
    if table["rows"] != [i for i, _ in queries]:
        raise SystemExit("the table to extend was built on other queries: regenerate it whole")
    for version in only:
        started = time.perf_counter()
        report = evaluate_model(examples, adapter_path=adapters[version], serving=serving, concurrency=concurrency, label=version)
        table["versions"][version] = {
            "similarity": [round(a.similarity, 4) for a in report.answers],
            "degenerate": [a.degenerate is not None for a in report.answers],
            "mean_similarity": round(report.metrics.get("similarity", 0.0), 4),
            "degenerate_rate": round(report.metrics.get("degenerate_rate", 0.0), 4),
            "minutes": round((time.perf_counter() - started) / 60, 1),
            "sample_answers": [a.answer[:300] for a in report.answers[:20]],
        }
        print(f"{version}: similarity {report.metrics.get('similarity'):.3f}, degenerate {report.metrics.get('degenerate_rate'):.1%}")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=600)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", type=Path, default=REPLAY_TABLE)
    parser.add_argument("--only", nargs="+", choices=VERSIONS, default=list(VERSIONS), help="score these versions only")
    parser.add_argument("--extend", action="store_true", help="add the versions scored to the existing table")
    parser.add_argument("--workdir", type=Path, default=Path(".rollout"), help="where the weaker adapter copy is written")
    args = parser.parse_args(argv)
    into = json.loads(args.out.read_text(encoding="utf-8")) if args.extend and args.out.exists() else None
    table = score_versions(args.queries, max_tokens=args.max_tokens, concurrency=args.concurrency, workdir=args.workdir,
                           only=tuple(args.only), into=into)  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(table) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
