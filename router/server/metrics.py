"""Prometheus text-format metrics for ``router serve``, without a client library.

A handful of counters, gauges and one histogram family is all the server exposes; writing the
text format (version 0.0.4) directly keeps ``prometheus_client`` out of the dependencies. Label
values come from the router (tier, category, reason), never from request text, so cardinality
stays bounded by the configured categories; no key or token is ever a label.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Mapping

__all__ = ["LATENCY_BUCKETS_S", "Metrics"]

# Local answers take ~0.1-10 s on CPU, cloud answers ~0.3-30 s, cache hits milliseconds.
LATENCY_BUCKETS_S = (0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

Labels = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Labels, extra: str = "") -> str:
    parts = [f'{k}="{_escape(v)}"' for k, v in labels]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class Metrics:
    """Thread-safe counters and latency histograms, rendered on ``GET /metrics``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[Labels, float]] = defaultdict(lambda: defaultdict(float))
        self._histograms: dict[Labels, list[float]] = {}
        self._help: dict[str, str] = {}
        self._gauges: dict[str, tuple[str, Callable[[], float]]] = {}
        self._gauge_families: dict[str, tuple[str, str, Callable[[], Mapping[str, float]]]] = {}

    def inc(self, name: str, help_text: str, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._help.setdefault(name, help_text)
            self._counters[name][key] += amount

    def observe_latency(self, seconds: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            counts = self._histograms.setdefault(key, [0.0] * (len(LATENCY_BUCKETS_S) + 2))  # buckets, +Inf, sum
            for i, bound in enumerate(LATENCY_BUCKETS_S):
                if seconds <= bound:
                    counts[i] += 1
            counts[-2] += 1
            counts[-1] += seconds

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        """A value read when scraped (queue depth, requests in flight, log write failures)."""
        self._gauges[name] = (help_text, read)

    def gauge_family(self, name: str, help_text: str, label: str, read: Callable[[], Mapping[str, float]]) -> None:
        """Gauges read when scraped, one per value of ``label`` (e.g. a circuit per cloud route)."""
        self._gauge_families[name] = (help_text, label, read)

    def counter_value(self, name: str, **labels: str) -> float:
        with self._lock:
            return self._counters.get(name, {}).get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            for name in sorted(self._counters):
                lines += [f"# HELP {name} {self._help[name]}", f"# TYPE {name} counter"]
                for key, value in sorted(self._counters[name].items()):
                    lines.append(f"{name}{_labels(key)} {value:g}")
            if self._histograms:
                name = "router_request_duration_seconds"
                lines += [f"# HELP {name} Time to the full answer (streams: to the last chunk), per tier.", f"# TYPE {name} histogram"]
                for key, counts in sorted(self._histograms.items()):
                    for bound, count in zip(LATENCY_BUCKETS_S, counts, strict=False):
                        le = 'le="' + format(bound, "g") + '"'
                        lines.append(f"{name}_bucket{_labels(key, le)} {count:g}")
                    lines.append(f"{name}_bucket{_labels(key, 'le=' + chr(34) + '+Inf' + chr(34))} {counts[-2]:g}")
                    lines.append(f"{name}_sum{_labels(key)} {counts[-1]:g}")
                    lines.append(f"{name}_count{_labels(key)} {counts[-2]:g}")
        for name, (help_text, read) in sorted(self._gauges.items()):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {float(read()):g}"]
        for name, (help_text, label, read_family) in sorted(self._gauge_families.items()):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
            for value_label, value in sorted(read_family().items()):
                lines.append(f"{name}{_labels(((label, value_label),))} {float(value):g}")
        return "\n".join(lines) + "\n"
