"""The offline main job (``make demo``): route a few hundred Bitext queries and report where they went.

1. start the stand-in cloud (llama-cpp-python's OpenAI-compatible server on 127.0.0.1);
2. train the query classifier on Bitext categories (two categories held out as out-of-scope);
3. replay held-out Bitext queries through ``router.Client`` as an unchanged app would
   (``model="gpt-4o"``, mapped by config to the stand-in, priced by litellm as gpt-4o);
4. print share local vs cloud per category, p50/p95 latency per tier, cost against sending
   everything to gpt-4o, and the traffic log's path; stop everything it started.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from tqdm import tqdm

BITEXT = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "bitext_customer_support" / "Bitext_Sample_Customer_Support_Training_Dataset.csv"

LOCAL_CATEGORIES = ["ACCOUNT", "ORDER", "REFUND", "DELIVERY", "INVOICE", "CONTACT", "SHIPPING_ADDRESS"]
PRIVATE_CATEGORIES = ["PAYMENT"]  # answered locally, never sent out
CLOUD_CATEGORIES = ["FEEDBACK"]  # known, but the local model does not serve it
OUT_OF_SCOPE = ["CANCELLATION_FEE", "NEWSLETTER"]  # never seen in training: edge cases


def bucket(text: str) -> int:
    """A stable 0-99 bucket from the text, so splits never change between runs."""
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16) % 100


def load_bitext(path: Path = BITEXT) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def split(rows: list[dict[str, str]]) -> tuple[list[dict[str, str]], list[dict[str, str]], list[dict[str, str]]]:
    """train (70%, in-scope only), calibration (10%, out-of-scope labelled None), replay pool (20%)."""
    train, calibration, replay = [], [], []
    for row in rows:
        b = bucket(row["instruction"])
        if b < 70:
            if row["category"] not in OUT_OF_SCOPE:
                train.append(row)
        elif b < 80:
            calibration.append(row)
        else:
            replay.append(row)
    return train, calibration, replay


def train_classifier(
    train: list[dict[str, str]], calibration: list[dict[str, str]], path: Path, *, quantize: bool = False
) -> Any:
    from classifiers import EmbeddingClassifier

    clf = EmbeddingClassifier(fine_tune_epochs=0, quantize=quantize)
    clf.fit([r["instruction"] for r in train], [r["category"] for r in train])
    labels = [None if r["category"] in OUT_OF_SCOPE else r["category"] for r in calibration]
    clf.calibrate([r["instruction"] for r in calibration], labels)
    clf.save(path)
    return clf


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def report(results: list[dict[str, Any]], log_path: Path) -> str:
    lines = []
    by_category: dict[str, Counter[str]] = defaultdict(Counter)
    for r in results:
        by_category[r["true_category"]][r["tier"]] += 1
    lines.append(f"{'category':<18}{'queries':>8}{'local':>8}{'cloud':>8}{'error':>8}   routing")
    for category in sorted(by_category):
        counts = by_category[category]
        n = sum(counts.values())
        role = (
            "served locally" if category in LOCAL_CATEGORIES else
            "private: local only" if category in PRIVATE_CATEGORIES else
            "cloud by config" if category in CLOUD_CATEGORIES else "out of scope → cloud"
        )  # fmt: skip
        lines.append(f"{category:<18}{n:>8}{counts['local'] / n:>8.0%}{counts['cloud'] / n:>8.0%}{counts['error'] / n:>8.0%}   {role}")
    total = len(results)
    local = sum(r["tier"] == "local" for r in results)
    cloud = sum(r["tier"] == "cloud" for r in results)
    lines.append(f"{'ALL':<18}{total:>8}{local / total:>8.0%}{cloud / total:>8.0%}{(total - local - cloud) / total:>8.0%}")
    lines.append("")
    reasons = Counter(r["reason"] for r in results)
    fallbacks = Counter(r["fallback_reason"].split(":")[0] for r in results if r["fallback_reason"])
    lines.append("routing reasons: " + ", ".join(f"{k} {v}" for k, v in reasons.most_common()))
    if fallbacks:
        lines.append("fallbacks local→cloud: " + ", ".join(f"{k} {v}" for k, v in fallbacks.most_common()))
    lines.append("")
    lines.append(f"{'tier':<8}{'requests':>10}{'p50 ms':>10}{'p95 ms':>10}")
    for tier in ("local", "cloud"):
        lat = [r["latency_ms"] for r in results if r["tier"] == tier]
        lines.append(f"{tier:<8}{len(lat):>10}{percentile(lat, 50):>10.0f}{percentile(lat, 95):>10.0f}")
    lines.append("")
    spent = sum(r["cost_usd"] or 0.0 for r in results)
    all_cloud = sum(r["all_cloud_cost"] for r in results)
    lines.append(f"cost at gpt-4o prices (litellm): routed ${spent:.4f} vs all-cloud ${all_cloud:.4f}"
                 f" → {1 - spent / all_cloud:.0%} saved" if all_cloud else "cost: n/a")  # fmt: skip
    lines.append(f"traffic log: {log_path}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=200, help="how many held-out queries to replay")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--workdir", type=Path, default=Path(".demo"))
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from evals.standin_cloud import StandinCloud
    from router import APIError, Client, RouterConfig

    args.workdir.mkdir(parents=True, exist_ok=True)
    log_path = (args.workdir / "traffic.sqlite3").resolve()
    for stale in args.workdir.glob("traffic.sqlite3*"):
        stale.unlink()

    rows = load_bitext()
    train, calibration, replay = split(rows)
    replay = sorted(replay, key=lambda r: hashlib.sha256(r["instruction"].encode()).hexdigest())[: args.queries]

    print("[1/4] starting the stand-in cloud on 127.0.0.1 (llama-cpp-python server, packaged model)")
    with StandinCloud(n_threads=1, record=args.workdir / "standin-requests.jsonl") as cloud:
        print(f"[2/4] training the classifier on {len(train)} Bitext queries, calibrating on {len(calibration)}")
        t = time.perf_counter()
        train_classifier(train, calibration, args.workdir / "classifier")
        print(f"      done in {time.perf_counter() - t:.0f} s")
        config = RouterConfig(
            models={"gpt-4o": {"litellm_model": cloud.litellm_model, "api_base": cloud.api_base, "api_key": "none", "pricing_model": "gpt-4o"}},
            cloud={"default_model": "gpt-4o"},
            classifier={"path": args.workdir / "classifier"},
            # The untuned packaged model, whatever a retrain promoted in this machine's data directory.
            local={"registry_path": None},
            routing={"local_categories": LOCAL_CATEGORIES, "private_categories": PRIVATE_CATEGORIES},
            log={"path": log_path},
            warmup="eager",
        )
        print(f"[3/4] replaying {len(replay)} held-out queries through router.Client (model='gpt-4o')")
        results = []
        with Client(config) as client:
            for row in tqdm(replay, unit="query"):
                try:
                    r = client.chat.completions.create(
                        model="gpt-4o", messages=[{"role": "user", "content": row["instruction"]}], max_tokens=args.max_tokens
                    )
                except APIError as err:  # e.g. a private query the local tier failed: no tier may serve it
                    results.append({"true_category": row["category"], "tier": "error", "reason": type(err).__name__,
                                    "fallback_reason": None, "latency_ms": None, "cost_usd": 0.0, "all_cloud_cost": 0.0})  # fmt: skip
                    continue
                info = r.router
                results.append(
                    {
                        "true_category": row["category"],
                        "tier": info.tier,
                        "reason": info.reason.value,
                        "fallback_reason": info.fallback_reason,
                        "latency_ms": info.latency_ms,
                        "cost_usd": info.cost_usd,
                        "all_cloud_cost": info.cloud_cost_usd_estimate or 0.0,
                    }
                )
    print("[4/4] summary (the stand-in cloud has stopped)\n")
    print(report(results, log_path))
    print(
        "\nNote: the packaged local model is the *base* Gemma 3 270M; its answers often loop or echo the question,"
        "\nand the degeneration guard sends those to the cloud. Fine-tuning it on the logged traffic (finetune/)"
        "\nis what turns those fallbacks into local answers."
    )


if __name__ == "__main__":
    main()
