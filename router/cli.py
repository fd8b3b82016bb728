"""The ``router`` command: check a configuration, summarise the traffic log, manage local model versions.

``models`` and ``retrain`` use the ``finetune`` package, imported inside those commands only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

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


def _registry(args: argparse.Namespace) -> Any:
    from finetune.registry import ModelRegistry
    from router.config import DEFAULT_REGISTRY, load_config

    path = args.registry or load_config(args.config).local.registry_path or DEFAULT_REGISTRY
    return ModelRegistry(path)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _models_list(args: argparse.Namespace) -> int:
    registry = _registry(args)
    if not registry.root.is_dir():
        print(f"no model registry at {registry.root}", file=sys.stderr)
        return 1
    versions = registry.versions()
    if not versions:
        print(f"{registry.root}: no model versions yet (run `router retrain`)")
        return 0
    state = registry.serving_state()
    serving = state["version"] if state else None
    print(f"{registry.root}: {len(versions)} versions, serving {serving or 'nothing (the configured model)'}")
    print(f"  {'version':<10}{'created (UTC)':<18}{'similarity':>11}{'rouge_l':>9}{'degenerate':>11}  dataset")
    for v in versions:
        m = v.metrics
        marker = "*" if v.version == serving else " "
        print(
            f"{marker} {v.version:<10}{v.created_at.strftime('%Y-%m-%d %H:%M'):<18}{_fmt(m.get('similarity'), '.3f'):>11}"
            f"{_fmt(m.get('rouge_l'), '.3f'):>9}{_fmt(m.get('degenerate_rate'), '.1%'):>11}  {v.dataset_id or '-'}"
        )
    return 0


def _models_promote(args: argparse.Namespace) -> int:
    registry = _registry(args)
    state = registry.serving_state()
    record = registry.promote(args.version, reason=args.reason or "manual promotion (router models promote)")
    before = state["version"] if state else None
    if before == record.version:
        print(f"{record.version} is already serving")
    else:
        print(f"{record.version} now serving (was {before or 'nothing'}); running routers switch within a poll interval")
    return 0


def _models_rollback(args: argparse.Namespace) -> int:
    registry = _registry(args)
    state = registry.serving_state()
    record = registry.rollback(reason=args.reason or "manual rollback (router models rollback)")
    print(f"rolled back: {record.version} now serving (was {state['version'] if state else 'nothing'})")
    return 0


def _retrain(args: argparse.Namespace) -> int:
    from finetune.config import RetrainConfig
    from finetune.retrain import retrain

    overrides = {"registry_path": args.registry} if args.registry else {}
    config = RetrainConfig.from_router_config(args.config, **overrides)
    result = retrain(config, dry_run=args.dry_run)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result.as_dict(), indent=2, default=str) + "\n", encoding="utf-8")
    print(f"{result.status}: {result.message}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="router", description="hybrid-router: local-first LLM routing")
    parser.add_argument("--config", help="router.toml (default: $ROUTER_CONFIG, then environment and defaults)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("config", help="validate the configuration and print it").set_defaults(run=_config)
    stats = commands.add_parser("stats", help="summarise the traffic log per tier and category")
    stats.add_argument("--log", type=Path, help="traffic log path (default: from the configuration)")
    stats.set_defaults(run=_stats)

    registry_help = "model registry directory (default: local.registry_path, else .router/registry)"
    models = commands.add_parser("models", help="list, promote and roll back local model versions")
    actions = models.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="every version with its metrics; * marks the one serving")
    listing.set_defaults(run=_models_list)
    promote = actions.add_parser("promote", help="serve VERSION (its adapter checksum is verified first)")
    promote.add_argument("version")
    promote.set_defaults(run=_models_promote)
    rollback = actions.add_parser("rollback", help="serve again the version that served before the current one")
    rollback.set_defaults(run=_models_rollback)
    for sub in (listing, promote, rollback):
        sub.add_argument("--registry", type=Path, help=registry_help)
    for sub in (promote, rollback):
        sub.add_argument("--reason", help="why, recorded in the registry's history")

    retrain = commands.add_parser("retrain", help="train a new adapter from the traffic log; promote it if it wins")
    retrain.add_argument("--dry-run", action="store_true", help="build the dataset and report what would be trained")
    retrain.add_argument("--registry", type=Path, help=registry_help)
    retrain.add_argument("--json", type=Path, metavar="PATH", help="also write the full result (metrics, gate reasons) as JSON")
    retrain.set_defaults(run=_retrain)

    args = parser.parse_args(argv)
    from router.errors import ConfigError, RouterError

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
