"""The cloud tier: any litellm model string, with retries, back-off, timeouts, a circuit breaker and pricing.

Every attempt first asks its route's circuit breaker (:mod:`router.backends.circuit`); when and how
long to wait between attempts is decided in :mod:`router.backends._retry` (``Retry-After`` first).

``import litellm`` takes seconds. Paying that inside the first cloud request is a latency spike the
user sees, so :meth:`CloudBackend.preimport` starts it in a background thread when the client
starts (``cloud.preimport``), while the local model and classifier load.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

from hybrid_common.errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    CloudUnavailableError,
    MissingDependencyError,
    from_openai_error,
)
from router._request import OPENAI_CHAT_PARAMETERS, ChatRequest
from router.backends._retry import RETRYABLE, describe, retry_wait_s
from router.backends.circuit import CircuitBreaker, CircuitBreakers
from router.config import CloudConfig, ModelRoute

__all__ = ["CloudBackend"]

T = TypeVar("T")
_import_lock = threading.Lock()
_litellm: Any = None  # set once the import has fully finished


def _import_litellm() -> Any:
    global _litellm
    if _litellm is not None:
        return _litellm
    with _import_lock:
        # Prices from the copy inside the package: litellm otherwise fetches its price map at import.
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        try:
            import litellm
        except ImportError as err:
            raise MissingDependencyError("litellm", purpose="the cloud tier") from err
        litellm.telemetry = False
        litellm.suppress_debug_info = True
        _quiet_litellm_info()
        _litellm = litellm
        return litellm


_LITELLM_LOGGERS = ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy")


def _quiet_litellm_info() -> None:
    """litellm's loggers carry no level of their own, so under an application (or ``router serve``)
    that logs at INFO they write two lines for every cloud call, through two handlers: 2,474 lines in
    one ``make bench-load`` run, formatted on the request threads while a burst is being served.
    Raise them to WARNING unless the user chose: ``LITELLM_LOG`` set, or a level set on them."""
    if os.environ.get("LITELLM_LOG"):
        return
    for name in _LITELLM_LOGGERS:
        chosen = logging.getLogger(name)
        if chosen.level == logging.NOTSET:
            chosen.setLevel(logging.WARNING)


class CloudBackend:
    """Calls the cloud through litellm and returns ``openai`` types."""

    name = "litellm"

    def __init__(self, config: CloudConfig) -> None:
        self._config = config
        self._preimport: threading.Thread | None = None
        self._breakers = CircuitBreakers(config.breaker_failures, config.breaker_reset_s)

    def preimport(self) -> None:
        """Import litellm in a daemon thread so the first cloud request does not pay for it."""
        if self._preimport is None:
            self._preimport = threading.Thread(target=_import_litellm, name="router-litellm-import", daemon=True)
            self._preimport.start()

    @property
    def litellm(self) -> Any:
        return _import_litellm()

    def _streaming_litellm(self) -> Any:
        """litellm, with its per-chunk logging as configured (``litellm_chunk_logging``; a process-wide switch)."""
        litellm = _import_litellm()
        litellm.disable_streaming_logging = not self._config.litellm_chunk_logging
        return litellm

    def _kwargs(self, request: ChatRequest, route: ModelRoute, stream: bool, timeout_s: float | None) -> dict[str, Any]:
        p = request.params
        stray = set(request.cloud_extra) - OPENAI_CHAT_PARAMETERS
        if stray:  # build_request lets none through; a request object built elsewhere must not either
            raise BadRequestError(f"Unrecognized request argument supplied: {min(stray)}.", param=min(stray), code="unknown_parameter")
        # The request's OpenAI parameters first: everything after them is the route's configuration.
        kwargs: dict[str, Any] = dict(request.cloud_extra)
        kwargs.update({
            "model": route.litellm_model,
            "messages": request.messages,
            "stream": stream,
            # A caller's own timeout may only shorten the configured one.
            "timeout": min(timeout_s, self._config.timeout_s) if timeout_s else self._config.timeout_s,
            "num_retries": 0,  # retries are ours, so back-off and logging see every attempt
            "drop_params": self._config.drop_unsupported_params,
        })  # fmt: skip
        if request.provider_extra:
            # Route-allowed provider options travel in the provider's request body, where litellm
            # forwards them without acting on them.
            kwargs["extra_body"] = dict(request.provider_extra)
        optional = {
            "max_tokens": p.max_tokens,
            "temperature": p.temperature,
            "top_p": p.top_p,
            "stop": list(p.stop) or None,
            "seed": p.seed,
            "frequency_penalty": p.frequency_penalty,
            "presence_penalty": p.presence_penalty,
            "n": request.n if request.n != 1 else None,
            "user": request.user,
            "api_base": route.api_base or self._config.api_base,
            "api_key": route.resolved_api_key()
            or (self._config.api_key.get_secret_value() if self._config.api_key else None),
        }
        kwargs.update({k: v for k, v in optional.items() if v is not None})
        if stream:
            kwargs["stream_options"] = {"include_usage": True}  # usage feeds cost and the log
        tools = kwargs.get("tools") or ()
        if tools and not any(isinstance(t, dict) and t.get("type") == "mcp" for t in tools):
            # litellm 1.106 imports its MCP gateway, and with it the optional `mcp` package, for any
            # request with tools; plain function tools never need it (without this they fail with
            # "No module named 'mcp'").
            kwargs["_skip_mcp_handler"] = True
        return kwargs

    def _check_credentials(self, route: ModelRoute, kwargs: dict[str, Any]) -> None:
        """Report a missing API key as the 401 it is, before litellm turns it into a generic 500."""
        if kwargs.get("api_key") or kwargs.get("api_base"):
            return  # an explicit key, or a self-hosted endpoint that may need none
        try:
            missing = self.litellm.validate_environment(route.litellm_model).get("missing_keys") or []
        except Exception:  # an unknown provider: let litellm itself say what is wrong
            return
        if missing:
            raise AuthenticationError(
                f"No API key for {route.litellm_model!r}: set {' or '.join(missing)} in the environment, or "
                "api_key / api_key_env for this model in [models] (Client(api_key=...) sets it for every route).",
                code="missing_api_key",
            )

    def route_key(self, route: ModelRoute) -> str:
        """The circuit breaker's key: litellm model and endpoint (``model@api_base``)."""
        base = route.api_base or self._config.api_base
        return f"{route.litellm_model}@{base}" if base else route.litellm_model

    def breaker_states(self) -> dict[str, str]:
        """Route → ``closed`` / ``open`` / ``half_open`` for every route that has failed, for metrics."""
        return dict(self._breakers.states())

    def _retries(self, request: ChatRequest) -> int:
        return self._config.max_retries if request.max_retries is None else request.max_retries

    def _admit(self, key: str, cause: BaseException | None) -> CircuitBreaker | None:
        """The route's breaker if it lets this attempt through; else fail fast, chained to ``cause``."""
        breaker = self._breakers.get(key)
        if breaker is None or breaker.allow():
            return breaker
        wait = breaker.retry_in_s()
        when = f"the next trial call goes through in {wait:.1f} s" if wait > 0 else "a trial call is testing it now"
        raise CloudUnavailableError(
            f"Cloud route {key!r} is unavailable: its circuit is open after repeated failures (last: "
            f"{breaker.last_failure}), so this call failed fast without reaching it; {when}.",
            route=key,
            retry_after_s=wait or 1.0,
        ) from cause

    def _failed(
        self, key: str, breaker: CircuitBreaker | None, err: Exception, attempt: int, retries: int, deadline: float
    ) -> tuple[APIError, float | None]:
        """Translate ``err``, tell the breaker, and say how long to wait before retrying (None: raise now)."""
        error = from_openai_error(err)
        if error is not err:
            error.__cause__ = err  # kept when a later fast failure is chained to this one
        if isinstance(error, RETRYABLE):
            (breaker or self._breakers.for_failure(key)).failed(describe(error))
        elif breaker is not None:
            breaker.succeeded()  # a 400 or 401 is an answer: the route is up
        if attempt == retries:
            return error, None
        return error, retry_wait_s(error, err, attempt, self._config, deadline=deadline)

    def _with_retries(
        self, call: Callable[[], T], request: ChatRequest, route: ModelRoute, timeout_s: float | None
    ) -> T:
        key, retries = self.route_key(route), self._retries(request)
        deadline = time.monotonic() + (timeout_s or self._config.timeout_s)
        cause: BaseException | None = None
        for attempt in range(retries + 1):
            breaker = self._admit(key, cause)
            try:
                result = call()
            except Exception as err:  # litellm raises openai-family errors; translate all of them
                error, wait = self._failed(key, breaker, err, attempt, retries, deadline)
                if wait is None:
                    raise error from err
                cause = error
                time.sleep(wait)
            except BaseException:
                if breaker is not None:
                    breaker.release()
                raise
            else:
                if breaker is not None:
                    breaker.succeeded()
                return result
        raise AssertionError("unreachable")  # pragma: no cover

    async def _with_retries_async(
        self, call: Callable[[], Any], request: ChatRequest, route: ModelRoute, timeout_s: float | None
    ) -> Any:
        key, retries = self.route_key(route), self._retries(request)
        deadline = time.monotonic() + (timeout_s or self._config.timeout_s)
        cause: BaseException | None = None
        for attempt in range(retries + 1):
            breaker = self._admit(key, cause)
            try:
                result = await call()
            except Exception as err:
                error, wait = self._failed(key, breaker, err, attempt, retries, deadline)
                if wait is None:
                    raise error from err
                cause = error
                await asyncio.sleep(wait)
            except BaseException:  # cancelled: no verdict on the route
                if breaker is not None:
                    breaker.release()
                raise
            else:
                if breaker is not None:
                    breaker.succeeded()
                return result
        raise AssertionError("unreachable")  # pragma: no cover

    def complete(self, request: ChatRequest, route: ModelRoute, timeout_s: float | None) -> Any:
        """A ``ChatCompletion`` from the cloud."""
        from openai.types.chat import ChatCompletion

        litellm = self.litellm
        kwargs = self._kwargs(request, route, False, timeout_s)
        self._check_credentials(route, kwargs)
        response = self._with_retries(lambda: litellm.completion(**kwargs), request, route, timeout_s)
        return ChatCompletion.model_validate(response.model_dump())

    async def acomplete(self, request: ChatRequest, route: ModelRoute, timeout_s: float | None) -> Any:
        from openai.types.chat import ChatCompletion

        litellm = await asyncio.to_thread(_import_litellm)
        kwargs = self._kwargs(request, route, False, timeout_s)
        self._check_credentials(route, kwargs)
        response = await self._with_retries_async(lambda: litellm.acompletion(**kwargs), request, route, timeout_s)
        return ChatCompletion.model_validate(response.model_dump())

    def stream(self, request: ChatRequest, route: ModelRoute, timeout_s: float | None) -> Iterator[Any]:
        """``ChatCompletionChunk`` objects; retries only happen before the first chunk."""
        from openai.types.chat import ChatCompletionChunk

        litellm = self._streaming_litellm()
        kwargs = self._kwargs(request, route, True, timeout_s)
        self._check_credentials(route, kwargs)
        chunks = self._with_retries(lambda: litellm.completion(**kwargs), request, route, timeout_s)
        try:
            for chunk in chunks:
                yield ChatCompletionChunk.model_validate(chunk.model_dump())
        except APIError:
            raise
        except Exception as err:
            raise from_openai_error(err) from err
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    async def astream(self, request: ChatRequest, route: ModelRoute, timeout_s: float | None) -> AsyncIterator[Any]:
        from openai.types.chat import ChatCompletionChunk

        litellm = await asyncio.to_thread(self._streaming_litellm)
        kwargs = self._kwargs(request, route, True, timeout_s)
        self._check_credentials(route, kwargs)
        chunks = await self._with_retries_async(lambda: litellm.acompletion(**kwargs), request, route, timeout_s)
        try:
            async for chunk in chunks:
                yield ChatCompletionChunk.model_validate(chunk.model_dump())
        except APIError:
            raise
        except Exception as err:
            raise from_openai_error(err) from err
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    def cost(self, pricing_model: str, prompt_tokens: int, completion_tokens: int, *, wait: bool = True) -> float | None:
        """Price of the tokens at ``pricing_model``'s litellm rates; None when litellm has no price.

        With ``wait=False`` (estimates for local answers) it never blocks on the litellm import.
        """
        if not wait and _litellm is None:
            return None
        try:
            prompt_cost, completion_cost = self.litellm.cost_per_token(
                model=pricing_model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
            )
        except Exception:  # unknown model: litellm raises a bare Exception subclass; no price is not an error
            return None
        return float(prompt_cost + completion_cost)
