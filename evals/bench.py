"""Performance benchmark (``make bench``): figures printed and written, never asserted.

Measures, side by side in one run on this machine:

* ``import router`` time (and ``from router import Client``), in fresh interpreters;
* classification latency per single query, quiet and while the local model is generating
  in another thread of the same process (the router's real situation), for the default fp32
  encoder and, side by side, the opt-in int8 one (``quantize=True``);
* local-tier overhead: ``Client(model="local")`` against calling llama-cpp-python directly
  on the same prompt and settings, in adjacent pairs (median of the per-pair ratios);
* process RSS with the classifier and the local model loaded (plus the side-by-side int8 classifier, so an upper bound).

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
PROMPT = [{"role": "user", "content": "Write a few sentences about the history of the postal service."}]


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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument("--overhead-runs", type=int, default=16, help="direct/routed pairs")
    parser.add_argument("--max-tokens", type=int, default=64)
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
               "--queries", str(args.queries), "--overhead-runs", str(args.overhead_runs), "--max-tokens", str(args.max_tokens)]  # fmt: skip
        child = subprocess.run(cmd, env=env, stdout=sys.stdout, stderr=subprocess.PIPE, text=True)
        if child.returncode != 0:
            sys.stderr.write(child.stderr)
            raise SystemExit(child.returncode)
        results = json.loads((RESULTS / "bench.json").read_text())
        results.update({"import_router_s": round(import_router_s, 4), "import_client_s": round(import_client_s, 3)})
        (RESULTS / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
        return results

    classifier_path = args.classifier
    from router import Client, RouterConfig

    # Loop-cutting off, so both sides of the overhead comparison generate the same tokens (the
    # guard still runs its check on every token). Everything else is the default configuration.
    config = RouterConfig(
        classifier={"path": classifier_path},
        local={"degenerate_min_span": 100_000, "reject_echo": False},
        routing={"local_categories": "*"},
        log={"path": work / "traffic.sqlite3"},
        warmup="eager",
    )
    client = Client(config)
    engine = client._engine
    classifier = engine.classifier
    from classifiers import EmbeddingClassifier

    int8 = EmbeddingClassifier.load(args.classifier_int8)
    llm = engine.local.llama
    queries = _queries(args.queries)
    _classify_latencies(classifier, queries[:50])  # warm caches
    _classify_latencies(int8, queries[:50])

    print("classification latency, single query (default fp32 encoder; int8 encoder side by side)")
    quiet = _classify_latencies(classifier, queries)
    quiet_int8 = _classify_latencies(int8, queries)
    print(f"  quiet:                 p50 {_percentile(quiet, 50):.2f} ms, p99 {_percentile(quiet, 99):.2f} ms"
          f"   int8: p50 {_percentile(quiet_int8, 50):.2f} ms, p99 {_percentile(quiet_int8, 99):.2f} ms")  # fmt: skip

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
    client.close()

    results = {
        "classify_p50_ms": round(_percentile(quiet, 50), 3),
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
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
