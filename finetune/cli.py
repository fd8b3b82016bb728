"""The ``router models``, ``router classifiers`` and ``router retrain`` subcommands, added by entry point.

Registered under ``hybrid_router.commands`` in ``pyproject.toml``, so the router's own CLI
discovers them without importing this package by name.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_classifiers_command", "add_evaluate_command", "add_models_command", "add_retrain_command"]

_REGISTRY_HELP = "model registry directory (default: local.registry_path, else the data directory's registry)"
_CLASSIFIER_REGISTRY_HELP = "classifier registry directory (default: classifier.registry_path, else the data directory's)"


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


def _classifier_registry(args: argparse.Namespace) -> Any:
    from finetune.classifier_registry import ClassifierRegistry
    from router.config import default_classifier_registry_path, load_config

    path = args.registry or load_config(args.config).classifier.registry_path or default_classifier_registry_path()
    return ClassifierRegistry(path)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _list_versions(args: argparse.Namespace, *, what: str, none_yet: str, nothing: str, header: str, row: Any) -> int:
    """Print every version of the registry ``args`` names, ``*`` marking the one serving; ``row(v)`` ends its line."""
    registry = args.open_registry(args)
    if not registry.root.is_dir():
        print(f"no {what} registry at {registry.root}", file=sys.stderr)
        return 1
    versions = registry.versions()
    if not versions:
        print(f"{registry.root}: {none_yet}")
        return 0
    state = registry.serving_state()
    serving = state["version"] if state else None
    print(f"{registry.root}: {len(versions)} versions, serving {serving or nothing}")
    print(f"  {'version':<10}{'created (UTC)':<18}{header}")
    for v in versions:
        marker = "*" if v.version == serving else " "
        print(f"{marker} {v.version:<10}{v.created_at.strftime('%Y-%m-%d %H:%M'):<18}{row(v)}")
    return 0


def _models_list(args: argparse.Namespace) -> int:
    def row(v: Any) -> str:
        m = v.metrics
        return (
            f"{_fmt(m.get('similarity'), '.3f'):>11}{_fmt(m.get('rouge_l'), '.3f'):>9}"
            f"{_fmt(m.get('degenerate_rate'), '.1%'):>11}  {v.dataset_id or '-'}"
        )

    code = _list_versions(
        args, what="model", none_yet="no model versions yet (run `router retrain`)",
        nothing="nothing (the configured model)", header=f"{'similarity':>11}{'rouge_l':>9}{'degenerate':>11}  dataset", row=row,
    )  # fmt: skip
    from router.cli import print_canary_status

    registry = args.open_registry(args)
    if code == 0 and registry.serving_state() is not None:
        print_canary_status(registry.serving_state(), registry.history())
    return code


def _classifiers_list(args: argparse.Namespace) -> int:
    def row(v: Any) -> str:
        note = f" / {v.note}" if v.note else ""
        return f"{len(v.categories):>11}{_fmt(v.metrics.get('accuracy'), '.3f'):>10}  {v.source}{note}"

    return _list_versions(
        args, what="classifier", none_yet="no classifier versions yet", nothing="nothing (no classifier)",
        header=f"{'categories':>11}{'accuracy':>10}  source / note", row=row,
    )  # fmt: skip


def _promote(args: argparse.Namespace) -> int:
    registry = args.open_registry(args)
    if getattr(args, "canary", None) is not None:
        state = registry.serving_state()
        registry.start_canary(args.version, args.canary, reason=args.reason or "manual canary (router models promote --canary)")
        print(f"{args.version} serves {args.canary:.0%} of local traffic as a canary beside {state['version'] if state else '-'}; "
              "running routers promote or roll it back on live evidence (router models canary)")  # fmt: skip
        return 0
    state = registry.serving_state()
    record = registry.promote(args.version, reason=args.reason or f"manual promotion (router {args.noun} promote)")
    before = state["version"] if state else None
    if before == record.version:
        print(f"{record.version} is already serving")
    else:
        print(f"{record.version} now serving (was {before or 'nothing'}); running routers switch within a poll interval")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    registry = args.open_registry(args)
    state = registry.serving_state()
    record = registry.rollback(reason=args.reason or f"manual rollback (router {args.noun} rollback)")
    print(f"rolled back: {record.version} now serving (was {state['version'] if state else 'nothing'})")
    return 0


def _canary(args: argparse.Namespace) -> int:
    from router.cli import print_canary_status

    """``router models canary [status|promote|abort]``: the running canary, its decisions, a hand decision."""
    registry = args.open_registry(args)
    reason = args.reason or f"by hand (router models canary {args.canary_action})"
    if args.canary_action == "abort":
        version = registry.abort_canary(reason)
        print(f"canary {version} aborted; {registry.serving_state()['version']} keeps all local traffic")
        return 0
    if args.canary_action == "promote":
        block = registry.canary()
        if block is None:
            print(f"no canary is running in {registry.root}", file=sys.stderr)
            return 1
        registry.promote(block["version"], reason=reason)
        print(f"canary {block['version']} promoted: it now serves all local traffic")
        return 0
    print_canary_status(registry.serving_state(), registry.history())
    return 0


def _retrain(args: argparse.Namespace) -> int:
    from finetune.config import RetrainConfig
    from finetune.retrain import retrain
    from router.cli import print_legacy_path_notes

    overrides = {"registry_path": args.registry} if args.registry else {}
    config = RetrainConfig.from_router_config(args.config, **overrides)
    print_legacy_path_notes(config.log_path, config.registry_path)
    result = retrain(config, dry_run=args.dry_run, full=args.full)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result.as_dict(), indent=2, default=str) + "\n", encoding="utf-8")
    print(f"{result.status}: {result.message}")
    return 0


def _add_registry_actions(
    command: Any, *, noun: str, what: str, listing: Any, open_registry: Any, registry_help: str
) -> dict[str, Any]:
    """``list``, ``promote VERSION`` and ``rollback`` under ``command``, on the registry ``open_registry(args)`` names;
    returns their parsers (and ``_sub``, the subparsers, for more actions)."""
    command.set_defaults(noun=noun, open_registry=open_registry)
    actions = command.add_subparsers(dest="action", required=True)
    list_ = actions.add_parser("list", help="every version with its figures; * marks the one serving")
    list_.set_defaults(run=listing)
    promote = actions.add_parser("promote", help=f"serve VERSION (its {what} checksums are verified first)")
    promote.add_argument("version")
    promote.set_defaults(run=_promote)
    rollback = actions.add_parser("rollback", help="serve again the version that served before the current one")
    rollback.set_defaults(run=_rollback)
    for sub in (list_, promote, rollback):
        sub.add_argument("--registry", type=Path, help=registry_help)
    for sub in (promote, rollback):
        sub.add_argument("--reason", help="why, recorded in the registry's history")
    return {"list": list_, "promote": promote, "rollback": rollback, "_sub": actions}


def add_models_command(commands: Any) -> None:
    """``router models list|promote|rollback``."""
    models = commands.add_parser("models", help="list, promote and roll back local model versions; canaries")
    actions = _add_registry_actions(
        models, noun="models", what="adapter", listing=_models_list, open_registry=_registry, registry_help=_REGISTRY_HELP
    )
    actions["promote"].add_argument(
        "--canary", type=_share, metavar="SHARE",
        help="serve VERSION to this share of local traffic (e.g. 0.1) first; running routers promote or roll it back on live evidence",
    )  # fmt: skip
    canary = actions["_sub"].add_parser("canary", help="the running canary and its decisions; promote or abort it by hand")
    canary.add_argument("canary_action", nargs="?", choices=("status", "promote", "abort"), default="status")
    canary.add_argument("--registry", type=Path, help=_REGISTRY_HELP)
    canary.add_argument("--reason", help="why, recorded in the registry's history")
    canary.set_defaults(run=_canary)


def _share(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"a canary share is between 0 and 1 (exclusive), got {text}")
    return value


def add_classifiers_command(commands: Any) -> None:
    """``router classifiers list|promote|rollback``: a router following the registry switches within a poll."""
    classifiers = commands.add_parser("classifiers", help="list, promote and roll back query classifier versions")
    _add_registry_actions(
        classifiers, noun="classifiers", what="artifact", listing=_classifiers_list,
        open_registry=_classifier_registry, registry_help=_CLASSIFIER_REGISTRY_HELP,
    )  # fmt: skip


def add_retrain_command(commands: Any) -> None:
    """``router retrain``."""
    retrain = commands.add_parser("retrain", help="train a new adapter from the traffic log; promote it if it wins")
    retrain.add_argument("--dry-run", action="store_true", help="build the dataset and report what would be trained")
    retrain.add_argument("--registry", type=Path, help=_REGISTRY_HELP)
    retrain.add_argument(
        "--full", action="store_true", help="read the whole traffic log again instead of only what is new since the last retrain"
    )
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
