"""The cloud tier: any litellm model string, with retries, back-off, timeouts and pricing.

``import litellm`` takes seconds. Paying that inside the first cloud request is a latency spike the
user sees, so :meth:`CloudBackend.preimport` starts it in a background thread when the client
starts (``cloud.preimport``), while the local model and classifier load.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

from hybrid_common.errors import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    InternalServerError,
    MissingDependencyError,
    RateLimitError,
    from_openai_error,
)
from router._request import ChatRequest
from router.config import CloudConfig, ModelRoute

__all__ = ["CloudBackend"]

T = TypeVar("T")
_RETRYABLE = (APIConnectionError, RateLimitError, InternalServerError)  # APITimeoutError is an APIConnectionError
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
        _litellm = litellm
        return litellm


class CloudBackend:
    """Calls the cloud through litellm and returns ``openai`` types."""

    name = "litellm"

    def __init__(self, config: CloudConfig) -> None:
        self._config = config
        self._preimport: threading.Thread | None = None

    def preimport(self) -> None:
        """Import litellm in a daemon thread so the first cloud request does not pay for it."""
        if self._preimport is None:
            self._preimport = threading.Thread(target=_import_litellm, name="router-litellm-import", daemon=True)
            self._preimport.start()

    @property
    def litellm(self) -> Any:
        return _import_litellm()

    def _kwargs(self, request: ChatRequest, route: ModelRoute, stream: bool, timeout_s: float | None) -> dict[str, Any]:
        p = request.params
        kwargs: dict[str, Any] = {
            "model": route.litellm_model,
            "messages": request.messages,
            "stream": stream,
            "timeout": timeout_s or self._config.timeout_s,
            "num_retries": 0,  # retries are ours, so back-off and logging see every attempt
            "drop_params": self._config.drop_unsupported_params,
            **request.cloud_extra,
        }
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

    def _backoff(self, attempt: int) -> float:
        delay = min(self._config.backoff_max_s, self._config.backoff_initial_s * 2**attempt)
        return delay * (0.5 + random.random() / 2)  # jitter: retries of many clients do not align

    def _retries(self, request: ChatRequest) -> int:
        return self._config.max_retries if request.max_retries is None else request.max_retries

    def _with_retries(self, call: Callable[[], T], retries: int) -> T:
        for attempt in range(retries + 1):
            try:
                return call()
            except Exception as err:  # litellm raises openai-family errors; translate all of them
                error = from_openai_error(err)
                if not isinstance(error, _RETRYABLE) or attempt == retries:
                    raise error from err
                time.sleep(self._backoff(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _with_retries_async(self, call: Callable[[], Any], retries: int) -> Any:
        for attempt in range(retries + 1):
            try:
                return await call()
            except Exception as err:
                error = from_openai_error(err)
                if not isinstance(error, _RETRYABLE) or attempt == retries:
                    raise error from err
                await asyncio.sleep(self._backoff(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    def complete(self, request: ChatRequest, route: ModelRoute, timeout_s: float | None) -> Any:
        """A ``ChatCompletion`` from the cloud."""
        from openai.types.chat import ChatCompletion

        litellm = self.litellm
        kwargs = self._kwargs(request, route, False, timeout_s)
        self._check_credentials(route, kwargs)
        response = self._with_retries(lambda: litellm.completion(**kwargs), self._retries(request))
        return ChatCompletion.model_validate(response.model_dump())

    async def acomplete(self, request: ChatRequest, route: ModelRoute, timeout_s: float | None) -> Any:
        from openai.types.chat import ChatCompletion

        litellm = await asyncio.to_thread(_import_litellm)
        kwargs = self._kwargs(request, route, False, timeout_s)
        self._check_credentials(route, kwargs)
        response = await self._with_retries_async(lambda: litellm.acompletion(**kwargs), self._retries(request))
        return ChatCompletion.model_validate(response.model_dump())

    def stream(self, request: ChatRequest, route: ModelRoute, timeout_s: float | None) -> Iterator[Any]:
        """``ChatCompletionChunk`` objects; retries only happen before the first chunk."""
        from openai.types.chat import ChatCompletionChunk

        litellm = self.litellm
        kwargs = self._kwargs(request, route, True, timeout_s)
        self._check_credentials(route, kwargs)
        chunks = self._with_retries(lambda: litellm.completion(**kwargs), self._retries(request))
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

        litellm = await asyncio.to_thread(_import_litellm)
        kwargs = self._kwargs(request, route, True, timeout_s)
        self._check_credentials(route, kwargs)
        chunks = await self._with_retries_async(lambda: litellm.acompletion(**kwargs), self._retries(request))
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
