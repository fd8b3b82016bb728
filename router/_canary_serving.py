"""The canary as the engine serves it: which version answers a request, what both arms are measured
on, and the decision written back to the registry (the rules are :mod:`router.canary`'s).

A request is *eligible* when the local tier answers it, a canary is loaded beside the promoted
version, and the quality gate is open for the request's category **on the canary's own evidence**
(so a canary never serves a category, private ones included, where its evidence is below the
floor). Eligible requests are split by :func:`router.canary.canary_arm` on the conversation's
opening (system prompt and first user turn: the same for every turn of a conversation, so it never
switches version mid-way) and only they are counted, on both arms, so the two arms are compared
on the same categories over the same period.

Every observation is also logged (``quality_samples`` rows of kind ``canary_answer`` and
``canary_audit``), so a restarted router resumes the canary's evidence where it was.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from router._exchange import Exchange
from router.backends import LocalBackend
from router.canary import ANSWER_KIND, AUDIT_KIND, CanaryJudge, CanarySpec, CanaryVerdict, canary_arm, conversation_key, end_canary, replay_canary_samples
from router.config import RouterConfig
from router.quality import QualityGate
from router.traffic_log import TrafficLog

__all__ = ["CanaryRollout"]

logger = logging.getLogger("router")

class CanaryRollout:
    """Chooses each eligible request's version, feeds the judge, and ends the canary when it decides."""

    def __init__(self, config: RouterConfig, backend: LocalBackend, gate: QualityGate, log: TrafficLog | None) -> None:
        self.config = config
        self.backend = backend
        self.gate = gate
        self.log = log
        self.registry = config.local.followed_registry
        self._lock = threading.Lock()
        self._judge: CanaryJudge | None = None
        self._decided: set[tuple[str, str]] = set()
        self.decisions: list[CanaryVerdict] = []

    # -- which version answers --------------------------------------------------------------------

    def spec(self) -> CanarySpec | None:
        """The canary being served now (loaded by the backend), with its judge ready."""
        if self.registry is None:
            return None
        spec = self.backend.canary
        if spec is None or (spec.version, spec.started_at) in self._decided:
            return None
        with self._lock:
            if self._judge is None or self._judge.spec != spec:
                self._judge = CanaryJudge(spec, self.config.canary, max_degenerate_rate=self.config.quality.max_degenerate_rate)
                self._restore(self._judge)
        return spec

    def choose(self, exchange: Exchange) -> str | None:
        """The version that should answer ``exchange`` locally (None: the serving one, not counted)."""
        spec = self.spec()
        if spec is None or exchange.category is None or spec.serving != self.backend.adapter_version:
            return None
        if not self.gate.verdict(f"registry:{spec.version}", exchange.category).open:
            return None
        arm = canary_arm(conversation_key(exchange.request.messages), spec)
        exchange.canary_arm = arm
        exchange.canary_version = spec.version if arm == "canary" else spec.serving
        return exchange.canary_version

    # -- evidence ---------------------------------------------------------------------------------

    def observe_answer(self, exchange: Exchange) -> None:
        """A served eligible request: the guard's verdict on its local answer (degenerate or not)."""
        arm, version = exchange.canary_arm, exchange.canary_version
        if arm is None or version is None or exchange.error is not None:
            return
        if exchange.tier == "local":
            degenerate = exchange.degenerate is not None
        elif exchange.fallback_from == "local" and (exchange.fallback_reason or "").startswith("degenerate"):
            degenerate = True
        else:
            return  # a timeout or a busy tier says nothing about the version's answers
        latency = exchange.latency_ms if exchange.tier == "local" else None
        self._observe(arm, version, lambda judge: judge.observe_answer(arm, degenerate, latency))
        if self.log is not None:
            self.log.record_quality_sample(
                kind=ANSWER_KIND, category=exchange.category or "", served_key=f"registry:{version}",
                similarity=0.0, degenerate=degenerate, request_id=exchange.request_id,
                detail=None if latency is None else f"latency_ms={latency:.1f}",
            )  # fmt: skip

    def observe_audit(self, arm: str, version: str, *, category: str, similarity: float, degenerate: bool, request_id: str) -> None:
        """An eligible local answer scored against the cloud's."""
        self._observe(arm, version, lambda judge: judge.observe_audit(arm, similarity, degenerate))  # type: ignore[arg-type]
        if self.log is not None:
            self.log.record_quality_sample(
                kind=AUDIT_KIND, category=category, served_key=f"registry:{version}", similarity=similarity,
                degenerate=degenerate, request_id=request_id,
            )  # fmt: skip

    def observe_vote(self, version: str | None, value: float) -> None:
        """Feedback on an answer of either arm: shown with the evidence, never deciding (see router.canary)."""
        judge = self._judge
        if judge is None or version is None:
            return
        arm = "canary" if version == judge.spec.version else "serving" if version == judge.spec.serving else None
        if arm is not None:
            self._observe(arm, version, lambda j: j.observe_vote(arm, value))  # type: ignore[arg-type]

    def evidence(self) -> dict[str, Any] | None:
        judge = self._judge
        return None if judge is None else {"version": judge.spec.version, "serving": judge.spec.serving, **judge.evidence()}

    def _observe(self, arm: str, version: str, feed: Any) -> None:
        with self._lock:
            judge = self._judge
            if judge is None or (judge.spec.version, judge.spec.started_at) in self._decided:
                return
            if version != (judge.spec.version if arm == "canary" else judge.spec.serving):
                return  # an answer of a canary that has since ended
            feed(judge)
            verdict = judge.decide() if self.config.canary.decide else None
            if verdict is None:
                return
            self._decided.add((judge.spec.version, judge.spec.started_at))
        self._act(judge.spec, verdict)

    def _act(self, spec: CanarySpec, verdict: CanaryVerdict) -> None:
        """Write the decision to the registry; the backend follows it at its next poll."""
        assert self.registry is not None
        try:
            done = end_canary(self.registry, spec, verdict.action, reason=verdict.reason, evidence=verdict.evidence)
        except Exception as err:  # noqa: BLE001 - an unwritable registry must not fail the request that decided
            logger.error("canary %s: %s decided but not written to %s: %s", spec.version, verdict.action, self.registry, err)
            with self._lock:
                self._decided.discard((spec.version, spec.started_at))
            return
        self.decisions.append(verdict)
        if done:
            log = logger.info if verdict.action == "promote" else logger.warning
            log("canary %s %s (against %s): %s; evidence %s", spec.version,
                "promoted" if verdict.action == "promote" else "rolled back", spec.serving, verdict.reason, verdict.evidence)  # fmt: skip

    def _restore(self, judge: CanaryJudge) -> None:
        """Resume a canary's evidence from the log after a restart."""
        if self.log is None or (self.log.url is None and not self.log.path.exists()):
            return
        spec = judge.spec
        try:
            rows = self.log.canary_samples(since=spec.started_at, served_keys=[f"registry:{spec.version}", f"registry:{spec.serving}"])
        except Exception as err:  # noqa: BLE001 - the canary starts from no evidence rather than failing requests
            logger.warning("canary %s: evidence not restored from %s: %s", spec.version, self.log.location, err)
            return
        replay_canary_samples(judge, rows)

