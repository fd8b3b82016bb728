"""From zero labels to local answers, offline (``make demo-discover``).

A new deployment knows nothing about its traffic: no classifier, no labels, no adapter. This
runs what its operator would, with one ``router.toml`` and the real CLI in subprocesses:

1. start the stand-in cloud in recorded-answer mode (a real OpenAI-compatible server on
   127.0.0.1 that answers each Bitext query with Bitext's reference answer);
2. **collection**: Bitext queries of all 11 categories through ``router.Client``; with no
   classifier everything goes to the cloud and is logged;
3. ``router discover --auto``: cluster the logged queries, accept the clean clusters covering the
   target share; ``router categories apply``: a classifier version, served from its registry;
4. ``router retrain``: the log's rows are labelled by that classifier (``label_with``), the
   adapter learns the discovered categories, the gate measures them per category on the frozen set;
5. **replay** queries never collected through a fresh ``Client`` on the same configuration: the
   quality gate opens the discovered categories whose evidence meets its floors.

No Bitext label (category or intent) is read by any step; they are read afterwards only to score
the discovered categories' purity. Local answers are scored by similarity to Bitext's reference
answer. Figures go to ``evals/results/discover.json`` (``zero_label_*`` keys).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from evals.demo import bucket, load_bitext, percentile, replay_queries, score
from evals.demo_retrain import cloud_tables
from evals.figures import merge_figures

RESULTS = Path(__file__).resolve().parent / "results" / "discover.json"


def write_config(path: Path, *, workdir: Path, cloud_model: str, api_base: str, args: argparse.Namespace) -> Path:
    """The one router.toml of this deployment: nothing about its categories is written in it."""
    path.write_text(
        f"""# Written by evals/demo_discover.py
warmup = "eager"

[local]
registry_path = "{workdir / 'registry'}"
default_max_tokens = {args.answer_tokens}

{cloud_tables(cloud_model, api_base)}

[classifier]
registry_path = "{workdir / 'classifiers'}"   # empty until `router categories apply`

[routing]
local_categories = "*"           # whatever categories the classifier knows, as far as the gate allows

[quality]
evidence_dir = "{workdir / 'evidence'}"

[log]
path = "{workdir / 'traffic.sqlite3'}"

[discover]
target_share = {args.target_share}
min_cluster_share = {args.min_cluster_share}
min_answer_similarity = {args.min_answer_similarity}

[retrain]
max_train_examples = {args.max_examples}

[retrain.filters]
eval_percent = {args.eval_percent}
max_eval_per_category = {args.eval_per_category}
max_eval_examples = 30           # the out-of-scope block: measured, never served locally

[retrain.training]
eval_every_steps = 75

[retrain.evaluation]
n_threads = 2
""",
        encoding="utf-8",
    )
    return path


def choose_queries(rows: list[dict[str, str]], collect: int, replay: int) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """A seeded sample of all traffic to collect, and different queries (never collected) to replay."""
    ordered = sorted(rows, key=lambda r: bucket(r["instruction"] + "collect"))
    collected = ordered[:collect]
    seen = {r["instruction"] for r in collected}
    rest = [r for r in ordered[collect:] if r["instruction"] not in seen]
    rest.sort(key=lambda r: bucket(r["instruction"] + "replay"))
    return collected, rest[:replay]


def run_cli(config: Path, *arguments: str) -> None:
    router_cli = Path(sys.executable).with_name("router")
    command = [str(router_cli), "--config", str(config), *arguments]
    print("      $ router " + " ".join(arguments))
    subprocess.run(command, check=True)


def purity(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """For each discovered category, the Bitext category most of its replayed queries carry, and that share."""
    groups: dict[str, Counter[str]] = defaultdict(Counter)
    for r in results:
        if r["category"] is not None:
            groups[r["category"]][r["true_category"]] += 1
    out = {}
    for name, counts in sorted(groups.items()):
        majority, n = counts.most_common(1)[0]
        out[name] = {"bitext_category": majority, "purity": n / sum(counts.values()), "replayed": sum(counts.values())}
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(".demo-discover"))
    parser.add_argument("--collect", type=int, default=4000, help="queries collected all-cloud before discovery")
    parser.add_argument("--replay", type=int, default=200, help="never-collected queries replayed at the end")
    parser.add_argument("--target-share", type=float, default=0.9)
    parser.add_argument("--min-cluster-share", type=float, default=0.03, help="smallest cluster worth a category")
    parser.add_argument("--min-answer-similarity", type=float, default=0.5,
                        help="--auto accepts a cluster whose cloud answers are this alike (library default 0.55)")
    parser.add_argument("--max-examples", type=int, default=900, help="training examples (about 1.7 s each on 2 cores)")
    parser.add_argument("--answer-tokens", type=int, default=256)
    parser.add_argument("--eval-percent", type=int, default=30, help="share of prompt-hash buckets held out for evaluation")
    parser.add_argument("--eval-per-category", type=int, default=30)
    parser.add_argument("--skip-retrain", action="store_true", help="stop after apply (look at the proposal only)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()

    from evals.standin_cloud import LatencyModel, StandinCloud
    from router import Client, RouterConfig

    workdir = args.workdir.resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    rows = load_bitext()
    collected, replayed = choose_queries(rows, args.collect, args.replay)
    answers = workdir / "recorded-answers.jsonl"
    with answers.open("w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps({"query": r["instruction"], "answer": r["response"].replace("\r\n", "\n").strip()}) + "\n")
    minutes: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        minutes[name] = (now - since) / 60
        return now

    print("[1/5] stand-in cloud on 127.0.0.1 in recorded-answer mode (it answers with Bitext's reference answers)")
    # data collection needs only the answers' content, not a provider's pacing
    with StandinCloud(answers=answers, latency=LatencyModel.none()) as cloud:
        toml = write_config(workdir / "router.toml", workdir=workdir, cloud_model=cloud.litellm_model, api_base=cloud.api_base, args=args)
        print(f"[2/5] collection: {len(collected)} queries through router.Client; no classifier yet, so all go to the cloud")
        t = time.perf_counter()
        with Client(RouterConfig.from_toml(toml)) as client:
            collection = replay_queries(client, collected, max_tokens=args.answer_tokens, desc="collecting")
        tiers = Counter(r["tier"] for r in collection)
        print(f"      tiers: {dict(tiers)}")
        t = lap("collect", t)

        print("[3/5] discovery and apply, as the operator would run them")
        store = workdir / "categories"
        run_cli(toml, "discover", "--auto", "--store", str(store), "--quiet", "--limit", "30")
        run_cli(toml, "categories", "apply", "--store", str(store))
        t = lap("discover_apply", t)
        if args.skip_retrain:
            return 0

        print("[4/5] router retrain: rows labelled by the served classifier, adapter trained, gated per category")
        result_path = workdir / "retrain-result.json"
        run_cli(toml, "retrain", "--json", str(result_path))
        run_cli(toml, "models", "list")
        outcome = json.loads(result_path.read_text())
        t = lap("retrain", t)

        print(f"[5/5] replay: {len(replayed)} queries never collected, through a fresh Client on the same router.toml")
        with Client(RouterConfig.from_toml(toml)) as client:
            results = replay_queries(client, replayed, max_tokens=args.answer_tokens, desc="replaying")
        t = lap("replay", t)
    total_minutes = (time.perf_counter() - started) / 60

    figures = report(results, outcome, args)
    figures["zero_label_minutes"] = total_minutes
    figures["zero_label_minutes_by_step"] = minutes
    (workdir / "replay.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results), encoding="utf-8")
    merge_figures(args.results, figures)
    print(f"\nzero-label journey: {total_minutes:.1f} min ({', '.join(f'{k} {v:.1f}' for k, v in minutes.items())})")
    print(f"written to {args.results}; answers in {workdir / 'replay.jsonl'}")
    return 0


def report(results: list[dict[str, Any]], outcome: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Score, print and return the journey's figures (Bitext labels are read here, only to score)."""
    score(results)
    local = [r for r in results if r["tier"] == "local" and not r["private"]]
    cloud = [r for r in results if r["tier"] == "cloud"]
    mean = lambda rows: sum(r["similarity"] for r in rows) / len(rows) if rows else None
    by_category: dict[str, dict[str, Any]] = {}
    for name in sorted({r["category"] or "(none)" for r in results}):
        rows = [r for r in results if (r["category"] or "(none)") == name]
        served_local = [r for r in rows if r["tier"] == "local"]
        by_category[name] = {"replayed": len(rows), "local": len(served_local), "local_similarity": mean(served_local),
                             "reason": Counter(r["reason"] for r in rows).most_common(1)[0][0]}  # fmt: skip
    pure = purity(results)
    print(f"\n{'discovered category':<34}{'replayed':>9}{'local':>7}{'similarity':>11}  majority Bitext category (purity)   why")
    for name, row in by_category.items():
        p = pure.get(name)
        tag = f"{p['bitext_category']} ({p['purity']:.0%})" if p else "-"
        sim = "-" if row["local_similarity"] is None else f"{row['local_similarity']:.3f}"
        print(f"{name[:33]:<34}{row['replayed']:>9}{row['local']:>7}{sim:>11}  {tag:<34}{row['reason']}")
    lat = [r["latency_ms"] for r in local if r["latency_ms"] is not None]
    share = len(local) / len(results) if results else 0.0
    print(
        f"\nlocal: {len(local)} of {len(results)} ({share:.0%}), similarity {mean(local) or 0:.3f}, p50 {percentile(lat, 50):.0f} ms;"
        f" cloud {len(cloud)}; retrain {outcome['status']}: {outcome.get('message', '')}"
    )
    candidate = outcome.get("candidate_metrics", {})
    return {
        "zero_label_local_share": share,
        "zero_label_local_similarity": mean(local),
        "zero_label_replayed": len(results),
        "zero_label_cloud": len(cloud),
        "zero_label_categories_served": sorted(n for n, row in by_category.items() if row["local"]),
        "zero_label_by_category": by_category,
        "zero_label_category_purity": pure,
        "zero_label_retrain_status": outcome["status"],
        "zero_label_tuned_similarity": candidate.get("similarity"),
        "zero_label_base_similarity": outcome.get("serving_metrics", {}).get("similarity"),
        "zero_label_train_examples": outcome.get("train", {}).get("examples"),
        "zero_label_settings": {"collect": args.collect, "min_cluster_share": args.min_cluster_share,
                                "target_share": args.target_share, "min_answer_similarity": args.min_answer_similarity,
                                "max_examples": args.max_examples, "eval_percent": args.eval_percent},
    }


if __name__ == "__main__":
    sys.exit(main())
