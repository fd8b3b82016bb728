"""The ``router models`` and ``router retrain`` subcommands, added to the ``router`` command by entry point.

Registered under ``hybrid_router.commands`` in ``pyproject.toml``, so the router's own CLI
discovers them without importing this package by name.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_evaluate_command", "add_models_command", "add_retrain_command"]

_REGISTRY_HELP = "model registry directory (default: local.registry_path, else the data directory's registry)"


def _registry(args: argparse.Namespace) -> Any:
    from finetune.registry import ModelRegistry
    from router.cli import print_legacy_path_notes
    from router.config import default_registry_path, load_config

    if args.registry:
        return ModelRegistry(args.registry)
    config = load_config(args.config)
    path = config.local.registry_path or default_registry_path()
    print_legacy_path_notes(config.log.path, path)
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
    from router.cli import print_legacy_path_notes

    overrides = {"registry_path": args.registry} if args.registry else {}
    config = RetrainConfig.from_router_config(args.config, **overrides)
    print_legacy_path_notes(config.log_path, config.registry_path)
    result = retrain(config, dry_run=args.dry_run)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result.as_dict(), indent=2, default=str) + "\n", encoding="utf-8")
    print(f"{result.status}: {result.message}")
    return 0


def add_models_command(commands: Any) -> None:
    """``router models list|promote|rollback``."""
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
        sub.add_argument("--registry", type=Path, help=_REGISTRY_HELP)
    for sub in (promote, rollback):
        sub.add_argument("--reason", help="why, recorded in the registry's history")


def add_retrain_command(commands: Any) -> None:
    """``router retrain``."""
    retrain = commands.add_parser("retrain", help="train a new adapter from the traffic log; promote it if it wins")
    retrain.add_argument("--dry-run", action="store_true", help="build the dataset and report what would be trained")
    retrain.add_argument("--registry", type=Path, help=_REGISTRY_HELP)
    retrain.add_argument("--json", type=Path, metavar="PATH", help="also write the full result (metrics, gate reasons) as JSON")
    retrain.set_defaults(run=_retrain)


def _evaluate(args: argparse.Namespace) -> int:
    from finetune.evidence import evaluate_served, format_report
    from router.config import load_config

    config = load_config(args.config)
    result = evaluate_served(config, data=args.data, adapter=args.adapter, category_column=args.category_column)
    print(format_report(result, config))
    return 0


def add_evaluate_command(commands: Any) -> None:
    """``router evaluate``."""
    evaluate = commands.add_parser(
        "evaluate", help="measure the served local model per category, as served, and record the evidence the gate reads"
    )
    evaluate.add_argument("--data", type=Path, help="labelled JSONL (messages + category) or CSV (query, answer, category); "
                          "default: the registry's frozen evaluation set")  # fmt: skip
    evaluate.add_argument("--adapter", type=Path, help="a GGUF LoRA adapter to evaluate instead of the served one")
    evaluate.add_argument("--category-column", help="CSV column holding the category (default: category)")
    evaluate.set_defaults(run=_evaluate)
