"""Canary rollout: a new model version serves a share of local traffic until its live evidence decides.

A registry's ``serving.json`` may carry a ``canary`` block (``router models promote vN --canary 0.1``
or ``[retrain] canary_share``). A running router then sends that share of each conversation-eligible
local request to the canary (:func:`canary_arm`: a stable hash of the conversation, so a conversation
never switches version mid-way), audits both arms at the same rate, and :class:`CanaryJudge`
decides per canary:

* **score test** (audits): an answer's score is its similarity to the cloud's answer to the same
  request, 0 when the guard found it degenerate. With Δ = mean(canary) − mean(serving) and its
  Welch standard error, at each look the canary is **rolled back** when Δ + z·se < 0 (shown worse)
  and may be **promoted** when Δ − z·se > −margin (shown non-inferior by the margin);
* **guard test** (every answer the guard judged): the canary is rolled back when its degenerate
  rate is shown higher than the serving version's (Agresti–Caffo interval);
* a canary reaching ``max_audits``, ``max_requests`` or ``max_hours`` undecided is rolled back.

Why a group-sequential test with Bonferroni spending rather than SPRT: the scores are bounded but
not of any parametric family, and the two arms' variances differ, so a likelihood ratio has no
honest model; a bounded number of looks (``max_audits / look_every``) with α split evenly across
them keeps each error rate at most α whatever the score distribution (up to the normal
approximation of a mean of 20+ bounded scores), and costs only a somewhat later decision than an
optimal boundary. Rollback spends α/2 on each test; promotion spends α on the score test and also
requires the canary's degenerate rate to be within the quality gate's ceiling.

Feedback votes and latency are measured per arm and shown with the evidence but do not decide:
votes come from callers, and callers are not all friendly (a few could vote a good canary down).
"""

from __future__ import annotations

import hashlib
import math
import statistics
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from hybrid_common.chat import message_text
from hybrid_common.serving_pointer import append_history, locked, read_serving, utc_now, write_serving

__all__ = [
    "ANSWER_KIND",
    "AUDIT_KIND",
    "CANARY_FIELDS",
    "CanaryJudge",
    "CanarySpec",
    "CanaryVerdict",
    "canary_arm",
    "canary_spec",
    "conversation_key",
    "end_canary",
    "live_evidence",
    "replay_canary_samples",
]

Arm = Literal["serving", "canary"]
# The traffic log's quality_samples kinds that hold a canary's observations (router._canary_serving).
ANSWER_KIND = "canary_answer"
AUDIT_KIND = "canary_audit"
# serving.json's canary block: these describe the rollout; the rest names the version's files.
CANARY_FIELDS = frozenset({"version", "share", "started_at", "reason"})


@dataclass(frozen=True)
class CanarySpec:
    """The canary named in ``serving.json``: which version, what share, since when, against which."""

    version: str
    serving: str
    share: float
    started_at: str
    files: Mapping[str, Any] = field(default_factory=dict, compare=False)
    """The version's entries as the registry wrote them (``adapter_path``, ``adapter_sha256``)."""

    @property
    def salt(self) -> str:
        """Each canary hashes conversations afresh, so the same ones are not always the guinea pigs."""
        return f"{self.version}@{self.started_at}"

    def age_hours(self, now: datetime | None = None) -> float:
        try:
            started = datetime.fromisoformat(self.started_at)
        except ValueError:
            return 0.0
        return max(0.0, ((now or utc_now()) - started).total_seconds() / 3600)


def canary_spec(state: Mapping[str, Any] | None) -> CanarySpec | None:
    """The canary of a raw ``serving.json`` (None when there is none or it is malformed)."""
    if not state or not isinstance(state.get("canary"), Mapping):
        return None
    block = state["canary"]
    version, share, started = block.get("version"), block.get("share"), block.get("started_at")
    if not isinstance(version, str) or not isinstance(share, int | float) or not isinstance(started, str):
        return None
    if not 0 < float(share) <= 1 or version == state.get("version"):
        return None
    files = {k: v for k, v in block.items() if k not in CANARY_FIELDS}
    return CanarySpec(version, str(state["version"]), float(share), started, files)


def conversation_key(messages: Sequence[Mapping[str, Any]]) -> str:
    """What stays the same for every turn of a conversation: its system prompt and first user turn."""
    opening: list[str] = []
    for message in messages:
        role = message.get("role")
        if role in ("system", "developer") and not opening:
            opening.append(f"s:{message_text(message.get('content'))}")
        elif role == "user":
            opening.append(f"u:{message_text(message.get('content'))}")
            break
    return hashlib.blake2b("\x00".join(opening).encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def canary_arm(conversation_key: str, spec: CanarySpec) -> Arm:
    """The arm a conversation is served by: a stable hash of it under this canary's salt."""
    digest = hashlib.blake2b(f"{spec.salt}\x00{conversation_key}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return "canary" if int.from_bytes(digest, "big") / 2**64 < spec.share else "serving"


@dataclass(frozen=True)
class CanaryVerdict:
    """A decision: ``promote`` the canary, or ``rollback`` (retire it), with the evidence it rests on."""

    action: Literal["promote", "rollback"]
    reason: str
    evidence: dict[str, Any]


def _z(alpha: float) -> float:
    return statistics.NormalDist().inv_cdf(1.0 - alpha)


class _ArmStats:
    __slots__ = ("audits", "score_sum", "score_sq", "served", "degenerate", "votes", "vote_sum", "latencies")

    def __init__(self) -> None:
        self.audits = 0
        self.score_sum = 0.0
        self.score_sq = 0.0
        self.served = 0
        self.degenerate = 0
        self.votes = 0
        self.vote_sum = 0.0
        self.latencies: deque[float] = deque(maxlen=1000)

    @property
    def mean(self) -> float:
        return self.score_sum / self.audits if self.audits else float("nan")

    @property
    def variance(self) -> float:
        if self.audits < 2:
            return 0.25  # the largest a score in [0, 1] can have
        var = (self.score_sq - self.score_sum**2 / self.audits) / (self.audits - 1)
        return max(var, 1e-4)  # a run of equal scores is not proof of no spread

    def summary(self) -> dict[str, Any]:
        return {
            "audits": self.audits,
            "mean_score": None if not self.audits else round(self.mean, 4),
            "answers": self.served,
            "degenerate_rate": None if not self.served else round(self.degenerate / self.served, 4),
            "votes": self.votes,
            "mean_vote": None if not self.votes else round(self.vote_sum / self.votes, 3),
            "latency_p50_ms": None if not self.latencies else round(statistics.median(self.latencies), 1),
        }


class CanaryJudge:
    """Accumulates both arms' live evidence for one canary and says when it is decided.

    Not thread-safe on its own: the router calls it under its lock. ``max_degenerate_rate`` is the
    quality gate's ceiling: a canary above it is never promoted.
    """

    def __init__(self, spec: CanarySpec, config: Any, *, max_degenerate_rate: float = 0.05) -> None:
        self.spec = spec
        self.config = config
        self.max_degenerate_rate = max_degenerate_rate
        self.arms: dict[str, _ArmStats] = {"serving": _ArmStats(), "canary": _ArmStats()}
        self.score_looks = 0
        self.guard_looks = 0
        self._next_score_look = config.min_audits
        self._next_guard_look = self._guard_step
        alpha = config.alpha
        self._z_rollback = _z(alpha / 2 / self.max_score_looks)
        self._z_promote = _z(alpha / self.max_score_looks)
        self._z_guard = _z(alpha / 2 / self.max_guard_looks)

    @property
    def _guard_step(self) -> int:
        return 2 * self.config.look_every

    @property
    def max_score_looks(self) -> int:
        c = self.config
        return 1 + max(0, c.max_audits - c.min_audits) // c.look_every

    @property
    def max_guard_looks(self) -> int:
        return max(1, self.config.max_requests // self._guard_step)

    # -- evidence ---------------------------------------------------------------------------------

    def observe_audit(self, arm: Arm, similarity: float, degenerate: bool) -> None:
        score = 0.0 if degenerate else min(1.0, max(0.0, float(similarity)))
        stats = self.arms[arm]
        stats.audits += 1
        stats.score_sum += score
        stats.score_sq += score * score

    def observe_answer(self, arm: Arm, degenerate: bool, latency_ms: float | None = None) -> None:
        stats = self.arms[arm]
        stats.served += 1
        stats.degenerate += int(degenerate)
        if latency_ms is not None:
            stats.latencies.append(float(latency_ms))

    def observe_vote(self, arm: Arm, value: float) -> None:
        stats = self.arms[arm]
        stats.votes += 1
        stats.vote_sum += float(value)

    # -- the tests --------------------------------------------------------------------------------

    def score_interval(self, z: float) -> tuple[float, float, float]:
        """Δ and its interval at ``z`` (NaN without audits on both arms)."""
        c, s = self.arms["canary"], self.arms["serving"]
        if not c.audits or not s.audits:
            return float("nan"), float("nan"), float("nan")
        diff = c.mean - s.mean
        se = math.sqrt(c.variance / c.audits + s.variance / s.audits)
        return diff, diff - z * se, diff + z * se

    def guard_interval(self) -> tuple[float, float]:
        """Agresti–Caffo: the canary's degenerate rate minus the serving version's, and its lower bound."""
        c, s = self.arms["canary"], self.arms["serving"]
        pc, ps = (c.degenerate + 1) / (c.served + 2), (s.degenerate + 1) / (s.served + 2)
        se = math.sqrt(pc * (1 - pc) / (c.served + 2) + ps * (1 - ps) / (s.served + 2))
        return pc - ps, pc - ps - self._z_guard * se

    def evidence(self) -> dict[str, Any]:
        diff, low, _ = self.score_interval(self._z_promote)
        _, _, high = self.score_interval(self._z_rollback)
        guard_diff, guard_low = self.guard_interval()
        def num(x: float) -> float | None:
            return None if math.isnan(x) else round(x, 4)
        return {
            "canary": self.arms["canary"].summary(),
            "serving": self.arms["serving"].summary(),
            "score_diff": num(diff), "score_diff_lower": num(low), "score_diff_upper": num(high),
            "margin": self.config.margin, "alpha": self.config.alpha,
            "score_looks": self.score_looks, "max_score_looks": self.max_score_looks,
            "degenerate_diff": round(guard_diff, 4), "degenerate_diff_lower": round(guard_low, 4),
            "guard_looks": self.guard_looks, "age_hours": round(self.spec.age_hours(), 2),
        }  # fmt: skip

    def decide(self, now: datetime | None = None) -> CanaryVerdict | None:
        """A verdict when a look (or a limit) is due and decides; else None (keep collecting)."""
        config, canary = self.config, self.arms["canary"]
        if canary.served >= self._next_guard_look:
            self.guard_looks += 1
            self._next_guard_look = (canary.served // self._guard_step + 1) * self._guard_step
            _, low = self.guard_interval()
            if low > 0:
                return self._verdict("rollback", "the canary's answers are degenerate more often than the serving version's")
        if canary.audits >= self._next_score_look:
            self.score_looks += 1
            self._next_score_look = canary.audits + config.look_every
            _, _, high = self.score_interval(self._z_rollback)
            if high < 0:
                return self._verdict("rollback", "the canary's audited answers score lower than the serving version's")
            _, low, _ = self.score_interval(self._z_promote)
            degenerate_rate = canary.degenerate / canary.served if canary.served else 0.0
            if low > -config.margin and degenerate_rate <= self.max_degenerate_rate:
                return self._verdict("promote", f"the canary's audited answers are no worse than the serving version's by more than {config.margin}")
        if canary.audits >= config.max_audits or canary.served >= config.max_requests:
            return self._verdict("rollback", "undecided at the canary's sample limit")
        if self.spec.age_hours(now) >= config.max_hours:
            return self._verdict("rollback", f"undecided after {config.max_hours:g} hours")
        return None

    def resume(self) -> None:
        """After evidence replayed from the log, the next looks come after it (no look is taken twice)."""
        c, canary = self.config, self.arms["canary"]
        self._next_score_look = max(c.min_audits, canary.audits + 1)
        self._next_guard_look = (canary.served // self._guard_step + 1) * self._guard_step

    def _verdict(self, action: Literal["promote", "rollback"], reason: str) -> CanaryVerdict:
        return CanaryVerdict(action, reason, self.evidence())


def end_canary(
    root: str | Path,
    spec: CanarySpec,
    action: Literal["promote", "rollback", "abort"],
    *,
    reason: str,
    evidence: Mapping[str, Any] | None = None,
) -> bool:
    """End ``spec``'s canary in the registry at ``root``: ``promote`` makes it the serving version,
    ``rollback``/``abort`` retire it. False when that canary is no longer running (another router or
    an operator decided first): the decision is taken once, under the registry's writer lock."""
    with locked(root):
        state = read_serving(root)
        current = canary_spec(state)
        if state is None or current is None or (current.version, current.started_at) != (spec.version, spec.started_at):
            return False
        at = utc_now().isoformat()
        entry: dict[str, Any] = {
            "action": f"canary_{action}", "version": spec.version, "serving": spec.serving, "share": spec.share,
            "at": at, "reason": reason, "evidence": dict(evidence or {}),
        }  # fmt: skip
        if action == "promote":
            new_state = {"version": spec.version, **spec.files, "promoted_at": at, "previous": spec.serving, "reason": reason}
            entry["previous"] = spec.serving  # what a later rollback of this version returns to
        else:
            new_state = {k: v for k, v in state.items() if k != "canary"}
        write_serving(root, new_state)
        append_history(root, entry)
    return True



def replay_canary_samples(judge: CanaryJudge, rows: Sequence[Mapping[str, Any]]) -> None:
    """Feed logged canary observations (``quality_samples`` rows, oldest first) to ``judge``
    without deciding on them: a restarted router resumes the evidence, ``router stats`` shows it."""
    spec = judge.spec
    arms: dict[str, Arm] = {f"registry:{spec.version}": "canary", f"registry:{spec.serving}": "serving"}
    for row in rows:
        arm = arms.get(str(row["served_key"]))
        if arm is None:
            continue
        if row["kind"] == AUDIT_KIND:
            judge.observe_audit(arm, float(row["similarity"]), bool(row["degenerate"]))
        elif row["kind"] == ANSWER_KIND:
            detail = str(row.get("detail") or "")
            latency = float(detail.split("=", 1)[1]) if detail.startswith("latency_ms=") else None
            judge.observe_answer(arm, bool(row["degenerate"]), latency)
    judge.resume()


def live_evidence(log: Any, state: Mapping[str, Any] | None, config: Any) -> dict[str, Any] | None:
    """The running canary's evidence as a router would have it, rebuilt from the traffic log ``log``
    (``router stats``, ``router report``); ``config`` is the router's. None without a canary."""
    spec = canary_spec(state)
    if spec is None:
        return None
    judge = CanaryJudge(spec, config.canary, max_degenerate_rate=config.quality.max_degenerate_rate)
    keys = [f"registry:{spec.version}", f"registry:{spec.serving}"]
    replay_canary_samples(judge, log.canary_samples(since=spec.started_at, served_keys=keys))
    return {"version": spec.version, "serving": spec.serving, "share": spec.share, **judge.evidence()}
