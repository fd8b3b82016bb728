"""Running the app under uvicorn, with readiness that drops the moment SIGTERM arrives."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import uvicorn

    from router.client import Client

__all__ = ["build_server", "run"]


def build_server(
    client: Client, *, host: str | None = None, port: int | None = None, log_level: str = "info", warm: bool = True
) -> uvicorn.Server:
    """A uvicorn server for ``client``'s app; ``server.run()`` serves until SIGTERM/SIGINT.

    On the signal, ``/ready`` turns 503 at once (a load balancer stops sending), new requests get
    503 "draining", and requests in flight get ``server.drain_s`` seconds to finish.
    """
    import uvicorn
    from sse_starlette.sse import AppStatus

    from router.server.app import create_app

    # sse-starlette ends every open stream the moment uvicorn sees SIGTERM; here a stream in flight
    # is a request in flight, drained like the others within uvicorn's graceful-shutdown timeout.
    AppStatus.disable_automatic_graceful_drain()
    settings = client.config.server
    app = create_app(client, warm=warm)
    state = app.state.router

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            state.draining, state.ready = True, False
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app, host=host or settings.host, port=settings.port if port is None else port, log_level=log_level,
        timeout_graceful_shutdown=max(1, round(settings.drain_s)), access_log=False, lifespan="on",
    )  # fmt: skip
    return DrainingServer(config)


def run(client: Client, *, host: str | None = None, port: int | None = None, log_level: str = "info") -> None:
    """Serve ``client`` until SIGTERM/SIGINT (see :func:`build_server`)."""
    build_server(client, host=host, port=port, log_level=log_level).run()
