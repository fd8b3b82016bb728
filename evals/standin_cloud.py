"""A real OpenAI-compatible server on 127.0.0.1 that stands in for the cloud in tests and the demo.

It is llama-cpp-python's own server (``llama_cpp.server``) running the packaged GGUF, reached
through litellm exactly as a cloud provider is. It adds one thing: every request body it receives
is appended to a JSONL file, so tests can prove what did, and did not, leave the router.

**Recorded-answer mode** (``--answers FILE``, for the retrain demo): no model runs; the server
answers each query with a recorded reference answer (a JSONL of ``{"query", "answer"}``) and
labels every response ``model="standin-recorded"``, ``system_fingerprint="recorded-answers"``.
It stands in for a strong cloud model whose answers the local model learns from; the HTTP
exchange, litellm and the router's cloud path are the real ones. It answers as slowly as such a
model does (:class:`evals.standin_latency.LatencyModel`: time to first token, then output speed),
so that latencies measured against it compare with the local tier's; ``--no-latency`` answers at once.

Run it directly with ``python -m evals.standin_cloud --port 8765 --record requests.jsonl``, or use
:class:`StandinCloud` to start and stop it as a subprocess.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from evals.standin_latency import LatencyModel, chunk_offsets, estimate_tokens

__all__ = ["RECORDED_MODEL", "STANDIN_MODEL", "LatencyModel", "StandinCloud", "build_recorded_app", "load_recorded_answers", "main"]

STANDIN_MODEL = "standin"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_app(model_path: str, record: Path, n_threads: int, n_ctx: int, adapters: dict[str, str | None] | None = None) -> Any:
    """The llama-cpp-python server app with a request-recording middleware in front.

    ``adapters`` (alias -> LoRA file, None for the base model) serves each adapter under its own
    model name instead of the one ``standin`` model: the fleet path's server, the way vLLM and
    llama.cpp's server name adapters. Requests then queue rather than cut each other short.
    """
    from llama_cpp.server.app import create_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    named = adapters if adapters is not None else {STANDIN_MODEL: None}
    app = create_app(
        server_settings=ServerSettings(host="127.0.0.1", interrupt_requests=adapters is None),
        model_settings=[
            ModelSettings(
                model=model_path,
                model_alias=alias,
                lora_path=lora,
                chat_format="gemma",
                n_ctx=n_ctx,
                n_threads=n_threads,
                verbose=False,
            )
            for alias, lora in named.items()
        ],
    )

    @app.middleware("http")
    async def record_requests(request: Any, call_next: Any) -> Any:
        if request.method == "POST":
            body = await request.body()
            entry = {"path": request.url.path, "body": json.loads(body or b"null")}
            with record.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry) + "\n")
        return await call_next(request)

    return app


RECORDED_MODEL = "standin-recorded"
UNKNOWN_QUERY_ANSWER = "I'm sorry, I can't help with that request."


def load_recorded_answers(path: Path) -> dict[str, str]:
    """``query`` → ``answer`` from a JSONL file; queries match after whitespace normalisation.

    An entry may give ``conversation`` (the user turns in order, the last one being answered)
    instead of ``query``: a follow-up such as "ok do it" then gets the answer recorded for its own
    conversation. A request is looked up by its whole conversation first, then by its last turn.
    """
    answers: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            entry = json.loads(line)
            turns = entry["conversation"] if "conversation" in entry else [entry["query"]]
            answers[_conversation_key(turns)] = entry["answer"]
    return answers


def _query_key(text: str) -> str:
    return " ".join(text.split())


def _conversation_key(user_turns: list[str]) -> str:
    return "\x1e".join(_query_key(turn) for turn in user_turns)


def _user_texts(messages: list[Any]) -> list[str]:
    texts = []
    for m in messages:
        if isinstance(m, dict) and m.get("role") == "user":
            content = m.get("content") or ""
            if isinstance(content, list):
                content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
            texts.append(str(content))
    return texts


async def _sleep_until(due: float) -> None:
    """Wait for the event loop's clock to reach ``due``; other requests run meanwhile."""
    delay = due - asyncio.get_running_loop().time()
    if delay > 0:
        await asyncio.sleep(delay)


def _token_cap(body: dict[str, Any]) -> int | None:
    """The smaller of ``max_tokens`` and ``max_completion_tokens`` among those given as positive integers."""
    caps = [v for v in (body.get("max_tokens"), body.get("max_completion_tokens")) if isinstance(v, int) and not isinstance(v, bool) and v > 0]
    return min(caps, default=None)


def build_recorded_app(answers: dict[str, str], record: Path, latency: LatencyModel | None = None) -> Any:
    """An OpenAI-compatible chat endpoint that replays recorded answers (streaming included).

    ``latency`` (default :class:`LatencyModel`'s realistic figures) delays each answer as a
    provider's would; its draws come from one ``random.Random(seed)`` per app, taken in the order
    requests arrive (one event loop, so no lock is needed). The content is always the whole recorded
    answer (benchmarks compare it with references), and ``usage`` counts all of it; the timing is what
    a provider capped at ``max_tokens`` / ``max_completion_tokens`` would take, paced on the smaller of
    the answer's estimated tokens and the cap.
    """
    import random
    import uuid

    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    latency = latency if latency is not None else LatencyModel()
    rng = random.Random(latency.seed)

    async def models(request: Any) -> Any:
        return JSONResponse({"object": "list", "data": [{"id": RECORDED_MODEL, "object": "model", "owned_by": "recorded-answers"}]})

    async def chat(request: Any) -> Any:
        started = asyncio.get_running_loop().time()
        body = await request.json()
        timing = latency.draw(rng)
        with record.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"path": request.url.path, "body": body}) + "\n")
        cap = _token_cap(body)
        turns = _user_texts(body.get("messages", []))
        question = turns[-1] if turns else ""
        answer = answers.get(_conversation_key(turns)) or answers.get(_query_key(question), UNKNOWN_QUERY_ANSWER)
        common = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": RECORDED_MODEL, "system_fingerprint": "recorded-answers"}
        usage = {"prompt_tokens": len(question.split()), "completion_tokens": len(answer.split()), "total_tokens": len(question.split()) + len(answer.split())}
        if not body.get("stream"):
            await _sleep_until(started + timing.total_s(estimate_tokens(answer), cap))
            message = {"role": "assistant", "content": answer}
            return JSONResponse({**common, "object": "chat.completion", "choices": [{"index": 0, "message": message, "finish_reason": "stop"}], "usage": usage})

        async def events() -> Any:
            chunk = {**common, "object": "chat.completion.chunk"}
            pieces = answer.split(" ")
            # Due times are kept against the clock, not slept one after another: overshoot never adds up.
            due = [started + offset for offset in chunk_offsets(timing, pieces, cap)]
            for i, piece in enumerate(pieces):
                await _sleep_until(due[i])
                delta = {"content": piece if i == 0 else " " + piece, **({"role": "assistant"} if i == 0 else {})}
                yield f"data: {json.dumps({**chunk, 'choices': [{'index': 0, 'delta': delta, 'finish_reason': None}]})}\n\n"
            await _sleep_until(due[-1])
            final = {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            if (body.get("stream_options") or {}).get("include_usage"):
                final["usage"] = usage
            yield f"data: {json.dumps(final)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    routes = [Route("/v1/models", models, methods=["GET"]), Route("/v1/chat/completions", chat, methods=["POST"])]
    return Starlette(routes=routes)


class StandinCloud:
    """Start the stand-in server as a subprocess; use as a context manager so it always stops.

    ``latency`` applies in recorded-answer mode only (a running model is slow enough on its own):
    ``None`` means :class:`LatencyModel`'s realistic default, ``LatencyModel.none()`` no delay.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        record: Path | None = None,
        n_threads: int = 1,
        n_ctx: int = 2048,
        answers: Path | None = None,
        latency: LatencyModel | None = None,
        adapters: dict[str, Path | None] | None = None,
    ) -> None:
        self.port = port or _free_port()
        self.answers = answers
        self.adapters = adapters
        self.latency = latency if latency is not None else LatencyModel()
        self.record = record or Path(tempfile.mkdtemp(prefix="standin-")) / "requests.jsonl"
        self._n_threads = n_threads
        self._n_ctx = n_ctx
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def litellm_model(self) -> str:
        return f"openai/{RECORDED_MODEL if self.answers else STANDIN_MODEL}"

    @property
    def models(self) -> dict[str, dict[str, str]]:
        """``RouterConfig.models`` naming this server "gpt-4o" (priced as gpt-4o), the way the evals route to it."""
        return {"gpt-4o": {"litellm_model": self.litellm_model, "api_base": self.api_base, "api_key": "none", "pricing_model": "gpt-4o"}}

    def start(self, timeout_s: float = 120.0) -> StandinCloud:
        self.record.parent.mkdir(parents=True, exist_ok=True)
        self.record.touch()
        cmd = [
            sys.executable, "-m", "evals.standin_cloud",
            "--port", str(self.port), "--record", str(self.record),
            "--n-threads", str(self._n_threads), "--n-ctx", str(self._n_ctx),
        ]  # fmt: skip
        if self.answers is not None:
            cmd += ["--answers", str(self.answers), *_latency_args(self.latency)]
        if self.adapters is not None:
            cmd += ["--adapters", json.dumps({alias: str(p) if p else None for alias, p in self.adapters.items()})]
        self._process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                err = self._process.stderr.read().decode(errors="replace") if self._process.stderr else ""
                raise RuntimeError(f"stand-in cloud exited with {self._process.returncode}: {err[-2000:]}")
            try:
                if httpx.get(f"{self.api_base}/models", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"stand-in cloud did not start within {timeout_s} s")

    def received(self) -> list[dict[str, Any]]:
        """Every request body the server has received, oldest first."""
        lines = self.record.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._process is not None and self._process.stderr:
            self._process.stderr.close()
        self._process = None

    def __enter__(self) -> StandinCloud:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _latency_args(latency: LatencyModel) -> list[str]:
    """The command-line flags that give ``main`` the same latency model."""
    if not latency.enabled:
        return ["--no-latency"]
    return ["--ttft-s", repr(latency.ttft_s), "--tokens-per-s", repr(latency.tokens_per_s), "--jitter", repr(latency.jitter), "--latency-seed", str(latency.seed)]


def _latency_from_args(args: argparse.Namespace) -> LatencyModel:
    if args.no_latency:
        return LatencyModel.none()
    return LatencyModel(ttft_s=args.ttft_s, tokens_per_s=args.tokens_per_s, jitter=args.jitter, seed=args.latency_seed)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--record", type=Path, required=True, help="JSONL file every request body is appended to")
    parser.add_argument("--model", default=None, help="GGUF file (default: the packaged Gemma 3 270M)")
    parser.add_argument("--n-threads", type=int, default=1)
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--answers", type=Path, help="recorded-answer mode: JSONL of {query, answer}; no model runs")
    parser.add_argument("--adapters", type=json.loads, help='adapter mode: JSON {"model name": "lora.gguf" or null, ...}')
    realistic = LatencyModel()
    latency = parser.add_argument_group("latency (recorded-answer mode; defaults: OpenAI gpt-4o-mini per Artificial Analysis, 2025)")
    latency.add_argument("--ttft-s", type=float, default=realistic.ttft_s, help="median seconds to the first token")
    latency.add_argument("--tokens-per-s", type=float, default=realistic.tokens_per_s, help="median output tokens per second")
    latency.add_argument("--jitter", type=float, default=realistic.jitter, help="sigma of the per-request log-normal factors")
    latency.add_argument("--latency-seed", type=int, default=realistic.seed, help="seed of the per-request draws")
    latency.add_argument("--no-latency", action="store_true", help="answer at once")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)

    import uvicorn

    if args.answers is not None:
        app = build_recorded_app(load_recorded_answers(args.answers), args.record, _latency_from_args(args))
        uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
        return

    from router.backends import packaged_model_path

    model = args.model or str(packaged_model_path())
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app = build_app(model, args.record, args.n_threads, args.n_ctx, args.adapters)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
