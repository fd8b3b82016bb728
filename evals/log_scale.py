"""``make bench-log``: the traffic log at 100,000 and 1,000,000 rows.

A log is synthesised from Bitext (each row a real query with its reference answer as the cloud's
response; tiers, categories, latencies and costs varied; one year of timestamps) and bulk-written
through :meth:`router.traffic_log.TrafficLog.import_records`, so the running totals the stats read
are kept by the same trigger as in serving. Then, each in a fresh process:

* ``router stats --log`` wall time (``stats_<n>_rows_s``), the command an operator runs;
* the retrain dataset build as ``router retrain`` runs it (the log read into a fresh
  :class:`finetune.log_pool.LogPool`, then ``build_snapshot`` over the pool), wall time and peak
  RSS (``dataset_build_<n>_rows_s`` / ``_peak_rss_mb``);
* then 1 % more rows are appended (new ids, the last hour's timestamps) and the build runs again:
  the pool reads only those (``dataset_build_incremental_<n>_rows_s`` / ``_peak_rss_mb``).

The same on PostgreSQL (``--postgres URL``, default: the throwaway cluster ``.ci/start-postgres``
starts; keys with a ``_pg`` suffix), into a fresh database per size. That cluster runs with
``fsync=off``: the write figures would flatter it, the read figures (stats, build) do not depend on it.

Figures are merged into ``evals/results/load.json``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from evals.figures import merge_figures

RESULTS = Path(__file__).resolve().parent / "results" / "load.json"


def synthetic_records(n: int, seed: int = 0, *, first: int = 0, days: float = 365, distinct: bool = False) -> Iterator[Any]:
    """``n`` rows with ids from ``syn-<first>``, their times spread over the ``days`` before now.

    ``distinct``: every prompt made unique (a case number appended), so the retrain pool meets as
    many distinct prompts as rows and its cap (``max_pool_examples``) is what bounds memory."""
    from evals.demo import load_bitext
    from router.traffic_log import LogRecord

    rows = load_bitext()
    rng = random.Random(seed)
    start = datetime.now(UTC) - timedelta(days=days)
    step = timedelta(days=days) / n
    for i in range(n):
        row = rows[rng.randrange(len(rows))]
        tier = rng.choices(["local", "cloud"], weights=[0.7, 0.3])[0]
        yield LogRecord(
            id=f"syn-{first + i:08d}",
            created_at=(start + i * step).isoformat(timespec="milliseconds"),
            requested_model="auto",
            tier=tier,
            backend="llama_cpp" if tier == "local" else "litellm",
            served_model="gemma-3-270m" if tier == "local" else "gpt-4o",
            category=row["category"],
            confidence=0.9,
            reason="local_category" if tier == "local" else "category_not_local",
            stream=bool(i % 3 == 0),
            messages=[{"role": "user", "content": f"{row['instruction']} (case {first + i})" if distinct else row["instruction"]}],
            params={"max_tokens": 256},
            response=row["response"],
            finish_reason="stop",
            prompt_tokens=24,
            completion_tokens=120,
            latency_ms=rng.uniform(200, 2000),
            cost_usd=0.0 if tier == "local" else 0.0013,
            cloud_cost_usd_estimate=0.0013,
        )


def synthesise(location: str | Path, n: int, *, distinct: bool = False) -> float:
    from router.traffic_log import TrafficLog

    if isinstance(location, Path):
        for stale in location.parent.glob(location.name + "*"):
            stale.unlink()
    started = time.perf_counter()
    with TrafficLog(location, spool=False) as log:
        log.import_records(synthetic_records(n, distinct=distinct))
    return time.perf_counter() - started


def fresh_database(server: str, name: str) -> str:
    import psycopg

    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {name}")
    return server.rsplit("/", 1)[0] + "/" + name


_BUILD = """
import json, resource, sys, time
from finetune.datasets import build_snapshot
from finetune.log_pool import LogPool
started = time.perf_counter()
pool = LogPool(sys.argv[2], sys.argv[1])  # as router retrain reads the log: through the registry's pool
update = pool.update()
snapshot = build_snapshot((), sys.argv[2], cleaned=pool.examples(), cleaned_dropped=pool.dropped)
print(json.dumps({"seconds": time.perf_counter() - started, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rows_read": update.rows_read, "examples": len(pool), "train": len(snapshot.train), "eval": len(snapshot.eval)}))
"""


def append_rows(location: str | Path, n: int, *, distinct: bool = False) -> int:
    """Append 1 % of ``n`` new rows (ids after the first ``n``, the last hour's times); how many."""
    from router.traffic_log import TrafficLog

    count = max(1, n // 100)
    with TrafficLog(location, spool=False) as log:
        log.import_records(synthetic_records(count, seed=1, first=n, days=1 / 24, distinct=distinct))
    return count


def run_build(location: str | Path, registry: Path, key: str, timeout_s: float) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """One dataset build in a fresh process: its result, and the figures under ``key`` (or its error)."""
    try:
        build = subprocess.run([sys.executable, "-c", _BUILD, str(location), str(registry)], check=False, capture_output=True, text=True,
                               timeout=timeout_s)  # fmt: skip
    except subprocess.TimeoutExpired:
        print(f"  {key}: not finished after {timeout_s:.0f} s")
        return None, {f"{key}_error": f"not finished after {timeout_s:.0f} s"}
    if build.returncode != 0:
        tail = (build.stderr or "").strip().splitlines()[-3:]
        print(f"  {key} failed: {tail}")
        return None, {f"{key}_error": " | ".join(tail)}
    result = json.loads(build.stdout.strip().splitlines()[-1])
    print(f"  {key}: {result['seconds']:.1f} s, peak RSS {result['peak_rss_mb']:.0f} MB ({result['rows_read']} rows read, "
          f"pool {result['examples']} examples, {result['train']} train, {result['eval']} frozen eval)")  # fmt: skip
    return result, {f"{key}_s": result["seconds"], f"{key}_peak_rss_mb": result["peak_rss_mb"]}


def stats_figures(location: str | Path, n: int, suffix: str = "", runs: int = 5) -> dict[str, Any]:
    """``router stats`` wall time (median of ``runs`` fresh processes) and the summary query alone."""
    from router.traffic_log import TrafficLog

    router_cli = Path(sys.executable).with_name("router")
    walls = []
    for _ in range(runs):
        started = time.perf_counter()
        out = subprocess.run([str(router_cli), "stats", "--log", str(location)], check=True, capture_output=True, text=True).stdout
        walls.append(time.perf_counter() - started)
    with TrafficLog(location, spool=False) as log:
        log.count()  # opens (and migrates) the log: the timing below is the query alone
        started = time.perf_counter()
        log.summary()
        query_s = time.perf_counter() - started
    wall = statistics.median(walls)
    print(f"  router stats: {wall:.2f} s wall (median of {runs} processes), summary query {query_s * 1000:.1f} ms; {out.splitlines()[0]}")
    return {f"stats_{n}_rows_s{suffix}": wall, f"stats_{n}_rows_query_s{suffix}": query_s}


def measure(location: str | Path, n: int, work: Path, suffix: str = "", build_timeout_s: float = 3600,
            *, distinct: bool = False) -> dict[str, Any]:  # fmt: skip
    kind = "distinct_" if distinct else ""
    figures = {} if distinct else stats_figures(location, n, suffix)
    registry = work / f"registry-{kind}{n}{suffix}"
    subprocess.run(["rm", "-rf", str(registry)], check=True)
    full, found = run_build(location, registry, f"dataset_build_{kind}{n}_rows", build_timeout_s)
    figures.update({k + suffix: v for k, v in found.items()})
    if full is None:
        return figures
    appended = append_rows(location, n, distinct=distinct)
    print(f"  {appended} rows appended")
    _, found = run_build(location, registry, f"dataset_build_{kind}incremental_{n}_rows", build_timeout_s)
    figures.update({k + suffix: v for k, v in found.items()})
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="100000,1000000")
    parser.add_argument("--workdir", type=Path, default=Path(".bench-log"))
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--postgres", help="server URL for the PostgreSQL runs (default: start .ci/start-postgres)")
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--build-timeout", type=float, default=3600, help="seconds allowed for one dataset build")
    parser.add_argument("--stats-only", action="store_true", help="re-measure router stats on the logs already synthesised")
    parser.add_argument("--distinct-rows", default="1000000",
                        help="also build from SQLite logs of this many rows whose every prompt is distinct (the pool's cap "
                             "bounds memory); empty: skip")  # fmt: skip
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = {}
    backends = args.backends.split(",")
    server = None
    if "postgres" in backends:
        server = args.postgres or subprocess.run([str(Path(__file__).resolve().parents[1] / ".ci" / "start-postgres")],
                                                 check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    for n in (int(x) for x in args.rows.split(",") if x):
        if args.stats_only:
            if "sqlite" in backends:
                figures.update(stats_figures(args.workdir / f"log-{n}.sqlite3", n))
            if server is not None:
                figures.update(stats_figures(server.rsplit("/", 1)[0] + f"/router_bench_{n}", n, "_pg"))
            continue
        if "sqlite" in backends:
            path = args.workdir / f"log-{n}.sqlite3"
            seconds = synthesise(path, n)
            print(f"{n} rows synthesised into SQLite in {seconds:.0f} s ({path.stat().st_size / 1e6:.0f} MB)")
            figures.update(measure(path, n, args.workdir, build_timeout_s=args.build_timeout))
        if server is not None:
            url = fresh_database(server, f"router_bench_{n}")
            seconds = synthesise(url, n)
            print(f"{n} rows synthesised into PostgreSQL in {seconds:.0f} s")
            figures.update(measure(url, n, args.workdir, suffix="_pg", build_timeout_s=args.build_timeout))
    for n in (int(x) for x in args.distinct_rows.split(",") if x and not args.stats_only):
        path = args.workdir / f"log-distinct-{n}.sqlite3"
        seconds = synthesise(path, n, distinct=True)
        print(f"{n} rows with distinct prompts synthesised into SQLite in {seconds:.0f} s")
        figures.update(measure(path, n, args.workdir, build_timeout_s=args.build_timeout, distinct=True))
    merged = merge_figures(args.results, figures)
    # the names for the 1M figures
    merge_figures(args.results, {k.replace("_1000000_rows", "_1m_rows"): v for k, v in merged.items() if "_1000000_rows" in k})
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
