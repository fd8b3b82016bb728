"""``router discover`` and ``router categories``: find categories in the log, review them, apply them.

Added to the ``router`` command through the ``hybrid_router.commands`` entry-point group.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_categories_command", "add_discover_command", "validate_discover_table"]


def _paths(args: argparse.Namespace) -> tuple[Any, Path, str | Path, Path]:
    """(router config, proposal dir, log path, classifier registry dir) from flags, then the config."""
    from router.config import data_dir, default_classifier_registry_path, load_config

    config = load_config(args.config)
    store = Path(args.store) if getattr(args, "store", None) else data_dir() / "categories"
    log = Path(args.log) if getattr(args, "log", None) else config.log.location
    registry = getattr(config.classifier, "registry_path", None)
    if getattr(args, "registry", None):
        registry = args.registry
    return config, store, log, Path(registry) if registry else default_classifier_registry_path()


def _discover_config(config: Any, args: argparse.Namespace | None = None) -> Any:
    from pydantic import ValidationError

    from classifiers.discovery import DiscoveryConfig
    from hybrid_common.errors import ConfigError

    values = dict(config.discover)
    for flag in ("target_share", "min_cluster_share", "max_queries", "categories", "granularity"):
        if args is not None and getattr(args, flag, None) is not None:
            values[flag] = getattr(args, flag)
    try:
        return DiscoveryConfig.model_validate(values)
    except ValidationError as err:
        problems = "; ".join(f"discover.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"invalid discover configuration: {problems}") from err


def validate_discover_table(config: Any) -> None:
    """Check the ``[discover]`` table of a loaded router configuration (``router config`` calls this)."""
    _discover_config(config)


def _discover(args: argparse.Namespace) -> int:
    from classifiers.discovery import print_table
    from finetune.discovery import discover

    config, store, log, _ = _paths(args)
    from finetune.discovery import cloud_namer

    from finetune.config import serving_classifier_path

    classifier = serving_classifier_path(config)
    namer = cloud_namer(config, args.name_with_cloud or None) if args.name_with_cloud is not None else None
    run = discover(
        log, store, config=_discover_config(config, args), classifier_path=classifier, pii_patterns=config.routing.pii_patterns,
        auto=args.auto, progress=not args.quiet, namer=namer,
    )  # fmt: skip
    print(
        f"read {run.queries} logged queries ({run.skipped} skipped: errors, tools or images), found {run.clusters_found} "
        f"new clusters in {run.seconds:.0f} s" + (f"; number of clusters {run.granularity}" if run.granularity else "")
    )
    print_table(run.proposal, sys.stdout, limit=args.limit)
    print(f"\nproposal: {run.store.yaml_path}\nreport:   {run.store.html_path}")
    accepted = [c.name for c in run.proposal.accepted]
    if accepted:
        print(f"accepted: {', '.join(accepted)}; next: `router categories apply`")
    else:
        print("next: review the proposal (edit the file, or `router categories accept NAME ...`), then `router categories apply`")
    return 0


def _store(args: argparse.Namespace) -> Any:
    from classifiers.discovery import ProposalStore

    return ProposalStore(_paths(args)[1])


def _list(args: argparse.Namespace) -> int:
    from classifiers.discovery import print_table

    print_table(_store(args).load(), sys.stdout, limit=None if args.all else 40)
    return 0


def _status(status: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        from classifiers.discovery import set_status

        names: list[str] = []
        _store(args).edit(lambda proposal, vectors: names.extend(set_status(proposal, args.names, status)))
        print(f"{status}: {', '.join(names)}")
        return 0

    return run


def _rename(args: argparse.Namespace) -> int:
    from finetune.categories import rename

    rename(_store(args), args.old, args.new)
    print(f"renamed {args.old} -> {args.new} (the old name stays as an alias)")
    return 0


def _merge(args: argparse.Namespace) -> int:
    from finetune.categories import merge

    proposal = merge(_store(args), args.names, into=args.into)
    merged = proposal.find(args.into or args.names[0])
    print(f"merged into {merged.name}: {merged.size} queries, {merged.share:.1%} of traffic")
    return 0


def _split(args: argparse.Namespace) -> int:
    from classifiers.discovery import discovery_encoder
    from finetune.categories import split

    config, store, log, _ = _paths(args)
    encoder = discovery_encoder(config.classifier.path, store / "cache")
    proposal = split(_store(args), args.name, log_path=log, encoder=encoder)
    print("split; now: " + ", ".join(f"{c.name} ({c.size})" for c in proposal.categories if c.name.startswith(args.name)))
    return 0


def _private(args: argparse.Namespace) -> int:
    from finetune.categories import set_private

    set_private(_store(args), args.names, not args.off)
    print(f"{'not ' if args.off else ''}private: {', '.join(args.names)}")
    return 0


def _apply(args: argparse.Namespace) -> int:
    from finetune.categories import apply_categories

    _, store, log, registry = _paths(args)
    applied = apply_categories(store, log, registry)
    print(f"classifier {applied.version} promoted in {registry}: {', '.join(applied.categories)}")
    if applied.private:
        print(f"private categories (never sent to the cloud while this version serves): {', '.join(applied.private)}")
    print(f"labelled queries: {applied.counts}")
    print("a router with classifier.registry_path set to that registry serves it without a restart")
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", type=Path, help="proposal directory (default: the data directory's categories/)")


def add_discover_command(commands: Any) -> None:
    parser = commands.add_parser("discover", help="cluster the logged queries and propose categories for review")
    _common(parser)
    parser.add_argument("--log", type=Path, help="traffic log (default: from the configuration)")
    parser.add_argument("--auto", action="store_true", help="accept clean clusters covering the target share, no review")
    parser.add_argument("--target-share", type=float, help="share of traffic the proposal should cover (default 0.8)")
    parser.add_argument("--min-cluster-share", type=float, help="smallest cluster worth a category (default 0.005)")
    parser.add_argument("--max-queries", type=int, help="read at most this many logged queries")
    parser.add_argument("--categories", type=int, help="look for exactly this many clusters (default: estimated from the data)")
    parser.add_argument(
        "--granularity", type=float, help="scale the estimated number of clusters: 2 finer, 0.5 coarser (default 1)"
    )
    parser.add_argument(
        "--name-with-cloud", nargs="?", const="", metavar="MODEL",
        help="name new clusters with the cloud model (default model unless given); never sends private or PII queries",
    )  # fmt: skip
    parser.add_argument("--limit", type=int, default=40, help="rows of the table to print")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=_discover)


def add_categories_command(commands: Any) -> None:
    parser = commands.add_parser("categories", help="review the category proposal and apply it")
    sub = parser.add_subparsers(dest="categories_command", required=True)
    listing = sub.add_parser("list", help="the proposal as a table")
    listing.add_argument("--all", action="store_true")
    listing.set_defaults(run=_list)
    for name, status in (("accept", "accepted"), ("reject", "rejected"), ("unreview", "proposed")):
        cmd = sub.add_parser(name, help=f"mark categories {status}")
        cmd.add_argument("names", nargs="+")
        cmd.set_defaults(run=_status(status))
    cmd = sub.add_parser("rename", help="rename a category (the old name stays as an alias)")
    cmd.add_argument("old")
    cmd.add_argument("new")
    cmd.set_defaults(run=_rename)
    cmd = sub.add_parser("merge", help="merge categories into the first one")
    cmd.add_argument("names", nargs="+")
    cmd.add_argument("--into", help="name of the merged category")
    cmd.set_defaults(run=_merge)
    cmd = sub.add_parser("split", help="split a category in two")
    cmd.add_argument("name")
    cmd.add_argument("--log", type=Path)
    cmd.set_defaults(run=_split)
    cmd = sub.add_parser("private", help="mark categories private (never sent to the cloud)")
    cmd.add_argument("names", nargs="+")
    cmd.add_argument("--off", action="store_true", help="unmark")
    cmd.set_defaults(run=_private)
    cmd = sub.add_parser("apply", help="accepted categories -> a classifier version, promoted")
    cmd.add_argument("--log", type=Path)
    cmd.add_argument("--registry", type=Path, help="classifier registry (default: classifier.registry_path)")
    cmd.set_defaults(run=_apply)
    for sub_parser in sub.choices.values():
        _common(sub_parser)
