"""``Client`` and ``AsyncClient``: drop-in replacements for ``openai.OpenAI`` / ``openai.AsyncOpenAI``.

The object tree mirrors the SDK (``client.chat.completions.create``, ``with_options``,
``with_raw_response``), built from small resource classes over one shared :class:`Engine`.
Responses are the ``openai`` package's own types; routing facts ride along as ``.router``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterable, Iterator
from functools import cached_property
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, overload

import httpx

from hybrid_common.errors import NotFoundError
from router._engine import Engine
from router._feedback import IN_PROCESS_OPERATOR, FeedbackSender
from router._request import build_request
from router.config import RouterConfig, load_config

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletion, ChatCompletionChunk

    from router._sampling import SamplerStats
    from router.traffic_log import TrafficLog

__all__ = ["AsyncClient", "AsyncStream", "Client", "RawResponse", "Stream"]

_T = TypeVar("_T")
_UNSET: Any = object()


def _event_loop_running() -> bool:
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _sender(user: str | None) -> FeedbackSender:
    """In-process feedback: the application vouches for it, unless it names the end user it relays."""
    return IN_PROCESS_OPERATOR if user is None else FeedbackSender(user=user)


def _router_headers(response: Any) -> httpx.Headers:
    """Routing metadata as response headers, for ``with_raw_response`` users."""
    info = getattr(response, "router", None)
    headers = {"content-type": "application/json"}
    if info is not None:
        headers.update(info.headers())
    return httpx.Headers(headers)


class Stream(Generic[_T]):
    """Iterates ``ChatCompletionChunk`` objects like ``openai.Stream``; close it or use ``with``."""

    def __init__(self, iterator: Iterator[_T]) -> None:
        self._iterator = iterator
        self._first: list[_T] = []

    @cached_property
    def response(self) -> httpx.Response:
        """A stand-in HTTP response carrying the routing headers."""
        if not self._first:
            self._first.append(next(self._iterator))
        return httpx.Response(200, headers=_router_headers(self._first[0]))

    def __iter__(self) -> Iterator[_T]:
        return self

    def __next__(self) -> _T:
        if self._first:
            return self._first.pop()
        return next(self._iterator)

    def close(self) -> None:
        """Stop generation (releasing the local model) and write the log row."""
        close = getattr(self._iterator, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> Stream[_T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncStream(Generic[_T]):
    """Async twin of :class:`Stream`, like ``openai.AsyncStream``."""

    def __init__(self, iterator: AsyncIterator[_T]) -> None:
        self._iterator = iterator

    def __aiter__(self) -> AsyncIterator[_T]:
        return self

    async def __anext__(self) -> _T:
        return await self._iterator.__anext__()

    async def close(self) -> None:
        aclose = getattr(self._iterator, "aclose", None)
        if aclose is not None:
            await aclose()

    async def __aenter__(self) -> AsyncStream[_T]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class RawResponse(Generic[_T]):
    """What ``with_raw_response`` returns: headers now, the parsed object from ``parse()``."""

    status_code = 200

    def __init__(self, parsed: _T, headers: httpx.Headers) -> None:
        self._parsed = parsed
        self.headers = headers
        self.http_response = httpx.Response(200, headers=headers)
        self.request_id = headers.get("x-request-id")

    def parse(self) -> _T:
        return self._parsed


class _Options:
    """Per-client request defaults that ``with_options`` may change without reloading models."""

    def __init__(self, timeout: float | httpx.Timeout | None, max_retries: int | None) -> None:
        self.timeout = timeout
        self.max_retries = max_retries


def _config_from(config: RouterConfig | str | os.PathLike[str] | None, api_key: str | None, base_url: str | None) -> RouterConfig:
    if not isinstance(config, RouterConfig):
        config = load_config(config)
    cloud_updates: dict[str, Any] = {}
    if api_key is not None:
        from pydantic import SecretStr

        cloud_updates["api_key"] = SecretStr(api_key)
    if base_url is not None:
        cloud_updates["api_base"] = str(base_url)
    if cloud_updates:
        config = config.model_copy(update={"cloud": config.cloud.model_copy(update=cloud_updates)})
    return config


class _ClientBase:
    def __init__(
        self,
        config: RouterConfig | str | os.PathLike[str] | None = None,
        *,
        api_key: str | None = None,
        base_url: str | httpx.URL | None = None,
        timeout: float | httpx.Timeout | None = None,
        max_retries: int | None = None,
        organization: str | None = None,
        project: str | None = None,
        default_headers: Any = None,
        default_query: Any = None,
        http_client: Any = None,
        _engine: Engine | None = None,
    ) -> None:
        # organization, project, default_headers, default_query and http_client are accepted so
        # that constructor calls written for the OpenAI SDK keep working; they configure the
        # SDK's HTTP transport, which litellm owns here.
        if _engine is None:
            resolved = _config_from(config, api_key, str(base_url) if base_url else None)
            if self._loads_off_the_loop and resolved.warmup == "eager" and _event_loop_running():
                # An eager load here would block the application's event loop for seconds: load in
                # the background instead (``await asyncio.to_thread(client.warmup)`` waits without blocking).
                resolved = resolved.model_copy(update={"warmup": "background"})
            _engine = Engine(resolved)
        self._engine = _engine
        self._options = _Options(timeout, max_retries)

    _loads_off_the_loop = False
    """AsyncClient: never load a model on the event loop it is constructed in."""

    @classmethod
    def from_config(cls, path: str | os.PathLike[str], **kwargs: Any) -> Any:
        """A client configured from a TOML file (environment variables still override it)."""
        return cls(path, **kwargs)

    @property
    def config(self) -> RouterConfig:
        return self._engine.config

    @property
    def traffic_log(self) -> TrafficLog | None:
        return self._engine.log

    def warmup(self) -> None:
        """Load every model now (blocking), so the first request pays nothing."""
        self._engine.warmup()

    def with_options(self, *, timeout: float | httpx.Timeout | None = _UNSET, max_retries: int | None = _UNSET, **_: Any) -> Any:
        """A copy with other request defaults; the models and log are shared, not reloaded."""
        clone = object.__new__(type(self))
        clone._engine = self._engine
        clone._options = _Options(
            self._options.timeout if timeout is _UNSET else timeout,
            self._options.max_retries if max_retries is _UNSET else max_retries,
        )
        return clone

    copy = with_options

    def _build(self, kwargs: dict[str, Any], caller: str | None = None) -> Any:
        if kwargs.get("timeout", _UNSET) is _UNSET:
            kwargs["timeout"] = self._options.timeout
        config = self._engine.config
        model = kwargs.get("model")
        if isinstance(model, str) and model.strip() and not config.requestable(model):
            raise NotFoundError(
                f"The model {model!r} does not exist: name 'auto', 'local', a model in [models] or a bare model name "
                "(a provider prefix chooses the provider, which only the configuration may; cloud.any_model allows it).",
                param="model",
                code="model_not_found",
            )
        return build_request(
            kwargs,
            max_input_chars=config.routing.max_input_chars,
            max_user_turns=config.routing.max_user_turns,
            max_retries=self._options.max_retries,
            extra_params=config.extra_params_for(model) if isinstance(model, str) else frozenset(),
            caller=caller,
        )


class Completions:
    """``client.chat.completions``."""

    def __init__(self, client: Client) -> None:
        self._client = client

    @cached_property
    def with_raw_response(self) -> CompletionsWithRawResponse:
        return CompletionsWithRawResponse(self)

    @overload
    def create(self, *, messages: Iterable[Any], model: str, stream: Literal[True], **kwargs: Any) -> Stream[ChatCompletionChunk]: ...
    @overload
    def create(self, *, messages: Iterable[Any], model: str, stream: Literal[False] | None = ..., **kwargs: Any) -> ChatCompletion: ...
    @overload
    def create(self, *, messages: Iterable[Any], model: str, stream: bool, **kwargs: Any) -> ChatCompletion | Stream[ChatCompletionChunk]: ...

    def create(self, *, messages: Iterable[Any], model: str, stream: bool | None = False, **kwargs: Any) -> Any:
        """Create a chat completion, routed to the local model or the cloud.

        Takes the OpenAI parameters (``temperature``, ``top_p``, ``max_tokens``,
        ``max_completion_tokens``, ``stop``, ``seed``, ``n``, ``stream_options``, ``user``,
        ``metadata``, ``timeout``, ``tools``, ``response_format``, ...). Use ``model="auto"`` to
        route with the default cloud model, ``"local"`` to answer in-process, or a cloud model name.
        """
        return self._create({"messages": messages, "model": model, "stream": stream or False, **kwargs})

    def _create(self, arguments: dict[str, Any], caller: str | None = None) -> Any:
        """``create`` with the caller's identity, which only ``router serve`` knows (its API key)."""
        request = self._client._build(arguments, caller)
        engine = self._client._engine
        if request.stream:
            return Stream(engine.stream(request))
        return engine.complete(request)


class CompletionsWithRawResponse:
    """``client.chat.completions.with_raw_response``: returns :class:`RawResponse` wrappers."""

    def __init__(self, completions: Completions) -> None:
        self._completions = completions

    def create(self, **kwargs: Any) -> RawResponse[Any]:
        result = self._completions.create(**kwargs)
        if isinstance(result, Stream):
            return RawResponse(result, result.response.headers)
        return RawResponse(result, _router_headers(result))


class Chat:
    """``client.chat``."""

    def __init__(self, client: Client) -> None:
        self._client = client

    @cached_property
    def completions(self) -> Completions:
        return Completions(self._client)


class Client(_ClientBase):
    """Drop-in for ``openai.OpenAI``: same ``chat.completions`` surface, routed locally or to the cloud.

    ``Client()`` works offline with the packaged models; pass a :class:`RouterConfig`, a TOML
    path, or set ``ROUTER_CONFIG`` / ``ROUTER_*`` variables to configure it.
    """

    @cached_property
    def chat(self) -> Chat:
        return Chat(self)

    def feedback(
        self,
        response_id: str,
        *,
        score: float | None = None,
        accepted: bool | None = None,
        correction: str | None = None,
        user: str | None = None,
    ) -> None:
        """Tell the router how an answer was received, by its response id (``r.id``).

        ``score`` (0..1) or ``accepted`` is that answer's one vote on its category's live quality
        when the local tier answered (a later vote on the same answer replaces it); a
        ``correction`` becomes a training example at the next ``router retrain``. Pass ``user``
        when relaying an end user's feedback: it is then taken only for answers that user received
        (``PermissionDeniedError`` otherwise); without it the application itself vouches for it.
        Stored in the traffic log (it survives restarts); raises ``NotFoundError`` for an unknown id.
        """
        self._engine.feedback(response_id, score=score, accepted=accepted, correction=correction, sender=_sender(user))

    def sampling_stats(self) -> SamplerStats | None:
        """Shadow and audit answers since this client started (``None`` when sampling is off)."""
        return self._engine.sampler_stats()

    def wait_for_samples(self, timeout: float = 60.0) -> bool:
        """Block until queued shadow and audit answers are scored and logged; ``False`` on timeout.

        For batch jobs that exit right after their last request: :meth:`close` drops queued samples.
        """
        sampler = self._engine.sampler
        return sampler.drain(timeout) if sampler is not None else True

    def close(self) -> None:
        """Free the local model and close the traffic log (queued shadow and audit jobs are dropped)."""
        self._engine.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncCompletions:
    """``async_client.chat.completions``."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    @cached_property
    def with_raw_response(self) -> AsyncCompletionsWithRawResponse:
        return AsyncCompletionsWithRawResponse(self)

    @overload
    async def create(self, *, messages: Iterable[Any], model: str, stream: Literal[True], **kwargs: Any) -> AsyncStream[ChatCompletionChunk]: ...
    @overload
    async def create(self, *, messages: Iterable[Any], model: str, stream: Literal[False] | None = ..., **kwargs: Any) -> ChatCompletion: ...
    @overload
    async def create(self, *, messages: Iterable[Any], model: str, stream: bool, **kwargs: Any) -> ChatCompletion | AsyncStream[ChatCompletionChunk]: ...

    async def create(self, *, messages: Iterable[Any], model: str, stream: bool | None = False, **kwargs: Any) -> Any:
        """Async twin of :meth:`Completions.create`."""
        request = self._client._build({"messages": messages, "model": model, "stream": stream or False, **kwargs})
        engine = self._client._engine
        if request.stream:
            return AsyncStream(await engine.astream(request))
        return await engine.acomplete(request)


class AsyncCompletionsWithRawResponse:
    def __init__(self, completions: AsyncCompletions) -> None:
        self._completions = completions

    async def create(self, **kwargs: Any) -> RawResponse[Any]:
        result = await self._completions.create(**kwargs)
        if isinstance(result, AsyncStream):
            first = await result.__anext__()

            async def replay() -> AsyncIterator[Any]:
                try:
                    yield first
                    async for chunk in result:
                        yield chunk
                finally:
                    await result.close()

            return RawResponse(AsyncStream(replay()), _router_headers(first))
        return RawResponse(result, _router_headers(result))


class AsyncChat:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    @cached_property
    def completions(self) -> AsyncCompletions:
        return AsyncCompletions(self._client)


class AsyncClient(_ClientBase):
    """Drop-in for ``openai.AsyncOpenAI``.

    Nothing blocking runs on the event loop: model loads, adapter refreshes, file checksums, log
    and cache I/O all run on the engine's worker threads (``warmup = "eager"`` loads in the
    background when the client is built inside a running loop; ``await asyncio.to_thread(client.warmup)``
    waits for it, since ``warmup()`` itself blocks, as it does on :class:`Client`).
    """

    _loads_off_the_loop = True

    @cached_property
    def chat(self) -> AsyncChat:
        return AsyncChat(self)

    async def feedback(
        self,
        response_id: str,
        *,
        score: float | None = None,
        accepted: bool | None = None,
        correction: str | None = None,
        user: str | None = None,
    ) -> None:
        """Async twin of :meth:`Client.feedback` (the log write runs in a worker thread)."""
        import asyncio

        await asyncio.to_thread(
            self._engine.feedback, response_id, score=score, accepted=accepted, correction=correction, sender=_sender(user)
        )

    def sampling_stats(self) -> SamplerStats | None:
        """Shadow and audit answers since this client started (``None`` when sampling is off)."""
        return self._engine.sampler_stats()

    async def wait_for_samples(self, timeout: float = 60.0) -> bool:
        """Async twin of :meth:`Client.wait_for_samples`."""
        import asyncio

        sampler = self._engine.sampler
        return await asyncio.to_thread(sampler.drain, timeout) if sampler is not None else True

    async def close(self) -> None:
        self._engine.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
