"""Category discovery, measured (``make eval-discover``): writes ``evals/results/discover.json``.

1. **Intent sets**: Banking77 (test.csv, 3,080 queries, 77 intents), HWU64 (10,020 queries, 64
   intents) and Bitext (4,514 queries, 27 intents), labels hidden and k not given: NMI, ARI and
   ACC (Hungarian matching; noise points scored as assigned to their nearest cluster, the noise
   share reported) of :func:`classifiers.discovery.cluster_embeddings`, beside k-means told the
   true k on the same embeddings (three seeds), the floor to beat; on Banking77 and HWU64 also
   what ``granularity`` 0.5 / 1 / 2 does to the number of categories, their share and purity.
2. **Bitext proposals**: Bitext queries replayed all-cloud through ``router.Client`` (the stand-in
   cloud answers with the reference answers) and logged; ``discover`` with ``target_share`` 0.9 and
   ``--auto``; coverage of the accepted categories, their purity against Bitext's 11 categories
   and 27 intents, then ``apply`` and the recall with which held-out queries of the categories left
   out of the proposal go to the cloud. Two categories are rare in the replayed traffic (10
   queries each, a long tail), as edge categories are. Labels are read only to score.
3. **Scale** (``--scale``): a log of 100,000 queries synthesised from Bitext and Banking77 (each
   query repeated with light rewording: a greeting or a courtesy added), ``router discover`` in a
   subprocess: seconds and peak RSS.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
BANKING77 = SHARED / "banking77"
BITEXT = SHARED / "bitext_customer_support" / "Bitext_Sample_Customer_Support_Training_Dataset.csv"
RESULTS = Path(__file__).resolve().parent / "results" / "discover.json"
TAIL_CATEGORIES = ("CANCELLATION_FEE", "NEWSLETTER")  # rare in the replayed traffic: the proposal should leave them out
TAIL_QUERIES = 10


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def hungarian_accuracy(truth: np.ndarray, predicted: np.ndarray) -> float:
    from scipy.optimize import linear_sum_assignment

    _, truth = np.unique(truth, return_inverse=True)
    _, predicted = np.unique(predicted, return_inverse=True)
    size = max(truth.max(), predicted.max()) + 1
    counts = np.zeros((size, size))
    np.add.at(counts, (predicted, truth), 1)
    rows, cols = linear_sum_assignment(-counts)
    return float(counts[rows, cols].sum() / len(truth))


def clustering_scores(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    return {
        "nmi": 100 * normalized_mutual_info_score(truth, predicted),
        "ari": 100 * adjusted_rand_score(truth, predicted),
        "acc": 100 * hungarian_accuracy(truth, predicted),
    }


INTENT_SETS = {  # name: (file, text column, label column); the sets each setting was chosen on are in evals/README.md
    "banking77": (BANKING77 / "test.csv", "text", "category"),
    "hwu64": (SHARED / "hwu64" / "hwu64.csv", "text", "intent"),
    "bitext": (BITEXT, "instruction", "intent"),
}
GRANULARITIES = (0.5, 1.0, 2.0)


def _knob_figures(truth: np.ndarray, result: Any) -> dict[str, float]:
    """What a granularity does to the categories: how many, their mean share, and their purity."""
    assigned = result.labels >= 0
    hits = sum(Counter(truth[assigned & (result.labels == c)]).most_common(1)[0][1] for c in np.unique(result.labels[assigned]))
    return {"k": result.k, "mean_share": float(assigned.mean() / max(result.k, 1)), "purity": float(hits / max(assigned.sum(), 1)),
            "unassigned_share": float(1 - assigned.mean())}  # fmt: skip


def intent_set(name: str, encoder: Any, *, knob: bool) -> dict[str, Any]:
    """Clustering of one labelled intent set, labels hidden and k not given, beside k-means at the true k."""
    from sklearn.cluster import KMeans

    from classifiers.discovery import cluster_embeddings

    path, text_column, label_column = INTENT_SETS[name]
    rows = _csv(path)
    texts = [r[text_column] for r in rows]
    truth = np.array([r[label_column] for r in rows])
    true_k = len(set(truth))
    started = time.perf_counter()
    embeddings = encoder.encode(texts, n_jobs=2, progress=True)
    embed_s = time.perf_counter() - started
    started = time.perf_counter()
    result = cluster_embeddings(embeddings, texts=texts)
    cluster_s = time.perf_counter() - started
    again = cluster_embeddings(embeddings, texts=texts)
    ours = clustering_scores(truth, result.nearest)
    floors = [clustering_scores(truth, KMeans(true_k, random_state=seed).fit_predict(embeddings)) for seed in range(3)]
    floor = {key: float(np.mean([f[key] for f in floors])) for key in ("nmi", "ari", "acc")}
    print(
        f"{name}: {len(rows)} queries, {true_k} intents; k found {result.k} (estimate {result.estimate}), noise "
        f"{result.noise_share:.1%}: NMI {ours['nmi']:.1f} ARI {ours['ari']:.1f} ACC {ours['acc']:.1f} in {cluster_s:.0f} s; "
        f"k-means at the true k (3 seeds): NMI {floor['nmi']:.1f} ARI {floor['ari']:.1f} ACC {floor['acc']:.1f}"
    )
    figures: dict[str, Any] = {
        f"{name}_queries": len(rows), f"{name}_true_k": true_k,
        f"{name}_nmi": ours["nmi"], f"{name}_ari": ours["ari"], f"{name}_acc": ours["acc"],
        f"{name}_k_found": result.k, f"{name}_k_estimate_votes": list(result.estimate.votes) if result.estimate else None,
        f"{name}_noise_share": result.noise_share, f"{name}_unassigned_share": float((result.labels < 0).mean()),
        f"{name}_same_result_twice": bool(np.array_equal(result.labels, again.labels)),
        f"{name}_kmeans_true_k_nmi": floor["nmi"], f"{name}_kmeans_true_k_ari": floor["ari"],
        f"{name}_kmeans_true_k_acc": floor["acc"], f"{name}_kmeans_true_k_seeds": floors,
        f"{name}_embed_seconds": embed_s, f"{name}_cluster_seconds": cluster_s,
    }  # fmt: skip
    if knob:
        sweep = {}
        for granularity in GRANULARITIES:
            run = result if granularity == 1.0 else cluster_embeddings(embeddings, texts=texts, granularity=granularity)
            sweep[str(granularity)] = {**_knob_figures(truth, run), **clustering_scores(truth, run.nearest)}
            print(f"  granularity {granularity}: {sweep[str(granularity)]}")
        figures[f"{name}_granularity"] = sweep
    return figures


def _bucket(text: str) -> int:
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16) % 100


def _scored_proposal(store_dir: Path, proposal: Any, truth: dict[str, dict[str, str]]) -> tuple[Any, ...]:
    """Accepted categories of a proposal scored against Bitext's labels (read only here)."""
    from classifiers.discovery import ProposalStore

    vectors = ProposalStore(store_dir).load_vectors()
    accepted = {vectors["ids"].index(c.id): c for c in proposal.accepted}
    members = vectors["members"]
    request_ids = vectors["request_ids"]
    covered = sum(1 for m in members if int(m) in accepted)
    purity, intent_hits, intent_pure90, category_majority = {}, 0, 0, {}
    for index, category in accepted.items():
        ids = [request_ids[i] for i in np.flatnonzero(members == index)]
        cats = Counter(truth[i]["category"] for i in ids)
        intents = Counter(truth[i]["intent"] for i in ids)
        purity[category.name] = cats.most_common(1)[0][1] / len(ids)
        category_majority[category.name] = cats.most_common(1)[0][0]
        intent_hits += intents.most_common(1)[0][1]
        if intents.most_common(1)[0][1] / len(ids) >= 0.9:  # the measure: queries in clusters >= 90 % pure by intent
            intent_pure90 += len(ids)
    return accepted, covered, purity, intent_hits, intent_pure90, category_majority, members


def bitext_proposals(workdir: Path, encoder: Any) -> dict[str, Any]:
    from classifiers import EmbeddingClassifier
    from classifiers.discovery import DiscoveryConfig
    from evals.standin_cloud import LatencyModel, StandinCloud
    from finetune.categories import apply_categories
    from finetune.classifier_registry import ClassifierRegistry
    from finetune.discovery import discover
    from router import Client, RouterConfig

    rows = _csv(BITEXT)
    replay = [r for r in rows if _bucket(r["instruction"]) < 70]
    held_out = [r for r in rows if _bucket(r["instruction"]) >= 70]
    tail_seen: Counter[str] = Counter()
    traffic = []
    for r in replay:
        if r["category"] in TAIL_CATEGORIES:
            if tail_seen[r["category"]] >= TAIL_QUERIES:
                continue
            tail_seen[r["category"]] += 1
        traffic.append(r)
    random.Random(0).shuffle(traffic)
    answers = workdir / "recorded-answers.jsonl"
    with answers.open("w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps({"query": r["instruction"], "answer": r["response"].replace("\r\n", "\n").strip()}) + "\n")
    log_path = workdir / "traffic.sqlite3"
    truth: dict[str, dict[str, str]] = {}
    started = time.perf_counter()
    # data collection needs only the answers' content, not a provider's pacing
    with StandinCloud(answers=answers, latency=LatencyModel.none()) as cloud:
        config = RouterConfig(
            models=cloud.models,
            cloud={"default_model": "gpt-4o"}, log={"path": log_path}, local={"registry_path": None}, warmup="lazy",
        )  # fmt: skip
        with Client(config) as client:
            from tqdm import tqdm

            for r in tqdm(traffic, desc="all-cloud replay", unit="query"):
                response = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": r["instruction"]}])
                truth[response.id] = {"category": r["category"], "intent": r["intent"]}
    replay_s = time.perf_counter() - started
    print(f"replayed {len(traffic)} queries all-cloud in {replay_s:.0f} s (tail: {dict(tail_seen)})")

    run = discover(log_path, workdir / "categories", config=DiscoveryConfig(target_share=0.9), auto=True,
                   encoder_cache=workdir / "cache", progress=True)  # fmt: skip
    proposal = run.proposal
    accepted, covered, purity, intent_hits, intent_pure90, category_majority, members = _scored_proposal(
        workdir / "categories", proposal, truth
    )
    # What the cloud's answers add: the same run with answers ignored (no split by answers, no answer check).
    plain = discover(log_path, workdir / "categories-no-answers", config=DiscoveryConfig(target_share=0.9, min_answer_similarity=0.0),
                     auto=True, encoder_cache=workdir / "cache", progress=True)  # fmt: skip
    p_accepted, p_covered, p_purity, p_intent_hits, _, _, p_members = _scored_proposal(
        workdir / "categories-no-answers", plain.proposal, truth
    )
    without_answers = {
        "clusters_found": plain.clusters_found, "categories_accepted": len(p_accepted),
        "coverage": p_covered / len(p_members), "min_purity": min(p_purity.values()),
        "intent_purity": p_intent_hits / max(p_covered, 1),
    }  # fmt: skip
    print(f"bitext without answers: {without_answers}")
    proposed_bitext = set(category_majority.values())
    unproposed = sorted({r["category"] for r in rows} - proposed_bitext)
    applied = apply_categories(workdir / "categories", log_path, workdir / "classifiers")
    registry = ClassifierRegistry(workdir / "classifiers")
    classifier = EmbeddingClassifier.load(registry.artifact_path(applied.version))
    edge = [r["instruction"] for r in held_out if r["category"] in unproposed]
    predicted = classifier.predict(edge) if edge else []
    recall = sum(1 for p in predicted if p is None) / len(edge) if edge else None
    in_scope = [r for r in held_out if r["category"] in proposed_bitext]
    in_scope_pred = classifier.predict([r["instruction"] for r in in_scope])
    in_scope_local = sum(1 for p in in_scope_pred if p is not None) / len(in_scope)
    print(
        f"bitext: {len(accepted)} categories accepted covering {covered / len(members):.1%} of traffic; min purity "
        f"{min(purity.values()):.1%} (by category), intent purity {intent_hits / max(covered, 1):.1%}; "
        f"unproposed {unproposed}: {len(edge)} held-out queries to the cloud with recall {recall if recall is None else f'{recall:.1%}'}"
    )
    return {
        "bitext_replayed_queries": len(traffic), "bitext_replay_seconds": replay_s,
        "bitext_categories_accepted": len(accepted), "bitext_clusters_found": run.clusters_found,
        "bitext_coverage": covered / len(members), "bitext_min_purity": min(purity.values()),
        "bitext_intent_purity": intent_hits / max(covered, 1), "bitext_unproposed_categories": unproposed,
        "bitext_queries_in_intent_pure90_clusters": intent_pure90 / len(members),
        "bitext_unproposed_edge_recall": recall, "bitext_unproposed_held_out": len(edge),
        "bitext_proposed_held_out_local_share": in_scope_local, "bitext_discover_seconds": run.seconds,
        "bitext_purity_by_category": purity, "bitext_majority_category": category_majority,
        "bitext_without_answers": without_answers,
    }  # fmt: skip


_PREFIXES = ["", "", "hi, ", "hello ", "hey ", "good morning, ", "quick question: ", "excuse me, "]
_SUFFIXES = ["", "", "", " thanks", " please", " thank you", "?", " asap", " pls"]


def synthesise_log(path: Path, n: int, seed: int = 0) -> float:
    """``n`` logged cloud requests: Bitext and Banking77 queries, each repeated with a greeting or courtesy added."""
    from router.traffic_log import LogRecord, TrafficLog

    bitext = [(r["instruction"], r["response"]) for r in _csv(BITEXT)]
    banking = [(r["text"], None) for name in ("train.csv", "test.csv") for r in _csv(BANKING77 / name)]
    pool = bitext + banking
    rng = random.Random(seed)
    started = time.perf_counter()
    with TrafficLog(path) as log:
        for i in range(n):
            query, answer = pool[i % len(pool)] if i < len(pool) else rng.choice(pool)
            if i >= len(pool):
                query = f"{rng.choice(_PREFIXES)}{query}{rng.choice(_SUFFIXES)}"
            log.record(LogRecord(
                id=f"chatcmpl-{uuid.uuid4().hex}", requested_model="gpt-4o", reason="no_classifier", stream=False,
                tier="cloud", messages=[{"role": "user", "content": query}], response=answer, finish_reason="stop",
            ))  # fmt: skip
    return time.perf_counter() - started


def scale(workdir: Path, n: int) -> dict[str, Any]:
    log_path = workdir / "scale.sqlite3"
    for stale in workdir.glob("scale.sqlite3*"):
        stale.unlink()
    written = synthesise_log(log_path, n)
    print(f"synthesised {n} logged queries in {written:.0f} s")
    store = workdir / "scale-categories"
    shutil.rmtree(store, ignore_errors=True)
    (store / "cache").mkdir(parents=True)
    for cached in (workdir / "cache").glob("encoder-*"):  # the ONNX export is reused, as on a second run
        shutil.copytree(cached, store / "cache" / cached.name)
    # The child reports its own peak RSS: RUSAGE_CHILDREN would include the stand-in cloud's server.
    code = (
        "import resource, sys\nfrom router.cli import main\n"
        f"rc = main(['discover', '--log', {str(log_path)!r}, '--store', {str(store)!r}, '--quiet', '--limit', '15'])\n"
        "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\nsys.exit(rc)"
    )
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    seconds = time.perf_counter() - started
    print(out)
    rss_mb = int(out.rsplit("PEAK_RSS_KB", 1)[1].split()[0]) / 1024
    print(f"discover over {n} logged queries: {seconds:.0f} s, peak RSS {rss_mb:.0f} MB")
    return {"scale_queries": n, "scale_100k_seconds": seconds, "scale_100k_rss_mb": rss_mb}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(".eval-discover"))
    parser.add_argument("--scale", type=int, default=100_000, help="queries in the synthesised log (0: skip)")
    parser.add_argument("--skip-bitext", action="store_true")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from classifiers.discovery import discovery_encoder

    args.workdir.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = json.loads(args.results.read_text()) if args.results.is_file() else {}
    encoder = discovery_encoder(None, args.workdir / "cache")
    for name in INTENT_SETS:
        figures.update(intent_set(name, encoder, knob=name != "bitext"))
    if not args.skip_bitext:
        bitext_dir = args.workdir / "bitext"
        shutil.rmtree(bitext_dir, ignore_errors=True)
        bitext_dir.mkdir()
        shutil.copytree(args.workdir / "cache", bitext_dir / "cache")
        figures.update(bitext_proposals(bitext_dir, encoder))
    if args.scale:
        figures.update(scale(args.workdir, args.scale))
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(figures, indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
