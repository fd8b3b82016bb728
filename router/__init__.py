"""hybrid-router: answer most chat queries with a small local model, pay a cloud LLM for the rest.

``from router import Client`` is a drop-in for ``openai.OpenAI``. The public names are loaded on
first access (PEP 562), so ``import router`` stays fast and imports no model runtime; the
``openai`` package itself loads with ``Client``, as it would in the application already.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hybrid_common.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "Client": "router.client",
    "AsyncClient": "router.client",
    "Stream": "router.client",
    "AsyncStream": "router.client",
    "RawResponse": "router.client",
    "RouterConfig": "router.config",
    "LocalConfig": "router.config",
    "CloudConfig": "router.config",
    "ClassifierConfig": "router.config",
    "RoutingConfig": "router.config",
    "ConversationConfig": "router.config",
    "TurnTopic": "router._conversation",
    "context_dependent": "router._conversation",
    "resolve_topics": "router._conversation",
    "FollowUpDetector": "router._followup_detector",
    "LogConfig": "router.config",
    "QualityConfig": "router.config",
    "ServerConfig": "router.config",
    "CacheConfig": "router.config",
    "ResponseCache": "router.cache",
    "SamplerStats": "router._sampling",
    "ModelRoute": "router.config",
    "load_config": "router.config",
    "RouteInfo": "router.types",
    "Reason": "router.types",
    "TrafficLog": "router.traffic_log",
    "LogRecord": "router.traffic_log",
    "RoutingPolicy": "router.policy",
    "OPENAI_CHAT_PARAMETERS": "router._request",
    "SDK_OPTIONS": "router._request",
    "render_prompt": "router.chat_template",
    "register_local_backend": "router.backends",
    "LocalBackend": "router.backends",
    "RouterError": "router.errors",
    "ConfigError": "router.errors",
    "MissingDependencyError": "router.errors",
    "NotFittedError": "router.errors",
    "ArtifactError": "router.errors",
    "ArtifactIntegrityError": "router.errors",
    "APIError": "router.errors",
    "APIConnectionError": "router.errors",
    "APITimeoutError": "router.errors",
    "APIStatusError": "router.errors",
    "BadRequestError": "router.errors",
    "AuthenticationError": "router.errors",
    "PermissionDeniedError": "router.errors",
    "PrivacyError": "router.errors",
    "NotFoundError": "router.errors",
    "RateLimitError": "router.errors",
    "InternalServerError": "router.errors",
    "ServiceUnavailableError": "router.errors",
    "OverloadedError": "router.errors",
    "CloudUnavailableError": "router.errors",
}

__all__, __getattr__, __dir__ = lazy_exports("router", _EXPORTS, globals(), extra=("__version__",))


if TYPE_CHECKING:  # static analysers see the real names
    from hybrid_common.chat import render_prompt
    from hybrid_common.errors import (
        APIConnectionError,
        APIError,
        APIStatusError,
        APITimeoutError,
        ArtifactError,
        ArtifactIntegrityError,
        AuthenticationError,
        BadRequestError,
        CloudUnavailableError,
        ConfigError,
        InternalServerError,
        MissingDependencyError,
        NotFittedError,
        NotFoundError,
        OverloadedError,
        PermissionDeniedError,
        PrivacyError,
        RateLimitError,
        RouterError,
        ServiceUnavailableError,
    )
    from router._conversation import TurnTopic, context_dependent, resolve_topics
    from router._followup_detector import FollowUpDetector
    from router._request import OPENAI_CHAT_PARAMETERS, SDK_OPTIONS
    from router.backends import LocalBackend, register_local_backend
    from router.client import AsyncClient, AsyncStream, Client, RawResponse, Stream
    from router.cache import ResponseCache
    from router.config import (
        CacheConfig,
        ClassifierConfig,
        CloudConfig,
        ConversationConfig,
        LocalConfig,
        LogConfig,
        ModelRoute,
        QualityConfig,
        RouterConfig,
        RoutingConfig,
        ServerConfig,
        load_config,
    )
    from router._sampling import SamplerStats
    from router.policy import RoutingPolicy
    from router.traffic_log import LogRecord, TrafficLog
    from router.types import Reason, RouteInfo
