"""The ``router`` command: check a configuration, summarise the traffic log, and whatever plugins add.

The router never imports the packages that build on it. Other packages add subcommands through
the ``hybrid_router.commands`` entry-point group (``finetune`` adds ``models`` and ``retrain``)
and configuration tables through ``hybrid_router.config_sections`` (``finetune`` checks
``[retrain]``), so ``router config`` validates the whole file without the router naming them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

__all__ = ["COMMANDS_GROUP", "CONFIG_SECTIONS_GROUP", "main", "print_legacy_path_notes"]

COMMANDS_GROUP = "hybrid_router.commands"
CONFIG_SECTIONS_GROUP = "hybrid_router.config_sections"


def print_legacy_path_notes(log_path: Path, registry_path: Path | None) -> None:
    """Tell the user about a log or registry left at an earlier release's default path."""
    from router.config import default_registry_path, legacy_path_notes

    for note in legacy_path_notes(Path(log_path), Path(registry_path or default_registry_path())):
        print(f"router: note: {note}", file=sys.stderr)


def _config(args: argparse.Namespace) -> int:
    from router.config import load_config

    config = load_config(args.config)
    for entry in entry_points(group=CONFIG_SECTIONS_GROUP):
        validate: Callable[[Any], None] = entry.load()
        validate(config)
    print(json.dumps(config.model_dump(mode="json"), indent=2))  # SecretStr fields print masked
    return 0


def _stats(args: argparse.Namespace) -> int:
    from router.config import load_config
    from router.traffic_log import TrafficLog

    if args.log:
        path = args.log
    else:
        config = load_config(args.config)
        path = config.log.path
        print_legacy_path_notes(config.log.path, config.local.registry_path)
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


def build_parser() -> argparse.ArgumentParser:
    """The full command line: built-in commands plus every installed plugin's."""
    parser = argparse.ArgumentParser(prog="router", description="hybrid-router: local-first LLM routing")
    parser.add_argument("--config", help="router.toml (default: $ROUTER_CONFIG, then environment and defaults)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("config", help="validate the configuration and print it").set_defaults(run=_config)
    stats = commands.add_parser("stats", help="summarise the traffic log per tier and category")
    stats.add_argument("--log", type=Path, help="traffic log path (default: from the configuration)")
    stats.set_defaults(run=_stats)
    for entry in sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        add_command: Callable[[Any], None] = entry.load()
        add_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from hybrid_common.errors import ConfigError, RouterError

    try:
        return int(args.run(args))
    except ConfigError as err:
        print(f"router: {err}", file=sys.stderr)
        return 2
    except RouterError as err:
        print(f"router: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
