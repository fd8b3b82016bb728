"""``make bench-capacity``: the local tier with many callers at once (continuous batching).

Measured side by side in one run, on the shipped adapter, greedy, through ``Client(model="local")``
(the whole request path: validation, PII scan, routing, guard, log):

* for 1, 4, 8 and 16 concurrent callers, the same held-out Bitext queries with 64-token answers:
  aggregate tokens/s, requests/s, time to first token and total latency (p50/p99). The levels run
  in several rounds (1-4-8-16, then 16-8-4-1, ...) and each figure is the median over rounds
  (latency percentiles pool every round's requests): one round's 1-caller level swung 46-66
  tokens/s on this 2-core machine, and ``speedup_16`` divides by it;
* the physical reference beside it: llama.cpp's own multi-sequence decode of the same model and
  adapter (one ``llama_decode`` per step for all sequences, 64 tokens each, no router) doing the
  same work right after each level (the same queries in waves of the level's size), whose ratio at
  16 sequences over 1 is what batching can give on this machine. Each level answers 64 queries, so
  16 callers send four each: with two, the run measured mostly the batch filling and draining;
* whether an answer depends on its neighbours: each query's greedy answer alone (1 caller)
  against the same query's answer in each batched level (identical share, where they diverge);
* answer quality batched vs alone: similarity to Bitext's reference answers on the shipped
  adapter's frozen evaluation questions (``evals/corpora/tuned_answers.jsonl``), once answered one
  at a time and once 16 at a time;
* prefix reuse: time to first token with a 400-token system prompt the KV memory has not seen
  (cold) against one it holds (reused), in alternating pairs;
* process RSS with the 16-sequence KV budget (n_ctx 2048 each), before the similarity encoder loads.

Writes ``evals/results/capacity.json``. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from evals.bench import _rss_mb  # the process RSS as make bench reads it

RESULTS = Path(__file__).resolve().parent / "results" / "capacity.json"
ADAPTER = Path(__file__).resolve().parent / "adapters" / "bitext-support" / "adapter.gguf"
FROZEN = Path(__file__).resolve().parent / "corpora" / "tuned_answers.jsonl"
LEVELS = (1, 4, 8, 16)

# A support bot's standing instructions, about 400 tokens: what every request of such a bot repeats.
SYSTEM_RULES = [
    "You are the customer support assistant of an online shop that sells clothing, shoes and home goods.",
    "Answer in a friendly, professional tone and keep every answer short and concrete.",
    "Never ask for a full card number, a CVV, a password or a one-time code; never repeat one back.",
    "Orders can be cancelled free of charge until they ship; after that the customer starts a return.",
    "Returns are accepted within 30 days of delivery for unworn items with their tags attached.",
    "Refunds go back to the original payment method within five to ten business days after the return arrives.",
    "Shipping is free above fifty dollars; standard delivery takes three to five business days, express two.",
    "A delivery address can be changed until the order ships, from the order page or by contacting support.",
    "Accounts can be closed from the privacy settings; closing an account deletes saved addresses and wish lists.",
    "Newsletter subscriptions are managed from the account settings or the unsubscribe link in any newsletter.",
    "Invoices are available on the order page as PDF files once an order has shipped.",
    "Payment methods: major credit and debit cards, PayPal, Apple Pay, Google Pay and gift cards.",
    "If a payment fails, suggest checking the billing address and the card's expiry date, then trying again.",
    "For damaged or wrong items, apologise, ask for the order number and a photo, and offer a replacement.",
    "Complaints are logged with a reference number; a specialist answers within two business days.",
    "Opening hours of human support: Monday to Friday, eight in the morning to eight in the evening.",
    "If a question is outside these topics, say you can only help with orders, accounts and payments.",
    "Do not invent order numbers, tracking numbers, dates or prices; ask the customer for them instead.",
    "Do not promise compensation beyond what these rules allow; offer to pass the case to a specialist.",
    "End every answer by asking whether there is anything else you can help with.",
]


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def _client(work: Path, **local: Any) -> Any:
    from router import Client, RouterConfig

    settings = {"adapter_path": ADAPTER, "reject_echo": False, "degenerate_min_span": 100_000, "max_queue": 256, "timeout_s": 300}
    settings.update(local)
    config = RouterConfig(local=settings, cloud={"preimport": False}, log={"path": work / "traffic.sqlite3"}, warmup="lazy")
    return Client(config=config)


def _ask(client: Any, messages: list[dict[str, str]], max_tokens: int) -> dict[str, Any]:
    started = time.perf_counter()
    first = None
    parts: list[str] = []
    usage = None
    stream = client.chat.completions.create(
        model="local", messages=messages, max_tokens=max_tokens, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            if first is None:
                first = time.perf_counter() - started
            parts.append(chunk.choices[0].delta.content)
        if getattr(chunk, "usage", None) is not None:
            usage = chunk.usage
    total = time.perf_counter() - started
    return {"ttft_s": first if first is not None else total, "total_s": total, "text": "".join(parts),
            "tokens": usage.completion_tokens if usage is not None else 0}  # fmt: skip


def run_level(client: Any, queries: list[str], callers: int, max_tokens: int) -> dict[str, Any]:
    """``callers`` threads answer ``queries`` between them, back to back."""
    results: dict[int, dict[str, Any]] = {}
    lock = threading.Lock()
    next_index = [0]

    def caller() -> None:
        while True:
            with lock:
                i = next_index[0]
                next_index[0] += 1
            if i >= len(queries):
                return
            result = _ask(client, [{"role": "user", "content": queries[i]}], max_tokens)
            with lock:
                results[i] = result

    threads = [threading.Thread(target=caller) for _ in range(callers)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    ordered = [results[i] for i in range(len(queries))]
    tokens = sum(r["tokens"] for r in ordered)
    return {
        "callers": callers,
        "requests": len(ordered),
        "seconds": wall,
        "tokens_per_s": tokens / wall,
        "requests_per_s": len(ordered) / wall,
        "ttft_s": [r["ttft_s"] for r in ordered],
        "total_s": [r["total_s"] for r in ordered],
        "mean_tokens": tokens / len(ordered),
        "answers": [r["text"] for r in ordered],
    }


def summarise_rounds(rounds: list[dict[str, Any]]) -> dict[str, float]:
    """One level's figures over its rounds: throughput as the median round, latency percentiles over
    every request of every round (more samples for the p99 than one round has)."""
    ttft = [s for level in rounds for s in level["ttft_s"]]
    total = [s for level in rounds for s in level["total_s"]]
    return {
        "tokens_per_s": statistics.median(level["tokens_per_s"] for level in rounds),
        "requests_per_s": statistics.median(level["requests_per_s"] for level in rounds),
        "ttft_p50_ms": 1000 * _percentile(ttft, 50),
        "ttft_p99_ms": 1000 * _percentile(ttft, 99),
        "total_p50_ms": 1000 * _percentile(total, 50),
        "total_p99_ms": 1000 * _percentile(total, 99),
        "mean_tokens": statistics.fmean(level["mean_tokens"] for level in rounds),
    }


class RawReference:
    """llama.cpp's own multi-sequence decode of the same model and adapter, no router: the physical
    reference. Opened once beside the router's client and measured right after each router level,
    on the same work, so both see the same machine state (before the similarity encoder, and the
    torch it brings, ever loads: torch's OpenMP runtime changes llama.cpp's speed once it has run)."""

    def __init__(self, max_sequences: int, longest_prompt: int, tokens: int, n_threads: int) -> None:
        from router.backends.llama_cpp import packaged_model_path
        from router.backends.llama_native import NativeBatch, NativeContextSettings

        settings = NativeContextSettings(
            model_path=packaged_model_path(), kv_tokens=max_sequences * (longest_prompt + tokens + 8),
            n_seq_max=max_sequences, n_batch=max_sequences * longest_prompt + 8, n_threads=n_threads,
        )  # fmt: skip
        self.tokens = tokens
        self.native = NativeBatch(settings, ADAPTER)

    def warm_up(self, prompts: list[list[int]]) -> None:
        """Untimed waves (at 4, then at 1) first: on a fresh context the first waves ran slower (measured 52.9 then
        59.2 tokens/s at one sequence, same settings), which made the reference's 1-sequence figure
        the lowest in the run and pulled down its share of the router's."""
        self.tokens_per_s(prompts[:4], 4)
        self.tokens_per_s(prompts[:2], 1)

    def close(self) -> None:
        self.native.close()

    def tokens_per_s(self, prompts: list[list[int]], n: int) -> float:
        """Aggregate tokens/s answering all ``prompts`` in lockstep waves of ``n`` (prefill included):
        the router level's work (the same queries, ``n`` at a time, ``tokens`` each) with no router."""
        native, done, started = self.native, 0, time.perf_counter()
        for first in range(0, len(prompts), n):
            wave = prompts[first : first + n]
            entries = [(tok, pos, s, pos == len(p) - 1) for s, p in enumerate(wave) for pos, tok in enumerate(p)]
            if native.decode(entries) != 0:
                raise RuntimeError("raw prefill failed")
            index = {s: i for i, (_, _, s, wants) in enumerate(entries) if wants}
            positions = [len(p) for p in wave]
            for _ in range(self.tokens):
                step = [(native.argmax(index[s]), positions[s], s, True) for s in range(len(wave))]
                if native.decode(step) != 0:
                    raise RuntimeError("raw decode failed")
                index = {s: s for s in range(len(wave))}
                positions = [p + 1 for p in positions]
            for s in range(len(wave)):
                native.forget(s)
            done += len(wave) * self.tokens
        return done / (time.perf_counter() - started)


def identity(alone: list[str], batched: list[str]) -> dict[str, Any]:
    same = sum(a == b for a, b in zip(alone, batched, strict=True))
    diverge = []
    for a, b in zip(alone, batched, strict=True):
        if a != b:
            diverge.append(next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b))))
    return {"identical_share": same / len(alone), "diverged": len(diverge),
            "first_divergence_chars_median": statistics.median(diverge) if diverge else None}  # fmt: skip


def frozen_quality(client: Any, n: int, max_tokens: int) -> dict[str, Any]:
    from evals.demo import load_bitext
    from finetune.evaluate import similarity_scores

    references = {r["instruction"]: r["response"].replace("\r\n", "\n").strip() for r in load_bitext()}
    rows = [json.loads(line) for line in FROZEN.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [r for r in rows if r["question"] in references][:n]
    questions = [r["question"] for r in rows]
    refs = [references[q] for q in questions]
    alone = run_level(client, questions, 1, max_tokens)
    batched = run_level(client, questions, 16, max_tokens)
    sim_alone = similarity_scores(alone["answers"], refs)
    sim_batched = similarity_scores(batched["answers"], refs)
    return {
        "questions": len(questions),
        "max_tokens": max_tokens,
        "similarity_alone": statistics.fmean(sim_alone),
        "similarity_batched": statistics.fmean(sim_batched),
        "identity": identity(alone["answers"], batched["answers"]),
        "seconds_alone": alone["seconds"],
        "seconds_batched": batched["seconds"],
    }


def prefix_reuse(client: Any, questions: list[str], pairs: int) -> dict[str, Any]:
    """TTFT with a ~400-token system prompt never seen (a fresh first line) vs the one just used."""
    rules = "\n".join(SYSTEM_RULES)
    cold, reused = [], []
    for i in range(pairs):
        system = f"Support session {i * 7919 % 10007}.\n{rules}"  # a new start: no cached prompt shares it
        question = questions[i % len(questions)]
        cold.append(_ask(client, [{"role": "system", "content": system}, {"role": "user", "content": question}], 8)["ttft_s"])
        other = questions[(i + 1) % len(questions)]
        reused.append(_ask(client, [{"role": "system", "content": system}, {"role": "user", "content": other}], 8)["ttft_s"])
    prompt_tokens = len(client._engine.local._prompt_tokens([{"role": "system", "content": rules}, {"role": "user", "content": questions[0]}]))
    return {
        "prompt_tokens": prompt_tokens,
        "ttft_ms_cold": 1000 * statistics.median(cold),
        "ttft_ms_reused": 1000 * statistics.median(reused),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=64, help="queries answered at each level (the same ones)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="rounds over the levels; figures are medians over rounds")
    parser.add_argument("--frozen", type=int, default=64, help="frozen-set questions for the quality comparison")
    parser.add_argument("--frozen-max-tokens", type=int, default=128)
    parser.add_argument("--prefix-pairs", type=int, default=8)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from evals.figures import merge_figures
    from evals.load_bench import _query_pool
    from router.backends.llama_cpp import default_threads

    queries = [r["instruction"] for r in _query_pool(args.queries)]
    figures: dict[str, Any] = {"max_tokens": args.max_tokens, "queries_per_level": len(queries), "n_threads": default_threads(batched=True)}
    with tempfile.TemporaryDirectory() as tmp:
        client = _client(Path(tmp))
        try:
            _ask(client, [{"role": "user", "content": "hello"}], 4)  # load the model outside the timings
            prompts = [client._engine.local._prompt_tokens([{"role": "user", "content": q}]) for q in queries]
            raw_reference = RawReference(max(LEVELS), max(len(p) for p in prompts), args.max_tokens, default_threads(batched=True))
            runs: dict[int, list[dict[str, Any]]] = {callers: [] for callers in LEVELS}
            raw_runs: dict[int, list[float]] = {callers: [] for callers in LEVELS}
            try:
                raw_reference.warm_up(prompts)
                for round_index in range(args.rounds):
                    order = LEVELS if round_index % 2 == 0 else LEVELS[::-1]  # drift falls on both ends alike
                    for callers in order:  # each router level, then the raw decode of the same work
                        level = run_level(client, queries, callers, args.max_tokens)
                        runs[callers].append(level)
                        raw_runs[callers].append(raw_reference.tokens_per_s(prompts, callers))
                        print(f"round {round_index + 1}, {callers:>2} callers: {level['tokens_per_s']:6.1f} tok/s "
                              f"(raw llama.cpp {raw_runs[callers][-1]:6.1f}), {level['requests_per_s']:.2f} req/s, "
                              f"TTFT p50 {1000 * _percentile(level['ttft_s'], 50):.0f} ms, {level['mean_tokens']:.0f} tokens an answer",
                              flush=True)  # fmt: skip
            finally:
                raw_reference.close()
            levels = {callers: runs[callers][0] for callers in LEVELS}  # the first round's answers, for identity
            raw = {callers: statistics.median(raw_runs[callers]) for callers in LEVELS}
            for callers in LEVELS:
                level = summarise_rounds(runs[callers])
                print(f"{callers:>2} callers, median of {args.rounds}: {level['tokens_per_s']:6.1f} tok/s (raw llama.cpp {raw[callers]:6.1f}), "
                      f"{level['requests_per_s']:.2f} req/s, TTFT p50 {level['ttft_p50_ms']:.0f} / p99 {level['ttft_p99_ms']:.0f} ms, "
                      f"total p50 {level['total_p50_ms']:.0f} / p99 {level['total_p99_ms']:.0f} ms", flush=True)  # fmt: skip
                for key in ("tokens_per_s", "requests_per_s", "ttft_p50_ms", "ttft_p99_ms", "total_p50_ms", "total_p99_ms"):
                    figures[f"{key}_{callers}"] = level[key]
                figures[f"raw_tokens_per_s_{callers}"] = raw[callers]
                figures[f"tokens_per_s_{callers}_rounds"] = [run["tokens_per_s"] for run in runs[callers]]
                figures[f"raw_tokens_per_s_{callers}_rounds"] = raw_runs[callers]
            figures["rounds"] = args.rounds
            figures["speedup_16_over_raw_rounds"] = [
                (runs[16][r]["tokens_per_s"] / runs[1][r]["tokens_per_s"]) / (raw_runs[16][r] / raw_runs[1][r]) for r in range(args.rounds)
            ]
            for callers in LEVELS[1:]:
                same = identity(levels[1]["answers"], levels[callers]["answers"])
                figures[f"identical_share_{callers}"] = same["identical_share"]
                print(f"   answers at {callers} callers identical to alone: {same['identical_share']:.0%} "
                      f"(diverging ones differ from character {same['first_divergence_chars_median']})")  # fmt: skip
            figures["speedup_16"] = figures["tokens_per_s_16"] / figures["tokens_per_s_1"]
            figures["divergence_examples_16"] = [
                {"alone": a, "batched": b} for a, b in zip(levels[1]["answers"], levels[16]["answers"], strict=True) if a != b
            ][:3]
            stats = client._engine.local.batch.stats()
            print(f"prefix reuse: {args.prefix_pairs} pairs with a long system prompt", flush=True)
            prefix = prefix_reuse(client, queries, args.prefix_pairs)
            figures["system_prompt_tokens"] = prefix["prompt_tokens"]
            figures["ttft_ms_system400_cold"] = prefix["ttft_ms_cold"]
            figures["ttft_ms_system400_reused"] = prefix["ttft_ms_reused"]
            figures["prefix_reuse_ratio"] = prefix["ttft_ms_reused"] / prefix["ttft_ms_cold"]
            print(f"   {prefix['prompt_tokens']}-token prompt: TTFT cold {prefix['ttft_ms_cold']:.0f} ms, "
                  f"reused {prefix['ttft_ms_reused']:.0f} ms ({figures['prefix_reuse_ratio']:.2f})", flush=True)  # fmt: skip
            figures["rss_mb"] = _rss_mb()
            figures["kv_tokens"] = stats.kv_tokens
            print(f"RSS {figures['rss_mb']:.0f} MB with a {stats.kv_tokens}-cell KV budget (model and router; no classifier)", flush=True)
            print(f"frozen set: {args.frozen} questions, {args.frozen_max_tokens}-token answers, alone then 16 at a time", flush=True)
            quality = frozen_quality(client, args.frozen, args.frozen_max_tokens)
            figures["frozen_similarity_alone"] = quality["similarity_alone"]
            figures["frozen_similarity_batched"] = quality["similarity_batched"]
            figures["frozen_identical_share"] = quality["identity"]["identical_share"]
            figures["frozen_questions"] = quality["questions"]
            print(f"   similarity alone {quality['similarity_alone']:.3f}, batched {quality['similarity_batched']:.3f}; "
                  f"identical {quality['identity']['identical_share']:.0%}", flush=True)  # fmt: skip
        finally:
            client.close()
    figures["raw_speedup_16"] = raw[16] / raw[1]
    figures["speedup_16_over_raw"] = figures["speedup_16"] / figures["raw_speedup_16"]
    print(f"speedup at 16 callers {figures['speedup_16']:.2f} (raw llama.cpp {figures['raw_speedup_16']:.2f}, "
          f"{figures['speedup_16_over_raw']:.0%} of it); TTFT p99 at 8 callers {figures['ttft_p99_ms_8']:.0f} ms")  # fmt: skip
    merge_figures(args.results, figures)
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
