"""The quality gate's state per category as the traffic log and configuration show it, read offline.

``router stats`` prints it and ``router report`` draws it; both need the same answer to "which
model serves now, and is each category open for it?", so it is worked out here once: the served
model's key without loading the model, a gate replayed from the log's latest live samples, and
per category its verdict, offline evidence and live samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from router.quality import CategoryEvidence, GateVerdict, VoteEvidence

__all__ = ["CategoryGate", "GateState", "gate_state", "served_key"]


def served_key(config: Any) -> str:
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


@dataclass(frozen=True)
class CategoryGate:
    """One category: the gate's verdict for the served model, and the evidence behind it."""

    category: str
    verdict: GateVerdict
    offline: CategoryEvidence | None
    live: dict[str, list[float]]
    """Similarities of the served model's live samples in the gate's window, per kind (shadow, audit; feedback apart)."""
    votes: VoteEvidence | None


@dataclass(frozen=True)
class GateState:
    """The gate for the model serving now, over every category seen, configured or evaluated."""

    key: str
    categories: list[CategoryGate] = field(default_factory=list)
    audit_cost_usd: float = 0.0
    audit_calls: int = 0


def gate_state(config: Any, log: Any, seen: list[str]) -> GateState:
    """Replay the log's latest ``quality.live_window`` samples into a gate and read it for the served model."""
    from router.quality import QualityGate, evidence_reader, replay_samples

    gate = QualityGate(config.quality, evidence_reader(config.local.followed_registry, config.quality.evidence_dir))
    samples = log.quality_samples(per_category=config.quality.live_window)
    replay_samples(gate, samples)
    key = served_key(config)
    local = config.routing.local_categories
    categories = sorted(set(seen) | (set() if local == "*" else set(local)) | set(gate.offline(key)))
    by_kind: dict[str, dict[str, list[float]]] = {}  # category -> kind -> similarities (this model's window)
    audit_cost = 0.0
    audit_calls = 0
    for sample in samples:
        if sample["served_key"] == key:
            by_kind.setdefault(sample["category"], {}).setdefault(sample["kind"], []).append(sample["similarity"])
            if sample.get("cost_usd") is not None:
                audit_cost += sample["cost_usd"]
                audit_calls += 1
    rows = [
        CategoryGate(category, gate.verdict(key, category), gate.offline(key).get(category), by_kind.get(category, {}), gate.votes(key, category))
        for category in categories
    ]
    return GateState(key, rows, audit_cost, audit_calls)
