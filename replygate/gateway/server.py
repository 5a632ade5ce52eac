"""Running the gateway: inside an existing asyncio loop, or in a thread of its own.

``start_gateway`` binds the listening socket in the caller's loop (``replygate
serve`` runs the gateway beside the engine and outbound workers in one loop)
and returns a ``Gateway`` to ``stop()``. Port 0 binds an ephemeral port,
reported as ``Gateway.port``. ``GatewayThread`` runs the same server on a
loop in a background thread, for callers that block, such as ``smtplib``
tests. Each connection is a ``protocol.GatewaySMTP``.

Options from the settings: STARTTLS when ``smtp_tls_cert`` and
``smtp_tls_key`` name a PEM certificate and key (required before MAIL with
``smtp_require_starttls``); a PROXY protocol header expected first on every
connection with ``smtp_proxy_protocol`` (the gateway must then be reachable
from the load balancer only: whoever connects may name any client).

Port sharing is opt-in (``reuse_port``, ``serve --reuse-port``): several
gateway processes of one deployment on one host then share the port and the
kernel spreads connections over them. Without it a port already taken is a
``StartupError``, never a second server silently taking half the mail.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ssl
import sys
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Self

from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.errors import ConfigError, StartupError
from replygate.gateway.handler import GatewayHandler
from replygate.gateway.protocol import GatewaySMTP, check_aiosmtpd
from replygate.gateway.shared import Shared

STOP_GRACE_SECONDS = 5.0
REUSE_PORT_SUPPORTED = sys.platform == "linux"
GIL_SWITCH_SECONDS = 0.001
BACKLOG = 1024


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The server context for STARTTLS, or None when no certificate is configured."""
    cert, key = settings.smtp_tls_cert, settings.smtp_tls_key
    if not cert and not key:
        return None
    if not (cert and key):
        raise ConfigError("smtp_tls_cert and smtp_tls_key must be set together")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the gateway's TLS certificate {cert}: {exc}") from exc
    return context


def protocol_factory(settings: Settings, handler: GatewayHandler) -> Callable[[], GatewaySMTP]:
    """A new protocol per connection, all sharing ``handler`` and the limits.

    Raises ``ConfigError`` when the installed aiosmtpd is not the release the
    protocol was forked from (checked once per gateway, not per connection).
    """
    check_aiosmtpd()
    shared = Shared.build(settings, handler, GatewaySMTP, tls_context(settings))

    def make() -> GatewaySMTP:
        return GatewaySMTP(shared, asyncio.get_running_loop())

    make.shared = shared  # type: ignore[attr-defined]
    return make


def listen_failure(host: str, port: int, exc: OSError, other: str) -> str:
    """The sentence for a socket that could not be bound; ``other`` names who else
    might hold the port ("another mail server")."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return f"cannot listen on {where}: address already in use (another replygate, or {other}?)"
    if exc.errno == errno.EACCES:
        return f"cannot listen on {where}: permission denied (a port below 1024 needs privileges)"
    reason = (exc.strerror or str(exc)).lower()
    return f"cannot listen on {where}: {reason}"


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
        reuse_port: bool = False,
    ) -> None:
        self.settings = settings
        self.reuse_port = reuse_port
        self.host = settings.smtp_host if host is None else host
        self.port = settings.smtp_port if port is None else port
        self.handler = handler or GatewayHandler(settings, factory)
        self._server: asyncio.Server | None = None
        self._open: set[GatewaySMTP] = set()
        self.shared: Shared | None = None  # once started: the tables and tallies of its sessions

    async def start(self) -> None:
        """Bind and listen; ``port`` then holds the bound port (useful with port 0)."""
        # The writer and lookup threads wait for the GIL after every database
        # round trip; the default 5 ms hand-over would dominate their latency.
        sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_SECONDS))
        make = protocol_factory(self.settings, self.handler)
        self.shared = make.shared  # type: ignore[attr-defined]
        self._open = self.shared.open
        loop = asyncio.get_running_loop()
        reuse_port = self.reuse_port and REUSE_PORT_SUPPORTED
        try:
            self._server = await loop.create_server(
                make, self.host, self.port, reuse_port=reuse_port, backlog=BACKLOG
            )
        except OSError as exc:
            raise StartupError(
                listen_failure(self.host, self.port, exc, "another mail server")
            ) from exc
        self.port = self._server.sockets[0].getsockname()[1]

    def figures(self) -> tuple[dict[str, int], int, int]:
        """Replies sent (by ``replies.reply_key``), connections open and message bytes in
        memory: what ``metrics`` publishes. Read on the gateway's loop."""
        shared = self.shared
        if shared is None:
            return {}, 0, 0
        return shared.replies_sent, shared.sessions.open, shared.budget.used

    def writer_alive(self) -> bool:
        """Whether the thread that commits accepted mail is running (or not needed yet)."""
        return self.handler.writer.alive()

    async def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Drain, then stop listening and close what is left.

        Draining: new connections, and sessions between commands, hear
        ``421 4.3.2`` and are closed; a session in DATA finishes (its message
        stored and answered, then 421), for up to ``grace`` seconds. The
        listening socket stays open meanwhile, so clients get that answer
        rather than a refused connection. A client cut off mid-transaction got
        no 250, so its MTA retries: nothing is lost (a message committed just
        before the cut is filed once by the engine's duplicate check). Then
        the writer commits what is queued.
        """
        server, self._server = self._server, None
        if server is None:
            return
        shared = self.shared
        if shared is not None:
            self.handler.draining = True
            for protocol in list(self._open):
                if not protocol._in_data:
                    shared.say_goodbye(protocol)
            await self._drain(grace)
        server.close()
        for protocol in list(self._open):
            if protocol.transport is not None:
                protocol.transport.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), grace)
        await asyncio.to_thread(self.handler.close)

    async def _drain(self, grace: float) -> None:
        """Wait until the sessions in DATA have finished (each closes after its
        reply, which ends its task), or ``grace`` seconds have passed."""
        tasks = [
            p._handler_coroutine
            for p in self._open
            if p._in_data and p._handler_coroutine is not None
        ]
        if tasks:
            await asyncio.wait(tasks, timeout=grace)

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
    reuse_port: bool = False,
) -> Gateway:
    """Start the gateway in the running loop (defaults: ``settings.smtp_host/smtp_port``).

    Raises ``StartupError`` when the address cannot be bound."""
    gateway = Gateway(settings, factory, host=host, port=port, reuse_port=reuse_port)
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
