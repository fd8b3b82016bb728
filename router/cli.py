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
            _print_canary(config, log)
    return 0


def _print_canary(config: Any, log: Any) -> None:
    """The followed registry's canary: its state, live evidence rebuilt from the log, and decisions."""
    from hybrid_common.serving_pointer import read_history, read_serving
    from router.canary import live_evidence

    registry = config.local.followed_registry
    if registry is None:
        return
    state = read_serving(registry)
    history = read_history(registry)
    if state is None or not any(str(e.get("action", "")).startswith("canary") for e in history):
        return
    print_canary_status(state, history, live=live_evidence(log, state, config))


def _report(args: argparse.Namespace) -> int:
    from hybrid_common.files import write_text_atomic
    from router.config import load_config
    from router.report import build_report
    from router.traffic_log import TrafficLog

    config = load_config(args.config)
    location: str | Path = args.log or config.log.location
    if not args.log:
        print_legacy_path_notes(config.log.path, config.local.registry_path)
    if not is_database_url(location) and not Path(location).exists():
        print(f"no traffic log at {location}", file=sys.stderr)
        return 1
    if args.since and args.until and args.since > args.until:
        print(f"router report: --since {args.since} is after --until {args.until}", file=sys.stderr)
        return 2
    with TrafficLog(location, spool=False) as log:
        page = build_report(log, config, since=args.since, until=args.until)
    out = Path(args.out)
    write_text_atomic(out, page)
    print(out)
    return 0


def _day(value: str) -> str:
    from router.report import window_day

    try:
        return window_day(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


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


def _print_gate(config: Any, log: Any, seen: list[str]) -> None:
    """Per category: the gate's state for the model serving now, its offline and live evidence."""
    from router.gate_state import gate_state

    state = gate_state(config, log, seen)
    if not state.categories:
        return
    print(f"\nquality gate for {state.key} (floors: similarity >= {config.quality.min_similarity:.2f}, "
          f"degenerate <= {config.quality.max_degenerate_rate:.0%}, {config.quality.min_samples} samples)")  # fmt: skip
    print(f"{'category':<20}{'gate':<10}{'offline sim':>12}{'n':>5}{'live sim':>10}{'n':>5}  live samples (mean similarity) / reason")
    for row in state.categories:
        verdict, offline, kinds = row.verdict, row.offline, row.live
        # Votes are evidence of their own (one per response, their own floor), never averaged with similarities.
        live = [s for kind, sims in kinds.items() if kind != "feedback" for s in sims]
        gate = "open" if verdict.open else "closed"
        note = ", ".join(f"{k} {len(v)} ({sum(v) / len(v):.2f})" for k, v in sorted(kinds.items()) if k != "feedback")
        if row.votes is not None:
            note = f"{note + '; ' if note else ''}{row.votes.describe()}"
        if not verdict.open and verdict.reason is not None:
            note = f"{note + '; ' if note else ''}{verdict.reason.value}"
        print(
            f"{row.category:<20}{gate:<10}{_num(offline.similarity if offline else None):>12}{offline.samples if offline else 0:>5}"
            f"{_num(sum(live) / len(live) if live else None):>10}{len(live):>5}  {note}"
        )
    if state.audit_calls:
        print(f"audit answers: {state.audit_calls} cloud calls, ${state.audit_cost_usd:.4f} (quality.audit_rate = {config.quality.audit_rate:g})")


def print_canary_status(
    state: dict[str, Any] | None, history: list[dict[str, Any]], *, last: int = 5, live: dict[str, Any] | None = None
) -> None:
    """The running canary (if any), its live evidence from the log, and the latest canary decisions."""
    block = state.get("canary") if state else None
    if isinstance(block, dict):
        print(f"canary {block.get('version')}: {float(block.get('share', 0)):.0%} of local traffic beside "
              f"{state['version'] if state else '-'} since {str(block.get('started_at', ''))[:19]}")  # fmt: skip
        if live:
            arms = {arm: live.get(arm) or {} for arm in ("canary", "serving")}
            print(f"  live: score {arms['canary'].get('mean_score')} vs {arms['serving'].get('mean_score')} "
                  f"(audits {arms['canary'].get('audits')} / {arms['serving'].get('audits')}; difference "
                  f"{live.get('score_diff')}, promote above -{live.get('margin')} at {live.get('score_diff_lower')}, "
                  f"roll back below 0 at {live.get('score_diff_upper')}); answers {arms['canary'].get('answers')} / "
                  f"{arms['serving'].get('answers')}, degenerate {arms['canary'].get('degenerate_rate')} vs "
                  f"{arms['serving'].get('degenerate_rate')}; votes {arms['canary'].get('mean_vote')} vs "
                  f"{arms['serving'].get('mean_vote')}; latency p50 {arms['canary'].get('latency_p50_ms')} vs "
                  f"{arms['serving'].get('latency_p50_ms')} ms")  # fmt: skip
    else:
        print("no canary running")
    decisions = [e for e in history if str(e.get("action", "")).startswith("canary_") and e.get("action") != "canary_start"]
    for entry in decisions[-last:]:
        evidence = entry.get("evidence") or {}
        arms = {arm: evidence.get(arm) or {} for arm in ("canary", "serving")}
        figures = (
            f"; score {arms['canary'].get('mean_score')} vs {arms['serving'].get('mean_score')} "
            f"(audits {arms['canary'].get('audits')} / {arms['serving'].get('audits')}), "
            f"degenerate {arms['canary'].get('degenerate_rate')} vs {arms['serving'].get('degenerate_rate')}"
            if evidence else ""
        )
        print(f"  {str(entry.get('at', ''))[:19]}  {entry['action'][7:]:<9}{entry.get('version')} vs {entry.get('serving')}: "
              f"{entry.get('reason', '')}{figures}")  # fmt: skip


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
    report = commands.add_parser("report", help="write one self-contained HTML page about a window of the traffic log")
    report.add_argument("--log", help="traffic log: a SQLite path or a postgresql:// URL (default: from the configuration)")
    report.add_argument("--since", type=_day, help="first day reported, YYYY-MM-DD (default: the log's first)")
    report.add_argument("--until", type=_day, help="last day reported, YYYY-MM-DD (default: the log's last)")
    report.add_argument("--out", default="report.html", help="where to write the page (default: report.html)")
    # Accepted after the subcommand too (`router report --config r.toml`); SUPPRESS keeps a --config given before it.
    report.add_argument("--config", default=argparse.SUPPRESS, help="router.toml (also accepted before the subcommand)")
    report.set_defaults(run=_report)
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
