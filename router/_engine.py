"""The routing engine: classify, decide, serve with fallback, log. Shared by the sync and async clients.

A request's way through it, each stage behind its own small interface:

* :meth:`Engine.plan` classifies every user turn and decides (:mod:`router.policy`, with the
  quality gate of :mod:`router._served_quality`), lets admission move a busy local request to the
  cloud (:mod:`router._local_path`), and probes the response cache (:mod:`router._caching`);
* a driver answers from the cache on a hit, else runs the fallback plan's tiers: the local tier
  through :class:`~router._local_path.LocalPath`, the cloud tier here;
* :meth:`Engine._write_log` writes the log row, then feeds admission, the sticky-cloud memory, the
  shadow and audit sampling (:mod:`router._shadowing`) and the cache.

Which tier is tried next after a failure is decided in one place, :mod:`router._fallback`; the two
drivers here (``_drive`` and its async twin ``_adrive``, given the plain or streaming attempt of
each tier) only run the tier it names, turn a tier's failure into a
:class:`~router._fallback.TierFailure`, and report it back.

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
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from hybrid_common.chat import user_turns
from hybrid_common.errors import APIError, InternalServerError, RouterError
from hybrid_common.pii import PiiMatcher
from router._admission import LocalAdmission
from router._canary_serving import CanaryRollout
from router._caching import CacheStage, CacheTier
from router._conversation import TurnTopic, resolve_topics
from router._exchange import Exchange, attach
from router._fallback import FallbackRun, TierFailure, fallback_plan
from router._feedback import IN_PROCESS_OPERATOR, FeedbackSender
from router._local_path import LocalPath
from router._request import ChatRequest
from router._sampling import ForegroundActivity, QualitySampler, SamplerStats
from router._served_quality import ServedQuality
from router._shadowing import Shadowing
from router._sticky import CloudAnswers
from router._turns import TurnClassifications
from router.backends import CloudBackend, LocalFailure, create_local_backend
from router.classifier_watch import ClassifierWatch, FollowedClassifier
from router.config import RouterConfig
from router.policy import Decision, RoutingPolicy
from router.quality import GateVerdict, QualityGate
from router.traffic_log import TrafficLog
from router.types import Reason, Tier

__all__ = ["Engine"]

logger = logging.getLogger("router")
_END = object()
T = TypeVar("T")
# A cloud answer given for one of these reasons makes the rest of its topic sticky (conversation.sticky_cloud).
_LOCAL_COULD_NOT = frozenset({
    Reason.EDGE_CASE, Reason.CATEGORY_NOT_LOCAL, Reason.UNSUPPORTED, Reason.LOCAL_QUALITY_UNPROVEN,
    Reason.LOCAL_QUALITY_BELOW_FLOOR, Reason.LOCAL_QUALITY_DISTRUSTED, Reason.STICKY_CLOUD,
})  # fmt: skip


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
        # Shadow and audit answers run in the background and yield to foreground work.
        self.activity = ForegroundActivity()
        # The request's stages other than routing and fallback, each behind its own interface.
        self.local_path = LocalPath(config, self.local, self.cloud, self.activity)
        self.served_quality = ServedQuality(config, self.local, self.log, self.cache_tier)
        self.served_quality.restore_live_samples()
        self.canary = CanaryRollout(config, self.local, self.served_quality.gate, self.log)
        self.local_path.choose_version = self.canary.choose
        self.served_quality.on_vote = self.canary.observe_vote
        self.cache_stage = CacheStage(config, self.cache_tier, self.served_quality)
        self.shadowing = Shadowing(
            config, self.activity, classifier=lambda: self.classifier, served_quality=self.served_quality,
            local_path=self.local_path, cloud=self.cloud, log=self.log, canary=self.canary,
        )  # fmt: skip
        self._turns = TurnClassifications()
        self._cloud_answers = CloudAnswers(config.conversation.sticky_memory)
        self._followups = self._load_followup_detector()
        self._followup_mismatch_warned = False
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

    def _load_followup_detector(self) -> Any:
        path = self.config.conversation.followup_detector
        if path is None:
            return None
        from router._followup_detector import FollowUpDetector

        return FollowUpDetector.load(path, threshold=self.config.conversation.followup_threshold)

    def _learned_followups(self, classifier: Any) -> Any:
        """The detector's verdict for this classifier's turns, or None (none configured, or trained on another encoder)."""
        detector = self._followups
        if detector is None:
            return None
        if not detector.fits(classifier):
            if not self._followup_mismatch_warned:
                self._followup_mismatch_warned = True
                logger.warning("conversation.followup_detector was trained on another encoder than the serving classifier's; "
                               "follow-ups are recognised by the word rule alone")  # fmt: skip
            return None
        return detector.is_follow_up

    def _load_classifier(self, path: Path) -> Any:
        from classifiers import EmbeddingClassifier

        classifier = EmbeddingClassifier.load(path, threads=self.config.classifier.threads)
        if self.config.classifier.threshold is not None:
            classifier.threshold_ = self.config.classifier.threshold
        return classifier

    # -- the stages, as clients, the server and tests reach them ----------------------------------

    @property
    def gate(self) -> QualityGate:
        return self.served_quality.gate

    @property
    def admission(self) -> LocalAdmission:
        return self.local_path.admission

    @property
    def sampler(self) -> QualitySampler | None:
        return self.shadowing.sampler

    def served_key(self) -> str:
        """Which model the local tier serves now, as the gate keys its evidence (see :class:`ServedQuality`)."""
        return self.served_quality.served_key()

    def gate_verdict(self, category: str) -> GateVerdict:
        return self.served_quality.verdict(category)

    def followup_gate_verdict(self, category: str) -> GateVerdict:
        return self.served_quality.followup_verdict(category)

    def feedback(
        self,
        request_id: str,
        *,
        score: float | None = None,
        accepted: bool | None = None,
        correction: str | None = None,
        sender: FeedbackSender = IN_PROCESS_OPERATOR,
    ) -> None:
        """Store feedback on a logged answer (see :meth:`ServedQuality.feedback`)."""
        self.served_quality.feedback(request_id, score=score, accepted=accepted, correction=correction, sender=sender)

    def sampler_stats(self) -> SamplerStats | None:
        return self.shadowing.stats()

    def close(self) -> None:
        self.shadowing.close()
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
                topic = self._topic_of_last_turn(turns, predictions, classifier)
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
        self.local_path.admit(exchange)
        # The cache keys name the route the policy decided, also when admission moved the request to the cloud.
        self.cache_stage.probe(exchange, planned=decision, embedding=embedding)
        return exchange

    def _topic_of_last_turn(self, turns: list[tuple[int, str]], predictions: list[Any], classifier: Any) -> TurnTopic:
        """The last user turn's category in its conversation (alone, with ``follow_ups = "last_message"``)."""
        conversation = self.config.conversation
        if conversation.follow_ups == "last_message":
            own = predictions[-1]
            return TurnTopic(turns[-1][0], own.category, float(own.confidence), own.category)
        learned = self._learned_followups(classifier) if len(turns) > 1 else None
        return resolve_topics(turns, predictions, switch_confidence=conversation.switch_confidence, learned=learned)[-1]

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
        """Write the log row, then feed what learns from served requests: admission, sticky topics, sampling, the cache."""
        self.local_path.observe_latency(exchange)
        if self.config.conversation.sticky_cloud:
            self._remember_cloud_answer(exchange)
        if self.log is not None:
            self.log.record(exchange.log_record())
            self.shadowing.offer(exchange)
        self.canary.observe_answer(exchange)
        self.cache_stage.remember(exchange)

    # -- fallback ---------------------------------------------------------------------------------

    def _fallback_run(self, exchange: Exchange) -> FallbackRun:
        plan = fallback_plan(
            exchange.decision,
            cloud_to_local=self.config.cloud.fallback_to_local,
            local_servable=not exchange.request.local_blockers,
            private_handoff=self.local_path.hands_off_private(exchange.decision),
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
        return TierFailure("local", f"{failure.kind}: {failure.detail}", self.local_path.caller_error(failure), failure)

    @staticmethod
    def _cloud_failure(err: APIError) -> TierFailure:
        return TierFailure("cloud", f"{type(err).__name__}: {err}", err)

    # -- local and hand-off tiers (generation itself: router._local_path) -------------------------

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
            exchange.text = "".join(self.local_path.pieces(exchange))
        except LocalFailure as failure:
            raise self._local_failure(failure) from failure
        return exchange.completion()

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
        if (hit := self.cache_stage.lookup(exchange)) is not None:
            return self.cache_stage.answer(exchange, hit)
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

        if (hit := await self._in_thread(self.cache_stage.lookup, exchange)) is not None:
            return await self._in_thread(self.cache_stage.answer, exchange, hit)  # the cache's disk, off the loop
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
            if failure.kind == "degenerate":  # the caller's last chunk says so too, not only the log
                exchange.degenerate = failure.detail
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
        if (hit := self.cache_stage.lookup(exchange)) is not None:
            return self._open_cache_stream(exchange, hit)
        return self._drive(
            exchange, {"handoff": self._open_handoff_stream, "local": self._open_local_stream, "cloud": self._open_cloud_stream}
        )

    def _open_local_stream(self, exchange: Exchange) -> Iterator[Any]:
        """Generate up to the first piece (so a failure can still fall back), then stream the rest."""
        pieces = self.local_path.pieces(exchange)
        try:
            first = next(pieces, None)
        except LocalFailure as failure:
            raise self._local_failure(failure) from failure
        rest = pieces if first is None else itertools.chain([first], pieces)
        return self._local_chunks(exchange, rest)

    def _open_cache_stream(self, exchange: Exchange, hit: Any) -> Iterator[Any]:
        """A cached answer asked for with ``stream=True``: served as a stream of a few words per chunk."""
        return self._local_chunks(exchange, self.cache_stage.stream_pieces(exchange, hit))

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
            yield from self._finalised(exchange, held)
        except BaseException as err:
            exchange.error = exchange.error if written else err
            raise
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()
            if not written:
                self._write_log(exchange)

    @staticmethod
    def _finalised(exchange: Exchange, closing: list[Any]) -> list[Any]:
        """The closing chunks with the exchange's final routing info: a cloud usage chunk the caller
        did not ask for is dropped, and its cost must still reach the finish chunk's ``router``."""
        return [attach(chunk, exchange.info(final=True)) for chunk in closing]

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

        if (hit := await self._in_thread(self.cache_stage.lookup, exchange)) is not None:
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
            for chunk in self._finalised(exchange, held):
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
