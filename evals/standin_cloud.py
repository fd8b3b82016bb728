"""A real OpenAI-compatible server on 127.0.0.1 that stands in for the cloud in tests and the demo.

It is llama-cpp-python's own server (``llama_cpp.server``) running the packaged GGUF, reached
through litellm exactly as a cloud provider is. It adds one thing: every request body it receives
is appended to a JSONL file, so tests can prove what did, and did not, leave the router.

**Recorded-answer mode** (``--answers FILE``, for the retrain demo): no model runs; the server
answers each query with a recorded reference answer (a JSONL of ``{"query", "answer"}``) and
labels every response ``model="standin-recorded"``, ``system_fingerprint="recorded-answers"``.
It stands in for a strong cloud model whose answers the local model learns from; the HTTP
exchange, litellm and the router's cloud path are the real ones.

Run it directly with ``python -m evals.standin_cloud --port 8765 --record requests.jsonl``, or use
:class:`StandinCloud` to start and stop it as a subprocess.
"""

from __future__ import annotations

import argparse
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

__all__ = ["RECORDED_MODEL", "STANDIN_MODEL", "StandinCloud", "build_recorded_app", "load_recorded_answers", "main"]

STANDIN_MODEL = "standin"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_app(model_path: str, record: Path, n_threads: int, n_ctx: int) -> Any:
    """The llama-cpp-python server app with a request-recording middleware in front."""
    from llama_cpp.server.app import create_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    app = create_app(
        server_settings=ServerSettings(host="127.0.0.1"),
        model_settings=[
            ModelSettings(
                model=model_path,
                model_alias=STANDIN_MODEL,
                chat_format="gemma",
                n_ctx=n_ctx,
                n_threads=n_threads,
                verbose=False,
            )
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


def build_recorded_app(answers: dict[str, str], record: Path) -> Any:
    """An OpenAI-compatible chat endpoint that replays recorded answers (streaming included)."""
    import uuid

    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    async def models(request: Any) -> Any:
        return JSONResponse({"object": "list", "data": [{"id": RECORDED_MODEL, "object": "model", "owned_by": "recorded-answers"}]})

    async def chat(request: Any) -> Any:
        body = await request.json()
        with record.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"path": request.url.path, "body": body}) + "\n")
        turns = _user_texts(body.get("messages", []))
        question = turns[-1] if turns else ""
        answer = answers.get(_conversation_key(turns)) or answers.get(_query_key(question), UNKNOWN_QUERY_ANSWER)
        common = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": RECORDED_MODEL, "system_fingerprint": "recorded-answers"}
        usage = {"prompt_tokens": len(question.split()), "completion_tokens": len(answer.split()), "total_tokens": len(question.split()) + len(answer.split())}
        if not body.get("stream"):
            message = {"role": "assistant", "content": answer}
            return JSONResponse({**common, "object": "chat.completion", "choices": [{"index": 0, "message": message, "finish_reason": "stop"}], "usage": usage})

        def events() -> Any:
            chunk = {**common, "object": "chat.completion.chunk"}
            pieces = answer.split(" ")
            for i, piece in enumerate(pieces):
                delta = {"content": piece if i == 0 else " " + piece, **({"role": "assistant"} if i == 0 else {})}
                yield f"data: {json.dumps({**chunk, 'choices': [{'index': 0, 'delta': delta, 'finish_reason': None}]})}\n\n"
            final = {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            if (body.get("stream_options") or {}).get("include_usage"):
                final["usage"] = usage
            yield f"data: {json.dumps(final)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    routes = [Route("/v1/models", models, methods=["GET"]), Route("/v1/chat/completions", chat, methods=["POST"])]
    return Starlette(routes=routes)


class StandinCloud:
    """Start the stand-in server as a subprocess; use as a context manager so it always stops."""

    def __init__(
        self,
        *,
        port: int | None = None,
        record: Path | None = None,
        n_threads: int = 1,
        n_ctx: int = 2048,
        answers: Path | None = None,
    ) -> None:
        self.port = port or _free_port()
        self.answers = answers
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

    def start(self, timeout_s: float = 120.0) -> StandinCloud:
        self.record.parent.mkdir(parents=True, exist_ok=True)
        self.record.touch()
        cmd = [
            sys.executable, "-m", "evals.standin_cloud",
            "--port", str(self.port), "--record", str(self.record),
            "--n-threads", str(self._n_threads), "--n-ctx", str(self._n_ctx),
        ]  # fmt: skip
        if self.answers is not None:
            cmd += ["--answers", str(self.answers)]
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--record", type=Path, required=True, help="JSONL file every request body is appended to")
    parser.add_argument("--model", default=None, help="GGUF file (default: the packaged Gemma 3 270M)")
    parser.add_argument("--n-threads", type=int, default=1)
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--answers", type=Path, help="recorded-answer mode: JSONL of {query, answer}; no model runs")
    args = parser.parse_args(argv)

    import uvicorn

    if args.answers is not None:
        app = build_recorded_app(load_recorded_answers(args.answers), args.record)
        uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
        return

    from router.backends import packaged_model_path

    model = args.model or str(packaged_model_path())
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app = build_app(model, args.record, args.n_threads, args.n_ctx)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
