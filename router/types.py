"""Routing metadata that rides along on every response.

Responses are the ``openai`` package's own ``ChatCompletion`` / ``ChatCompletionChunk``. Those
models accept extra fields, so the routing facts travel as ``response.router`` (a
:class:`RouteInfo`) without changing anything a client parses.
"""

from __future__ import annotations

from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict

__all__ = ["Reason", "RouteInfo", "Tier"]

Tier = Literal["local", "cloud", "handoff", "cache"]


class Reason(str, Enum):
    """Why a request went where it went; stored verbatim in the traffic log."""

    LOCAL_CATEGORY = "local_category"
    FORCED_LOCAL = "forced_local"
    PRIVATE_CATEGORY = "private_category"
    PII_MATCH = "pii_match"
    PINNED_CLOUD = "pinned_cloud"
    EDGE_CASE = "edge_case"
    CATEGORY_NOT_LOCAL = "category_not_local"
    NO_CLASSIFIER = "no_classifier"
    UNSUPPORTED = "unsupported_by_local"
    DIRECT_MODEL = "direct_model"
    REFUSED = "refused"
    LOCAL_QUALITY_UNPROVEN = "local_quality_unproven"
    LOCAL_QUALITY_BELOW_FLOOR = "local_quality_below_floor"
    LOCAL_QUALITY_DISTRUSTED = "local_quality_distrusted"
    PRIVATE_HANDOFF = "private_handoff"
    STICKY_CLOUD = "sticky_cloud"
    LOCAL_BUSY = "local_busy"


class RouteInfo(BaseModel):
    """Which tier answered and why, with the request's latency and cost."""

    model_config = ConfigDict(frozen=True)

    request_id: str
    tier: Tier
    backend: str
    model: str
    reason: Reason
    detail: str = ""
    category: str | None = None
    confidence: float | None = None
    classifier_version: str | None = None
    """The classifier registry version that chose ``category`` (None with a fixed ``classifier.path``)."""
    fallback_from: Tier | None = None
    fallback_reason: str | None = None
    degenerate: str | None = None
    """Why the local answer was cut short: a request that could not fall back, or a stream the guard stopped
    after its first text had gone out (the caller keeps the text before the problem)."""
    quality: str | None = None  # "unproven" / "below_floor": a private answer the gate could not vouch for
    adapter_version: str | None = None
    classify_ms: float | None = None
    latency_ms: float | None = None
    cost_usd: float | None = None
    cloud_cost_usd_estimate: float | None = None
    provider_response_id: str | None = None
    """The cloud provider's own id for its answer; ``id`` is always ``request_id``, the key of the log and feedback."""
    cached_from: str | None = None
    """On a cache hit (``tier == "cache"``): the request id whose answer was served."""
    cache_match: str | None = None
    """On a cache hit: ``"exact"``, or ``"semantic 0.95"`` with the cosine of the two questions."""

    def headers(self) -> dict[str, str]:
        """The routing facts as HTTP response headers (``router serve``, ``with_raw_response``)."""
        headers = {
            "x-request-id": self.request_id,
            "x-router-tier": self.tier,
            "x-router-reason": self.reason.value,
            "x-router-category": self.category or "",
            "x-router-backend": self.backend,
        }
        if self.cached_from is not None:
            # Not the source request's id: over HTTP that id would let one caller post feedback on another's answer.
            headers["x-router-cache"] = f"hit; match={self.cache_match or ''}"
        return headers
