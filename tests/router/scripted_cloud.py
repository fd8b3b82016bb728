"""A loopback OpenAI-compatible endpoint whose every answer is scripted: the cloud-fault injector.

Litellm reaches it exactly as it reaches a provider (``openai/<name>`` at ``http://127.0.0.1:PORT/v1``),
so retries, ``Retry-After`` and the circuit breaker are exercised through the real HTTP stack; the
server records when each request arrived, so a test can measure waits and count attempts from the
provider's side. It also serves ``/v1/completions`` (streamed), enough for the ``openai_compatible``
local backend.
"""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Reply", "ScriptedCloud", "closed_port_api_base"]

_ERROR_TYPES = {400: "invalid_request_error", 429: "rate_limit_error"}


@dataclass(frozen=True)
class Reply:
    """One scripted answer: an HTTP status with headers, sent after ``delay_s`` (a hang, if long)."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    text: str = "Your order is on its way."


class ScriptedCloud:
    """Answers request *i* with the *i*-th scripted :class:`Reply`, then with ``default``."""

    def __init__(self, *replies: Reply, default: Reply = Reply()) -> None:
        self._lock = threading.Lock()
        self._replies: deque[Reply] = deque(replies)
        self._default = default
        self._closing = threading.Event()
        self.arrivals: list[float] = []  # time.monotonic() of each request, in arrival order
        cloud = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's hook name
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                reply = cloud._next()
                if reply.delay_s and cloud._closing.wait(reply.delay_s):
                    return  # closing: drop the hung request
                try:
                    cloud._answer(self, reply, body, chat=self.path.endswith("/chat/completions"))
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (its timeout) while the reply was delayed

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="scripted-cloud", daemon=True)
        self.thread.start()
        self.api_base = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    @property
    def requests(self) -> int:
        with self._lock:
            return len(self.arrivals)

    def script(self, *replies: Reply, default: Reply | None = None) -> None:
        """Replace the replies still to come (and the default)."""
        with self._lock:
            self._replies = deque(replies)
            if default is not None:
                self._default = default

    def gaps(self) -> list[float]:
        """Seconds between consecutive arrivals."""
        with self._lock:
            return [b - a for a, b in zip(self.arrivals, self.arrivals[1:], strict=False)]

    def _next(self) -> Reply:
        with self._lock:
            self.arrivals.append(time.monotonic())
            return self._replies.popleft() if self._replies else self._default

    @staticmethod
    def _answer(handler: http.server.BaseHTTPRequestHandler, reply: Reply, body: dict[str, Any], *, chat: bool) -> None:
        if reply.status != 200:
            error = {"message": f"scripted {reply.status}", "type": _ERROR_TYPES.get(reply.status, "server_error"), "code": None}
            _send(handler, reply.status, "application/json", json.dumps({"error": error}).encode(), reply.headers)
            return
        model = body.get("model", "scripted")
        usage = {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}
        if not body.get("stream"):
            message = {"role": "assistant", "content": reply.text}
            answer = {
                "id": "chatcmpl-scripted", "object": "chat.completion", "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}], "usage": usage,
            }  # fmt: skip
            _send(handler, 200, "application/json", json.dumps(answer).encode(), reply.headers)
            return
        kind = "chat.completion.chunk" if chat else "text_completion"
        pieces = [{"delta": {"role": "assistant", "content": reply.text}} if chat else {"text": reply.text}]
        pieces.append({"delta": {}, "finish_reason": "stop"} if chat else {"text": "", "finish_reason": "stop"})
        events = [
            {"id": "scripted", "object": kind, "created": 0, "model": model, "choices": [{"index": 0, "finish_reason": None, **p}]}
            for p in pieces
        ]
        events.append({"id": "scripted", "object": kind, "created": 0, "model": model, "choices": [], "usage": usage})
        data = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        _send(handler, 200, "text/event-stream", data.encode(), reply.headers)

    def close(self) -> None:
        self._closing.set()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> ScriptedCloud:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _send(handler: http.server.BaseHTTPRequestHandler, status: int, content_type: str, payload: bytes, headers: dict[str, str]) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(payload)))
    for name, value in headers.items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(payload)


def closed_port_api_base() -> str:
    """An endpoint on a loopback port nothing listens on: every connection is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"
