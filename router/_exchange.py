"""One request's bookkeeping: timing, text, usage, routing facts; turned into a response and a log row.

Sync and async paths, streaming or not, all fill an :class:`Exchange`, so what the client returns
and what the traffic log stores cannot drift apart.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from router._request import ChatRequest
from router.policy import Decision
from router.traffic_log import LogRecord
from router.types import RouteInfo, Tier

__all__ = ["Exchange", "new_request_id"]


def new_request_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


@dataclass
class Exchange:
    """Everything known about one request while it is being served."""

    request: ChatRequest
    decision: Decision
    category: str | None
    confidence: float | None
    classify_ms: float | None
    classifier_version: str | None = None  # the classifier registry version that classified it
    request_id: str = field(default_factory=new_request_id)
    started: float = field(default_factory=time.perf_counter)
    created: int = field(default_factory=lambda: int(time.time()))
    tier: Tier | None = None
    backend: str | None = None
    model: str | None = None
    adapter_version: str | None = None
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    ttft_ms: float | None = None
    cost_usd: float | None = None
    cloud_cost_usd_estimate: float | None = None
    fallback_from: Tier | None = None
    fallback_reason: str | None = None
    degenerate: str | None = None
    error: BaseException | None = None
    rejected_local_text: str | None = None  # a local answer the guard rejected before this one was served
    provider_id: str | None = None  # the cloud's own response id; responses carry request_id on every tier
    embedding: Any = None  # the query's embedding from classification (semantic cache lookups)
    cache_probe: Any = None  # the cache keys of a cacheable request (router._caching.CacheProbe)
    cached_from: str | None = None  # a cache hit: the request id whose answer was served
    cache_match: str | None = None  # a cache hit: "exact" or "semantic <cosine>"
    cache_hit_key: str | None = None
    topic_start: int | None = None  # a later turn: the message index that opened its topic (local.history = "topic")
    pruned: str | None = None  # what was left out of the prompt to fit the local window (hybrid_common.pruning)
    local_budget_s: float | None = None  # a routed request admitted to the local tier: the latency budget it was admitted under
    local_finish_by: float | None = None  # ... and the time.monotonic() by which its answer should be done
    local_predicted_s: float | None = None  # ... and what admission predicted its local answer would take
    admitted_after_s: float | None = None  # ... and how long after the request started it was admitted
    admission_pending: bool = False  # admitted, not yet handed to the backend (counted by later predictions)
    canary_arm: str | None = None  # a canary runs and this request is counted in it: "canary" or "serving" (router.canary)
    canary_version: str | None = None  # ... and the version its arm asked to answer

    def serve_with(self, tier: Tier, backend: str, model: str, adapter_version: str | None = None) -> None:
        self.tier, self.backend, self.model, self.adapter_version = tier, backend, model, adapter_version

    def fall_back(self, failed: Tier, to: Tier, reason: str) -> None:
        """Record that tier ``failed`` could not answer (``reason``) and ``to`` serves instead."""
        self.fallback_from = failed
        self.fallback_reason = reason
        self.decision = replace(self.decision, tier=to)

    def mark_first_token(self) -> None:
        if self.ttft_ms is None:
            self.ttft_ms = (time.perf_counter() - self.started) * 1000

    @property
    def detail(self) -> str:
        """The decision's detail, and what the local prompt left out while the local tier is the one serving
        (a cloud fallback or a hand-off answered the whole conversation)."""
        local = self.tier == "local"
        canary = f"canary {self.canary_version}" if local and self.canary_arm == "canary" else None
        return "; ".join(filter(None, [self.decision.detail, self.pruned if local else None, canary]))

    @property
    def latency_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000

    def info(self, *, final: bool = True) -> RouteInfo:
        """Routing metadata for the response (latency and cost only once final)."""
        return RouteInfo(
            request_id=self.request_id,
            tier=self.tier or self.decision.tier,
            backend=self.backend or "",
            model=self.model or "",
            reason=self.decision.reason,
            detail=self.detail,
            category=self.category,
            confidence=self.confidence,
            classifier_version=self.classifier_version,
            fallback_from=self.fallback_from,
            fallback_reason=self.fallback_reason,
            degenerate=self.degenerate,
            quality=self.decision.quality,
            adapter_version=self.adapter_version,
            classify_ms=self.classify_ms,
            latency_ms=self.latency_ms if final else None,
            cost_usd=self.cost_usd if final else None,
            cloud_cost_usd_estimate=self.cloud_cost_usd_estimate if final else None,
            provider_response_id=self.provider_id,
            cached_from=self.cached_from,
            cache_match=self.cache_match,
        )

    def log_record(self) -> LogRecord:
        p = self.request.params
        params = {
            "max_tokens": p.max_tokens,
            "temperature": p.temperature,
            "top_p": p.top_p,
            "stop": list(p.stop) or None,
            "seed": p.seed,
            "n": self.request.n,
        }
        error = self.error
        return LogRecord(
            id=self.request_id,
            requested_model=self.request.model,
            reason=self.decision.reason.value,
            stream=self.request.stream,
            tier=self.tier,
            backend=self.backend,
            served_model=self.model,
            category=self.category,
            confidence=self.confidence,
            detail="; ".join(
                filter(None, [self.detail, self.degenerate and f"degenerate: {self.degenerate}",
                              self.cache_match and f"cache hit ({self.cache_match})"])
            ) or None,  # fmt: skip
            fallback_from=self.fallback_from,
            fallback_reason=self.fallback_reason,
            adapter_version=self.adapter_version,
            classifier_version=self.classifier_version,
            messages=self.request.messages,
            params={k: v for k, v in params.items() if v is not None},
            response=self.text if error is None else (self.text or None),
            finish_reason=self.finish_reason,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            latency_ms=self.latency_ms,
            ttft_ms=self.ttft_ms,
            classify_ms=self.classify_ms,
            cost_usd=self.cost_usd,
            cloud_cost_usd_estimate=self.cloud_cost_usd_estimate,
            error_type=type(error).__name__ if error is not None else None,
            error_message=str(error) if error is not None else None,
            user=self.request.user,
            metadata=self.request.metadata,
            cached_from=self.cached_from,
            caller=self.request.caller,
            topic_start=self.topic_start,
        )

    # -- openai objects -------------------------------------------------------------------------

    def usage(self) -> Any:
        from openai.types import CompletionUsage

        prompt, completion = self.prompt_tokens or 0, self.completion_tokens or 0
        return CompletionUsage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)

    def completion(self) -> Any:
        """A ``ChatCompletion`` for an answer generated here (the local tier)."""
        from openai.types.chat import ChatCompletion, ChatCompletionMessage
        from openai.types.chat.chat_completion import Choice

        completion = ChatCompletion(
            id=self.request_id,
            object="chat.completion",
            created=self.created,
            model=self.model or "",
            choices=[
                Choice(
                    index=0,
                    finish_reason=self.finish_reason or "stop",  # type: ignore[arg-type]
                    message=ChatCompletionMessage(role="assistant", content=self.text),
                )
            ],
            usage=self.usage(),
        )
        return attach(completion, self.info())

    def chunk(self, delta: dict[str, Any] | None, *, finish_reason: str | None = None, usage: bool = False) -> Any:
        """A ``ChatCompletionChunk`` for a locally generated stream."""
        from openai.types.chat import ChatCompletionChunk
        from openai.types.chat.chat_completion_chunk import Choice, ChoiceDelta

        choices = [] if delta is None else [Choice(index=0, delta=ChoiceDelta(**delta), finish_reason=finish_reason)]  # type: ignore[arg-type]
        chunk = ChatCompletionChunk(
            id=self.request_id,
            object="chat.completion.chunk",
            created=self.created,
            model=self.model or "",
            choices=choices,
            usage=self.usage() if usage else None,
        )
        return attach(chunk, self.info(final=finish_reason is not None or usage))


def attach(response: Any, info: RouteInfo) -> Any:
    """Put routing metadata on an openai response object as the extra field ``router``."""
    response.router = info
    return response
