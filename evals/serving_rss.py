"""Memory of a serving process alone: the router, its classifier and the local model, nothing else (``make bench``).

``make bench``'s own RSS figure is taken in a process that also holds the benchmark's instruments (a
second llama.cpp context for the direct-call comparison, the int8 classifier); this is the figure an
operator sizes a machine by. One fresh process per setting: the default configuration (16 sequences
decoded together, a KV budget of 16 x n_ctx 2048 cells) and, beside it, one sequence, so the cost
of the batch's KV budget is measured, not guessed. The peak is read after 16 64-token answers, as
many at once as the setting decodes together, so every KV page the batch touches is counted.

Prints one JSON object: ``rss_mb`` (resident now), ``peak_rss_mb`` (the process's high-water mark).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classifier", type=Path, required=True)
    parser.add_argument("--adapter", type=Path, default=None)
    parser.add_argument("--max-sequences", type=int, default=16)
    parser.add_argument("--answers", type=int, default=16)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from evals.demo import load_bitext, split
    from router import Client, RouterConfig

    _, _, replay = split(load_bitext())
    questions = [r["instruction"] for r in replay][: args.answers]
    local = {"max_sequences": args.max_sequences} | ({"adapter_path": args.adapter} if args.adapter else {})
    with tempfile.TemporaryDirectory(prefix="serving-rss-") as work:
        client = Client(RouterConfig(
            classifier={"path": args.classifier}, routing={"local_categories": "*"}, local=local,
            log={"path": Path(work) / "traffic.sqlite3"}, warmup="eager",
        ))  # fmt: skip

        def ask(question: str) -> int:
            reply = client.chat.completions.create(model="local", messages=[{"role": "user", "content": question}], max_tokens=64)
            return reply.usage.completion_tokens

        with ThreadPoolExecutor(args.max_sequences) as pool:  # more callers than sequences would only queue
            tokens = sum(pool.map(ask, questions))
        figures = {"rss_mb": round(_status_mb("VmRSS"), 1), "peak_rss_mb": round(_status_mb("VmHWM"), 1), "tokens": tokens}
        client.close()
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
