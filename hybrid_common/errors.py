"""The one error tree of hybrid-router.

Every exception the library raises derives from :class:`RouterError`. Errors that an OpenAI
client expects are *also* instances of the ``openai`` package's own classes, so application
code written as ``except openai.BadRequestError`` keeps working after the import swap::

    RouterError
    ├── ConfigError                       invalid configuration (also ValueError)
    ├── MissingDependencyError            an optional package is absent (also ImportError)
    ├── NotFittedError                    classifier used before fit (also ValueError, AttributeError)
    ├── ArtifactError                     a saved artifact cannot be read or written
    │   └── ArtifactIntegrityError        checksum or format mismatch
    └── APIError                          (also openai.APIError)
        ├── APIConnectionError            (also openai.APIConnectionError)
        │   └── APITimeoutError           (also openai.APITimeoutError)
        └── APIStatusError                (also openai.APIStatusError)
            ├── BadRequestError       400 (also openai.BadRequestError)
            ├── AuthenticationError   401 (also openai.AuthenticationError)
            ├── PermissionDeniedError 403 (also openai.PermissionDeniedError)
            │   └── PrivacyError          a private query cannot be served on this machine
            ├── NotFoundError         404 (also openai.NotFoundError)
            ├── RateLimitError        429 (also openai.RateLimitError)
            └── InternalServerError   5xx (also openai.InternalServerError)
                └── ServiceUnavailableError  503, with retry_after_s
                    ├── OverloadedError          the local tier's queue is full
                    ├── CloudUnavailableError    a cloud route's circuit is open
                    └── LogUnavailableError      the traffic log's database is down or locked
"""

from __future__ import annotations

from typing import Any

import httpx
import openai

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "ArtifactError",
    "ArtifactIntegrityError",
    "AuthenticationError",
    "BadRequestError",
    "CloudUnavailableError",
    "ConfigError",
    "InternalServerError",
    "LogUnavailableError",
    "MissingDependencyError",
    "NotFittedError",
    "NotFoundError",
    "OverloadedError",
    "PermissionDeniedError",
    "PrivacyError",
    "RateLimitError",
    "RouterError",
    "ServiceUnavailableError",
    "from_openai_error",
]

# Errors raised in-process have no HTTP exchange behind them; the openai classes still require
# a request (and a response for status errors), so they get this stand-in.
_LOCAL_URL = "router://local/chat/completions"


def _local_request() -> httpx.Request:
    return httpx.Request("POST", _LOCAL_URL)


# The classes that need no openai import live in base_errors (configuration imports them from there).
from hybrid_common.base_errors import (  # noqa: E402 - after the helpers above, re-exported as part of the tree
    ArtifactError,
    ArtifactIntegrityError,
    ConfigError,
    MissingDependencyError,
    NotFittedError,
    RouterError,
)


class APIError(RouterError, openai.APIError):
    """An error on the chat-completions surface; also an ``openai.APIError``."""


class APIConnectionError(APIError, openai.APIConnectionError):
    """A backend could not be reached."""

    def __init__(self, message: str = "Connection error.", *, request: httpx.Request | None = None) -> None:
        openai.APIConnectionError.__init__(self, message=message, request=request or _local_request())


class APITimeoutError(APIConnectionError, openai.APITimeoutError):
    """A backend did not answer within the request's timeout."""

    def __init__(self, message: str = "Request timed out.", *, request: httpx.Request | None = None) -> None:
        APIConnectionError.__init__(self, message, request=request)


class APIStatusError(APIError, openai.APIStatusError):
    """An error with an HTTP-style status code, shaped like the OpenAI API's error body."""

    status_code: int = 500
    error_type: str = "api_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        response: httpx.Response | None = None,
        body: object | None = None,
    ) -> None:
        if response is None:
            response = httpx.Response(self.status_code, request=_local_request())
        if body is None:
            body = {"message": message, "type": self.error_type, "param": param, "code": code}
        openai.APIStatusError.__init__(self, message, response=response, body=body)


class BadRequestError(APIStatusError, openai.BadRequestError):
    """The request is malformed: empty messages, unknown role, wrong types, oversized input."""

    status_code = 400
    error_type = "invalid_request_error"


class AuthenticationError(APIStatusError, openai.AuthenticationError):
    """The cloud provider rejected the credentials."""

    status_code = 401
    error_type = "authentication_error"


class PermissionDeniedError(APIStatusError, openai.PermissionDeniedError):
    """The request is not allowed."""

    status_code = 403
    error_type = "permission_error"


class PrivacyError(PermissionDeniedError):
    """A private query would have to leave the machine to be served, so it is refused."""


class NotFoundError(APIStatusError, openai.NotFoundError):
    """The requested model or resource does not exist."""

    status_code = 404
    error_type = "not_found_error"


class RateLimitError(APIStatusError, openai.RateLimitError):
    """The cloud provider is rate limiting this client."""

    status_code = 429
    error_type = "rate_limit_error"


class InternalServerError(APIStatusError, openai.InternalServerError):
    """A backend failed while serving the request."""

    status_code = 500
    error_type = "server_error"


class ServiceUnavailableError(InternalServerError):
    """A tier cannot take the request now but will soon; ``retry_after_s`` says when to retry (HTTP 503)."""

    status_code = 503
    error_type = "overloaded_error"

    def __init__(self, message: str, *, retry_after_s: float = 1.0, code: str | None = "unavailable", **kwargs: Any) -> None:
        super().__init__(message, code=code, **kwargs)
        self.retry_after_s = retry_after_s


class OverloadedError(ServiceUnavailableError):
    """Every local worker is busy and its queue is full, and the request may not go to the cloud."""

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message, retry_after_s=retry_after_s, code="overloaded")


class CloudUnavailableError(ServiceUnavailableError):
    """A cloud route failed repeatedly, so its circuit is open: calls fail fast, without a request,
    until ``retry_after_s`` has passed and one trial call may test it again."""

    def __init__(self, message: str, *, route: str, retry_after_s: float) -> None:
        super().__init__(message, retry_after_s=retry_after_s, code="cloud_circuit_open")
        self.route = route



class LogUnavailableError(ServiceUnavailableError):
    """A read (or explicit write, e.g. feedback) needs the traffic log's database, which cannot be
    reached or written now; request records keep going to the spool meanwhile. HTTP 503."""

    def __init__(self, message: str, *, location: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message, retry_after_s=retry_after_s, code="log_unavailable")
        self.location = location


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    429: RateLimitError,
}


def from_openai_error(err: BaseException) -> APIError:
    """Translate an ``openai``-family exception (litellm raises those) into this tree.

    The status code and message survive; anything unrecognised becomes an
    :class:`InternalServerError` so callers only ever see one hierarchy.
    """
    if isinstance(err, APIError):
        return err
    if isinstance(err, openai.APITimeoutError):
        return APITimeoutError(str(err) or "Request timed out.")
    if isinstance(err, openai.APIConnectionError):
        return APIConnectionError(str(err) or "Connection error.")
    status = getattr(err, "status_code", None)
    message = getattr(err, "message", None) or str(err) or type(err).__name__
    cls: type[APIStatusError] = _BY_STATUS.get(status, InternalServerError) if isinstance(status, int) else InternalServerError
    kwargs: dict[str, Any] = {}
    if isinstance(status, int) and cls is InternalServerError and status >= 500:
        kwargs["response"] = httpx.Response(status, request=_local_request())
    return cls(message, **kwargs)
