"""Errors as OpenAI's HTTP API shapes them: ``{"error": {"message", "type", "param", "code"}}``.

An application that talks to OpenAI over HTTP (any language's SDK) already handles these
status codes and this body; the server must not invent its own. Internal failures say only
that they happened (and the request id to find them in the log), never a traceback or a key.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["error_body", "error_for_exception"]

logger = logging.getLogger("router.server")

_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
}


def error_body(status: int, message: str, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": _TYPES.get(status, "server_error"), "param": param, "code": code}}


def error_for_exception(err: BaseException) -> tuple[int, dict[str, Any]]:
    """Status and body for an exception raised while answering."""
    import openai

    from hybrid_common.errors import ConfigError, LogUnavailableError, RouterError

    if isinstance(err, LogUnavailableError):  # where the log lives and why it failed stay in the server log
        logger.warning("traffic log unavailable: %s", err)
        return 503, error_body(503, "the traffic log is unavailable; retry shortly", code="log_unavailable")
    if isinstance(err, openai.APITimeoutError):
        return 504, error_body(504, f"the request timed out: {err}", code="timeout")
    if isinstance(err, openai.APIConnectionError):
        return 502, error_body(502, f"no tier could be reached: {err}", code="upstream_unavailable")
    if isinstance(err, openai.APIStatusError):
        status = int(getattr(err, "status_code", 500) or 500)
        body = getattr(err, "body", None)
        message = getattr(err, "message", None) or str(err)
        param = body.get("param") if isinstance(body, dict) else getattr(err, "param", None)
        code = body.get("code") if isinstance(body, dict) else getattr(err, "code", None)
        if status >= 500:
            logger.warning("upstream error %s: %s", status, message)
        return status, error_body(status, message, param=param, code=code)
    if isinstance(err, ConfigError):
        logger.error("configuration error while answering: %s", err)
        return 500, error_body(500, f"the router is misconfigured: {err}", code="config_error")
    if isinstance(err, RouterError):
        logger.error("router error while answering: %s", err)
        return 500, error_body(500, f"{type(err).__name__}: {err}")
    logger.exception("unexpected error while answering", exc_info=err)
    return 500, error_body(500, "internal error; the server log has the details", code="internal_error")
