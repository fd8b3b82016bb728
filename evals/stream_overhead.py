"""What a streamed cloud answer costs the router's own process, beside an unstreamed one (``make bench-stream``).

One process, two routers on the recorded-answer stand-in without its latency model (so the
provider adds nothing): one with litellm's per-chunk logging off (``cloud.litellm_chunk_logging =
false``, the default), one with it on (litellm's own default: a worker-thread task with a new event
loop for every chunk). The same Bitext queries go unstreamed, streamed with logging off and
streamed with it on, in interleaved blocks of ten so that the machine's drift hits all three alike.
Process CPU counts every thread of this process (litellm's logging threads included), not the
stand-in's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from evals.demo import load_bitext
from evals.figures import merge_figures

RESULTS = Path(__file__).parent / "results" / "stream.json"
MODES = ("unstreamed", "streamed_chunk_logging_off", "streamed_chunk_logging_on")


def _config(cloud: Any, workdir: Path, name: str, chunk_logging: bool) -> Any:
    from router import RouterConfig

    return RouterConfig.model_validate({
        "cloud": {"default_model": "gpt-4o", "litellm_chunk_logging": chunk_logging},
        "models": cloud.models,
        "routing": {"local_categories": []},
        "log": {"path": str(workdir / f"traffic-{name}.sqlite3")},
        "quality": {"evidence_dir": str(workdir / f"evidence-{name}")},
    })  # fmt: skip


def _one(client: Any, question: str, stream: bool) -> tuple[float, float, int]:
    """Wall ms, process-CPU ms and chunks of one answer."""
    messages = [{"role": "user", "content": question}]
    wall, cpu, chunks = time.perf_counter(), time.process_time(), 0
    if stream:
        kwargs = {"stream": True, "stream_options": {"include_usage": True}}
        with client.chat.completions.create(model="gpt-4o", messages=messages, max_tokens=400, **kwargs) as answer:
            chunks = sum(1 for _ in answer)
    else:
        client.chat.completions.create(model="gpt-4o", messages=messages, max_tokens=400)
    return (time.perf_counter() - wall) * 1000, (time.process_time() - cpu) * 1000, chunks


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from evals.standin_cloud import LatencyModel, StandinCloud
    from router import Client

    rows = load_bitext()[: args.queries + 20]
    workdir = Path(tempfile.mkdtemp(prefix="stream-overhead-"))
    answers = workdir / "answers.jsonl"
    answers.write_text("".join(json.dumps({"query": r["instruction"], "answer": r["response"].strip()}) + "\n" for r in rows))
    measured: dict[str, list[tuple[float, float, int]]] = {mode: [] for mode in MODES}
    with StandinCloud(answers=answers, latency=LatencyModel.none()) as cloud:
        with Client(_config(cloud, workdir, "off", False)) as off, Client(_config(cloud, workdir, "on", True)) as on:
            runs = {MODES[0]: (off, False), MODES[1]: (off, True), MODES[2]: (on, True)}
            for row in rows[:20]:  # warm-up: connections, imports, first-call caches
                for client, stream in runs.values():
                    _one(client, row["instruction"], stream)
            for start in range(20, len(rows), 10):
                block = rows[start : start + 10]
                for mode, (client, stream) in runs.items():
                    measured[mode].extend(_one(client, r["instruction"], stream) for r in block)
    figures: dict[str, Any] = {"queries": args.queries}
    for mode, runs_ in measured.items():
        figures[f"{mode}_wall_p50_ms"] = statistics.median(r[0] for r in runs_)
        figures[f"{mode}_cpu_mean_ms"] = statistics.fmean(r[1] for r in runs_)
        figures[f"{mode}_chunks_mean"] = statistics.fmean(r[2] for r in runs_)
        print(f"{mode:28s} wall p50 {figures[f'{mode}_wall_p50_ms']:6.1f} ms   process CPU {figures[f'{mode}_cpu_mean_ms']:6.1f} ms"
              f"   chunks {figures[f'{mode}_chunks_mean']:4.0f}")  # fmt: skip
    chunks = figures["streamed_chunk_logging_off_chunks_mean"] or 1
    for mode in MODES[1:]:
        figures[f"{mode}_cpu_per_chunk_ms"] = (figures[f"{mode}_cpu_mean_ms"] - figures["unstreamed_cpu_mean_ms"]) / chunks
    figures["chunk_logging_cpu_ratio"] = figures["streamed_chunk_logging_on_cpu_mean_ms"] / figures["streamed_chunk_logging_off_cpu_mean_ms"]
    merge_figures(args.results, figures)
    print(f"per chunk beyond an unstreamed answer: {figures['streamed_chunk_logging_off_cpu_per_chunk_ms']:.2f} ms with litellm's chunk "
          f"logging off, {figures['streamed_chunk_logging_on_cpu_per_chunk_ms']:.2f} ms on; written to {args.results}")  # fmt: skip


if __name__ == "__main__":
    main()
