"""The quality gate as the engine serves it: which local model serves now, the gate's verdict on it,
and the live evidence fed back (samples restored at start, feedback votes).

The gate (:mod:`router.quality`) keys its evidence by model. This module names the model the local
tier serves now, and the model that produced a logged answer, so a registry promotion or rollback
is judged on its own evidence and the old model's cached answers are evicted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from router._caching import CacheTier
from router._feedback import IN_PROCESS_OPERATOR, FeedbackSender, authorize_feedback, check_feedback
from router.backends import LocalBackend
from router.config import RouterConfig
from router.quality import FOLLOWUP_SUFFIX, GateVerdict, QualityGate, evidence_reader, model_key, replay_samples
from router.traffic_log import TrafficLog

__all__ = ["ServedQuality"]

logger = logging.getLogger("router")


class ServedQuality:
    """Owns the quality gate, and reads and feeds it for the local model being served."""

    def __init__(self, config: RouterConfig, local: LocalBackend, log: TrafficLog | None, cache_tier: CacheTier | None) -> None:
        self.config = config
        self.local = local
        self.log = log
        self.cache_tier = cache_tier  # answers of a model no longer served, or rejected, leave it
        self.gate = QualityGate(config.quality, evidence_reader(config.local.followed_registry, config.quality.evidence_dir))
        self._adapter_sha: str | None = None
        # A vote on a local answer is also shown with a running canary's evidence (set by the engine).
        self.on_vote: Callable[[str | None, float], None] = lambda version, value: None
        self._announced_key: str | None = None

    def served_key(self) -> str:
        """Which model the local tier serves now, as the gate keys its evidence.

        ``registry:<version>`` when following a registry (its ``version.json`` holds the evidence),
        else ``adapter:<sha256 prefix>`` or ``model:<name>`` (the evidence store of ``router evaluate``).
        """
        local = self.config.local
        if local.followed_registry is not None and self.local.name == "llama_cpp":
            try:
                self.local.load()  # reads the registry's promoted version (once; later promotions via refresh)
                self.local.refresh()
            except Exception as err:  # a broken model is the local tier's failure to report when it is used
                logger.debug("local model not loaded for the quality gate: %s", err)
        version = self.local.adapter_version if local.followed_registry is not None else None
        if version is None and local.adapter_path is not None and self._adapter_sha is None:
            from hybrid_common.files import sha256_file

            self._adapter_sha = sha256_file(local.adapter_path)
        adapter_sha = self._adapter_sha if version is None and local.adapter_path is not None else None
        key = model_key(registry_version=version, adapter_sha256=adapter_sha, model_name=self.local.model_name)
        if key != self._announced_key:
            previous, self._announced_key = self._announced_key, key
            self._announce(key)
            if previous is not None and self.cache_tier is not None:
                self.cache_tier.invalidate(f"local:{previous}")  # a promotion or rollback: the old answers go
        return key

    def verdict(self, category: str) -> GateVerdict:
        return self.gate.verdict(self.served_key(), category)

    def followup_verdict(self, category: str) -> GateVerdict:
        """The gate for a follow-up turn: its own evidence once it has enough (:func:`router.quality.followup_key`)."""
        return self.gate.followup_verdict(self.served_key(), category)

    def key_of(self, adapter_version: str | None) -> str:
        """The gate's key for the model that produced a logged answer (``adapter_version`` as logged)."""
        if self.config.local.followed_registry is not None and adapter_version:
            return f"registry:{adapter_version}"
        return self.served_key()

    def restore_live_samples(self) -> None:
        """Live evidence (shadow, audit, votes) survives a restart: reload each window from the log."""
        if self.log is None or (self.log.url is None and not self.log.path.exists()):
            return
        try:
            samples = self.log.quality_samples(per_category=self.config.quality.live_window)
        except Exception as err:  # an unreadable log must not stop the router; the gate starts from offline evidence
            logger.warning("quality gate: live samples not restored from %s: %s", self.log.location, err)
            return
        replay_samples(self.gate, samples)

    def feedback(
        self,
        request_id: str,
        *,
        score: float | None = None,
        accepted: bool | None = None,
        correction: str | None = None,
        sender: FeedbackSender = IN_PROCESS_OPERATOR,
    ) -> None:
        """Store feedback on a logged answer from the caller who received it; a score or verdict on a
        local answer is that response's one vote (a later vote replaces it)."""
        from hybrid_common.errors import ConfigError, NotFoundError

        check_feedback(score, accepted, correction)
        if self.log is None:
            raise ConfigError("feedback is stored in the traffic log, which is disabled (log.enabled = false)")
        row = self.log.get(request_id)
        if row is None:
            raise NotFoundError(f"no logged request with id {request_id!r}", param="response_id")
        authorize_feedback(sender, row, rule=self.config.quality.feedback_from)
        self.log.record_feedback(request_id, score=score, accepted=accepted, correction=correction)
        if self.cache_tier is not None and (accepted is False or correction is not None):
            self.cache_tier.forget(request_id)  # a rejected answer is never served again from the cache
        if row.tier == "local" and row.category is not None and (score is not None or accepted is not None):
            value = float(score) if score is not None else (1.0 if accepted else 0.0)
            key = self.key_of(row.adapter_version)
            self.gate.record_vote(key, row.category, request_id, value)
            self.on_vote(row.adapter_version, value)
            self.log.record_quality_sample(
                kind="feedback", category=row.category, served_key=key, similarity=value, degenerate=False, request_id=request_id
            )

    def _announce(self, key: str) -> None:
        """Say loudly which configured local categories the gate keeps in the cloud, and how to change that."""
        local = self.config.routing.local_categories
        categories = sorted({c for c in self.gate.offline(key) if not c.endswith(FOLLOWUP_SUFFIX)} if local == "*" else local)
        closed = {c: v for c, v in self.gate.summary(key, categories).items() if not v.open}
        if closed:
            logger.warning(
                "quality gate: %d of %d local categories go to the cloud while %s serves: %s. Get evidence with "
                "`router evaluate` (your own model or adapter) or `router retrain`, or set quality.overrides.",
                len(closed), len(categories), key, "; ".join(f"{c} ({v.reason.value if v.reason else ''})" for c, v in closed.items()),
            )  # fmt: skip
        elif categories:
            logger.info("quality gate: all %d local categories open for %s", len(categories), key)
