"""The quality gate: a category is answered locally only while the model serving *now* has proven good at it.

Evidence per category comes from two places, and the gate says which one decided:

* **offline**: the serving version's per-category metrics on the frozen evaluation set (written
  by ``router retrain`` into the registry's ``version.json``, or by ``router evaluate`` into the
  evidence store for a model or adapter brought by the user);
* **live**: a rolling window of scored samples for that version and category (shadow answers,
  audit answers, user feedback). Once the window holds ``min_samples`` samples it decides.

A category opens when its mean similarity reaches the floor and its degenerate rate stays under
the ceiling, with hysteresis once it has a state (open above floor + margin, close below floor −
margin), so live noise near the floor does not make it flap. A new served version (promotion,
rollback) starts from its own evidence: the gate is keyed by version. Operators can ``trust`` or
``distrust`` a category by hand. Pure logic: no model, no I/O except reading evidence files.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from router.config import QualityConfig
from router.types import Reason

__all__ = [
    "CategoryEvidence",
    "VoteEvidence",
    "evidence_reader",
    "replay_samples",
    "model_key",
    "GateVerdict",
    "QualityGate",
    "evidence_file",
    "evidence_from_metrics",
    "FOLLOWUP_SUFFIX",
    "followup_key",
    "read_evidence_store",
    "read_registry_evidence",
    "write_evidence",
]

logger = logging.getLogger("router")


@dataclass(frozen=True)
class CategoryEvidence:
    """What is known about one category's answers from one source."""

    similarity: float
    degenerate_rate: float
    samples: int
    source: str  # "registry <version>", "evaluation <file>", "live"

    def describe(self) -> str:
        return f"similarity {self.similarity:.3f}, degenerate {self.degenerate_rate:.1%}, {self.samples} samples ({self.source})"


@dataclass(frozen=True)
class GateVerdict:
    """Whether the local tier may answer a category now, and why."""

    open: bool
    reason: Reason | None  # None when open on evidence
    detail: str


def read_registry_evidence(registry: Path, version: str) -> dict[str, CategoryEvidence]:
    """Per-category evidence of a registry version, from its ``version.json`` (no finetune import)."""
    path = Path(registry) / "versions" / version / "version.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return evidence_from_metrics(data.get("category_metrics"), f"registry {version}")


def model_key(*, registry_version: str | None = None, adapter_sha256: str | None = None, model_name: str) -> str:
    """How the gate names a served model: ``registry:<version>`` (evidence in the registry),
    ``adapter:<sha256 prefix>`` or ``model:<name>`` (evidence in the store ``router evaluate`` writes)."""
    if registry_version is not None:
        return f"registry:{registry_version}"
    if adapter_sha256 is not None:
        return f"adapter:{adapter_sha256[:16]}"
    return f"model:{model_name}"


def evidence_reader(registry: Path | None, evidence_dir: Path) -> Callable[[str | None], dict[str, CategoryEvidence]]:
    """Offline evidence for a served-model key: the registry's ``version.json`` for ``registry:<v>``,
    the evidence store for any other key."""

    def read(key: str | None) -> dict[str, CategoryEvidence]:
        kind, _, value = (key or "").partition(":")
        if kind == "registry" and registry is not None:
            return read_registry_evidence(registry, value)
        return read_evidence_store(evidence_dir, key or "")

    return read


def evidence_file(evidence_dir: Path, key: str) -> Path:
    """The evidence store's file for a served-model key (``adapter:<sha>``, ``model:<name>``)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)
    return Path(evidence_dir) / f"{safe}.json"


def read_evidence_store(evidence_dir: Path, key: str) -> dict[str, CategoryEvidence]:
    """Per-category evidence ``router evaluate`` recorded for a model or adapter outside a registry."""
    path = evidence_file(evidence_dir, key)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return evidence_from_metrics(data.get("category_metrics"), f"evaluation {path.name}")


def write_evidence(
    evidence_dir: Path, key: str, *, category_metrics: Mapping[str, Mapping[str, float]], metrics: Mapping[str, float], source: str
) -> Path:
    """Record an evaluation's per-category figures for ``key`` (atomically); running routers re-read it."""
    from datetime import datetime, timezone

    from hybrid_common.files import write_text_atomic

    path = evidence_file(evidence_dir, key)
    body = {
        "key": key,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": source,
        "metrics": dict(metrics),
        "category_metrics": {c: dict(m) for c, m in category_metrics.items()},
    }
    write_text_atomic(path, json.dumps(body, indent=2, sort_keys=True) + "\n")
    return path


def evidence_from_metrics(metrics: object, source: str) -> dict[str, CategoryEvidence]:
    """Per-category evidence from ``{category: {"similarity", "degenerate_rate", "examples"}}`` (an evaluation's ``by_category``)."""
    out: dict[str, CategoryEvidence] = {}
    if not isinstance(metrics, Mapping):
        return out
    for category, m in metrics.items():
        try:
            out[str(category)] = CategoryEvidence(
                float(m["similarity"]), float(m["degenerate_rate"]), int(m["examples"]), source
            )
            if int(m.get("followup_count", 0)) > 0:  # an evaluation that had follow-ups measures them apart too
                out[followup_key(str(category))] = CategoryEvidence(
                    float(m["followup_similarity"]), float(m.get("followup_degenerate_rate", 0.0)), int(m["followup_count"]), source
                )
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
    return out


class _LiveWindow:
    """The last ``size`` scored samples of one category for one served version."""

    def __init__(self, size: int) -> None:
        self.samples: deque[tuple[float, bool]] = deque(maxlen=size)

    def evidence(self) -> CategoryEvidence | None:
        if not self.samples:
            return None
        n = len(self.samples)
        return CategoryEvidence(
            sum(s for s, _ in self.samples) / n, sum(d for _, d in self.samples) / n, n, "live"
        )


@dataclass(frozen=True)
class VoteEvidence:
    """Users' verdicts on local answers of one category: at most one vote per response, the latest."""

    acceptance: float
    votes: int

    def describe(self) -> str:
        return f"{self.acceptance:.0%} of {self.votes} votes accepted"


class _Votes:
    """The last ``size`` responses voted on, one vote each: a new vote on a response replaces its old one."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.by_response: OrderedDict[str, float] = OrderedDict()

    def add(self, response_id: str, value: float) -> None:
        self.by_response.pop(response_id, None)
        self.by_response[response_id] = value
        while len(self.by_response) > self.size:
            self.by_response.popitem(last=False)

    def evidence(self) -> VoteEvidence | None:
        n = len(self.by_response)
        return VoteEvidence(sum(self.by_response.values()) / n, n) if n else None


FOLLOWUP_SUFFIX = " · follow-ups"


def followup_key(category: str) -> str:
    """The evidence key of ``category``'s follow-up turns ("ORDER · follow-ups").

    A local model good at first questions may still answer follow-ups badly (it must read the
    conversation), so their live samples also go to a window of their own. Once that window holds
    ``min_samples`` it decides for follow-ups of the category; until then they share the
    category's evidence. The key is logged like a category, so ``router stats`` shows it apart.
    """
    return category + FOLLOWUP_SUFFIX


def replay_samples(gate: QualityGate, samples: Sequence[Mapping[str, object]]) -> None:
    """Feed logged live samples (oldest first) to ``gate``: feedback rows as votes, the rest as similarities."""
    for sample in samples:
        key, category = sample["served_key"], str(sample["category"])
        if sample["kind"] == "feedback":
            if sample.get("request_id"):
                gate.record_vote(key, category, str(sample["request_id"]), float(sample["similarity"]))  # type: ignore[arg-type]
        else:
            gate.record(key, category, float(sample["similarity"]), bool(sample["degenerate"]))  # type: ignore[arg-type]


class QualityGate:
    """Decides, per served version and category, whether local answers are proven good enough.

    ``offline_evidence(version)`` returns the offline evidence for a served version (the engine
    reads the registry or the evidence store); it is re-read at most every ``refresh_s`` seconds,
    so figures recorded by ``router evaluate`` reach a running router without a restart.
    """

    def __init__(
        self,
        config: QualityConfig,
        offline_evidence: Callable[[str | None], Mapping[str, CategoryEvidence]],
        *,
        refresh_s: float = 30.0,
    ) -> None:
        self._config = config
        self._offline_evidence = offline_evidence
        self._refresh_s = refresh_s
        self._offline: dict[str | None, tuple[float, Mapping[str, CategoryEvidence]]] = {}
        self._live: dict[tuple[str | None, str], _LiveWindow] = {}
        self._votes: dict[tuple[str | None, str], _Votes] = {}
        self._aliases: dict[str, tuple[str, ...]] = {}
        self._state: dict[tuple[str | None, str], bool] = {}
        self._lock = threading.Lock()

    # -- evidence ---------------------------------------------------------------------------------

    def offline(self, version: str | None) -> Mapping[str, CategoryEvidence]:
        now = time.monotonic()
        with self._lock:
            cached = self._offline.get(version)
            if cached is None or now - cached[0] >= self._refresh_s:
                cached = (now, dict(self._offline_evidence(version)))
                self._offline[version] = cached
            return cached[1]

    def forget(self, version: str | None) -> None:
        """Drop cached offline evidence (e.g. after ``router evaluate`` wrote new figures)."""
        with self._lock:
            self._offline.pop(version, None)

    def record_vote(self, version: str | None, category: str, response_id: str, value: float) -> GateVerdict:
        """A user's verdict on one local answer (1 accepted, 0 rejected, or a score in between).

        One vote per response counts, the latest: a caller repeating its vote changes nothing. Votes
        are evidence of their own, with their own floor: they can close a category, and open one
        only where ``votes_can_open`` allows it.
        """
        with self._lock:
            votes = self._votes.setdefault((version, category), _Votes(self._config.live_window))
            votes.add(response_id, max(0.0, min(1.0, float(value))))
        return self.verdict(version, category)

    def votes(self, version: str | None, category: str) -> VoteEvidence | None:
        with self._lock:
            votes = self._votes.get((version, category))
            return votes.evidence() if votes is not None else None

    def record(self, version: str | None, category: str, similarity: float, degenerate: bool) -> GateVerdict:
        """Add one scored live sample (shadow, audit, fallback) and return the category's verdict after it."""
        with self._lock:
            window = self._live.setdefault((version, category), _LiveWindow(self._config.live_window))
            window.samples.append((max(0.0, min(1.0, float(similarity))), bool(degenerate)))
        return self.verdict(version, category)

    def set_aliases(self, aliases: Mapping[str, Sequence[str]]) -> None:
        """Earlier names of each category (a renamed or merged discovered category): evidence recorded
        under one of them counts for the category until it has enough of its own."""
        with self._lock:
            self._aliases = {k: tuple(v) for k, v in aliases.items()}

    def evidence(self, version: str | None, category: str) -> CategoryEvidence | None:
        """The evidence that decides: live once it has enough samples, else offline; then the same
        under the category's earlier names."""
        with self._lock:
            names = (category, *self._aliases.get(category, ()))
        found: list[CategoryEvidence] = []
        for name in names:
            with self._lock:
                window = self._live.get((version, name))
            live = window.evidence() if window else None
            if live is not None and live.samples >= self._config.min_samples:
                return live
            offline = self.offline(version).get(name)
            if offline is not None and offline.samples >= self._config.min_samples:
                return offline
            found += [e for e in (live, offline) if e is not None]
        return found[0] if found else None

    # -- decisions --------------------------------------------------------------------------------

    def verdict(self, version: str | None, category: str) -> GateVerdict:
        """Open or closed for ``category`` under the served ``version``, with the figures behind it."""
        override = self._config.overrides.get(category)
        if override == "trust":
            return GateVerdict(True, None, "trusted by configuration (quality.overrides)")
        if override == "distrust":
            return GateVerdict(False, Reason.LOCAL_QUALITY_DISTRUSTED, "distrusted by configuration (quality.overrides)")
        if not self._config.enabled:
            return GateVerdict(True, None, "quality gate disabled")
        cfg = self._config
        evidence = self.evidence(version, category)
        votes = self.votes(version, category)
        enough_votes = votes is not None and votes.votes >= cfg.min_votes
        if evidence is None or evidence.samples < cfg.min_samples:
            if enough_votes and cfg.votes_can_open and votes.acceptance >= cfg.min_vote_acceptance:  # type: ignore[union-attr]
                return GateVerdict(True, None, f"{votes.describe()} (quality.votes_can_open)")  # type: ignore[union-attr]
            have = f"{evidence.samples} samples" if evidence else "no evaluation"
            return GateVerdict(
                False, Reason.LOCAL_QUALITY_UNPROVEN,
                f"{have} for {category} on {version or 'the configured model'}; need {cfg.min_samples} "
                "(run `router evaluate`, `router retrain`, or enable shadow answers; votes alone do not open a category)",
            )  # fmt: skip
        if enough_votes and votes.acceptance < cfg.min_vote_acceptance:  # type: ignore[union-attr]
            return GateVerdict(
                False, Reason.LOCAL_QUALITY_BELOW_FLOOR,
                f"{votes.describe()}, under the {cfg.min_vote_acceptance:.0%} floor (quality.min_vote_acceptance); "  # type: ignore[union-attr]
                f"{evidence.describe()}",
            )  # fmt: skip
        key = (version, category)
        with self._lock:
            was_open = self._state.get(key)
            now_open = self._judge(evidence, was_open)
            self._state[key] = now_open
        if was_open is not None and was_open != now_open:
            logger.info(
                "quality gate: %s on %s %s (%s)", category, version or "the configured model",
                "opened" if now_open else "closed", evidence.describe(),
            )  # fmt: skip
        if now_open:
            return GateVerdict(True, None, evidence.describe())
        return GateVerdict(False, Reason.LOCAL_QUALITY_BELOW_FLOOR, f"{evidence.describe()}; {self._floors()}")

    def followup_verdict(self, version: str | None, category: str) -> GateVerdict:
        """The verdict for a follow-up turn of ``category``: the category's, unless follow-ups have
        evidence of their own (live samples, or offline ones from an evaluation with follow-ups)
        that closes them."""
        verdict = self.verdict(version, category)
        if not verdict.open or category in self._config.overrides:
            return verdict
        key = followup_key(category)
        evidence = self.evidence(version, key)
        if evidence is None or evidence.samples < self._config.min_samples:
            return verdict
        own = self.verdict(version, key)
        return own if not own.open else GateVerdict(True, None, f"follow-ups: {own.detail}")

    def _judge(self, evidence: CategoryEvidence, was_open: bool | None) -> bool:
        cfg = self._config
        if was_open is None:  # first judgement: the floors themselves
            return evidence.similarity >= cfg.min_similarity and evidence.degenerate_rate <= cfg.max_degenerate_rate
        if was_open:  # stays open until clearly below
            return evidence.similarity >= cfg.min_similarity - cfg.margin and evidence.degenerate_rate <= cfg.max_degenerate_rate + cfg.margin
        return evidence.similarity >= cfg.min_similarity + cfg.margin and evidence.degenerate_rate <= max(0.0, cfg.max_degenerate_rate - cfg.margin)

    def _floors(self) -> str:
        cfg = self._config
        return f"floors: similarity >= {cfg.min_similarity:.2f}, degenerate <= {cfg.max_degenerate_rate:.0%}"

    def summary(self, version: str | None, categories: list[str]) -> dict[str, GateVerdict]:
        """The verdict for each of ``categories`` (for start-up logs and ``router stats``)."""
        return {category: self.verdict(version, category) for category in categories}
