"""``make eval-cache``: the response cache on the Bitext replay, with repeats as they occur in the data.

Bitext asks each of its 27 intents hundreds of times in different words: the repeats a support
desk sees. Every Bitext query (private PAYMENT queries left out: they are never cached) is shuffled once
and cut in two halves:

1. **calibration half** — replayed through ``router.Client`` once per similarity threshold of a
   grid, each time with an empty cache; a semantic hit is *precise* when the answer served was
   given to a query of the same Bitext intent (found through the hit's ``cached_from``). The
   threshold is the lowest from which every higher one on the grid keeps precision ≥ 99 %; the
   curve shows what a lower one would buy and cost;
2. **evaluation half** — other queries, replayed the same way at that threshold: the figures
   reported. The hit latency is the request's wall time minus its classification time.

The cloud is the recorded-answer stand-in on loopback (each query answered with its Bitext
reference answer), reached through litellm; the local tier is off (``local_categories = []``) so
that every miss is a cloud answer the cache may keep.

Figures go to ``evals/results/cache.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from evals.demo import load_bitext, split, train_classifier

RESULTS = Path(__file__).resolve().parent / "results" / "cache.json"
GRID = (0.80, 0.84, 0.86, 0.88, 0.90, 0.91, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97, 0.98)
TARGET_PRECISION = 0.99
EXCLUDED = ("PAYMENT",)  # private in the demo's routing: never cached


def _order(row: dict[str, str]) -> str:
    return hashlib.sha256(("cache-eval\x00" + row["instruction"]).encode()).hexdigest()


def choose(curve: list[dict[str, Any]]) -> float:
    """The lowest threshold from which every higher one on the grid also meets the precision target."""
    chosen = max(GRID)
    for point in sorted(curve, key=lambda p: -p["threshold"]):
        precision = point["semantic_hit_precision"]
        if precision is not None and precision < TARGET_PRECISION:
            break
        chosen = point["threshold"]
    return chosen


def replay(rows: list[dict[str, str]], cloud: Any, classifier_path: Path, threshold: float, work: Path,
           *, show: bool = False) -> dict[str, Any]:  # fmt: skip
    """``rows`` through a fresh ``router.Client`` with the cache on at ``threshold``; hit figures."""
    from router import Client, RouterConfig

    shutil.rmtree(work / "cache", ignore_errors=True)
    for stale in work.glob("traffic.sqlite3*"):
        stale.unlink()
    sent_before = _cloud_requests(cloud)
    config = RouterConfig(
        models=cloud.models,
        cloud={"default_model": "gpt-4o"},
        classifier={"path": classifier_path},
        routing={"local_categories": []},
        cache={"enabled": True, "path": work / "cache", "similarity": threshold},
        log={"path": work / "traffic.sqlite3"},
        warmup="eager",
    )  # fmt: skip
    results = []
    with Client(config) as client:
        for row in tqdm(rows, desc=f"replay at {threshold:.2f}", unit="query", leave=False):
            started = time.perf_counter()
            r = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": row["instruction"]}], max_tokens=512)
            wall_ms = (time.perf_counter() - started) * 1000
            info = r.router
            results.append({"id": r.id, "intent": row["intent"], "question": row["instruction"], "tier": info.tier,
                            "match": info.cache_match, "from": info.cached_from, "wall_ms": wall_ms,
                            "classify_ms": info.classify_ms or 0.0, "text": r.choices[0].message.content})  # fmt: skip
    by_id = {r["id"]: r for r in results}
    hits = [r for r in results if r["tier"] == "cache"]
    exact = [r for r in hits if r["match"] == "exact"]
    semantic = [r for r in hits if r["match"] != "exact"]
    precise = [r for r in semantic if by_id[r["from"]]["intent"] == r["intent"]]
    over_classify = [r["wall_ms"] - r["classify_ms"] for r in hits]
    misses = [r["wall_ms"] - r["classify_ms"] for r in results if r["tier"] == "cloud"]
    figures = {
        "threshold": threshold,
        "queries": len(results),
        "exact_hit_rate": len(exact) / len(results),
        "semantic_hit_rate": len(semantic) / len(results),
        "hit_rate": len(hits) / len(results),
        "semantic_hit_precision": len(precise) / len(semantic) if semantic else None,
        "semantic_hits": len(semantic),
        "cloud_requests": _cloud_requests(cloud) - sent_before,
    }
    precision = figures["semantic_hit_precision"]
    print(f"  threshold {threshold:.2f}: exact {figures['exact_hit_rate']:.1%}, semantic {figures['semantic_hit_rate']:.1%}, "
          f"precision {precision if precision is not None else float('nan'):.3f} ({len(semantic)} semantic hits, "
          f"{figures['cloud_requests']} cloud calls for {len(results)} queries)")  # fmt: skip
    if show:
        print("\n20 cache hits, as served (query <- the question whose answer was served):")
        for r in hits[:: max(1, len(hits) // 20)][:20]:
            source = by_id[r["from"]]
            print(f"  [{r['match']}] {r['question']!r} <- {source['question']!r} ({source['intent']} -> {r['intent']})\n"
                  f"      {r['text'][:110]!r}")  # fmt: skip
        for r in [r for r in semantic if by_id[r["from"]]["intent"] != r["intent"]][:10]:
            print(f"  WRONG INTENT: {r['question']!r} ({r['intent']}) <- {by_id[r['from']]['question']!r} ({by_id[r['from']]['intent']})")
        figures.update({
            "cache_hit_p50_ms": statistics.median(over_classify) if hits else None,
            "cache_hit_p95_ms": sorted(over_classify)[int(0.95 * (len(over_classify) - 1))] if hits else None,
            "cloud_miss_p50_ms": statistics.median(misses) if misses else None,
            "classify_p50_ms": statistics.median(r["classify_ms"] for r in results),
        })  # fmt: skip
    return figures


def _cloud_requests(cloud: Any) -> int:
    return sum(1 for line in cloud.record.read_text().splitlines() if line.strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(".cache-eval"))
    parser.add_argument("--queries", type=int, default=2100, help="queries in each half")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = load_bitext()
    train, calibration, _ = split(rows)
    # Every Bitext query, not only the demo's held-out pool (884 rows): the classifier's encoder is
    # frozen (fine_tune_epochs=0), so having trained its head on a query changes the category it
    # gets, not the embedding the cache compares. 4,514 rows give each half ~2,000 queries.
    pool = sorted((r for r in rows if r["category"] not in EXCLUDED), key=_order)
    half = min(args.queries, len(pool) // 2)
    calibration_half, evaluation_half = pool[:half], pool[half : 2 * half]
    classifier_path = args.workdir / "classifier"
    if not (classifier_path / "manifest.json").is_file():
        print(f"training the classifier as make demo does ({len(train)} queries)")
        train_classifier(train, calibration, classifier_path)
    from evals.standin_cloud import LatencyModel, StandinCloud

    answers = args.workdir / "recorded-answers.jsonl"
    with answers.open("w", encoding="utf-8") as fh:
        for r in load_bitext():
            fh.write(json.dumps({"query": r["instruction"], "answer": r["response"].replace("\r\n", "\n").strip()}) + "\n")
    record = args.workdir / "standin-requests.jsonl"
    record.unlink(missing_ok=True)
    # data collection needs only the answers' content, not a provider's pacing
    with StandinCloud(answers=answers, record=record, latency=LatencyModel.none()) as cloud:
        print(f"[1/2] calibration half: {len(calibration_half)} queries through router.Client at thresholds {GRID[0]}..{GRID[-1]}")
        curve = [replay(calibration_half, cloud, classifier_path, t, args.workdir) for t in GRID]
        threshold = choose(curve)
        print(f"      chosen threshold: {threshold:.2f} (the lowest from which every higher one keeps semantic precision >= {TARGET_PRECISION:.0%})")
        print(f"[2/2] evaluation half: {len(evaluation_half)} other queries through router.Client at {threshold:.2f}")
        figures = replay(evaluation_half, cloud, classifier_path, threshold, args.workdir, show=True)
    figures.update({"curve": curve, "minutes": (time.perf_counter() - started) / 60})
    print(json.dumps({k: v for k, v in figures.items() if k != "curve"}, indent=1))
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(figures, indent=1) + "\n", encoding="utf-8")
    print(f"written to {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
