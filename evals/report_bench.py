"""``make bench-report``: ``router report`` over a 1,000,000-row traffic log, its wall time and peak memory.

The log is synthesised as ``make bench-log`` synthesises its own (:func:`evals.log_scale.synthesise`:
one year of Bitext rows bulk-written through ``import_records``, so the running totals and the
hourly histograms are kept by the same triggers as in serving), plus 5,000 scored audit and shadow
samples of the served model, about what a 0.5 % sample rate leaves. ``--reuse`` keeps a log
already there.

Then ``router report`` runs over the whole window in a fresh process, with a configuration whose
registry is absent (the user's own data directory plays no part). The issue's targets: at most
30 s and 1 GB, because the report reads the log's running totals, not its rows. Figures
(``rows``, ``seconds``, ``peak_rss_mb``, ``bytes``) go to ``evals/results/report.json``.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

from evals.log_scale import synthesise

RESULTS = Path(__file__).resolve().parent / "results" / "report.json"
TARGET_S = 30.0
TARGET_RSS_MB = 1024.0


def add_samples(location: Path, n: int, seed: int = 0) -> None:
    """``n`` scored samples of the served model (the packaged one: the bench configures no registry)."""
    from evals.demo import load_bitext
    from router.traffic_log import TrafficLog

    rng = random.Random(seed)
    categories = sorted({r["category"] for r in load_bitext()})
    with TrafficLog(location, spool=False) as log:
        for _ in range(n):
            category = rng.choice(categories)
            log.record_quality_sample(kind=rng.choice(["audit", "shadow"]), category=category, served_key="model:gemma-3-270m-q4_k_m",
                                      similarity=min(1.0, rng.gauss(0.8, 0.1)), degenerate=rng.random() < 0.02)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--workdir", type=Path, default=Path(".bench-report"))
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--reuse", action="store_true", help="keep a log of the right size already in the work directory")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    log_path = (args.workdir / f"log-{args.rows}.sqlite3").resolve()
    if not (args.reuse and log_path.exists()):
        seconds = synthesise(log_path, args.rows)
        add_samples(log_path, 5000)
        print(f"{args.rows} rows synthesised into SQLite in {seconds:.0f} s ({log_path.stat().st_size / 1e6:.0f} MB)")
    config = args.workdir / "report.toml"
    config.write_text(f'[local]\nregistry_path = "{(args.workdir / "no-registry").resolve()}"\n', encoding="utf-8")
    out = args.workdir / "report.html"
    command = [str(Path(sys.executable).with_name("router")), "--config", str(config), "report", "--log", str(log_path), "--out", str(out)]
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    peak_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the report is the only child process
    page = out.read_text(encoding="utf-8")
    total = re.search(r'data-figure="requests">(\d+)<', page)
    charts = dict(re.findall(r'data-chart="(\w+)" data-empty="(\d)"', page))
    figures = {"rows": args.rows, "seconds": round(seconds, 2), "peak_rss_mb": round(peak_rss_mb, 1), "bytes": len(page.encode()),
               "requests_reported": int(total.group(1)) if total else None, "charts_with_data": sorted(k for k, v in charts.items() if v == "0"),
               "target_seconds": TARGET_S, "target_peak_rss_mb": TARGET_RSS_MB}  # fmt: skip
    met = seconds <= TARGET_S and peak_rss_mb <= TARGET_RSS_MB
    print(f"router report over {args.rows} rows: {seconds:.1f} s, peak RSS {peak_rss_mb:.0f} MB, {len(page) / 1e6:.2f} MB page, "
          f"charts with data: {len(figures['charts_with_data'])}/{len(charts)} ({'targets met' if met else 'TARGETS MISSED'})")  # fmt: skip
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(figures, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {args.results}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
