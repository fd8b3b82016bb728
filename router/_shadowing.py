"""Which served answers become shadow, audit or fallback samples, and the work each sample runs.

:mod:`router._sampling` schedules the samples off the request path; this module supplies what it
runs: the local answer of a shadow (generated as served, by :class:`~router._local_path.LocalPath`),
the cloud answer of an audit, the score of a pair, and where a scored sample is recorded (the
quality gate and the traffic log).
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from hybrid_common.chat import user_turns
from hybrid_common.errors import RouterError
from hybrid_common.generation import guarded_pieces
from router._canary_serving import CanaryRollout
from router._exchange import Exchange
from router._fallback import stays_local
from router._local_path import LocalPath
from router._sampling import ForegroundActivity, LocalShadow, QualitySampler, SampleJob, SamplerStats, ScoredSample
from router._served_quality import ServedQuality
from router.backends import CloudBackend, LocalFailure
from router.config import RouterConfig
from router.quality import followup_key
from router.traffic_log import TrafficLog
from router.types import Reason

__all__ = ["Shadowing"]

logger = logging.getLogger("router")
# Cloud answers in these categories are the ones a shadow answer can prove the local model for.
_SHADOWED = frozenset({Reason.LOCAL_QUALITY_UNPROVEN, Reason.LOCAL_QUALITY_BELOW_FLOOR})


class Shadowing:
    """Offers served answers to the quality sampler (when sampling is on) and does the samples' work."""

    def __init__(
        self,
        config: RouterConfig,
        activity: ForegroundActivity,
        *,
        classifier: Callable[[], Any],
        served_quality: ServedQuality,
        local_path: LocalPath,
        cloud: CloudBackend,
        log: TrafficLog | None,
        canary: CanaryRollout | None = None,
    ) -> None:
        self.config = config
        self.canary = canary
        self._classifier = classifier  # its encoder scores answers when it is the untuned one
        self.served_quality = served_quality
        self.local_path = local_path
        self.cloud = cloud
        self.log = log
        self._rng = random.Random()
        self._embed: Callable[[str], Any] | None = None
        self._scorer_checked = False
        self._scorer_lock = threading.Lock()
        self.sampler: QualitySampler | None = None
        quality = config.quality
        canary_audits = config.local.followed_registry is not None and config.canary.audit_rate > 0
        if log is not None and quality.enabled and (quality.shadow_rate > 0 or quality.audit_rate > 0 or canary_audits):
            self.sampler = QualitySampler(
                quality, activity, shadow=self._shadow_answer, audit=self._audit_answer,
                score=self.answer_similarity, record=self._record_sample,
            )  # fmt: skip

    def stats(self) -> SamplerStats | None:
        return self.sampler.stats if self.sampler is not None else None

    def close(self) -> None:
        if self.sampler is not None:
            self.sampler.close()

    def offer(self, exchange: Exchange) -> None:
        """Maybe queue a shadow (cloud answer, gated-off category) or audit (local answer) job."""
        sampler = self.sampler
        request = exchange.request
        if sampler is None or exchange.error is not None or exchange.category is None or not exchange.text.strip():
            return
        if request.n != 1 or request.local_blockers or request.cloud_extra.get("store") is False:
            return  # the local tier cannot answer it; or the app asked that it not be stored
        decision, quality = exchange.decision, self.config.quality
        if exchange.fallback_from == "local" and exchange.rejected_local_text is not None:
            # A degenerate local answer in an open category: free evidence (no extra call), always kept.
            if decision.reason is not Reason.LOCAL_CATEGORY or self._scorer() is None:
                return
            # In a canary it scores 0 for its arm, drawn at the arms' audit rate like any other local answer,
            # so each arm's scores are one sample of all its answers, degenerate ones included.
            counted = exchange.canary_arm is not None and self._rng.random() < self._canary_audit_rate()
            sampler.offer(SampleJob(
                "fallback", request, exchange.request_id, exchange.category, exchange.text, decision.cloud_model,
                self.served_quality.key_of(exchange.canary_version or exchange.adapter_version),
                local_answer=exchange.rejected_local_text, problem=exchange.fallback_reason, topic_start=exchange.topic_start,
                canary_arm=exchange.canary_arm if counted else None, canary_version=exchange.canary_version,
            ))  # fmt: skip
            return
        if exchange.fallback_from:
            return
        if exchange.tier == "cloud" and decision.reason in _SHADOWED:
            kind, rate, key = "shadow", quality.shadow_rate, None
        elif (
            exchange.tier == "local" and decision.reason is Reason.LOCAL_CATEGORY
            and not stays_local(decision) and exchange.degenerate is None
        ):  # fmt: skip
            kind, rate, key = "audit", quality.audit_rate, self.served_quality.key_of(exchange.adapter_version)
            if exchange.canary_arm is not None:  # both arms of a canary are audited at its own, same rate
                rate = self._canary_audit_rate()
        else:
            return
        if rate <= 0 or self._rng.random() >= rate or self._scorer() is None:
            return
        plain = dataclasses.replace(request, stream=False, include_usage=False)
        sampler.offer(SampleJob(
            kind, plain, exchange.request_id, exchange.category, exchange.text, decision.cloud_model, key,  # type: ignore[arg-type]
            topic_start=exchange.topic_start,
            canary_arm=exchange.canary_arm if kind == "audit" else None, canary_version=exchange.canary_version,
        ))  # fmt: skip

    def _canary_audit_rate(self) -> float:
        return max(self.config.quality.audit_rate, self.config.canary.audit_rate)

    def answer_similarity(self, a: str, b: str) -> float:
        """How alike two answers are, by the encoder the offline evidence was scored with."""
        embed = self._scorer()
        if embed is None:
            raise RouterError("no encoder to score answers with")
        return float(max(0.0, float(embed(a) @ embed(b))))

    def _scorer(self) -> Callable[[str], Any] | None:
        """The encoder that scores answer pairs: it must be the one the offline evidence used."""
        if self._scorer_checked:
            return self._embed
        with self._scorer_lock:
            if not self._scorer_checked:
                path = self.config.quality.scorer_path
                if path is not None:
                    from classifiers import OnnxEncoder

                    self._embed = OnnxEncoder.from_dir(path, num_threads=1).embed
                elif (classifier := self._classifier()) is not None and classifier.encoder_is_base:
                    self._embed = classifier.embed
                else:
                    logger.warning(
                        "quality gate: shadow and audit answers are off: the classifier's encoder is fine-tuned, so its "
                        "similarities are not comparable with the offline evidence; set quality.scorer_path to an ONNX "
                        "export of the evaluation encoder (all-MiniLM-L6-v2 by default)"
                    )
                self._scorer_checked = True
        return self._embed

    def _shadow_answer(self, job: SampleJob, interrupted: Callable[[], bool]) -> LocalShadow | None:
        """Answer ``job`` locally as served (guard included); ``None`` once ``interrupted()`` says stop."""
        local, request = self.config.local, self.local_path.request_for_model(job.request, job.topic_start)
        self.local_path.backend.refresh()
        key = self.served_quality.served_key()
        try:  # pruned as it would be served (a shadow's request went to the cloud: never private)
            request, _ = self.local_path.fit_window(request, must_stay=False)
        except LocalFailure as failure:
            raise RouterError(f"the prompt does not fit the local context window ({failure.detail})") from failure
        stream, guard = self.local_path.start(request, deadline=time.monotonic() + local.timeout_s)
        parts: list[str] = []
        try:
            for piece in guarded_pieces(stream, guard):
                parts.append(piece)
                if interrupted():
                    return None
        finally:
            stream.close()
        return LocalShadow("".join(parts), guard.problem, key)

    def _audit_answer(self, job: SampleJob) -> tuple[str, float | None]:
        """The cloud's answer to a request the local tier answered, and what it cost."""
        route = self.config.route_for(job.cloud_model)
        completion = self.cloud.complete(job.request, route, job.request.timeout_s)
        choice = completion.choices[0] if completion.choices else None
        usage = completion.usage
        cost = self.cloud.cost(route.price_as, usage.prompt_tokens, usage.completion_tokens) if usage is not None else None
        return ((choice.message.content or "") if choice else ""), cost

    def _record_sample(self, sample: ScoredSample) -> None:
        """A scored sample is evidence for its category; a follow-up's is also evidence for the
        category's follow-ups (:func:`router.quality.followup_key`), logged as a row of its own."""
        job = sample.job
        if self.canary is not None and job.canary_arm is not None and job.canary_version is not None:
            self.canary.observe_audit(
                job.canary_arm, job.canary_version, category=job.category, similarity=sample.similarity,
                degenerate=sample.degenerate, request_id=job.request_id,
            )  # fmt: skip
        keys = [job.category]
        if sum(1 for _, text in user_turns(job.request.messages) if text.strip()) > 1:
            keys.append(followup_key(job.category))
        for i, category in enumerate(keys):
            self.served_quality.gate.record(sample.served_key, category, sample.similarity, sample.degenerate)
            if self.log is not None:
                self.log.record_quality_sample(
                    kind=job.kind, category=category, served_key=sample.served_key, similarity=sample.similarity,
                    degenerate=sample.degenerate, request_id=job.request_id, answer=sample.answer,
                    cost_usd=sample.cost_usd if i == 0 else None, detail=sample.detail,
                )  # fmt: skip
