"""The retrain loop end to end, offline (``make demo-retrain``).

1. start the stand-in cloud in **recorded-answer mode**: a real OpenAI-compatible server on
   127.0.0.1 that answers each Bitext query with Bitext's reference answer (no model runs);
2. train the query classifier on Bitext categories;
3. collection phase: a new deployment routes everything to the cloud and logs it; replay Bitext
   queries through ``router.Client`` (``model="gpt-4o"``), reached through litellm;
4. ``router retrain`` (the real CLI, in a subprocess): dataset snapshot from the log, LoRA
   training, GGUF export, evaluation of base and candidate with llama.cpp on the frozen set, gate,
   promotion;
5. serving phase: a ``Client`` configured with the registry answers local categories with the
   promoted adapter; show that, and write ``evals/results/retrain.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

from evals.demo import LOCAL_CATEGORIES, PRIVATE_CATEGORIES, bucket, load_bitext, split, train_classifier

RESULTS = Path(__file__).resolve().parent / "results" / "retrain.json"


def cloud_tables(cloud_model: str, api_base: str) -> str:
    """The [cloud] and [models.gpt-4o] tables that send "gpt-4o" to the stand-in cloud through litellm."""
    return f"""[cloud]
default_model = "gpt-4o"

[models.gpt-4o]
litellm_model = "{cloud_model}"
api_base = "{api_base}"
api_key = "none"
pricing_model = "gpt-4o"
"""


def _toml_list(values: list[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def write_config(path: Path, *, workdir: Path, cloud_model: str, api_base: str, serve_local: bool, args: argparse.Namespace) -> Path:
    """The router.toml a user would write; the [retrain] table is read by ``router retrain``."""
    local = LOCAL_CATEGORIES if serve_local else []
    path.write_text(
        f"""# Written by evals/demo_retrain.py
[local]
registry_path = "{workdir / 'registry'}"
default_max_tokens = {args.answer_tokens}     # evaluation generates as served, so this caps both

{cloud_tables(cloud_model, api_base)}

[classifier]
path = "{workdir / 'classifier'}"

[routing]
local_categories = {_toml_list(local)}
private_categories = {_toml_list(PRIVATE_CATEGORIES)}

[log]
path = "{workdir / 'traffic.sqlite3'}"

[retrain]
categories = {_toml_list(LOCAL_CATEGORIES)}
max_train_examples = {args.max_examples}
measure_logits_speedup = {"true" if args.measure_logits else "false"}

[retrain.filters]
eval_percent = {args.eval_percent}           # prompt-hash buckets held out: never trained on
max_eval_per_category = {args.eval_per_category}   # each category's frozen block (issue 13: at least 30)

[retrain.training]
eval_every_steps = 75
{_toml_weights(args.category_weights)}
{f"max_steps = {args.max_steps}" if args.max_steps else ""}

[retrain.evaluation]
n_threads = 2                    # evaluation runs alone; serving keeps a core free (see README)
""",
        encoding="utf-8",
    )
    return path


def _toml_weights(weights: dict[str, float]) -> str:
    if not weights:
        return ""
    return "category_weights = {" + ", ".join(f"{k} = {v}" for k, v in weights.items()) + "}"


def _parse_weights(text: str) -> dict[str, float]:
    """``REFUND=3,CONTACT=2`` -> ``{"REFUND": 3.0, "CONTACT": 2.0}``."""
    pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
    return {name.strip(): float(value) for name, value in pairs}


def replay(client: object, rows: list[dict[str, str]], *, desc: str) -> list[object]:
    """Send each query as an unchanged app would; requests no tier may serve are counted, not fatal."""
    from router import APIError

    responses, failed = [], 0
    for row in tqdm(rows, desc=desc, unit="query"):
        try:
            responses.append(client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": row["instruction"]}]))  # type: ignore[attr-defined]
        except APIError:
            failed += 1
    if failed:
        print(f"      {failed} requests failed (logged with their error)")
    return responses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(".demo-retrain"))
    parser.add_argument("--queries", type=int, default=2000, help="Bitext queries replayed in the collection phase")
    parser.add_argument("--max-examples", type=int, default=1400, help="training examples (1,368 took 37.6 min on 2 cores)")
    # The previous adapter (one pass over everything) scored REFUND 0.712 and CONTACT 0.742 on the frozen
    # set, under the gate's 0.77 opening bar, with the other five open: extra passes where the gap is.
    parser.add_argument("--category-weights", type=_parse_weights, default=_parse_weights("REFUND=3,CONTACT=2"),
                        help="passes per epoch over a category's examples, e.g. REFUND=3,CONTACT=2 ('' for none)")  # fmt: skip
    parser.add_argument("--max-steps", type=int, default=None, help="cap on optimizer steps (smoke runs)")
    parser.add_argument("--answer-tokens", type=int, default=256, help="local answer cap, served and evaluated alike")
    parser.add_argument("--eval-percent", type=int, default=25, help="share of prompt-hash buckets held out for evaluation")
    parser.add_argument("--eval-per-category", type=int, default=30, help="frozen evaluation examples per category")
    parser.add_argument("--measure-logits", action="store_true", help="also time naive vs response-only logits")
    parser.add_argument("--serve-queries", type=int, default=20, help="queries replayed after promotion")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from evals.standin_cloud import LatencyModel, StandinCloud
    from router import Client, RouterConfig
    from router.traffic_log import TrafficLog

    workdir = args.workdir.resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    rows = load_bitext()
    train, calibration, _ = split(rows)
    # Replay local-category queries (the ones the local model should learn) plus some others.
    pool = sorted((r for r in rows if r["category"] in LOCAL_CATEGORIES), key=lambda r: bucket(r["instruction"] + "replay"))
    collected = pool[: args.queries]
    answers = workdir / "recorded-answers.jsonl"
    with answers.open("w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps({"query": r["instruction"], "answer": r["response"].replace("\r\n", "\n").strip()}) + "\n")

    print("[1/5] stand-in cloud on 127.0.0.1 in RECORDED-ANSWER mode (answers are Bitext's reference answers)")
    # data collection needs only the answers' content, not a provider's pacing
    with StandinCloud(answers=answers, record=workdir / "standin-requests.jsonl", latency=LatencyModel.none()) as cloud:
        print(f"[2/5] training the classifier on {len(train)} Bitext queries")
        train_classifier(train, calibration, workdir / "classifier")
        collect_toml = write_config(workdir / "collect.toml", workdir=workdir, cloud_model=cloud.litellm_model, api_base=cloud.api_base,
                                    serve_local=False, args=args)  # fmt: skip
        print(f"[3/5] collection phase: {len(collected)} queries through router.Client, all answered by the cloud and logged")
        with Client(RouterConfig.from_toml(collect_toml, warmup="eager")) as client:
            replay(client, collected, desc="collecting")
        with TrafficLog(workdir / "traffic.sqlite3") as log:
            print(f"      traffic log: {log.count()} requests")

        print("[4/5] router retrain (subprocess: the command a cron job runs)")
        serve_toml = write_config(workdir / "router.toml", workdir=workdir, cloud_model=cloud.litellm_model, api_base=cloud.api_base,
                                  serve_local=True, args=args)  # fmt: skip
        result_path = workdir / "retrain-result.json"
        router_cli = Path(sys.executable).with_name("router")
        started = time.perf_counter()
        subprocess.run([str(router_cli), "--config", str(serve_toml), "retrain", "--json", str(result_path)], check=True)
        print(f"      retrain took {(time.perf_counter() - started) / 60:.1f} min")
        subprocess.run([str(router_cli), "--config", str(serve_toml), "models", "list"], check=True)
        outcome = json.loads(result_path.read_text())

        print(f"[5/5] serving phase: the router picks up {outcome.get('version')} from the registry")
        from finetune.datasets import FrozenEvalSet

        frozen_queries = {e.query for e in FrozenEvalSet.load(workdir / "registry").examples}
        serve_rows = [r for r in rows if r["instruction"] in frozen_queries][: args.serve_queries]
        with Client(RouterConfig.from_toml(serve_toml, warmup="eager")) as client:
            served = replay(client, serve_rows, desc="serving")
        local = [r for r in served if r.router.tier == "local"]  # type: ignore[attr-defined]
        versions = sorted({r.router.adapter_version for r in local if r.router.adapter_version})  # type: ignore[attr-defined]
        print(f"      {len(local)}/{len(served)} answered locally, adapter versions {versions}")
        if local:
            sample = local[0]
            print(f"      sample local answer ({sample.router.category}): {sample.choices[0].message.content[:300]!r}")  # type: ignore[attr-defined]

    candidate, serving = outcome.get("candidate_metrics", {}), outcome.get("serving_metrics", {})
    train_info = outcome.get("train", {})
    figures = {
        "status": outcome["status"],
        "promoted_version": outcome.get("version") if outcome["status"] == "promoted" else None,
        "base_similarity": serving.get("similarity"),
        "tuned_similarity": candidate.get("similarity"),
        "base_rouge_l": serving.get("rouge_l"),
        "tuned_rouge_l": candidate.get("rouge_l"),
        "base_degenerate_rate": serving.get("degenerate_rate"),
        "tuned_degenerate_rate": candidate.get("degenerate_rate"),
        "base_tokens_per_s": serving.get("tokens_per_s"),
        "tuned_tokens_per_s": candidate.get("tokens_per_s"),
        "tuned_format_valid_rate": candidate.get("format_valid_rate"),
        "eval_examples": candidate.get("examples"),
        "base_by_category": outcome.get("serving_by_category", {}),
        "tuned_by_category": outcome.get("candidate_by_category", {}),
        "train_examples": train_info.get("examples"),
        "train_steps": train_info.get("steps"),
        "train_epochs": train_info.get("epochs"),
        "train_minutes": (train_info.get("seconds") or 0) / 60,
        "train_tokens_per_s": train_info.get("tokens_per_s"),
        "logits_speedup": (train_info.get("logits") or {}).get("speedup"),
        "naive_s_per_step": (train_info.get("logits") or {}).get("naive_s_per_step"),
        "response_only_s_per_step": (train_info.get("logits") or {}).get("response_only_s_per_step"),
        "served_locally_after_promotion": f"{len(local)}/{len(served)}",
        "served_adapter_versions": versions,
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(figures, indent=2) + "\n")
    print("\n" + json.dumps(figures, indent=2))
    print(f"\nwritten to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
