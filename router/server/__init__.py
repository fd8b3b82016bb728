"""``router serve``: the router's routing behind OpenAI's HTTP API, for applications in any language.

FastAPI and uvicorn come with ``llama-cpp-python[server]``; they load only when a server starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hybrid_common.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "create_app": "router.server.app",
    "ServerState": "router.server.app",
    "Metrics": "router.server.metrics",
    "build_server": "router.server.run",
    "run": "router.server.run",
}

__all__, __getattr__, __dir__ = lazy_exports("router.server", _EXPORTS, globals())

if TYPE_CHECKING:
    from router.server.app import ServerState, create_app
    from router.server.metrics import Metrics
    from router.server.run import build_server, run
