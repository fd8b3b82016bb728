"""The cache tier's rules: which requests may be answered from the cache, which answers may be stored.

Consulted after the routing decision and before any model runs (:class:`~router._engine.Engine`
calls :meth:`CacheTier.lookup` first in every driver, and :meth:`CacheTier.remember` where it
writes the log row, so sync, async and streaming share these rules).

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
import time
from dataclasses import dataclass
from typing import Any

from router._cache_keys import partition_key, request_key, scope_of
from router._exchange import Exchange
from router.cache import CachedAnswer, CacheHit, ResponseCache
from router.config import CacheConfig

__all__ = ["CacheProbe", "CacheTier"]

logger = logging.getLogger("router.cache")


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
