"""Running the gateway: inside an existing asyncio loop, or in a thread of its own.

``start_gateway`` binds the listening socket in the caller's loop (``replygate
serve`` runs the gateway beside the engine and outbound workers in one loop)
and returns a ``Gateway`` to ``stop()``. Port 0 binds an ephemeral port,
reported as ``Gateway.port``. ``GatewayThread`` runs the same server on a
loop in a background thread, for callers that block, such as ``smtplib``
tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from types import TracebackType
from typing import AnyStr, Self
from weakref import WeakSet

from aiosmtpd.smtp import SMTP
from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.gateway.handler import GatewayHandler

IDENT = "replygate"
STOP_GRACE_SECONDS = 5.0


class GatewaySMTP(SMTP):
    """aiosmtpd's protocol with its own size refusals answered from our catalogue.

    aiosmtpd enforces ``data_size_limit`` itself (at ``MAIL FROM ... SIZE=``
    and while reading DATA, without buffering the excess) but answers with no
    enhanced status code; those two replies are the only ones rewritten.
    """

    event_handler: GatewayHandler

    async def push(self, status: AnyStr) -> None:
        if isinstance(status, str) and status.startswith("552 Error:"):
            status = self.event_handler.refused_oversize(self.session, self.envelope)
        await super().push(status)


def protocol_factory(settings: Settings, handler: GatewayHandler) -> Callable[[], GatewaySMTP]:
    """A new protocol per connection, all sharing ``handler``."""

    def make() -> GatewaySMTP:
        return GatewaySMTP(
            handler,
            data_size_limit=settings.max_message_size,  # advertised as SIZE in EHLO
            hostname=settings.smtp_hostname,  # no getfqdn() per connection
            ident=IDENT,
            enable_SMTPUTF8=True,
            decode_data=False,  # keep the raw bytes exactly as received
            loop=asyncio.get_running_loop(),
        )

    return make


class Gateway:
    """The listening SMTP server in the current loop; ``start`` then ``stop``."""

    def __init__(
        self,
        settings: Settings,
        factory: sessionmaker[Session],
        *,
        host: str | None = None,
        port: int | None = None,
        handler: GatewayHandler | None = None,
    ) -> None:
        self.settings = settings
        self.host = settings.smtp_host if host is None else host
        self.port = settings.smtp_port if port is None else port
        self.handler = handler or GatewayHandler(settings, factory)
        self._server: asyncio.Server | None = None
        self._connections: WeakSet[GatewaySMTP] = WeakSet()

    async def start(self) -> None:
        """Bind and listen; ``port`` then holds the bound port (useful with port 0)."""
        make = protocol_factory(self.settings, self.handler)

        def tracked() -> GatewaySMTP:
            protocol = make()
            self._connections.add(protocol)
            return protocol

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(tracked, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Stop listening and close open connections.

        A client cut off mid-transaction got no 250, so its MTA retries:
        nothing is lost (a message committed just before the cut is filed
        once by the engine's duplicate check).
        """
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for protocol in list(self._connections):
            if protocol.transport is not None:
                protocol.transport.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), grace)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


async def start_gateway(
    settings: Settings,
    factory: sessionmaker[Session],
    *,
    host: str | None = None,
    port: int | None = None,
) -> Gateway:
    """Start the gateway in the running loop (defaults: ``settings.smtp_host/smtp_port``)."""
    gateway = Gateway(settings, factory, host=host, port=port)
    await gateway.start()
    return gateway


class GatewayThread:
    """The gateway on its own loop in a daemon thread, for blocking callers.

    ``start()`` returns once the socket is bound and gives the port.
    """

    def __init__(
        self,
        settings: Settings,
        factory: sessionmaker[Session],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.settings = settings
        self.factory = factory
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._gateway: Gateway | None = None

    def start(self, timeout: float = 10.0) -> int:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="gateway", daemon=True)
        self._thread.start()
        self._gateway = Gateway(self.settings, self.factory, host=self.host, port=self.port)
        asyncio.run_coroutine_threadsafe(self._gateway.start(), loop).result(timeout)
        self.port = self._gateway.port
        return self.port

    def stop(self, timeout: float = 10.0) -> None:
        loop, gateway, thread = self._loop, self._gateway, self._thread
        if loop is None or gateway is None or thread is None:
            return
        self._loop = self._gateway = self._thread = None
        try:
            asyncio.run_coroutine_threadsafe(gateway.stop(), loop).result(timeout)
            asyncio.run_coroutine_threadsafe(loop.shutdown_default_executor(), loop).result(timeout)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)
            loop.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
