"""``router serve`` as a subprocess, the way an operator runs it: for benchmarks that load it over HTTP."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

__all__ = ["router_serve"]


@contextlib.contextmanager
def router_serve(config: Path, port: int, *, log_level: str = "warning", ready_timeout_s: float = 180) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Start ``router --config CONFIG serve``, wait until ``/ready`` says 200, yield (base URL, process).

    The process is stopped on exit if it is still running (a caller may have killed it itself).
    """
    server = subprocess.Popen([str(Path(sys.executable).with_name("router")), "--config", str(config), "serve", "--log-level", log_level])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("router serve did not become ready")
            time.sleep(0.2)
        yield url, server
    finally:
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(30)
