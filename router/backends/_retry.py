"""When to retry a failed cloud call, and after how long: one rule for the sync and async drivers.

A provider that says ``Retry-After`` knows better than our back-off, so its wait is honoured
exactly; a wait longer than ``retry_after_max_s`` or than the request has left is not worth
sitting through, so the error is raised at once (the fallback machine may still answer locally).
Without the header the wait is exponential with jitter, so the retries of many clients spread out.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any

from hybrid_common.errors import APIConnectionError, APIError, InternalServerError, RateLimitError
from router.config import CloudConfig

__all__ = ["RETRYABLE", "backoff_s", "describe", "provider_headers", "retry_after_s", "retry_wait_s"]

RETRYABLE = (APIConnectionError, RateLimitError, InternalServerError)  # APITimeoutError is an APIConnectionError


def provider_headers(err: BaseException) -> Mapping[str, str]:
    """The provider's response headers carried by a litellm exception (empty when there are none).

    litellm rebuilds the exception's ``response`` without the provider's headers and keeps them in
    ``litellm_response_headers`` instead; the ``openai`` SDK's own errors carry them on ``response``.
    """
    for headers in (getattr(err, "litellm_response_headers", None), getattr(getattr(err, "response", None), "headers", None)):
        if headers:
            return {str(k).lower(): str(v) for k, v in dict(headers).items()}
    return {}


def retry_after_s(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds the provider asked to wait: ``retry-after-ms``, else ``Retry-After`` as seconds or an HTTP date."""
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff_s(attempt: int, config: CloudConfig) -> float:
    """Exponential back-off with jitter: retries of many clients do not align."""
    delay = min(config.backoff_max_s, config.backoff_initial_s * 2**attempt)
    return delay * (0.5 + random.random() / 2)


def retry_wait_s(error: APIError, raw: BaseException, attempt: int, config: CloudConfig, *, deadline: float) -> float | None:
    """Seconds to wait before the next attempt after ``error`` (``raw``: litellm's own exception),
    or None when retrying is pointless: not retryable, or a ``Retry-After`` past the cap or ``deadline``."""
    if not isinstance(error, RETRYABLE):
        return None
    hinted = retry_after_s(provider_headers(raw))
    if hinted is None:
        return backoff_s(attempt, config)
    if hinted > config.retry_after_max_s or time.monotonic() + hinted > deadline:
        return None
    return hinted


def describe(error: Any) -> str:
    """One line naming a failure, for logs and the circuit-open message."""
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:200]
