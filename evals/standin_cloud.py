"""A real OpenAI-compatible server on 127.0.0.1 that stands in for the cloud in tests and the demo.

It is llama-cpp-python's own server (``llama_cpp.server``) running the packaged GGUF, reached
through litellm exactly as a cloud provider is. It adds one thing: every request body it receives
is appended to a JSONL file, so tests can prove what did, and did not, leave the router.

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

__all__ = ["STANDIN_MODEL", "StandinCloud", "main"]

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


class StandinCloud:
    """Start the stand-in server as a subprocess; use as a context manager so it always stops."""

    def __init__(self, *, port: int | None = None, record: Path | None = None, n_threads: int = 1, n_ctx: int = 2048) -> None:
        self.port = port or _free_port()
        self.record = record or Path(tempfile.mkdtemp(prefix="standin-")) / "requests.jsonl"
        self._n_threads = n_threads
        self._n_ctx = n_ctx
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def litellm_model(self) -> str:
        return f"openai/{STANDIN_MODEL}"

    def start(self, timeout_s: float = 120.0) -> StandinCloud:
        self.record.parent.mkdir(parents=True, exist_ok=True)
        self.record.touch()
        cmd = [
            sys.executable, "-m", "evals.standin_cloud",
            "--port", str(self.port), "--record", str(self.record),
            "--n-threads", str(self._n_threads), "--n-ctx", str(self._n_ctx),
        ]  # fmt: skip
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
    args = parser.parse_args(argv)

    import uvicorn

    from router.backends.llama_cpp import packaged_model_path

    model = args.model or str(packaged_model_path())
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app = build_app(model, args.record, args.n_threads, args.n_ctx)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
