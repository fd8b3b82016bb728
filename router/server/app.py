"""The ASGI app behind ``router serve``: OpenAI's chat-completions HTTP API over a :class:`router.Client`.

Built on what llama-cpp-python's own server already installs (FastAPI, uvicorn, sse-starlette).
Each request holds one of ``server.max_concurrency`` slots for its whole life and runs the
(blocking) router call on a worker thread bounded by the same number, so the event loop never
blocks and the executor never grows; past ``server.max_waiting`` queued requests a new one gets
an immediate 503 "overloaded" with ``Retry-After`` instead of a silent wait.

Liveness (``/health``) is up as soon as the process serves; readiness (``/ready``) only once the
models are warm, and it turns 503 again while the server drains on SIGTERM. ``/report`` serves the
page ``router report`` writes, behind the same API keys as ``/v1/``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

from router._feedback import FeedbackSender
from router.server.errors import error_body, error_for_exception
from router.server.metrics import Metrics
from router.server.schema import FEEDBACK_REQUEST, chat_completion_request, json_body

if TYPE_CHECKING:
    from router.client import Client
    from router.config import RouterConfig

__all__ = ["ServerState", "create_app"]

logger = logging.getLogger("router.server")


@dataclass
class ServerState:
    """What the endpoints share: the client, its limits, and whether the server is ready."""

    client: Client
    config: RouterConfig
    metrics: Metrics = field(default_factory=Metrics)
    ready: bool = False
    draining: bool = False
    waiting: int = 0
    in_flight: int = 0
    secrets: tuple[str, ...] = ()
    slots: asyncio.Semaphore | None = None
    limiter: Any = None

    def redact(self, text: str) -> str:
        """No configured key or token in anything the server sends or logs."""
        for secret in self.secrets:
            text = text.replace(secret, "[REDACTED]")
        return text


def _secrets(config: RouterConfig) -> tuple[str, ...]:
    values = [key.get_secret_value() for key in (*config.server.api_keys, *config.server.operator_keys)]
    keys = [config.cloud.api_key, *(route.api_key for route in config.models.values())]
    values += [k.get_secret_value() for k in keys if k is not None and hasattr(k, "get_secret_value")]
    return tuple(v for v in values if len(v) >= 4)


def create_app(client: Client, *, warm: bool = True) -> FastAPI:
    """The FastAPI app serving ``client``'s routing; ``warm`` loads the models at start-up (readiness waits)."""
    from contextlib import asynccontextmanager

    config = client.config
    state = ServerState(client=client, config=config, secrets=_secrets(config))
    _register_gauges(state)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.slots = asyncio.Semaphore(config.server.max_concurrency)
        state.limiter = anyio.CapacityLimiter(config.server.max_concurrency)
        warming = asyncio.create_task(_warm(state)) if warm else None
        if not warm:
            state.ready = True
        try:
            yield
        finally:
            state.draining, state.ready = True, False
            if warming is not None:
                warming.cancel()

    app = FastAPI(title="hybrid-router", version=_version(), lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.router = state

    def error(status: int, message: str, *, param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None) -> Response:
        state.metrics.inc("router_http_errors_total", "Requests answered with an error status.", status=str(status))
        return JSONResponse(error_body(status, state.redact(message), param=param, code=code), status_code=status, headers=headers)

    def failed(err: Exception) -> Response:
        """An exception raised while answering as an OpenAI-shaped error (a log that is down: 503 with Retry-After)."""
        status, payload = error_for_exception(err)
        retry_after = getattr(err, "retry_after_s", None)
        headers = {"Retry-After": str(max(1, math.ceil(retry_after)))} if status == 503 and retry_after else None
        return error(status, payload["error"]["message"], param=payload["error"]["param"], code=payload["error"]["code"], headers=headers)

    callers = [key.get_secret_value() for key in config.server.api_keys]
    operators = [key.get_secret_value() for key in config.server.operator_keys]

    @app.middleware("http")
    async def authenticate(request: Request, call_next: Any) -> Response:
        request.state.caller, request.state.operator = None, False
        if (request.url.path.startswith("/v1/") or request.url.path == "/report") and (callers or operators):
            given = request.headers.get("authorization", "")
            token = given[7:].strip() if given.lower().startswith("bearer ") else ""
            # Every key is compared (no early exit), so the time taken says nothing about which matched.
            is_operator = any([hmac.compare_digest(token.encode(), key.encode()) for key in operators])
            is_caller = any([hmac.compare_digest(token.encode(), key.encode()) for key in callers])
            if not (is_operator or is_caller):
                return error(401, "missing or invalid bearer token (Authorization: Bearer <key>)", code="invalid_api_key")
            request.state.caller, request.state.operator = caller_id(token), is_operator
        response: Response = await call_next(request)
        return response

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> Response:
        if state.ready and not state.draining:
            return JSONResponse({"status": "ready"})
        status = "draining" if state.draining else "warming up"
        return JSONResponse({"status": status}, status_code=503, headers={"Retry-After": str(config.server.retry_after_s)})

    @app.get("/metrics")
    async def metrics() -> Response:
        return PlainTextResponse(state.redact(state.metrics.render()), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        names = ["auto", "local", *config.models]
        return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "hybrid-router"} for n in names]}

    @app.post("/v1/chat/completions", openapi_extra=json_body(chat_completion_request(["auto", "local", *config.models])))
    async def chat_completions(request: Request) -> Response:
        body, failure = await _read_json(request, config.server.max_body_bytes)
        if failure is not None:
            return error(*failure)
        if state.draining:
            return error(503, "the server is shutting down", code="draining", headers={"Retry-After": str(config.server.retry_after_s)})
        if state.slots is not None and state.slots.locked() and state.waiting >= config.server.max_waiting:
            state.metrics.inc("router_overloaded_total", "Requests refused at once because every slot and the queue were full.")
            return error(503, "the router is overloaded; retry shortly", code="overloaded", headers={"Retry-After": str(config.server.retry_after_s)})
        if _no_cache(request.headers.get("cache-control", "")):
            body["cache"] = False
        return await _answer(state, body, error, request.state.caller)

    @app.post("/v1/feedback", status_code=204, openapi_extra=json_body(FEEDBACK_REQUEST))
    async def feedback(request: Request) -> Response:
        body, failure = await _read_json(request, config.server.max_body_bytes)
        if failure is not None:
            return error(*failure)
        response_id = body.pop("response_id", None)
        if not isinstance(response_id, str) or not response_id:
            return error(400, "'response_id' (the id of a chat completion) is required", param="response_id")
        unknown = set(body) - {"score", "accepted", "correction", "user"}
        if unknown:
            return error(400, f"unknown feedback fields: {sorted(unknown)}", param=min(unknown))
        user = body.pop("user", None)
        if user is not None and not isinstance(user, str):
            return error(400, "'user' must be a string", param="user")
        # Without API keys the body's 'user' is the only identity there is: a weak one, documented as such.
        sender = FeedbackSender(user=user, caller=request.state.caller, operator=request.state.operator)
        try:
            await anyio.to_thread.run_sync(lambda: client._engine.feedback(response_id, sender=sender, **body), limiter=state.limiter)
        except Exception as err:  # noqa: BLE001 - mapped to an OpenAI-shaped error
            return failed(err)
        return Response(status_code=204)

    @app.get("/report", response_class=HTMLResponse)
    async def report(since: str | None = None, until: str | None = None) -> Response:
        """The page ``router report`` writes, for the days ``since`` .. ``until`` (YYYY-MM-DD, optional)."""
        from router.report import build_report, window_day

        if client.traffic_log is None:
            return error(404, "the traffic log is disabled (log.enabled = false): there is nothing to report", code="log_disabled")
        days: dict[str, str | None] = {}
        for name, value in (("since", since), ("until", until)):
            try:
                days[name] = window_day(value) if value else None
            except ValueError as err:
                return error(400, str(err), param=name)
        first, last = days["since"], days["until"]
        if first and last and first > last:
            return error(400, f"the window starts ({first}) after it ends ({last})", param="since")

        def render() -> str:
            from router.traffic_log import TrafficLog

            # A connection of its own: the report's reads never hold the lock the request path's log writes take.
            with TrafficLog(config.log.location, spool=False) as reader:
                return build_report(reader, config, since=first, until=last)

        try:
            # Blocking database reads and drawing: on a worker thread, one of the request slots' threads.
            page = await anyio.to_thread.run_sync(render, limiter=state.limiter)
        except Exception as err:  # noqa: BLE001 - mapped to an OpenAI-shaped error (a log that is down: 503)
            return failed(err)
        return HTMLResponse(state.redact(page))

    return app


def _version() -> str:
    from router import __version__

    return __version__


async def _warm(state: ServerState) -> None:
    started = time.perf_counter()
    try:
        await anyio.to_thread.run_sync(state.client.warmup)
    except Exception as err:  # noqa: BLE001 - a failed warm-up still serves; the tier that failed raises per request
        logger.warning("warm-up failed (%s); serving anyway, the failing tier reports per request", state.redact(str(err)))
    state.ready = not state.draining
    logger.info("models warm in %.1f s; ready", time.perf_counter() - started)


async def _read_json(request: Any, limit: int) -> tuple[dict[str, Any], tuple[int, str] | None]:
    """The request body as a JSON object, or (status, message) saying why not."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return {}, (413, f"request body of {declared} bytes is over the {limit}-byte limit")
    raw = bytearray()
    async for piece in request.stream():
        raw += piece
        if len(raw) > limit:
            return {}, (413, f"request body is over the {limit}-byte limit")
    try:
        body = json.loads(bytes(raw).decode("utf-8"))
    except UnicodeDecodeError:
        return {}, (400, "request body is not valid UTF-8")
    except json.JSONDecodeError as err:
        return {}, (400, f"request body is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}")
    if not isinstance(body, dict):
        return {}, (400, "request body must be a JSON object")
    return body, None


def caller_id(token: str) -> str:
    """A stable name for an API key that reveals nothing of it: what the log keeps to match feedback to its caller."""
    import hashlib

    return "key:" + hashlib.sha256(token.encode()).hexdigest()[:16]


async def _answer(state: ServerState, body: dict[str, Any], error: Any, caller: str | None) -> Any:
    """Run one chat completion on a worker thread while holding a slot; a stream keeps it until it ends."""
    stream = bool(body.pop("stream", False))
    model = body.pop("model", None)
    messages = body.pop("messages", None)
    if not isinstance(model, str) or not model:
        return error(400, "'model' is required (a configured model name, 'auto' or 'local')", param="model")
    if messages is None:
        return error(400, "'messages' is required", param="messages")
    # The rest of the body is what the SDK would send as extra_body: every key is checked against
    # the allow-list there (router._request), none is a keyword argument of ours.
    arguments = {"model": model, "messages": messages, "stream": stream, "extra_body": body}
    assert state.slots is not None
    state.waiting += 1
    try:
        await state.slots.acquire()
    finally:
        state.waiting -= 1
    state.in_flight += 1
    handed_to_stream = False
    started = time.perf_counter()
    create = state.client.chat.completions._create
    try:
        try:
            result = await anyio.to_thread.run_sync(lambda: create(arguments, caller), limiter=state.limiter)
            # A stream's first chunk is awaited here, so a failure before any output is still an HTTP error.
            first = await anyio.to_thread.run_sync(_next_or_none, iter(result), limiter=state.limiter) if stream else None
        except Exception as err:  # noqa: BLE001 - every failure becomes an OpenAI-shaped error
            status, payload = error_for_exception(err)
            state.metrics.inc("router_requests_total", "Chat completions answered, by tier and category.", tier="error", category="", status=str(status))
            retry_after = getattr(err, "retry_after_s", None)
            headers = {"Retry-After": str(max(1, math.ceil(retry_after)))} if status == 503 and retry_after else None
            return error(status, payload["error"]["message"], param=payload["error"]["param"], code=payload["error"]["code"], headers=headers)
        if not stream:
            _count(state, result.router, time.perf_counter() - started, result.usage)
            payload = json.loads(state.redact(json.dumps(_public(result.model_dump(mode="json", exclude_none=True)))))
            return JSONResponse(payload, headers=_route_headers(result.router))
        handed_to_stream = True
        return _sse(state, result, first, started)
    finally:
        if not handed_to_stream:
            _release(state)


def _public(payload: dict[str, Any]) -> dict[str, Any]:
    """A response as a caller over HTTP may see it: a cache hit does not name the request it was copied from."""
    info = payload.get("router")
    if isinstance(info, dict):
        info.pop("cached_from", None)
    return payload


def _next_or_none(iterator: Any) -> Any:
    return next(iterator, None)


def _release(state: ServerState) -> None:
    state.in_flight -= 1
    assert state.slots is not None
    state.slots.release()


def _sse(state: ServerState, stream: Any, first: Any, started: float) -> Any:
    """Server-sent events, OpenAI's way: one ``data:`` JSON chunk per event, then ``data: [DONE]``.

    The slot is released when the stream ends, fails, or the caller goes away (the router's
    stream is closed then, which stops a local generation).
    """
    from sse_starlette.sse import EventSourceResponse

    iterator = iter(stream)

    async def events() -> AsyncIterator[str]:
        chunk, last = first, None
        try:
            while chunk is not None:
                last = chunk
                yield state.redact(json.dumps(_public(chunk.model_dump(mode="json", exclude_none=True))))
                try:
                    chunk = await anyio.to_thread.run_sync(_next_or_none, iterator, limiter=state.limiter)
                except Exception as err:  # noqa: BLE001 - after the 200 is sent, an error travels as an event
                    _status, payload = error_for_exception(err)
                    payload["error"]["message"] = state.redact(payload["error"]["message"])
                    yield json.dumps(payload)
                    return
            yield "[DONE]"
            if last is not None:
                _count(state, last.router, time.perf_counter() - started, last.usage)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(stream.close, limiter=state.limiter)
            _release(state)

    headers = _route_headers(getattr(first, "router", None))
    return EventSourceResponse(events(), headers=headers, ping=15, sep="\n")


def _no_cache(cache_control: str) -> bool:
    """``Cache-Control: no-cache`` (or ``no-store``): answer without the response cache."""
    return any(d.strip().lower() in ("no-cache", "no-store") for d in cache_control.split(","))


def _route_headers(info: Any) -> dict[str, str]:
    return {} if info is None else info.headers()


def _count(state: ServerState, info: Any, seconds: float, usage: Any) -> None:
    if info is None:
        return
    m = state.metrics
    m.inc("router_requests_total", "Chat completions answered, by tier and category.", tier=info.tier, category=info.category or "", status="200")
    m.observe_latency(seconds, tier=info.tier)
    if info.fallback_from:
        m.inc("router_fallbacks_total", "Requests a tier could not answer, passed to the next.", from_tier=info.fallback_from, to_tier=info.tier)
    if usage is not None:
        m.inc("router_tokens_total", "Tokens, by tier and kind.", usage.prompt_tokens or 0, tier=info.tier, kind="prompt")
        m.inc("router_tokens_total", "Tokens, by tier and kind.", usage.completion_tokens or 0, tier=info.tier, kind="completion")
    if info.cost_usd:
        m.inc("router_cost_usd_total", "Money spent on the cloud tier, USD.", info.cost_usd)
    if info.tier != "cloud" and info.cloud_cost_usd_estimate:
        m.inc("router_saved_usd_total", "Estimated cloud cost of requests answered without the cloud, USD.", info.cloud_cost_usd_estimate)


def _register_gauges(state: ServerState) -> None:
    m = state.metrics
    m.gauge("router_queue_depth", "Requests waiting for a slot.", lambda: state.waiting)
    m.gauge("router_in_flight", "Requests being answered (streams included).", lambda: state.in_flight)
    m.gauge("router_ready", "1 once the models are warm and the server is not draining.", lambda: float(state.ready and not state.draining))

    def failures() -> float:
        log = state.client.traffic_log
        return float(getattr(log, "failures", 0) or 0) if log is not None else 0.0

    m.gauge("router_log_write_failures", "Traffic log writes that failed since start.", failures)

    def circuits() -> dict[str, float]:
        return {route: float(st != "closed") for route, st in state.client._engine.cloud.breaker_states().items()}

    m.gauge_family("router_cloud_circuit_open", "1 while a cloud route's circuit is open or half-open (calls fail fast); "
                   "0 once closed. Only routes that have failed appear.", "route", circuits)  # fmt: skip

    def local_backend() -> Any:
        return state.client._engine.local

    m.gauge("router_local_queue_depth", "Local generations waiting for or running on a llama.cpp worker.",
            lambda: float(getattr(local_backend(), "queue_depth", 0)))  # fmt: skip
    def batch_stats() -> Any:
        batch = getattr(local_backend(), "batch", None)
        return batch.stats() if batch is not None else None

    def batch_figure(name: str) -> Callable[[], float]:
        def read() -> float:
            stats = batch_stats()
            value = getattr(stats, name, None) if stats is not None else None
            return float(value) if value is not None else 0.0

        return read

    m.gauge("router_local_batch_size", "Sequences decoding together in the local batch now.", batch_figure("live"))
    m.gauge("router_local_batch_waiting", "Local requests waiting to join the batch.", batch_figure("waiting"))
    m.gauge("router_local_sequence_tokens_per_s", "Tokens per second one local sequence gets at the current batch size.",
            batch_figure("sequence_tokens_per_s"))  # fmt: skip
    m.gauge("router_local_kv_reserved", "KV cells reserved by the live local sequences.", batch_figure("kv_reserved"))

    def admission(name: str) -> Callable[[], float]:
        return lambda: float(getattr(state.client._engine.admission.counts(), name))

    m.gauge("router_local_admitted_total", "Routed requests admitted to the local tier.", admission("admitted"))
    m.gauge("router_local_busy_total", "Routed requests sent to the cloud because the local tier was predicted slower than "
            "the latency budget (reason local_busy).", admission("busy"))  # fmt: skip
    m.gauge("router_local_over_budget_total", "Admitted local answers that still took longer than their budget.", admission("over_budget"))
    m.gauge("router_local_spill_share", "Share of routed local decisions spilled to the cloud (local_busy).", admission("spill_share"))
    m.gauge("router_local_latency_budget_seconds", "The latency budget a routed local request is admitted under now.", admission("budget_s"))
    m.gauge("router_local_workers_replaced", "Local workers replaced because they hung past a deadline.",
            lambda: float(getattr(local_backend(), "replaced_hung_workers", 0)))  # fmt: skip
