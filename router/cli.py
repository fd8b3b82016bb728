"""The ``router`` command: check a configuration and summarise the traffic log."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["main"]


def _config(args: argparse.Namespace) -> int:
    from router.config import load_config

    config = load_config(args.config)
    print(json.dumps(config.model_dump(mode="json"), indent=2))  # SecretStr fields print masked
    return 0


def _stats(args: argparse.Namespace) -> int:
    from router.config import load_config
    from router.traffic_log import TrafficLog

    path = args.log or load_config(args.config).log.path
    if not Path(path).exists():
        print(f"no traffic log at {path}", file=sys.stderr)
        return 1
    with TrafficLog(path) as log:
        rows = log.summary()
        total = sum(r["requests"] for r in rows)
        print(f"{log.path}: {total} requests")
        print(f"{'tier':<8}{'category':<20}{'requests':>9}{'share':>8}{'mean ms':>10}{'cost $':>10}{'errors':>8}")
        for r in rows:
            print(
                f"{r['tier'] or '-':<8}{r['category'] or '-':<20}{r['requests']:>9}{r['requests'] / total:>8.0%}"
                f"{(r['mean_latency_ms'] or 0):>10.0f}{r['cost_usd']:>10.4f}{r['errors']:>8}"
            )
        spent = sum(r["cost_usd"] for r in rows)
        all_cloud = sum(r["cloud_cost_usd_estimate"] for r in rows)
        if all_cloud:
            print(f"cloud spend ${spent:.4f}; all-cloud estimate ${all_cloud:.4f} ({1 - spent / all_cloud:.0%} saved)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="router", description="hybrid-router: local-first LLM routing")
    parser.add_argument("--config", help="router.toml (default: $ROUTER_CONFIG, then environment and defaults)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("config", help="validate the configuration and print it").set_defaults(run=_config)
    stats = commands.add_parser("stats", help="summarise the traffic log per tier and category")
    stats.add_argument("--log", type=Path, help="traffic log path (default: from the configuration)")
    stats.set_defaults(run=_stats)
    args = parser.parse_args(argv)
    from router.errors import ConfigError

    try:
        return int(args.run(args))
    except ConfigError as err:
        print(f"router: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
