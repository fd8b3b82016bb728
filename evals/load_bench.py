"""``make bench-load``: ``router serve`` under 1, 8 and 64 concurrent clients on loopback.

What runs: the stand-in cloud in recorded-answer mode (it answers at once with Bitext's reference
answers and records every request body it receives), and ``router serve`` in its own process with
the classifier of ``make demo``, the adapter shipped from ``make demo-retrain`` and the default
concurrency settings (continuous batching of up to 16 local sequences, latency-aware admission
against the cloud's own recent latency). The load comes from a third
process: ``clients`` threads, each sending held-out Bitext queries (PAYMENT ones private) back to
back through plain HTTP, answers capped at ``--max-tokens``.

Per level: requests/s (and local answers/s), p50/p99 latency per tier, the local share, routed
requests spilled to the cloud because the local tier was predicted slower than the budget
(``local_busy``), and refusals (503 with Retry-After: a private query the busy local tier could not
take), and side by side with the cloud, the routed (admitted, not private) local answers slower
than that level's cloud answers at their median and 99th percentile (``routed_local_over_cloud_p50_<n>``,
``..._p99_<n>``). From ``/metrics`` at the end: admitted local requests that still overran their
budget (``local_over_budget``, which must be 0; ``router serve`` logs each). After the 64-client level the
stand-in's record is searched for every private query sent: ``private_leaks`` must be 0.
Then the crash run of :mod:`evals.log_durability` (``lost_log_rows``) and the cost of a durable
log write per mode. Figures go to ``evals/results/load.json`` (keys ``rps_1``, ``rps_64``, ``p99_ms_64``,
``local_share_64``, ...), merged with what other runs wrote there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx

RESULTS = Path(__file__).resolve().parent / "results" / "load.json"


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def write_config(path: Path, *, workdir: Path, cloud_model: str, api_base: str, registry: Path, port: int) -> Path:
    from evals.demo import LOCAL_CATEGORIES, PRIVATE_CATEGORIES
    from evals.demo_retrain import _toml_list, cloud_tables

    path.write_text(
        f"""# Written by evals/load_bench.py
[local]
registry_path = "{registry}"

[classifier]
path = "{workdir / 'classifier'}"

[routing]
local_categories = {_toml_list(LOCAL_CATEGORIES)}
private_categories = {_toml_list(PRIVATE_CATEGORIES)}

[quality]
evidence_dir = "{workdir / 'evidence'}"

[log]
path = "{workdir / 'traffic.sqlite3'}"

[server]
port = {port}

{cloud_tables(cloud_model, api_base)}""",
        encoding="utf-8",
    )
    return path


def _query_pool(limit: int) -> list[dict[str, str]]:
    import hashlib

    from evals.demo import load_bitext, split

    _, _, replay = split(load_bitext())
    replay.sort(key=lambda r: hashlib.sha256(r["instruction"].encode()).hexdigest())
    return replay[:limit]


def _metric(text: str, name: str) -> float | None:
    """A gauge's value from a Prometheus text page (None when absent)."""
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def run_level(
    url: str, queries: list[dict[str, str]], clients: int, requests: int, max_tokens: int, private: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """``clients`` threads share ``requests`` queries; every answer's tier and latency is kept
    (``private``: the categories that never go to the cloud, told apart from routed local answers)."""
    results: list[dict[str, Any]] = []
    lock = threading.Lock()
    next_index = [0]

    def worker() -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            while True:
                with lock:
                    i = next_index[0]
                    next_index[0] += 1
                if i >= requests:
                    return
                row = queries[i % len(queries)]
                started = time.perf_counter()
                r = http.post("/v1/chat/completions", json={
                    "model": "auto", "max_tokens": max_tokens, "temperature": 0,
                    "messages": [{"role": "user", "content": row["instruction"]}],
                })  # fmt: skip
                seconds = time.perf_counter() - started
                item = {"status": r.status_code, "seconds": seconds, "category": row["category"], "query": row["instruction"]}
                if r.status_code == 200:
                    item["tier"] = r.headers.get("x-router-tier")
                    item["reason"] = r.headers.get("x-router-reason")
                    item["text"] = r.json()["choices"][0]["message"]["content"]
                else:
                    item["tier"] = "refused"
                    item["retry_after"] = r.headers.get("retry-after")
                    item["error"] = r.json().get("error", {}).get("code")
                with lock:
                    results.append(item)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    by_tier: dict[str, list[float]] = defaultdict(list)
    for r in results:
        by_tier[r["tier"]].append(r["seconds"] * 1000)
    answered = [r for r in results if r["status"] == 200]
    local = [r for r in answered if r["tier"] == "local"]
    routed_local = [r["seconds"] * 1000 for r in local if r["category"] not in private]  # admitted, not private
    cloud_ms = by_tier.get("cloud", [])
    cloud_p50, cloud_p99 = _percentile(cloud_ms, 50), _percentile(cloud_ms, 99)  # None without cloud answers
    return {
        "clients": clients,
        "requests": len(results),
        "seconds": wall,
        "rps": len(answered) / wall,
        "p50_ms": _percentile([r["seconds"] * 1000 for r in answered], 50),
        "p99_ms": _percentile([r["seconds"] * 1000 for r in answered], 99),
        "local_share": len(local) / max(1, len(results)),
        "local_rps": len(local) / wall,
        "local_busy": sum(1 for r in answered if r.get("reason") == "local_busy"),
        # Side by side, in the same level: routed answers the local tier gave more slowly than the
        # cloud gave its own answers meanwhile (its median and its 99th percentile).
        "routed_local_max_ms": max(routed_local, default=None),
        "routed_local_over_cloud_p50": sum(1 for ms in routed_local if cloud_p50 is not None and ms > cloud_p50),
        "routed_local_over_cloud_p99": sum(1 for ms in routed_local if cloud_p99 is not None and ms > cloud_p99),
        "tiers": {tier: {"n": len(v), "p50_ms": _percentile(v, 50), "p99_ms": _percentile(v, 99)} for tier, v in sorted(by_tier.items())},
        "refused": Counter(r.get("error") for r in results if r["status"] != 200),
        "results": results,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(".bench-load"))
    parser.add_argument("--levels", default="1,8,64", help="concurrent clients per level")
    parser.add_argument("--requests-per-client", type=int, default=8, help="requests per client at each level (at least 24 per level)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--kill-requests", type=int, default=1000, help="requests in the kill -9 run")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from evals.demo import (
        load_bitext,
        register_shipped_adapter,
        split,
        train_classifier,
    )
    from evals.figures import merge_figures
    from evals.router_process import router_serve
    from evals.standin_cloud import StandinCloud, _free_port

    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    for stale in work.glob("traffic.sqlite3*"):
        stale.unlink()
    rows = load_bitext()
    train, calibration, _ = split(rows)
    if not (work / "classifier").is_dir():
        print("training the classifier (as make demo does)")
        train_classifier(train, calibration, work / "classifier")
    registry = work / "registry"
    if not registry.is_dir():
        register_shipped_adapter(registry)
    answers = work / "recorded-answers.jsonl"
    with answers.open("w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps({"query": r["instruction"], "answer": r["response"].replace("\r\n", "\n").strip()}) + "\n")
    levels = [int(x) for x in args.levels.split(",")]
    queries = _query_pool(2000)
    record = work / "standin-requests.jsonl"
    record.unlink(missing_ok=True)
    figures: dict[str, Any] = {}
    with StandinCloud(answers=answers, record=record) as cloud:
        port = _free_port()
        config = write_config(work / "router.toml", workdir=work, cloud_model=cloud.litellm_model, api_base=cloud.api_base,
                              registry=registry, port=port)  # fmt: skip
        from evals.demo import PRIVATE_CATEGORIES

        private = frozenset(PRIVATE_CATEGORIES)
        with router_serve(config, port) as (url, _server):
            offset = 0
            for clients in levels:
                n = max(24, clients * args.requests_per_client)
                level = run_level(url, queries[offset:] + queries[:offset], clients, n, args.max_tokens, private)
                offset = (offset + n) % len(queries)
                tiers = ", ".join(f"{t} {v['n']} (p50 {v['p50_ms']:.0f} / p99 {v['p99_ms']:.0f} ms)" for t, v in level["tiers"].items())
                print(f"{clients:>3} clients: {level['requests']} requests in {level['seconds']:.1f} s, {level['rps']:.2f} answered/s, "
                      f"p50 {level['p50_ms']:.0f} ms, p99 {level['p99_ms']:.0f} ms, local {level['local_share']:.0%}; {tiers}; "
                      f"refused {dict(level['refused'])}; routed local answers slower than the cloud's p50 / p99 of this level: "
                      f"{level['routed_local_over_cloud_p50']} / {level['routed_local_over_cloud_p99']}")  # fmt: skip
                figures[f"rps_{clients}"] = level["rps"]
                figures[f"p50_ms_{clients}"] = level["p50_ms"]
                figures[f"p99_ms_{clients}"] = level["p99_ms"]
                figures[f"local_share_{clients}"] = level["local_share"]
                figures[f"local_rps_{clients}"] = level["local_rps"]
                figures[f"local_busy_{clients}"] = level["local_busy"]
                for name in ("routed_local_max_ms", "routed_local_over_cloud_p50", "routed_local_over_cloud_p99"):
                    figures[f"{name}_{clients}"] = level[name]
                figures[f"tiers_{clients}"] = level["tiers"]
                figures[f"refused_{clients}"] = dict(level["refused"])
                figures[f"requests_{clients}"] = level["requests"]
                (work / f"level-{clients}.json").write_text(json.dumps(level["results"], indent=1), encoding="utf-8")
            metrics = httpx.get(f"{url}/metrics", timeout=10).text
        sent_private = {r["query"] for clients in levels for r in json.loads((work / f"level-{clients}.json").read_text()) if r["category"] in private}
        received = "\n".join(json.dumps(body) for body in cloud.received())
        leaks = sum(1 for q in sent_private if json.dumps(q)[1:-1] in received)
    figures["private_queries_sent"] = len(sent_private)
    figures["private_leaks"] = leaks
    figures["max_tokens"] = args.max_tokens
    figures.pop("local_workers", None)
    for name in ("local_over_budget", "local_busy", "local_admitted"):
        figures[name] = _metric(metrics, f"router_{name}_total")
    figures["latency_budget_s_at_end"] = _metric(metrics, "router_local_latency_budget_seconds")
    print(f"admission: {figures['local_admitted']:.0f} admitted, {figures['local_busy']:.0f} sent to the cloud as local_busy, "
          f"{figures['local_over_budget']:.0f} admitted answers over their budget (budget now {figures['latency_budget_s_at_end']:.2f} s)")
    print(f"private queries sent: {len(sent_private)}; found in the stand-in cloud's record: {leaks}")

    from evals.log_durability import kill_nine_run, write_latency

    print(f"kill -9 under load: {args.kill_requests} requests from 8 clients, the log locked from 40 % of them, SIGKILL at 70 %")
    crash = kill_nine_run(work / "kill9", requests=args.kill_requests, clients=8)
    print(f"  {crash}")
    figures["lost_log_rows"] = crash["lost"]
    figures["kill9"] = crash
    latency = write_latency(work / "latency")
    print("  one log write: " + ", ".join(f"{k} {v:.0f}" for k, v in latency.items()))
    figures.update(latency)
    print("metrics excerpt:\n" + "\n".join(line for line in metrics.splitlines() if line.startswith(("router_local_", "router_overloaded", "router_requests_total"))))
    merge_figures(args.results, figures)
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
