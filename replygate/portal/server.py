"""Running the portal inside the caller's event loop.

``replygate serve`` runs the SMTP gateway, the workers and the portal on one
asyncio loop, so uvicorn must not install signal handlers of its own: the
command owns SIGINT/SIGTERM and tells us to stop through an ``asyncio.Event``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Iterator

import uvicorn
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp

from replygate.config import Settings
from replygate.logs import get_logger
from replygate.portal.app import create_app

log = get_logger("replygate.portal")


class PortalServer(uvicorn.Server):
    """A uvicorn server that leaves signals alone and reports when it listens."""

    def __init__(
        self, config: uvicorn.Config, on_started: Callable[[], None] | None = None
    ) -> None:
        super().__init__(config)
        self._on_started = on_started

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def install_signal_handlers(self) -> None:  # older uvicorn releases call this instead
        return None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets=sockets)
        except SystemExit as exc:
            # uvicorn exits the process when it cannot bind; in a shared loop that
            # would take the gateway down with it, so report an error instead.
            where = f"{self.config.host}:{self.config.port}"
            raise OSError(f"the portal could not listen on {where}") from exc
        if self.started and self._on_started is not None:
            self._on_started()

    @property
    def bound_port(self) -> int | None:
        """The port actually listened on (useful when asked for port 0)."""
        for server in getattr(self, "servers", []):
            for sock in server.sockets:
                return sock.getsockname()[1]
        return None


def portal_config(app: ASGIApp, host: str, port: int) -> uvicorn.Config:
    """uvicorn settings: our own logging stays in charge, no lifespan, no proxy headers.

    The app believes X-Forwarded-For only from the proxies the operator
    trusts (``create_app``); uvicorn's default would take it from any local
    process.
    """
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="off",
        server_header=False,
        proxy_headers=False,
    )


async def run_portal(
    settings: Settings,
    factory: sessionmaker[Session],
    stop: asyncio.Event,
    *,
    host: str | None = None,
    port: int | None = None,
    started: asyncio.Event | None = None,
    sock: socket.socket | None = None,
) -> None:
    """Serve the portal until ``stop`` is set; ``started`` is set once it listens.

    ``sock``, when given, is the socket already bound to ``host:port`` (``serve``
    binds it before anything starts, so a port taken is one clear error).
    Otherwise raises ``OSError`` if the address cannot be bound (uvicorn reports
    that by exiting, which we turn into an error the caller can show).
    """
    host = host or settings.portal_host
    port = settings.portal_port if port is None else port

    def listening() -> None:
        log.debug("portal.bound", host=host, port=server.bound_port)
        if started is not None:
            started.set()

    server = PortalServer(
        portal_config(create_app(settings, factory), host, port), on_started=listening
    )
    sockets = None if sock is None else [sock]
    serving = asyncio.create_task(server.serve(sockets=sockets), name="portal")
    stopping = asyncio.create_task(stop.wait(), name="portal-stop")
    try:
        done, _ = await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if serving in done:
            serving.result()
            if not server.started:
                raise OSError(f"the portal could not listen on {host}:{port}")
            return
        log.debug("portal.stopping")
        server.should_exit = True
        await serving
    except BaseException:
        # Cancelled or failed: make sure no server task is left running.
        server.should_exit = True
        if not serving.done():
            serving.cancel()
            with contextlib.suppress(BaseException):
                await serving
        raise
    finally:
        stopping.cancel()
