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

from router.log_stores import is_database_url

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

    config = load_config(args.config)
    if args.log:
        location: str | Path = args.log
    else:
        location = config.log.location
        print_legacy_path_notes(config.log.path, config.local.registry_path)
    if not is_database_url(location) and not Path(location).exists():
        print(f"no traffic log at {location}", file=sys.stderr)
        return 1
    with TrafficLog(location, spool=False) as log:
        rows = log.summary(since=args.since, until=args.until)
        total = sum(r["requests"] for r in rows)
        window = f" from {args.since or 'the start'} to {args.until or 'today'}" if args.since or args.until else ""
        print(f"{log.location}: {total} requests{window}")
        if not total:
            return 0
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
        _print_cache_hits(rows)
        if args.reasons:
            _print_reasons(log.reason_counts(since=args.since, until=args.until))
        if not args.log:
            _print_gate(config, log, sorted({r["category"] for r in rows if r["category"]}))
    return 0


def _print_reasons(counts: dict[str, int]) -> None:
    """Requests per routing reason, and the share of routed local decisions spilled to the cloud
    because the local tier was predicted slower than the latency budget (``local_busy``)."""
    total = sum(counts.values())
    if not total:
        return
    print(f"{'reason':<28}{'requests':>9}{'share':>8}")
    for reason, n in sorted(counts.items(), key=lambda item: -item[1]):
        print(f"{reason:<28}{n:>9}{n / total:>8.0%}")
    busy, admitted = counts.get("local_busy", 0), counts.get("local_category", 0)
    if busy or admitted:
        print(f"local_busy spill: {busy} of {busy + admitted} routed local decisions ({busy / (busy + admitted):.0%})")


def _print_cache_hits(rows: list[dict[str, Any]]) -> None:
    """Response-cache hit rate per category: hits (tier "cache") over every request of the category."""
    totals: dict[str, list[int]] = {}
    for r in rows:
        counts = totals.setdefault(r["category"] or "-", [0, 0])
        counts[1] += r["requests"]
        if r["tier"] == "cache":
            counts[0] += r["requests"]
    if not any(hits for hits, _ in totals.values()):
        return
    print(f"{'cache hits':<28}{'hits':>9}{'rate':>8}")
    for category, (hits, requests) in sorted(totals.items()):
        print(f"{category:<28}{hits:>9}{hits / requests:>8.0%}")
    hits, requests = (sum(c[i] for c in totals.values()) for i in (0, 1))
    print(f"{'all':<28}{hits:>9}{hits / requests:>8.0%}")


def _cache(args: argparse.Namespace) -> int:
    from router.cache import ResponseCache
    from router.config import load_config

    config = load_config(args.config).cache
    path = Path(args.path or config.path)
    if not path.exists():
        print(f"no response cache at {path} (cache.enabled = {str(config.enabled).lower()})")
        return 0 if args.cache_command == "clear" else 1
    cache = ResponseCache(path, size_limit_bytes=int(config.size_limit_mb * 1024 * 1024))
    try:
        if args.cache_command == "clear":
            removed = cache.clear()
            print(f"{path}: {removed} entries removed")
            return 0
        stats = cache.stats()
        if args.json:
            print(json.dumps(stats, indent=2))
            return 0
        print(f"{path}: {stats['answers']} answers, {stats['entries']} entries, "
              f"{stats['bytes'] / 1e6:.1f} MB of {stats['size_limit_bytes'] / 1e6:.0f} MB (mode {config.mode})")  # fmt: skip
        if stats["by_tier_category"]:
            print(f"{'tier':<8}{'category':<20}{'answers':>9}")
            for row in stats["by_tier_category"]:
                print(f"{row['tier']:<8}{row['category']:<20}{row['answers']:>9}")
        print("hit rates per category: `router stats`")
    finally:
        cache.close()
    return 0


def _copy_log(args: argparse.Namespace) -> int:
    from router.config import load_config
    from router.traffic_log import TrafficLog, copy_log

    config = load_config(args.config)
    source = args.source or config.log.location
    if not is_database_url(source) and not Path(source).exists():
        print(f"no traffic log at {source}", file=sys.stderr)
        return 1
    with TrafficLog(source, spool=False) as src, TrafficLog(args.destination, spool=False) as dst:
        counts = copy_log(src, dst, progress=True)
        print(f"copied {src.location} -> {dst.location}: " + ", ".join(f"{n} {what}" for what, n in counts.items()))
    return 0


def _served_key(config: Any) -> str:
    """The served model's gate key, read without loading it (the registry's serving.json, or the config)."""
    from hybrid_common.files import sha256_file
    from router.adapter_watch import AdapterWatch
    from router.backends import create_local_backend
    from router.quality import model_key

    local = config.local
    version = None
    if local.followed_registry is not None:
        state = AdapterWatch(local.followed_registry).read()
        version = state.version if state is not None else None
    adapter_sha = sha256_file(local.adapter_path) if version is None and local.adapter_path is not None else None
    return model_key(registry_version=version, adapter_sha256=adapter_sha, model_name=create_local_backend(local).model_name)


def _print_gate(config: Any, log: Any, seen: list[str]) -> None:
    """Per category: the gate's state for the model serving now, its offline and live evidence."""
    from router.quality import QualityGate, evidence_reader, replay_samples

    gate = QualityGate(config.quality, evidence_reader(config.local.followed_registry, config.quality.evidence_dir))
    samples = log.quality_samples(per_category=config.quality.live_window)
    replay_samples(gate, samples)
    key = _served_key(config)
    local = config.routing.local_categories
    categories = sorted(set(seen) | (set() if local == "*" else set(local)) | set(gate.offline(key)))
    if not categories:
        return
    by_kind: dict[str, dict[str, list[float]]] = {}  # category -> kind -> similarities (this model's window)
    audit_cost = audit_calls = 0
    for sample in samples:
        if sample["served_key"] == key:
            by_kind.setdefault(sample["category"], {}).setdefault(sample["kind"], []).append(sample["similarity"])
            if sample.get("cost_usd") is not None:
                audit_cost += sample["cost_usd"]
                audit_calls += 1
    print(f"\nquality gate for {key} (floors: similarity >= {config.quality.min_similarity:.2f}, "
          f"degenerate <= {config.quality.max_degenerate_rate:.0%}, {config.quality.min_samples} samples)")  # fmt: skip
    print(f"{'category':<20}{'gate':<10}{'offline sim':>12}{'n':>5}{'live sim':>10}{'n':>5}  live samples (mean similarity) / reason")
    for category in categories:
        verdict = gate.verdict(key, category)
        offline = gate.offline(key).get(category)
        kinds = by_kind.get(category, {})
        # Votes are evidence of their own (one per response, their own floor), never averaged with similarities.
        live = [s for kind, sims in kinds.items() if kind != "feedback" for s in sims]
        state = "open" if verdict.open else "closed"
        note = ", ".join(f"{k} {len(v)} ({sum(v) / len(v):.2f})" for k, v in sorted(kinds.items()) if k != "feedback")
        if (votes := gate.votes(key, category)) is not None:
            note = f"{note + '; ' if note else ''}{votes.describe()}"
        if not verdict.open and verdict.reason is not None:
            note = f"{note + '; ' if note else ''}{verdict.reason.value}"
        print(
            f"{category:<20}{state:<10}{_num(offline.similarity if offline else None):>12}{offline.samples if offline else 0:>5}"
            f"{_num(sum(live) / len(live) if live else None):>10}{len(live):>5}  {note}"
        )
    if audit_calls:
        print(f"audit answers: {audit_calls} cloud calls, ${audit_cost:.4f} (quality.audit_rate = {config.quality.audit_rate:g})")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _serve(args: argparse.Namespace) -> int:
    import logging

    from router.client import Client
    from router.server import run

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    client = Client(args.config)
    settings = client.config.server
    host, port = args.host or settings.host, settings.port if args.port is None else args.port
    if host not in ("127.0.0.1", "localhost", "::1") and not settings.api_keys:
        print(f"router serve: listening on {host} without server.api_keys: anyone who can reach it can spend your cloud budget", file=sys.stderr)
    try:
        run(client, host=host, port=port, log_level=args.log_level)
    finally:
        client.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The full command line: built-in commands plus every installed plugin's."""
    parser = argparse.ArgumentParser(prog="router", description="hybrid-router: local-first LLM routing")
    parser.add_argument("--config", help="router.toml (default: $ROUTER_CONFIG, then environment and defaults)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("config", help="validate the configuration and print it").set_defaults(run=_config)
    stats = commands.add_parser("stats", help="summarise the traffic log per tier and category")
    stats.add_argument("--log", help="traffic log: a SQLite path or a postgresql:// URL (default: from the configuration)")
    stats.add_argument("--since", help="first day counted, YYYY-MM-DD (default: all)")
    stats.add_argument("--until", help="last day counted, YYYY-MM-DD (default: today)")
    stats.add_argument("--reasons", action="store_true",
                       help="also count requests per routing reason, local_busy spills included (reads the rows of the days asked for)")
    stats.set_defaults(run=_stats)
    log_cmd = commands.add_parser("log", help="the traffic log itself: copy it between databases")
    log_commands = log_cmd.add_subparsers(dest="log_command", required=True)
    copy = log_commands.add_parser("copy", help="copy every request, feedback and quality sample into another log (e.g. SQLite -> PostgreSQL)")
    copy.add_argument("destination", help="the log to copy into: a postgresql:// URL or a SQLite path")
    copy.add_argument("--from", dest="source", help="the log to copy (default: the configured one)")
    copy.set_defaults(run=_copy_log)
    cache = commands.add_parser("cache", help="the response cache: what it holds, or empty it")
    cache.add_argument("--path", help="the cache directory (default: cache.path from the configuration)")
    cache_commands = cache.add_subparsers(dest="cache_command", required=True)
    cache_stats = cache_commands.add_parser("stats", help="answers held per tier and category, and the space they take")
    cache_stats.add_argument("--json", action="store_true", help="print the figures as JSON")
    cache_commands.add_parser("clear", help="remove every cached answer (e.g. after changing what the cloud answers)")
    cache.set_defaults(run=_cache)
    serve = commands.add_parser("serve", help="serve the routing as an OpenAI-compatible HTTP API (/v1/chat/completions)")
    serve.add_argument("--host", help="interface to bind (default: server.host, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="TCP port (default: server.port, 8000)")
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    serve.set_defaults(run=_serve)
    for entry in sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        add_command: Callable[[Any], None] = entry.load()
        add_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from hybrid_common.base_errors import ConfigError, RouterError  # no openai import: a CLI answers fast

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
