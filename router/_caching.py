"""The cache tier's rules: which requests may be answered from the cache, which answers may be stored.

Consulted after the routing decision and before any model runs: :class:`CacheStage` is the cache's
step in every request (probed when the request is planned, looked up first in every driver,
offered the answer where the log row is written), so sync, async and streaming share these rules.

Never cached: a request that opted out, private categories and PII matches (unless
``cache.cache_private``), requests the answer to which is more than text (tools, ``n > 1``,
JSON modes: anything in ``local_blockers``), answers that failed, were cut short as degenerate
or came from a local model the quality gate does not trust, and the private hand-off message.

An answer is stored under the route that produced it, not the one the probe expected: after a
fallback (local to cloud or back) or an adapter swap during the request, its key and tag name the
tier and model that answered, so invalidating that model's tag evicts it. An answer whose route
cannot be told is not stored.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from router._cache_keys import partition_key, request_key, scope_of
from router._exchange import Exchange
from router.cache import CachedAnswer, CacheHit, ResponseCache
from router.config import CacheConfig, RouterConfig
from router.policy import Decision

if TYPE_CHECKING:
    from router._served_quality import ServedQuality

__all__ = ["CacheProbe", "CacheStage", "CacheTier"]

logger = logging.getLogger("router.cache")
_STREAM_PIECE = re.compile(r"\s*\S+(?:\s+\S+){0,3}\s*")  # a cached answer streams a few words per chunk


@dataclass(frozen=True)
class CacheProbe:
    """A request the cache may answer, with its keys and the settings of its category."""

    key: str
    partition: str | None  # None: no semantic lookup for this request
    route: str
    similarity: float
    ttl_s: float


class CacheTier:
    """The engine's view of the response cache."""

    def __init__(self, config: CacheConfig) -> None:
        self.config = config
        self.cache = ResponseCache(
            config.path, size_limit_bytes=int(config.size_limit_mb * 1024 * 1024), max_index_entries=config.max_index_entries
        )

    def probe(self, exchange: Exchange, *, route: str) -> CacheProbe | None:
        """The keys of a cacheable request, or None (and why, in the debug log)."""
        request, decision = exchange.request, exchange.decision
        enabled, similarity, ttl_s, deterministic_only = self.config.for_category(exchange.category)
        why = None
        if not enabled:
            why = "off for this category"
        elif not request.cache:
            why = "the request opted out"
        elif decision.private and not self.config.cache_private:
            why = "private"
        elif request.local_blockers:
            why = f"answer is more than text ({', '.join(request.local_blockers)})"
        elif deterministic_only and request.params.temperature != 0:
            why = "category caches deterministic requests only"
        elif decision.tier == "handoff":
            why = "hand-off"
        if why is not None:
            logger.debug("request %s not cached: %s", exchange.request_id, why)
            return None
        key, partition = self._keys(exchange, route)
        return CacheProbe(key, partition, route, similarity, ttl_s)

    def _keys(self, exchange: Exchange, route: str) -> tuple[str, str | None]:
        """The exact key and the semantic partition (None: no semantic entry) of ``exchange`` answered by ``route``."""
        request = exchange.request
        scope = scope_of(request, self.config.scope)
        partition = None
        single_turn = sum(1 for m in request.messages if m.get("role") == "user") == 1
        semantic = self.config.mode != "exact" and exchange.embedding is not None and exchange.category is not None
        if semantic and (single_turn or self.config.semantic_multi_turn):  # an edge case has no category to stay within
            partition = partition_key(request, scope=scope, route=route, category=exchange.category)
        return request_key(request, scope=scope, route=route), partition

    @staticmethod
    def served_route(exchange: Exchange, route: str) -> str | None:
        """The route that produced ``exchange``'s answer, from ``route`` (as the engine names what
        answered) and what the exchange records: the registry version a local answer came from
        (a swap can land while a request waits), or None when ``route`` names another tier than the
        one that answered (e.g. the probe's route after a fallback): then nobody knows the route."""
        if exchange.tier is None or not route.startswith(f"{exchange.tier}:"):
            return None
        if exchange.tier == "local" and route.startswith("local:registry:") and exchange.adapter_version:
            return f"local:registry:{exchange.adapter_version}"
        return route

    def lookup(self, exchange: Exchange, probe: CacheProbe) -> CacheHit | None:
        if self.config.mode != "semantic":
            hit = self.cache.get(probe.key)
            if hit is not None:
                return hit
        if probe.partition is not None and exchange.embedding is not None:
            return self.cache.similar(probe.partition, exchange.embedding, threshold=probe.similarity, question=exchange.request.query)
        return None

    def serve(self, exchange: Exchange, hit: CacheHit) -> None:
        """Fill ``exchange`` with the cached answer: free, attributed to the request that paid for it."""
        answer = hit.answer
        exchange.serve_with("cache", "cache", answer.model, answer.adapter_version)
        exchange.text = answer.text
        exchange.finish_reason = answer.finish_reason
        exchange.prompt_tokens, exchange.completion_tokens = answer.prompt_tokens, answer.completion_tokens
        exchange.cost_usd = 0.0
        exchange.cloud_cost_usd_estimate = answer.cloud_cost_usd_estimate
        exchange.cached_from = answer.request_id
        exchange.cache_match = hit.label
        exchange.cache_hit_key = hit.key
        exchange.mark_first_token()

    def remember(self, exchange: Exchange, *, trusted_local: bool, route: str | None = None) -> None:
        """Store a finished exchange's answer if the rules allow it (called once the log row is written).

        ``route`` names what answered, computed after serving (the tier and model a fallback moved
        to); without it the probe's route is assumed, so an answer from another tier is not stored.
        """
        probe = exchange.cache_probe
        if probe is None:
            return
        if exchange.tier == "cache":
            if exchange.error is None and exchange.cache_hit_key:
                self.cache.note_served(exchange.request_id, exchange.cache_hit_key, ttl_s=probe.ttl_s, tag=probe.route)
            return
        why = None
        if exchange.error is not None or not exchange.text.strip():
            why = "no complete answer"
        elif exchange.tier not in ("cloud", "local"):
            why = f"{exchange.tier} answer"
        elif exchange.degenerate or exchange.finish_reason not in ("stop", "length"):
            why = "answer cut short"
        elif exchange.tier == "local" and (not trusted_local or exchange.decision.quality is not None):
            why = "local model not trusted by the quality gate"
        served = self.served_route(exchange, route if route is not None else probe.route)
        if why is None and served is None:
            why = f"answered by the {exchange.tier} tier, whose route is unknown here"
        if why is not None or served is None:
            logger.debug("answer %s not cached: %s", exchange.request_id, why)
            return
        answer = CachedAnswer(
            text=exchange.text, finish_reason=exchange.finish_reason or "stop", tier=exchange.tier or "",
            model=exchange.model or "", request_id=exchange.request_id, category=exchange.category,
            question=exchange.request.query, adapter_version=exchange.adapter_version,
            prompt_tokens=exchange.prompt_tokens or 0, completion_tokens=exchange.completion_tokens or 0,
            cloud_cost_usd_estimate=exchange.cloud_cost_usd_estimate, created=time.time(),
        )  # fmt: skip
        key, partition = (probe.key, probe.partition) if served == probe.route else self._keys(exchange, served)
        self.cache.put(key, answer, ttl_s=probe.ttl_s, tag=served, partition=partition, embedding=exchange.embedding)

    def forget(self, request_id: str) -> bool:
        return self.cache.forget(request_id)

    def invalidate(self, route: str) -> int:
        removed = self.cache.invalidate(route)
        if removed:
            logger.info("response cache: %d entries of %s invalidated", removed, route)
        return removed

    def close(self) -> None:
        self.cache.close()

    @staticmethod
    def embedding_of(prediction: Any) -> Any:
        return getattr(prediction, "embedding", None)


class CacheStage:
    """The response cache as a step of each request: probed when the request is planned, answering
    on a hit, offered what was served. Every step does nothing when no category caches (``tier`` None)."""

    def __init__(self, config: RouterConfig, tier: CacheTier | None, served_quality: ServedQuality) -> None:
        self.config = config
        self.tier = tier
        self.served_quality = served_quality  # names the local model (the route) and says whether it is trusted

    def probe(self, exchange: Exchange, *, planned: Decision, embedding: Any) -> None:
        """Note on ``exchange`` the cache keys of a cacheable request, under the route of the ``planned`` decision."""
        if self.tier is not None:
            exchange.embedding = embedding
            exchange.cache_probe = self.tier.probe(exchange, route=self.route(planned))

    def lookup(self, exchange: Exchange) -> CacheHit | None:
        if self.tier is None or exchange.cache_probe is None:
            return None
        return self.tier.lookup(exchange, exchange.cache_probe)

    def answer(self, exchange: Exchange, hit: CacheHit) -> Any:
        assert self.tier is not None
        self.tier.serve(exchange, hit)
        return exchange.completion()

    def stream_pieces(self, exchange: Exchange, hit: CacheHit) -> Iterator[str]:
        """A cached answer asked for with ``stream=True``: served as pieces of a few words each."""
        assert self.tier is not None
        self.tier.serve(exchange, hit)
        text, exchange.text = exchange.text, ""  # the stream accumulates it again as it goes
        return iter(_STREAM_PIECE.findall(text) or [text])

    def remember(self, exchange: Exchange) -> None:
        """Offer a finished exchange's answer to the cache, under the route that answered it."""
        if self.tier is not None and exchange.cache_probe is not None:
            trusted = exchange.tier == "local" and self._trusted(exchange.category)
            self.tier.remember(exchange, trusted_local=trusted, route=self.route(exchange.decision))

    def route(self, decision: Decision) -> str:
        """What would answer: the local model version, or the cloud route (a change of either changes the key)."""
        if decision.tier == "local":
            return f"local:{self.served_quality.served_key()}"
        route = self.config.route_for(decision.cloud_model)
        return f"cloud:{route.litellm_model}@{route.api_base or self.config.cloud.api_base or ''}"

    def _trusted(self, category: str | None) -> bool:
        """Local answers are cached only from a model the quality gate has evidence for (or an override trusts)."""
        return category is not None and self.config.quality.enabled and self.served_quality.verdict(category).open
