"""The routing engine: classify, decide, serve with fallback, log. Shared by the sync and async clients.

Which tier is tried next after a failure is decided in one place, :mod:`router._fallback`; the two
drivers here (``_drive`` and its async twin ``_adrive``, given the plain or streaming attempt of
each tier) only run the tier it names, turn a tier's failure into a
:class:`~router._fallback.TierFailure`, and report it back.

The response cache (:mod:`router._caching`) is consulted first in each driver, after the routing
decision and before any tier runs; what was served is offered to it where the log row is written.

Streams are *primed*: ``create(stream=True)`` runs until the first token before it returns, so a
failure of the chosen tier can still fall back, and errors surface at ``create`` as they do with
the OpenAI SDK, rather than halfway through the application's loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import logging
import random
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from hybrid_common.errors import (
    APIError,
    APITimeoutError,
    BadRequestError,
    InternalServerError,
    OverloadedError,
    RouterError,
)
from hybrid_common.chat import earlier_turns, topic_messages, user_turns
from hybrid_common.generation import guarded_pieces
from hybrid_common.guard import DegenerationGuard
from hybrid_common.pii import PiiMatcher
from router._caching import CacheTier
from router._exchange import Exchange, attach
from router._feedback import IN_PROCESS_OPERATOR, FeedbackSender, authorize_feedback, check_feedback
from router._fallback import FallbackRun, TierFailure, fallback_plan, stays_local
from hybrid_common.pruning import Pruned, prune_to_fit
from router._request import ChatRequest
from router._turns import TurnClassifications
from router._conversation import TurnTopic, resolve_topics
from router._sticky import CloudAnswers
from router._sampling import (
    ForegroundActivity,
    LocalShadow,
    QualitySampler,
    SampleJob,
    SamplerStats,
    ScoredSample,
)
from router.backends import CloudBackend, GenerationStream, LocalFailure, create_local_backend
from router.classifier_watch import ClassifierWatch, FollowedClassifier
from router.config import RouterConfig
from router.policy import Decision, RoutingPolicy
from router.quality import FOLLOWUP_SUFFIX, GateVerdict, QualityGate, evidence_reader, followup_key, model_key, replay_samples
from router.traffic_log import TrafficLog
from router.types import Reason, Tier

__all__ = ["Engine"]

logger = logging.getLogger("router")
_END = object()
T = TypeVar("T")
# Cloud answers in these categories are the ones a shadow answer can prove the local model for.
_SHADOWED = frozenset({Reason.LOCAL_QUALITY_UNPROVEN, Reason.LOCAL_QUALITY_BELOW_FLOOR})
# A cloud answer given for one of these reasons makes the rest of its topic sticky (conversation.sticky_cloud).
_LOCAL_COULD_NOT = frozenset({
    Reason.EDGE_CASE, Reason.CATEGORY_NOT_LOCAL, Reason.UNSUPPORTED, Reason.LOCAL_QUALITY_UNPROVEN,
    Reason.LOCAL_QUALITY_BELOW_FLOOR, Reason.LOCAL_QUALITY_DISTRUSTED, Reason.STICKY_CLOUD,
})  # fmt: skip
_STREAM_PIECE = re.compile(r"\s*\S+(?:\s+\S+){0,3}\s*")  # a cached answer streams a few words per chunk


class Engine:
    """Owns the models, the backends and the log for one client configuration."""

    ASYNC_THREADS = 16
    """Threads that run the blocking steps of async calls (classification, token steps, log writes).

    The engine's own bounded pool, not the event loop's default executor: a burst of async
    callers queues here instead of starving the application's other ``to_thread`` work."""

    def __init__(self, config: RouterConfig) -> None:
        self.config = config
        self._async_pool: ThreadPoolExecutor | None = None
        self._async_pool_lock = threading.Lock()
        self.policy = RoutingPolicy(config)
        self.local = create_local_backend(config.local)
        self.cloud = CloudBackend(config.cloud)
        self.log: TrafficLog | None = None
        if config.log.enabled:
            redact = PiiMatcher(config.routing.pii_patterns) if config.log.redact_pii else None
            self.log = TrafficLog(
                config.log.location, spool_path=config.log.spool_path,
                store_messages=config.log.store_messages, redact_patterns=redact,
                spool=config.log.spool, busy_timeout_s=config.log.busy_timeout_s, synchronous=config.log.synchronous,
                retain_days=config.log.retain_days,
            )  # fmt: skip
        cache = config.cache
        self.cache_tier = CacheTier(cache) if cache.enabled or any(c.enabled for c in cache.categories.values()) else None
        self._classifier: Any = None
        self._classifier_lock = threading.Lock()
        self._followed: FollowedClassifier | None = None
        if config.classifier.registry_path is not None:
            watch = ClassifierWatch(config.classifier.registry_path, poll_s=config.classifier.registry_poll_s)
            self._followed = FollowedClassifier(watch, self._load_classifier, on_swap=lambda state: self.gate.set_aliases(dict(state.aliases)))
        self.gate = QualityGate(config.quality, evidence_reader(config.local.followed_registry, config.quality.evidence_dir))
        self._adapter_sha: str | None = None
        self._announced_key: str | None = None
        self._restore_live_samples()
        # Shadow and audit answers run in the background and yield to foreground work.
        self.activity = ForegroundActivity()
        self.sampler: QualitySampler | None = None
        quality = config.quality
        if self.log is not None and quality.enabled and (quality.shadow_rate > 0 or quality.audit_rate > 0):
            self.sampler = QualitySampler(
                quality, self.activity, shadow=self._shadow_answer, audit=self._audit_answer,
                score=self._answer_similarity, record=self._record_sample,
            )  # fmt: skip
        self._turns = TurnClassifications()
        self._cloud_answers = CloudAnswers(config.conversation.sticky_memory)
        self._rng = random.Random()
        self._embed: Callable[[str], Any] | None = None
        self._scorer_checked = False
        self._scorer_lock = threading.Lock()
        self._warm: threading.Thread | None = None
        if config.warmup == "eager":
            self.warmup()
        elif config.warmup == "background":
            self._warm = threading.Thread(target=self._warm_quietly, name="router-warmup", daemon=True)
            self._warm.start()

    # -- loading --------------------------------------------------------------------------------

    def warmup(self) -> None:
        """Load the classifier and local model and import litellm now, not on first use."""
        if self.config.cloud.preimport:
            self.cloud.preimport()
        self.classifier  # noqa: B018 - loads it
        self.local.load()
        self.cloud.litellm  # noqa: B018 - waits for the import

    def _warm_quietly(self) -> None:
        try:
            self.warmup()
        except Exception as err:  # the request that needs the part will raise it properly
            logger.warning("background warm-up failed: %s", err)

    @property
    def classifier(self) -> Any:
        """The classifier serving now, or None when none is configured (or none promoted yet)."""
        return self._serving_classifier()[0]

    def classifier_and_version(self) -> tuple[Any, str | None]:
        """The classifier serving now and its registry version (None for a configured ``path``)."""
        return self._serving_classifier()[:2]

    def _serving_classifier(self) -> tuple[Any, str | None, frozenset[str]]:
        """(classifier, registry version, categories the version marks private), read as one.

        A followed registry's new promotion loads in the background and is swapped in whole, so
        this returns at once after the first load.
        """
        if self._followed is not None:
            return self._followed.get()
        path = self.config.classifier.path
        if path is None:
            return None, None, frozenset()
        if self._classifier is None:
            with self._classifier_lock:
                if self._classifier is None:
                    self._classifier = self._load_classifier(path)
        return self._classifier, None, frozenset()

    def _load_classifier(self, path: Path) -> Any:
        from classifiers import EmbeddingClassifier

        classifier = EmbeddingClassifier.load(path, threads=self.config.classifier.threads)
        if self.config.classifier.threshold is not None:
            classifier.threshold_ = self.config.classifier.threshold
        return classifier

    # -- the quality gate -------------------------------------------------------------------------

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
            self._announce_gate(key)
            if previous is not None and self.cache_tier is not None:
                self.cache_tier.invalidate(f"local:{previous}")  # a promotion or rollback: the old answers go
        return key

    def gate_verdict(self, category: str) -> GateVerdict:
        return self.gate.verdict(self.served_key(), category)

    def followup_gate_verdict(self, category: str) -> GateVerdict:
        """The gate for a follow-up turn: its own evidence once it has enough (:func:`router.quality.followup_key`)."""
        return self.gate.followup_verdict(self.served_key(), category)

    def _restore_live_samples(self) -> None:
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
            key = self._key_of(row.adapter_version)
            self.gate.record_vote(key, row.category, request_id, value)
            self.log.record_quality_sample(
                kind="feedback", category=row.category, served_key=key, similarity=value, degenerate=False, request_id=request_id
            )

    def _key_of(self, adapter_version: str | None) -> str:
        """The gate's key for the model that produced a logged answer (``adapter_version`` as logged)."""
        if self.config.local.followed_registry is not None and adapter_version:
            return f"registry:{adapter_version}"
        return self.served_key()

    # -- shadow and audit answers (router._sampling runs them off the request path) --------------

    def sampler_stats(self) -> SamplerStats | None:
        return self.sampler.stats if self.sampler is not None else None

    def _offer_sample(self, exchange: Exchange) -> None:
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
            sampler.offer(SampleJob(
                "fallback", request, exchange.request_id, exchange.category, exchange.text, decision.cloud_model,
                self._key_of(exchange.adapter_version), local_answer=exchange.rejected_local_text,
                problem=exchange.fallback_reason, topic_start=exchange.topic_start,
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
            kind, rate, key = "audit", quality.audit_rate, self._key_of(exchange.adapter_version)
        else:
            return
        if rate <= 0 or self._rng.random() >= rate or self._scorer() is None:
            return
        plain = dataclasses.replace(request, stream=False, include_usage=False)
        sampler.offer(SampleJob(
            kind, plain, exchange.request_id, exchange.category, exchange.text, decision.cloud_model, key,  # type: ignore[arg-type]
            topic_start=exchange.topic_start,
        ))  # fmt: skip

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
                elif self.classifier is not None and self.classifier.encoder_is_base:
                    self._embed = self.classifier.embed
                else:
                    logger.warning(
                        "quality gate: shadow and audit answers are off: the classifier's encoder is fine-tuned, so its "
                        "similarities are not comparable with the offline evidence; set quality.scorer_path to an ONNX "
                        "export of the evaluation encoder (all-MiniLM-L6-v2 by default)"
                    )
                self._scorer_checked = True
        return self._embed

    def _answer_similarity(self, a: str, b: str) -> float:
        embed = self._scorer()
        if embed is None:
            raise RouterError("no encoder to score answers with")
        return float(max(0.0, float(embed(a) @ embed(b))))

    def _shadow_answer(self, job: SampleJob, interrupted: Callable[[], bool]) -> LocalShadow | None:
        """Answer ``job`` locally as served (guard included); ``None`` once ``interrupted()`` says stop."""
        local, request = self.config.local, self._local_request(job.request, job.topic_start)
        self.local.refresh()
        key = self.served_key()
        try:  # pruned as it would be served (a shadow's request went to the cloud: never private)
            request, _ = self._fit_local_window(request, must_stay=False)
        except LocalFailure as failure:
            raise RouterError(f"the prompt does not fit the local context window ({failure.detail})") from failure
        stream, guard = self._start_local(request, deadline=time.monotonic() + local.timeout_s)
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
        keys = [job.category]
        if sum(1 for _, text in user_turns(job.request.messages) if text.strip()) > 1:
            keys.append(followup_key(job.category))
        for i, category in enumerate(keys):
            self.gate.record(sample.served_key, category, sample.similarity, sample.degenerate)
            if self.log is not None:
                self.log.record_quality_sample(
                    kind=job.kind, category=category, served_key=sample.served_key, similarity=sample.similarity,
                    degenerate=sample.degenerate, request_id=job.request_id, answer=sample.answer,
                    cost_usd=sample.cost_usd if i == 0 else None, detail=sample.detail,
                )  # fmt: skip

    def _announce_gate(self, key: str) -> None:
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

    def close(self) -> None:
        if self.sampler is not None:
            self.sampler.close()
        self.local.close()
        if self.cache_tier is not None:
            self.cache_tier.close()
        if self._async_pool is not None:
            self._async_pool.shutdown(wait=True)
        if self.log is not None:
            self.log.close()

    # -- async plumbing ---------------------------------------------------------------------------

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking step on the engine's bounded pool; the event loop stays free."""
        if self._async_pool is None:
            with self._async_pool_lock:
                if self._async_pool is None:
                    self._async_pool = ThreadPoolExecutor(self.ASYNC_THREADS, thread_name_prefix="router-async")
        return await asyncio.get_running_loop().run_in_executor(self._async_pool, functools.partial(fn, *args))

    async def _threaded(self, source: Iterator[Any]) -> AsyncIterator[Any]:
        """Step a blocking iterator on the engine's pool so the event loop stays free."""
        try:
            while (item := await self._in_thread(next, source, _END)) is not _END:
                yield item
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                await self._in_thread(close)

    # -- planning -------------------------------------------------------------------------------

    def plan(self, request: ChatRequest) -> Exchange:
        """Classify every user turn and decide; a refused request is logged whole, then raised."""
        category = confidence = classify_ms = embedding = follows = sticky = topic_start = None
        classifier, classifier_version, private = self._serving_classifier()
        every_turn = user_turns(request.messages)
        turns = [(i, text) for i, text in every_turn if text.strip()]
        turn_categories: list[tuple[int, str | None]] = []
        if classifier is not None and turns:
            # Earlier turns are classified even when the last one has no text (an image): they decide privacy.
            with self.activity.running():
                start = time.perf_counter()
                predictions = self._turns.classify(classifier, classifier_version, [text for _, text in turns])
                classify_ms = (time.perf_counter() - start) * 1000
            turn_categories = [(i, p.category) for (i, _), p in zip(turns, predictions, strict=True)]
            if turns[-1][0] == every_turn[-1][0]:  # the last user turn has text: it is what gets routed
                topic = self._topic_of_last_turn(turns, predictions)
                category, confidence = topic.category, topic.confidence
                follows = topic.follows
                if len(turns) > 1:
                    topic_start = topic.follows if topic.follows is not None else topic.index
                sticky = self._sticky_detail(request, topic)
                embedding = CacheTier.embedding_of(predictions[-1])
        try:
            decision = self.policy.decide(
                request, category=category, has_classifier=classifier is not None,
                gate=self.gate_verdict if len(turns) < 2 else self.followup_gate_verdict,
                private_categories=private, turn_categories=turn_categories, follows=follows, sticky=sticky,
            )  # fmt: skip
        except RouterError as err:
            refused = Exchange(
                request, Decision("local", Reason.REFUSED, str(err)), category, confidence, classify_ms,
                classifier_version=classifier_version,
            )  # fmt: skip
            refused.error = err
            self._write_log(refused)
            raise
        exchange = Exchange(request, decision, category, confidence, classify_ms, classifier_version=classifier_version)
        exchange.topic_start = topic_start
        if self.cache_tier is not None:
            exchange.embedding = embedding
            exchange.cache_probe = self.cache_tier.probe(exchange, route=self._cache_route(decision))
        return exchange

    def _topic_of_last_turn(self, turns: list[tuple[int, str]], predictions: list[Any]) -> TurnTopic:
        """The last user turn's category in its conversation (alone, with ``follow_ups = "last_message"``)."""
        conversation = self.config.conversation
        if conversation.follow_ups == "last_message":
            own = predictions[-1]
            return TurnTopic(turns[-1][0], own.category, float(own.confidence), own.category)
        return resolve_topics(turns, predictions, switch_confidence=conversation.switch_confidence)[-1]

    def _sticky_detail(self, request: ChatRequest, topic: TurnTopic) -> str | None:
        """Why a follow-up stays in the cloud: an earlier answer of its topic was the cloud's (or None)."""
        if not self.config.conversation.sticky_cloud or topic.follows is None:
            return None
        index = self._cloud_answers.first_in(request.messages, after=topic.follows, before=topic.index)
        return None if index is None else f"the cloud answered messages[{index}] of this topic"

    def _remember_cloud_answer(self, exchange: Exchange) -> None:
        """A cloud answer to a turn the local tier could not serve makes its topic sticky (see :mod:`router._sticky`)."""
        decision = exchange.decision
        if exchange.tier != "cloud" or decision.forced or exchange.error is not None or not exchange.text:
            return
        if decision.reason in _LOCAL_COULD_NOT or exchange.fallback_from == "local":
            self._cloud_answers.remember(exchange.text)

    def _write_log(self, exchange: Exchange) -> None:
        if self.config.conversation.sticky_cloud:
            self._remember_cloud_answer(exchange)
        if self.log is not None:
            self.log.record(exchange.log_record())
            self._offer_sample(exchange)
        if self.cache_tier is not None and exchange.cache_probe is not None:
            trusted = exchange.tier == "local" and self._trusted_for_cache(exchange.category)
            self.cache_tier.remember(exchange, trusted_local=trusted, route=self._cache_route(exchange.decision))

    # -- the response cache -----------------------------------------------------------------------

    def _cache_route(self, decision: Decision) -> str:
        """What would answer: the local model version, or the cloud route (a change of either changes the key)."""
        if decision.tier == "local":
            return f"local:{self.served_key()}"
        route = self.config.route_for(decision.cloud_model)
        return f"cloud:{route.litellm_model}@{route.api_base or self.config.cloud.api_base or ''}"

    def _trusted_for_cache(self, category: str | None) -> bool:
        """Local answers are cached only from a model the quality gate has evidence for (or an override trusts)."""
        return category is not None and self.config.quality.enabled and self.gate_verdict(category).open

    def _cache_hit(self, exchange: Exchange) -> Any:
        if self.cache_tier is None or exchange.cache_probe is None:
            return None
        return self.cache_tier.lookup(exchange, exchange.cache_probe)

    def _answer_from_cache(self, exchange: Exchange, hit: Any) -> Any:
        assert self.cache_tier is not None
        self.cache_tier.serve(exchange, hit)
        return exchange.completion()

    def _open_cache_stream(self, exchange: Exchange, hit: Any) -> Iterator[Any]:
        """A cached answer asked for with ``stream=True``: served as a stream of a few words per chunk."""
        assert self.cache_tier is not None
        self.cache_tier.serve(exchange, hit)
        text, exchange.text = exchange.text, ""  # _local_chunks accumulates it again as it streams
        return self._local_chunks(exchange, iter(_STREAM_PIECE.findall(text) or [text]))

    def _local_deadline(self, request: ChatRequest) -> float:
        timeout = self.config.local.timeout_s
        if request.timeout_s is not None:
            timeout = min(timeout, request.timeout_s)
        return time.monotonic() + timeout

    def _fit_local_window(self, request: ChatRequest, *, must_stay: bool) -> tuple[ChatRequest, Pruned | None]:
        """``request`` as the local model can take it: whole, or pruned to its window (:mod:`hybrid_common.pruning`).

        Raises ``LocalFailure("context")`` for a conversation the cloud should answer whole instead
        (``long_conversations = "cloud"``, or only its last message cut short would fit), and a 400
        for one that may not leave (``must_stay``: private or ``model="local"``) and cannot fit at all.
        """
        local = self.config.local
        answer_tokens = local.answer_tokens(request.params.max_tokens)

        def fits(messages: Any) -> bool:
            return self.local.fits(messages, answer_tokens)

        prune = must_stay or local.long_conversations == "prune"
        try:
            pruned = prune_to_fit(request.messages, fits, summary_chars=local.summary_chars) if prune else None
            whole = (pruned is not None and not pruned.changed) if prune else fits(request.messages)
        except Exception as err:
            raise LocalFailure("error", f"local model unavailable: {err}") from err
        if whole:
            return request, None
        # Cutting the question itself is the last resort of a conversation that may not leave; any other goes to the cloud.
        if pruned is not None and (must_stay or not pruned.cut_chars):
            return dataclasses.replace(request, messages=list(pruned.messages)), pruned
        if must_stay:
            raise BadRequestError(
                "The conversation does not fit the local model's context window, not even its system prompt with the "
                "end of its last message, and may not go to the cloud.",
                param="messages",
                code="context_length_exceeded",
            )
        why = "; only its last message cut short would fit" if pruned is not None else ""
        raise LocalFailure("context", f"prompt longer than the local context window{why}")

    # -- fallback ---------------------------------------------------------------------------------

    def _fallback_run(self, exchange: Exchange) -> FallbackRun:
        plan = fallback_plan(
            exchange.decision,
            cloud_to_local=self.config.cloud.fallback_to_local,
            local_servable=not exchange.request.local_blockers,
            private_handoff=self._private_handoff(exchange.decision),
        )
        run = FallbackRun(plan)

        def allowed(tier: Tier) -> bool:
            if tier == "local":
                return self._gate_allows_fallback(exchange)
            if tier == "handoff":  # only instead of a rejected answer: a busy or crashed model is the caller's 503/500
                cause = run.failures[-1].cause
                return isinstance(cause, LocalFailure) and cause.kind == "degenerate"
            return True

        run.allowed = allowed
        return run

    def _private_handoff(self, decision: Decision) -> bool:
        """Whether a private answer the guard rejects becomes the hand-off message (never the degenerate text)."""
        return decision.private and self.config.quality.private_degenerate == "handoff"

    def _gate_allows_fallback(self, exchange: Exchange) -> bool:
        """A failed cloud call falls back to the local tier only for a category the gate has open: an
        unproven category gets the cloud's error, never an unchecked local answer."""
        return exchange.category is not None and self.gate_verdict(exchange.category).open

    def _fall_back(self, exchange: Exchange, run: FallbackRun, failure: TierFailure) -> None:
        """Record ``failure``; move the exchange to the next tier, or raise what the caller should see."""
        to = run.failed(failure)
        logger.info("%s tier failed (%s); falling back to the %s tier", failure.tier, failure.reason, to)
        exchange.fall_back(failure.tier, to, failure.reason)

    def _local_failure(self, failure: LocalFailure) -> TierFailure:
        return TierFailure("local", f"{failure.kind}: {failure.detail}", self._local_error(failure), failure)

    @staticmethod
    def _cloud_failure(err: APIError) -> TierFailure:
        return TierFailure("cloud", f"{type(err).__name__}: {err}", err)

    # -- local tier -----------------------------------------------------------------------------

    def _local_pieces(self, exchange: Exchange) -> Iterator[str]:
        """Generate locally, guarded; raises LocalFailure before or while yielding text.

        Marked as foreground work from the start: a shadow answer holding the model stops within
        one token and lets this request have it.
        """
        with self.activity.running():
            yield from self._guarded_local_pieces(exchange)

    def _local_request(self, request: ChatRequest, topic_start: int | None) -> ChatRequest:
        """``request`` as the local model is given it: whole, or (``local.history = "topic"``) a later
        turn as one question about its topic (:func:`hybrid_common.chat.topic_messages`)."""
        if self.config.local.history != "topic" or topic_start is None:
            return request
        return dataclasses.replace(request, messages=topic_messages(request.messages, topic_start))

    def _start_local(self, request: ChatRequest, *, deadline: float) -> tuple[GenerationStream, DegenerationGuard]:
        """Start generating ``request`` as served (token cap, guard): for answers and shadow answers alike."""
        local = self.config.local
        stream = self.local.generate(
            request.messages, request.params, max_tokens=local.answer_tokens(request.params.max_tokens), deadline=deadline
        )
        return stream, local.new_guard(request.query, earlier_turns(request.messages))

    def _guarded_local_pieces(self, exchange: Exchange) -> Iterator[str]:
        self.local.refresh()
        # A long conversation is answered from its pruned copy (the guard judges against that one too);
        # the log keeps the whole conversation, and the detail says what the local model did not see.
        local_request = self._local_request(exchange.request, exchange.topic_start)
        request, pruned = self._fit_local_window(local_request, must_stay=stays_local(exchange.decision))
        exchange.pruned = pruned.detail if pruned is not None else None
        # With a registry the backend knows which promoted version it loaded; else the config labels it.
        local = self.config.local
        adapter_version = self.local.adapter_version if local.followed_registry else local.adapter_version
        exchange.serve_with("local", self.local.name, self.local.model_name, adapter_version)
        stream, guard = self._start_local(request, deadline=self._local_deadline(request))
        # A stream that may fall back (or hand off) holds its opening back until the guard has judged it.
        fallible = not stays_local(exchange.decision) or self._private_handoff(exchange.decision)
        hold_back = local.hold_back_for(request.query) if request.stream and fallible else 0
        try:
            for piece in guarded_pieces(stream, guard, hold_back=hold_back):
                exchange.mark_first_token()
                yield piece
            if guard.problem is not None:
                if fallible:
                    exchange.rejected_local_text = guard.rejected_text or ""
                    raise LocalFailure("degenerate", guard.problem)
                # A forced-local request (or a private one configured so) cannot fall back: serve the text before the problem, flagged.
                exchange.degenerate = guard.problem
        except LocalFailure:
            raise
        except Exception as err:  # a crash in the native layer is a local failure like any other
            raise LocalFailure("error", f"{type(err).__name__}: {err}") from err
        finally:
            stream.close()
        exchange.finish_reason = exchange.finish_reason or stream.finish_reason
        if local.followed_registry and stream.adapter_version is not None:  # a swap may land while a request waits
            exchange.adapter_version = stream.adapter_version
        exchange.prompt_tokens = stream.prompt_tokens
        exchange.completion_tokens = stream.completion_tokens
        exchange.cloud_cost_usd_estimate = self._cloud_estimate(exchange)
        exchange.cost_usd = 0.0

    def _cloud_estimate(self, exchange: Exchange) -> float | None:
        route = self.config.route_for(exchange.decision.cloud_model)
        return self.cloud.cost(route.price_as, exchange.prompt_tokens or 0, exchange.completion_tokens or 0, wait=False)

    def _answer_handoff(self, exchange: Exchange) -> Any:
        """The configured hand-off message: a private request the local model is not proven for, or
        whose local answer the guard rejected (then the reason says so, and what was wrong)."""
        if exchange.fallback_from == "local":
            decision = exchange.decision
            exchange.decision = dataclasses.replace(
                decision, reason=Reason.PRIVATE_HANDOFF, detail=f"{decision.detail}; local answer rejected ({exchange.fallback_reason})"
            )
        exchange.serve_with("handoff", "handoff", "handoff")
        exchange.text = self.config.quality.handoff_message
        exchange.finish_reason = "stop"
        exchange.prompt_tokens = exchange.completion_tokens = 0
        exchange.cost_usd = 0.0
        exchange.mark_first_token()
        return exchange.completion()

    def _answer_locally(self, exchange: Exchange) -> Any:
        try:
            exchange.text = "".join(self._local_pieces(exchange))
        except LocalFailure as failure:
            raise self._local_failure(failure) from failure
        return exchange.completion()

    def _local_error(self, failure: LocalFailure) -> APIError:
        if failure.kind == "overloaded":
            return OverloadedError(
                f"The local model is busy ({failure.detail}) and this request may not go to the cloud; retry shortly.",
                retry_after_s=self.config.local.retry_after_s,
            )
        if failure.kind == "timeout":
            return APITimeoutError(f"The local model did not answer in time: {failure.detail}")
        return InternalServerError(f"The local model failed ({failure.kind}): {failure.detail}", code=f"local_{failure.kind}")

    # -- cloud tier -----------------------------------------------------------------------------

    def _cloud_route(self, exchange: Exchange) -> Any:
        route = self.config.route_for(exchange.decision.cloud_model)
        exchange.serve_with("cloud", self.cloud.name, exchange.decision.cloud_model)
        return route

    def _finish_cloud(self, exchange: Exchange, route: Any, usage: Any) -> None:
        if usage is not None:
            exchange.prompt_tokens = usage.prompt_tokens
            exchange.completion_tokens = usage.completion_tokens
        exchange.cost_usd = self.cloud.cost(route.price_as, exchange.prompt_tokens or 0, exchange.completion_tokens or 0)
        exchange.cloud_cost_usd_estimate = exchange.cost_usd

    def _accept_cloud_completion(self, exchange: Exchange, route: Any, completion: Any) -> Any:
        choice = completion.choices[0] if completion.choices else None
        exchange.text = (choice.message.content or "") if choice else ""
        exchange.finish_reason = choice.finish_reason if choice else None
        exchange.model = completion.model or exchange.model
        # One id per request on every tier: what the log, feedback and support tickets refer to.
        exchange.provider_id, completion.id = completion.id, exchange.request_id
        exchange.mark_first_token()
        self._finish_cloud(exchange, route, completion.usage)
        return attach(completion, exchange.info())

    # -- non-streaming ----------------------------------------------------------------------------

    def complete(self, request: ChatRequest) -> Any:
        exchange = self.plan(request)
        try:
            result = self._serve(exchange)
        except BaseException as err:
            exchange.error = err
            raise
        finally:
            self._write_log(exchange)
        return result

    def _drive(self, exchange: Exchange, attempts: Mapping[Tier, Callable[[Exchange], Any]]) -> Any:
        """Run the fallback plan's tiers with ``attempts`` until one answers (the sync drivers)."""
        run = self._fallback_run(exchange)
        for tier in run:
            try:
                return attempts[tier](exchange)
            except TierFailure as failure:
                self._fall_back(exchange, run, failure)
        raise AssertionError("unreachable: the fallback run raises once every tier has failed")

    async def _adrive(self, exchange: Exchange, attempts: Mapping[Tier, Callable[[Exchange], Awaitable[Any]]]) -> Any:
        """The async twin of :meth:`_drive`."""
        run = self._fallback_run(exchange)
        for tier in run:
            try:
                return await attempts[tier](exchange)
            except TierFailure as failure:
                # The next tier's check may read the quality gate, which may load or checksum the model: off the loop.
                await self._in_thread(self._fall_back, exchange, run, failure)
        raise AssertionError("unreachable: the fallback run raises once every tier has failed")

    def _serve(self, exchange: Exchange) -> Any:
        if (hit := self._cache_hit(exchange)) is not None:
            return self._answer_from_cache(exchange, hit)
        return self._drive(
            exchange, {"handoff": self._answer_handoff, "local": self._answer_locally, "cloud": self._answer_from_cloud}
        )

    def _answer_from_cloud(self, exchange: Exchange) -> Any:
        route = self._cloud_route(exchange)
        try:
            completion = self.cloud.complete(exchange.request, route, exchange.request.timeout_s)
        except APIError as err:
            raise self._cloud_failure(err) from err
        return self._accept_cloud_completion(exchange, route, completion)

    async def acomplete(self, request: ChatRequest) -> Any:
        exchange = await self._in_thread(self.plan, request)
        try:
            result = await self._aserve(exchange)
        except BaseException as err:
            exchange.error = err
            raise
        finally:
            await self._in_thread(self._write_log, exchange)  # SQLite (or a server) off the event loop
        return result

    async def _aserve(self, exchange: Exchange) -> Any:
        async def handoff(e: Exchange) -> Any:
            return self._answer_handoff(e)

        async def local(e: Exchange) -> Any:
            return await self._in_thread(self._answer_locally, e)

        if (hit := await self._in_thread(self._cache_hit, exchange)) is not None:
            return await self._in_thread(self._answer_from_cache, exchange, hit)  # the cache's disk, off the loop
        return await self._adrive(exchange, {"handoff": handoff, "local": local, "cloud": self._aanswer_from_cloud})

    async def _aanswer_from_cloud(self, exchange: Exchange) -> Any:
        route = self._cloud_route(exchange)
        try:
            completion = await self.cloud.acomplete(exchange.request, route, exchange.request.timeout_s)
        except APIError as err:
            raise self._cloud_failure(err) from err
        return self._accept_cloud_completion(exchange, route, completion)

    # -- streaming --------------------------------------------------------------------------------

    def _local_chunks(self, exchange: Exchange, pieces: Iterator[str]) -> Iterator[Any]:
        """Chunks for a local stream whose first piece is already known to exist."""
        yield exchange.chunk({"role": "assistant", "content": ""})
        finish = None
        try:
            for piece in pieces:
                exchange.text += piece
                yield exchange.chunk({"content": piece})
            finish = exchange.finish_reason or "stop"
        except LocalFailure as failure:
            # Text already reached the caller: end the stream cleanly and record why.
            exchange.error = InternalServerError(f"local stream cut short ({failure.kind}): {failure.detail}")
            finish = "length" if failure.kind == "timeout" else "stop"
            exchange.finish_reason = finish
        yield exchange.chunk({}, finish_reason=finish)
        if exchange.request.include_usage:
            yield exchange.chunk(None, usage=True)

    def _record_cloud_chunk(self, exchange: Exchange, route: Any, chunk: Any) -> Any:
        """Record one cloud chunk; return it for the caller, or None to drop it."""
        for choice in chunk.choices:
            if choice.delta and choice.delta.content:
                exchange.text += choice.delta.content
            if choice.finish_reason:
                exchange.finish_reason = choice.finish_reason
        if chunk.usage is not None:
            self._finish_cloud(exchange, route, chunk.usage)
            if all(_is_empty(c) for c in chunk.choices):
                chunk.choices = []  # OpenAI's usage chunk has no choices; litellm may add an empty one
            if not exchange.request.include_usage:
                if not chunk.choices:
                    return None
                chunk.usage = None
        exchange.model = chunk.model or exchange.model
        exchange.provider_id = exchange.provider_id or chunk.id
        chunk.id = exchange.request_id
        return attach(chunk, exchange.info(final=chunk.usage is not None or any(c.finish_reason for c in chunk.choices)))

    def stream(self, request: ChatRequest) -> Iterator[Any]:
        """A primed iterator of chunks; logging happens when it is exhausted or closed."""
        exchange = self.plan(request)
        try:
            source = self._primed_stream(exchange)
        except BaseException as err:
            exchange.error = err
            self._write_log(exchange)
            raise
        return self._logged(exchange, source)

    def _primed_stream(self, exchange: Exchange) -> Iterator[Any]:
        if (hit := self._cache_hit(exchange)) is not None:
            return self._open_cache_stream(exchange, hit)
        return self._drive(
            exchange, {"handoff": self._open_handoff_stream, "local": self._open_local_stream, "cloud": self._open_cloud_stream}
        )

    def _open_local_stream(self, exchange: Exchange) -> Iterator[Any]:
        """Generate up to the first piece (so a failure can still fall back), then stream the rest."""
        pieces = self._local_pieces(exchange)
        try:
            first = next(pieces, None)
        except LocalFailure as failure:
            raise self._local_failure(failure) from failure
        rest = pieces if first is None else itertools.chain([first], pieces)
        return self._local_chunks(exchange, rest)

    def _open_handoff_stream(self, exchange: Exchange) -> Iterator[Any]:
        self._answer_handoff(exchange)
        exchange.text = ""  # _local_chunks accumulates it again as it streams
        return self._local_chunks(exchange, iter([self.config.quality.handoff_message]))

    def _open_cloud_stream(self, exchange: Exchange) -> Iterator[Any]:
        route = self._cloud_route(exchange)
        try:
            chunks = self.cloud.stream(exchange.request, route, exchange.request.timeout_s)
            first_chunk = next(chunks)
        except APIError as err:
            raise self._cloud_failure(err) from err
        exchange.mark_first_token()
        recorded = (self._record_cloud_chunk(exchange, route, c) for c in itertools.chain([first_chunk], chunks))
        return (c for c in recorded if c is not None)

    def _logged(self, exchange: Exchange, source: Iterator[Any]) -> Iterator[Any]:
        """Pass chunks through; the closing chunks (finish reason, usage) only after the log row is
        written, so a caller that saw its stream end has a durable record (or spool entry) of it."""
        written = False
        held: list[Any] = []
        try:
            for chunk in source:
                if _is_closing(chunk):
                    held.append(chunk)
                    continue
                yield from held
                held.clear()
                yield chunk
            self._write_log(exchange)
            written = True
            yield from held
        except BaseException as err:
            exchange.error = exchange.error if written else err
            raise
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()
            if not written:
                self._write_log(exchange)

    async def astream(self, request: ChatRequest) -> AsyncIterator[Any]:
        """Async twin of :meth:`stream`: local tokens are stepped in a worker thread."""
        exchange = await self._in_thread(self.plan, request)
        try:
            source = await self._aprimed_stream(exchange)
        except BaseException as err:
            exchange.error = err
            await self._in_thread(self._write_log, exchange)
            raise
        return self._alogged(exchange, source)

    async def _aprimed_stream(self, exchange: Exchange) -> AsyncIterator[Any]:
        async def handoff(e: Exchange) -> AsyncIterator[Any]:
            return self._threaded(self._open_handoff_stream(e))

        async def local(e: Exchange) -> AsyncIterator[Any]:
            return self._threaded(await self._in_thread(self._open_local_stream, e))

        if (hit := await self._in_thread(self._cache_hit, exchange)) is not None:
            return self._threaded(await self._in_thread(self._open_cache_stream, exchange, hit))
        return await self._adrive(exchange, {"handoff": handoff, "local": local, "cloud": self._aopen_cloud_stream})

    async def _aopen_cloud_stream(self, exchange: Exchange) -> AsyncIterator[Any]:
        route = self._cloud_route(exchange)
        try:
            chunks = self.cloud.astream(exchange.request, route, exchange.request.timeout_s)
            first_chunk = await chunks.__anext__()
        except APIError as err:
            raise self._cloud_failure(err) from err
        exchange.mark_first_token()

        async def process() -> AsyncIterator[Any]:
            try:
                if (chunk := self._record_cloud_chunk(exchange, route, first_chunk)) is not None:
                    yield chunk
                async for raw in chunks:
                    if (chunk := self._record_cloud_chunk(exchange, route, raw)) is not None:
                        yield chunk
            finally:
                await chunks.aclose()

        return process()

    async def _alogged(self, exchange: Exchange, source: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """Async twin of :meth:`_logged`: closing chunks wait for the log write (off the event loop)."""
        written = False
        held: list[Any] = []
        try:
            async for chunk in source:
                if _is_closing(chunk):
                    held.append(chunk)
                    continue
                for earlier in held:
                    yield earlier
                held.clear()
                yield chunk
            await self._in_thread(self._write_log, exchange)
            written = True
            for chunk in held:
                yield chunk
        except BaseException as err:
            exchange.error = exchange.error if written else err
            raise
        finally:
            aclose = getattr(source, "aclose", None)
            if aclose is not None:
                await aclose()
            if not written:
                await self._in_thread(self._write_log, exchange)


def _is_closing(chunk: Any) -> bool:
    """A chunk that tells the caller the answer is complete: a finish reason, or the usage."""
    return getattr(chunk, "usage", None) is not None or any(c.finish_reason for c in getattr(chunk, "choices", None) or ())


def _is_empty(choice: Any) -> bool:
    delta = choice.delta
    return not choice.finish_reason and (delta is None or not (delta.content or delta.role or delta.tool_calls))
