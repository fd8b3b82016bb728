"""Performance benchmark (``make bench``): figures printed and written, never asserted.

Measures, side by side in one run on this machine:

* ``import router`` time (and ``from router import Client``), in fresh interpreters;
* classification latency per single query, quiet and while the local model is generating
  in another thread of the same process (the router's real situation), for the default fp32
  encoder and, side by side, the opt-in int8 one (``quantize=True``);
* local-tier overhead: ``Client(model="local")`` against calling llama-cpp-python directly
  on the same prompt and settings, in adjacent pairs (median of the per-pair ratios);
* process RSS with the classifier and the local model loaded (plus the side-by-side int8 classifier, so an upper bound);
* shadow answers' cost to the foreground: two routers side by side, shadow sampling at 100 % and
  off, replaying the same cycle in interleaved pairs (a cloud-answered query in a gated-off
  category, which queues a shadow answer; a pause, during which the shadow answer generates; a
  local query, which preempts it): local-request latency and classification latency.

Writes ``evals/results/bench.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
# The local tier serves the adapter make demo ships: the base model loops on most prompts, and the
# guard would cut the routed side short of the direct one (both sides must do the same work).
PROMPT = [{"role": "user", "content": "I need help closing my account, what do I have to do?"}]
ADAPTER = Path(__file__).resolve().parent / "adapters" / "bitext-support" / "adapter.gguf"


def _median_import_seconds(statement: str, runs: int) -> float:
    code = f"import time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"
    samples = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout) for _ in range(runs)]
    return statistics.median(samples)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _classifier(path: Path, *, quantize: bool = False) -> None:
    from evals.demo import load_bitext, split, train_classifier

    train, calibration, _ = split(load_bitext())
    train_classifier(train, calibration, path, quantize=quantize)


def _queries(n: int) -> list[str]:
    from evals.demo import load_bitext, split

    _, _, replay = split(load_bitext())
    return [r["instruction"] for r in replay][:n]


def _classify_latencies(classifier: Any, queries: list[str], pause_s: float = 0.0) -> list[float]:
    out = []
    for q in queries:
        start = time.perf_counter()
        classifier.classify(q)
        out.append((time.perf_counter() - start) * 1000)
        if pause_s:
            time.sleep(pause_s)
    return out


def _turn_latencies(engine: Any, classifier: Any, queries: list[str], earlier: list[str]) -> list[float]:
    """Classification of each query as the last turn after ``earlier`` turns, as a request pays it:
    the turn cache (earlier turns found there, the new one encoded) plus the walk over the topics."""
    from router import resolve_topics

    out = []
    for q in queries:
        texts = [*earlier, q]
        start = time.perf_counter()
        predictions = engine._turns.classify(classifier, None, texts)
        resolve_topics(list(enumerate(texts)), predictions)
        out.append((time.perf_counter() - start) * 1000)
    return out


def _serving_rss(classifier_path: Path) -> dict[str, float]:
    """The serving process alone (``evals/serving_rss.py``), 16 sequences (the default) and 1, one fresh process each."""
    print("serving process memory (fresh process: router + classifier + local model, after 16 answers)")
    figures = {}
    for sequences in (16, 1):
        cmd = [sys.executable, "-m", "evals.serving_rss", "--classifier", str(classifier_path), "--adapter", str(ADAPTER),
               "--max-sequences", str(sequences)]  # fmt: skip
        child = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=False)
        if child.returncode != 0:
            sys.stderr.write(child.stderr)
            raise SystemExit(child.returncode)
        measured = json.loads(child.stdout.strip().splitlines()[-1])
        suffix = "" if sequences == 16 else "_one_sequence"
        figures[f"serving_rss_mb{suffix}"] = measured["rss_mb"]
        figures[f"serving_peak_rss_mb{suffix}"] = measured["peak_rss_mb"]
        print(f"  max_sequences {sequences:2d}: RSS {measured['rss_mb']:.0f} MB, peak {measured['peak_rss_mb']:.0f} MB")
    figures["serving_kv_budget_cost_mb"] = round(figures["serving_peak_rss_mb"] - figures["serving_peak_rss_mb_one_sequence"], 1)
    return figures


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument("--overhead-runs", type=int, default=16, help="direct/routed pairs")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--shadow-pairs", type=int, default=40, help="shadow on/off cycle pairs")
    parser.add_argument("--classifier", type=Path, default=None, help="an existing classifier artifact")
    parser.add_argument("--classifier-int8", type=Path, default=None, help="an existing int8 classifier artifact")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    work = Path(tempfile.mkdtemp(prefix="router-bench-"))
    # The parent measures imports and trains; serving is measured in a fresh child process, so
    # its RSS and threads reflect the router only (training imported torch here).
    if os.environ.get("_ROUTER_BENCH_CHILD") != "1":
        print("import times (fresh interpreters, median of 5)")
        import_router_s = _median_import_seconds("import router", 5)
        import_client_s = _median_import_seconds("from router import Client", 5)
        print(f"  import router: {import_router_s * 1000:.1f} ms; from router import Client: {import_client_s * 1000:.0f} ms")
        classifier_path, int8_path = args.classifier, args.classifier_int8
        if classifier_path is None:
            print("training a benchmark classifier on Bitext (frozen encoder)")
            classifier_path = work / "classifier"
            _classifier(classifier_path)
        if int8_path is None:
            print("training the same classifier with the int8 encoder")
            int8_path = work / "classifier-int8"
            _classifier(int8_path, quantize=True)
        env = {**os.environ, "_ROUTER_BENCH_CHILD": "1"}
        cmd = [sys.executable, "-m", "evals.bench", "--classifier", str(classifier_path), "--classifier-int8", str(int8_path),
               "--queries", str(args.queries), "--overhead-runs", str(args.overhead_runs), "--max-tokens", str(args.max_tokens),
               "--shadow-pairs", str(args.shadow_pairs)]  # fmt: skip
        child = subprocess.run(cmd, env=env, stdout=sys.stdout, stderr=subprocess.PIPE, text=True)
        if child.returncode != 0:
            sys.stderr.write(child.stderr)
            raise SystemExit(child.returncode)
        results = json.loads((RESULTS / "bench.json").read_text())
        results.update({"import_router_s": round(import_router_s, 4), "import_client_s": round(import_client_s, 3)})
        results.update(_serving_rss(classifier_path))
        (RESULTS / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
        return results

    classifier_path = args.classifier
    from router import Client, RouterConfig

    # Loop-cutting off, so both sides of the overhead comparison generate the same tokens (the
    # guard still runs its check on every token). Everything else is the default configuration.
    config = RouterConfig(
        classifier={"path": classifier_path},
        local={"degenerate_min_span": 100_000, "reject_echo": False, "adapter_path": ADAPTER},
        routing={"local_categories": "*"},
        log={"path": work / "traffic.sqlite3"},
        warmup="eager",
    )
    client = Client(config)
    engine = client._engine
    classifier = engine.classifier
    from classifiers import EmbeddingClassifier

    int8 = EmbeddingClassifier.load(args.classifier_int8)
    llm = engine.local.standalone_llama()  # its own context: the workers own theirs
    queries = _queries(args.queries)
    _classify_latencies(classifier, queries[:50])  # warm caches
    _classify_latencies(int8, queries[:50])

    print("classification latency, single query (default fp32 encoder; int8 encoder side by side)")
    quiet = _classify_latencies(classifier, queries)
    quiet_int8 = _classify_latencies(int8, queries)
    print(f"  quiet:                 p50 {_percentile(quiet, 50):.2f} ms, p99 {_percentile(quiet, 99):.2f} ms"
          f"   int8: p50 {_percentile(quiet_int8, 50):.2f} ms, p99 {_percentile(quiet_int8, 99):.2f} ms")  # fmt: skip

    print("classification of a request's last turn, the path a request takes (turn cache + conversation walk)")
    earlier = ["I want to cancel my order", "ok, and how long will that take?", "what if it already shipped?"]
    _turn_latencies(engine, classifier, queries[:50], earlier)  # warm; the earlier turns are cached from here on
    single_turn = _turn_latencies(engine, classifier, [q + " " for q in queries], [])
    fourth_turn = _turn_latencies(engine, classifier, [q + "  " for q in queries], earlier)
    turn_ratio = _percentile(fourth_turn, 50) / _percentile(single_turn, 50)
    print(f"  single question:       p50 {_percentile(single_turn, 50):.2f} ms; fourth turn of a conversation: p50"
          f" {_percentile(fourth_turn, 50):.2f} ms (ratio {turn_ratio:.3f}; one encoder run each)")  # fmt: skip

    stop = threading.Event()
    generated = [0]

    def generate() -> None:
        from hybrid_common.chat import render_prompt

        prompt = render_prompt(PROMPT)
        while not stop.is_set():
            for _ in llm.create_completion(prompt, max_tokens=48, temperature=0.0, stream=True):
                generated[0] += 1
                if stop.is_set():
                    break

    worker = threading.Thread(target=generate, daemon=True)
    worker.start()
    time.sleep(1.0)
    busy = _classify_latencies(classifier, queries, pause_s=0.01)
    busy_int8 = _classify_latencies(int8, queries, pause_s=0.01)
    stop.set()
    worker.join()
    print(f"  under generation:      p50 {_percentile(busy, 50):.2f} ms, p99 {_percentile(busy, 99):.2f} ms"
          f"   int8: p50 {_percentile(busy_int8, 50):.2f} ms, p99 {_percentile(busy_int8, 99):.2f} ms"
          f"  ({generated[0]} tokens generated meanwhile)")  # fmt: skip

    print(f"local-tier overhead vs llama-cpp-python directly ({args.overhead_runs} interleaved pairs, {args.max_tokens} tokens)")
    from hybrid_common.chat import STOP_SEQUENCES, render_prompt

    prompt = render_prompt(PROMPT)

    def run_direct() -> tuple[float, str, int]:
        start = time.perf_counter()
        out = llm.create_completion(prompt, max_tokens=args.max_tokens, temperature=0.0, top_p=1.0, stop=list(STOP_SEQUENCES))
        return time.perf_counter() - start, out["choices"][0]["text"], out["usage"]["completion_tokens"]

    def run_routed() -> tuple[float, str, int]:
        start = time.perf_counter()
        out = client.chat.completions.create(model="local", messages=PROMPT, max_tokens=args.max_tokens, temperature=0.0)
        assert out.router.tier == "local" and out.router.fallback_from is None, out.router
        return time.perf_counter() - start, out.choices[0].message.content, out.usage.completion_tokens

    # This VM's speed drifts by +-15 % between identical runs a second apart, so each routed run
    # is paired with the direct run next to it (order alternating, to cancel drift within a pair)
    # and the figure is the median of the per-pair ratios; the ratio of medians is kept alongside.
    direct_s, routed_s, pair_ratios, tokens = [], [], [], set()
    for i in range(args.overhead_runs):
        first, second = (run_direct, run_routed) if i % 2 == 0 else (run_routed, run_direct)
        a, b = first(), second()
        direct, routed = (a, b) if i % 2 == 0 else (b, a)
        assert routed[1] == direct[1], "both sides must do the same work"
        direct_s.append(direct[0])
        routed_s.append(routed[0])
        pair_ratios.append(routed[0] / direct[0])
        tokens.add((direct[2], routed[2]))
    ratio = statistics.median(pair_ratios)
    ratio_of_medians = statistics.median(routed_s) / statistics.median(direct_s)
    print(f"  direct median {statistics.median(direct_s) * 1000:.0f} ms, routed median {statistics.median(routed_s) * 1000:.0f} ms;"
          f" median pair ratio {ratio:.3f} (quartiles {_percentile(pair_ratios, 25):.3f}-{_percentile(pair_ratios, 75):.3f}),"
          f" ratio of medians {ratio_of_medians:.3f}; completion tokens direct/routed: {sorted(tokens)}")  # fmt: skip

    rss = _rss_mb()
    print(f"process RSS with classifier + local model loaded (and litellm imported, plus the int8 classifier): {rss:.0f} MB")
    loaded = sorted(m for m in ("torch", "transformers", "sentence_transformers", "sklearn") if m in sys.modules)
    print(f"  training libraries in the serving process: {loaded or 'none'}")
    llm.close()
    client.close()
    shadow = _shadow_overhead(classifier_path, work, pairs=args.shadow_pairs, max_tokens=args.max_tokens)

    results = {
        "classify_p50_ms": round(_percentile(quiet, 50), 3),
        "request_classify_p50_ms_single_question": round(_percentile(single_turn, 50), 3),
        "request_classify_p50_ms_fourth_turn": round(_percentile(fourth_turn, 50), 3),
        "request_classify_p50_ratio_fourth_turn": round(turn_ratio, 3),
        "classify_p99_ms": round(_percentile(quiet, 99), 3),
        "classify_p50_ms_under_generation": round(_percentile(busy, 50), 3),
        "classify_p99_ms_under_generation": round(_percentile(busy, 99), 3),
        "int8_classify_p50_ms": round(_percentile(quiet_int8, 50), 3),
        "int8_classify_p99_ms": round(_percentile(quiet_int8, 99), 3),
        "int8_classify_p50_ms_under_generation": round(_percentile(busy_int8, 50), 3),
        "int8_classify_p99_ms_under_generation": round(_percentile(busy_int8, 99), 3),
        "local_overhead_ratio": round(ratio, 4),
        "local_overhead_ratio_of_medians": round(ratio_of_medians, 4),
        "local_direct_median_s": round(statistics.median(direct_s), 4),
        "local_routed_median_s": round(statistics.median(routed_s), 4),
        "rss_mb": round(rss, 1),
        "queries": len(queries),
        "cpu_count": os.cpu_count(),
        "local_n_threads": llm.n_threads,
        **shadow,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


SHADOWED, TRUSTED = "REFUND", "ACCOUNT"  # a gated-off category (shadow answers) and an open one


def _shadow_overhead(classifier_path: Path, work: Path, *, pairs: int, max_tokens: int) -> dict[str, Any]:
    """Foreground latency with shadow sampling at 100 % against sampling off, in interleaved pairs."""
    from classifiers import EmbeddingClassifier
    from evals.demo import load_bitext, split
    from evals.standin_cloud import StandinCloud
    from router import Client, RouterConfig

    classifier = EmbeddingClassifier.load(classifier_path)
    _, _, replay = split(load_bitext())
    picked: dict[str, list[dict[str, str]]] = {SHADOWED: [], TRUSTED: []}
    for row in replay:
        bucket = picked.get(row["category"])
        if bucket is not None and len(bucket) < pairs and classifier.classify(row["instruction"]).category == row["category"]:
            bucket.append(row)
    answers = work / "recorded-answers.jsonl"
    answers.write_text("".join(json.dumps({"query": r["instruction"], "answer": r["response"]}) + "\n" for r in picked[SHADOWED]))
    idle_s = 0.25
    print(f"shadow answers and the foreground ({pairs} interleaved pairs: sampling 100 % vs off)")
    with StandinCloud(answers=answers) as cloud:

        def router(rate: float, name: str) -> Any:
            return Client(RouterConfig(
                models=cloud.models,
                cloud={"default_model": "gpt-4o"},
                classifier={"path": classifier_path},
                routing={"local_categories": "*"},
                local={"degenerate_min_span": 100_000, "reject_echo": False, "adapter_path": ADAPTER},
                quality={"overrides": {TRUSTED: "trust"}, "shadow_rate": rate, "audit_rate": 0.0, "idle_s": idle_s,
                         "evidence_dir": work / f"{name}-evidence"},
                log={"path": work / f"{name}.sqlite3"},
                warmup="eager",
            ))  # fmt: skip

        on, off = router(1.0, "shadow-on"), router(0.0, "shadow-off")

        def cycle(client: Any, i: int) -> tuple[float, list[float], int]:
            """One cloud answer that queues a shadow answer, a pause, then a local answer."""
            cloud_query, local_query = picked[SHADOWED][i]["instruction"], picked[TRUSTED][i]["instruction"]
            r = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": cloud_query}], max_tokens=256)
            assert r.router.tier == "cloud" and r.router.category == SHADOWED, r.router
            time.sleep(idle_s + 0.35)  # the shadow answer is generating now (sampling on)
            start = time.perf_counter()
            local = client.chat.completions.create(
                model="local", messages=[{"role": "user", "content": local_query}], max_tokens=max_tokens, temperature=0.0
            )
            elapsed = time.perf_counter() - start
            assert local.router.tier == "local"
            assert client.wait_for_samples(60)  # nothing left running in the background for the other router
            return elapsed, [r.router.classify_ms, local.router.classify_ms], local.usage.completion_tokens

        cycle(on, 0), cycle(off, 0)  # warm both
        lat = {"on": [], "off": []}
        classify = {"on": [], "off": []}
        ratios, tokens = [], set()
        for i in range(pairs):
            order = (("on", on), ("off", off)) if i % 2 == 0 else (("off", off), ("on", on))
            got = {}
            for name, client in order:
                got[name] = cycle(client, i)
                lat[name].append(got[name][0])
                classify[name].extend(got[name][1])
            ratios.append(got["on"][0] / got["off"][0])
            tokens.add((got["on"][2], got["off"][2]))
        stats, activity = on.sampling_stats(), on._engine.activity
        on.close()
        off.close()
    p50 = {k: statistics.median(v) for k, v in lat.items()}
    c99 = {k: _percentile(v, 99) for k, v in classify.items()}
    c50 = {k: _percentile(v, 50) for k, v in classify.items()}
    print(f"  local request p50: shadow on {p50['on'] * 1000:.0f} ms, off {p50['off'] * 1000:.0f} ms;"
          f" median pair ratio {statistics.median(ratios):.3f} (quartiles {_percentile(ratios, 25):.3f}-{_percentile(ratios, 75):.3f})")
    print(f"  classification: p50 on {c50['on']:.2f} / off {c50['off']:.2f} ms; p99 on {c99['on']:.2f} / off {c99['off']:.2f} ms"
          f" (ratio {c99['on'] / c99['off']:.3f}, {len(classify['on'])} queries each)")
    print(f"  shadow answers: {stats.offered} queued, {stats.preempted} preempted by a foreground request, {stats.completed} completed,"
          f" {stats.expired} expired, {stats.dropped_queue_full} dropped; foreground waits for a shadow to step aside:"
          f" {activity.yield_waits}, longest {activity.yield_wait_s_max * 1000:.1f} ms;"
          f" pieces generated after an arrival: at most {stats.preempt_late_pieces_max}; completion tokens on/off: {sorted(tokens)}")  # fmt: skip
    return {
        "shadow_local_p50_ratio": round(statistics.median(ratios), 4),
        "shadow_local_p50_on_s": round(p50["on"], 4),
        "shadow_local_p50_off_s": round(p50["off"], 4),
        "shadow_classify_p99_ratio": round(c99["on"] / c99["off"], 4),
        "shadow_classify_p99_on_ms": round(c99["on"], 3),
        "shadow_classify_p99_off_ms": round(c99["off"], 3),
        "shadow_classify_p50_on_ms": round(c50["on"], 3),
        "shadow_classify_p50_off_ms": round(c50["off"], 3),
        "shadow_pairs": pairs,
        "shadow_preempted": stats.preempted,
        "shadow_yield_wait_max_ms": round(activity.yield_wait_s_max * 1000, 2),
    }


if __name__ == "__main__":
    main()
