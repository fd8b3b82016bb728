"""A routed local stream's first token held in full, released once no echo is possible, and not held, beside the cloud's (``make bench-release``).

Side by side in one process: ``make demo``'s phase-2 router (its classifier, the shipped adapter and
its evidence, in ``.demo``; run ``make demo`` first) four times, the same held-out Bitext questions
of the local categories sent to each in rotating order:

* ``early``: the default, released at the first word that is not an echo's opening
  (``local.stream_release_when_opening_differs``) or once no echo is possible;
* ``settled``: only once no echo is possible (``stream_release_when_opening_differs = false``);
* ``held``: ``local.stream_release_when_settled = false``, held to ``stream_hold_back_chars``;
* ``unheld``: ``local.stream_hold = false``, no hold at all: the floor a held stream cannot beat,
  and what the operator trades the echo check's fallback for;
* ``cloud``: no local category, every question answered by the stand-in cloud with its latency
  model: the time to first token the local ones are compared with (``release_*_cloud_ratio``).

Reports time to first token and total time (client-side, p50) and whether the local answers are
identical (they must be: only the moment text is released changes).
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import time
from pathlib import Path
from typing import Any

from evals.demo import LOCAL_CATEGORIES, PRIVATE_CATEGORIES, load_bitext, split
from evals.figures import merge_figures
from evals.stream_overhead import RESULTS


def _timed_stream(client: Any, question: str, max_tokens: int) -> tuple[str, float | None, float, str]:
    sent, ttft, pieces, tier = time.perf_counter(), None, [], ""
    with client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": question}], max_tokens=max_tokens, stream=True) as stream:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                ttft = ttft if ttft is not None else (time.perf_counter() - sent) * 1000
                pieces.append(chunk.choices[0].delta.content)
            tier = chunk.router.tier
    return tier, ttft, (time.perf_counter() - sent) * 1000, "".join(pieces)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=36)
    parser.add_argument("--answer-tokens", type=int, default=160)
    parser.add_argument("--demo", type=Path, default=Path(".demo"))
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from evals.standin_cloud import StandinCloud
    from router import Client, RouterConfig

    demo = args.demo.resolve()
    if not (demo / "registry").is_dir():
        raise SystemExit(f"{demo}/registry missing: run `make demo` first")
    _, _, replay = split(load_bitext())
    answerable = [r for r in replay if r["category"] in LOCAL_CATEGORIES]
    questions = sorted(answerable, key=lambda r: hashlib.sha256(r["instruction"].encode()).hexdigest())[: args.queries]
    measured: dict[str, list[tuple[str, float | None, float, str]]] = {"early": [], "settled": [], "held": [], "unheld": [], "cloud": []}
    arms = list(measured)
    workdir = demo / "stream-release"
    workdir.mkdir(exist_ok=True)
    with StandinCloud(answers=demo / "recorded-answers.jsonl", record=workdir / "standin-requests.jsonl") as cloud:
        base = {
            "models": cloud.models,
            "cloud": {"default_model": "gpt-4o"}, "classifier": {"path": demo / "classifier"},
            "routing": {"local_categories": LOCAL_CATEGORIES, "private_categories": PRIVATE_CATEGORIES},
            "quality": {"evidence_dir": demo / "evidence"}, "warmup": "eager",
        }  # fmt: skip

        def client_for(name: str) -> Any:
            local = {"registry_path": demo / "registry", "default_max_tokens": args.answer_tokens, "stream_release_when_settled": name != "held",
                     "stream_release_when_opening_differs": name != "settled"}  # fmt: skip
            if name == "unheld":
                local["stream_hold"] = False
            routing = base["routing"] | ({"local_categories": []} if name == "cloud" else {})
            return Client(RouterConfig(**(base | {"routing": routing}), log={"path": workdir / f"traffic-{name}.sqlite3"}, local=local))

        clients = {name: client_for(name) for name in arms}
        try:
            for i, row in enumerate(questions):
                for name in arms[i % len(arms):] + arms[: i % len(arms)]:  # each arm first equally often
                    measured[name].append(_timed_stream(clients[name], row["instruction"], args.answer_tokens))
        finally:
            for client in clients.values():
                client.close()
    tiers = {name: "cloud" if name == "cloud" else "local" for name in arms}
    figures: dict[str, Any] = {"release_queries": len(questions)}
    for name, runs in measured.items():
        tier = tiers[name]
        served = [r for r in runs if r[0] == tier and r[1] is not None]
        figures[f"release_{name}_{tier}"] = len(served)
        figures[f"release_{name}_ttft_p50_ms"] = statistics.median(r[1] for r in served)  # type: ignore[misc]
        figures[f"release_{name}_total_p50_ms"] = statistics.median(r[2] for r in served)
    for name in ("early", "settled", "held", "unheld"):
        figures[f"release_{name}_cloud_ratio"] = figures[f"release_{name}_ttft_p50_ms"] / figures["release_cloud_ttft_p50_ms"]
    figures["release_identical_answers"] = sum(a[3] == b[3] for a, b in zip(measured["early"], measured["held"], strict=True))
    figures["release_unheld_identical_answers"] = sum(a[3] == b[3] for a, b in zip(measured["early"], measured["unheld"], strict=True))
    figures["release_settled_identical_answers"] = sum(a[3] == b[3] for a, b in zip(measured["early"], measured["settled"], strict=True))
    figures["release_ttft_ratio"] = figures["release_early_ttft_p50_ms"] / figures["release_held_ttft_p50_ms"]
    merge_figures(args.results, figures)
    for name in measured:
        tier = tiers[name]
        ratio = f"   TTFT / cloud's {figures[f'release_{name}_cloud_ratio']:.2f}" if name != "cloud" else ""
        print(f"{name:6s} {tier} {figures[f'release_{name}_{tier}']:3d}   TTFT p50 {figures[f'release_{name}_ttft_p50_ms']:6.0f} ms"
              f"   total p50 {figures[f'release_{name}_total_p50_ms']:6.0f} ms{ratio}")  # fmt: skip
    print(f"identical answers early/held: {figures['release_identical_answers']}, early/settled: "
          f"{figures['release_settled_identical_answers']}, early/unheld: "
          f"{figures['release_unheld_identical_answers']} of {len(questions)}; written to {args.results}")


if __name__ == "__main__":
    main()
