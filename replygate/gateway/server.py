"""Running the gateway: inside an existing asyncio loop, or in a thread of its own.

``start_gateway`` binds the listening socket in the caller's loop (``replygate
serve`` runs the gateway beside the engine and outbound workers in one loop)
and returns a ``Gateway`` to ``stop()``. Port 0 binds an ephemeral port,
reported as ``Gateway.port``. ``GatewayThread`` runs the same server on a
loop in a background thread, for callers that block, such as ``smtplib``
tests.

Options from the settings: STARTTLS when ``smtp_tls_cert`` and
``smtp_tls_key`` name a PEM certificate and key (required before MAIL with
``smtp_require_starttls``); a PROXY protocol header expected first on every
connection with ``smtp_proxy_protocol`` (the gateway must then be reachable
from the load balancer only: whoever connects may name any client).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import socket
import ssl
import sys
import threading
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, AnyStr, Self

from aiosmtpd.proxy_protocol import get_proxy
from aiosmtpd.smtp import (
    ALLOWED_BEFORE_STARTTLS,
    BOGUS_LIMIT,
    MISSING,
    SMTP,
    Envelope,
    TLSSetupException,
    _AuthMechAttr,
    login_always_fail,
)
from aiosmtpd.smtp import Session as SMTPSession
from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.errors import ConfigError
from replygate.gateway import replies
from replygate.gateway.data import DataReader, DataState
from replygate.gateway.handler import GatewayHandler
from replygate.gateway.limits import ByteBudget, Sessions

IDENT = "replygate"
STOP_GRACE_SECONDS = 5.0
REUSE_PORT = sys.platform == "linux"
GIL_SWITCH_SECONDS = 0.001
BACKLOG = 1024
# What a DATA transaction reserves when MAIL FROM declared no SIZE, and the
# least it grows by; most replies are a few kilobytes.
INITIAL_RESERVE = 64 * 1024
GROW_STEP = 256 * 1024
# How long a DATA command waits for room in the byte budget before 452 4.3.1
# (Postfix waits 120 s for the reply to DATA).
BUDGET_WAIT_SECONDS = 60.0
# StreamReader.read(n) takes at most n bytes; this takes the whole buffer, so
# bytes read past the end of data can be handed back in order (feed_data).
READ_ALL = 1 << 30
# How long a connection may take to send its PROXY header (aiosmtpd warns below 3 s).
PROXY_TIMEOUT_SECONDS = 10.0
# Extensions the EHLO reply adds to aiosmtpd's (RFC 2034).
EXTENSIONS = ("250-ENHANCEDSTATUSCODES",)
# Entries kept in the per-gateway memo tables (parsed addresses, reply lines);
# a burst repeats the same few, and a full table is simply emptied.
MEMO_SIZE = 4096


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


async def ehlo_extensions(
    server: SMTP, session: SMTPSession, envelope: Envelope, hostname: str, lines: list[str]
) -> list[str]:
    """aiosmtpd's EHLO reply plus ours, less AUTH (no mechanism here ever succeeds)."""
    session.host_name = hostname
    *head, last = lines
    return [*(line for line in head if not line.startswith("250-AUTH")), *EXTENSIONS, last]


def declared_size(mail_options: list[str]) -> int:
    """The ``SIZE=`` a client declared at MAIL FROM (RFC 1870), or 0."""
    for option in mail_options:
        name, _, value = option.partition("=")
        if name.upper() == "SIZE" and value.isdigit():
            return int(value)
    return 0


@dataclass
class Shared:
    """What every connection of one gateway shares, built once.

    aiosmtpd 1.4.6 rebuilds its hook and method tables with ``dir()`` and
    ``inspect.getmembers()`` in every connection's ``__init__``; here they
    are computed once per gateway and only bound per connection.
    """

    settings: Settings
    handler: GatewayHandler
    sessions: Sessions
    budget: ByteBudget
    tls_context: ssl.SSLContext | None = None
    handle_hooks: dict[str, Callable[..., Any]] = field(default_factory=dict)
    smtp_methods: dict[str, Callable[..., Any]] = field(default_factory=dict)
    auth_methods: dict[str, tuple[Callable[..., Any], bool]] = field(default_factory=dict)
    # aiosmtpd parses MAIL/RCPT paths with the email package's header parser
    # (and defines a typing.Protocol class on every call); a pure function of
    # the argument, so remembered.
    addresses: dict[tuple[str, int], tuple[str | None, str | None]] = field(default_factory=dict)
    # Reply lines with their enhanced status code (``replies.with_status``).
    statuses: dict[str, str] = field(default_factory=dict)
    # The attributes every connection starts with, set in one dict update.
    constants: dict[str, Any] = field(default_factory=dict)
    # The open connections, for ``Gateway.stop`` to close.
    open: set[GatewaySMTP] = field(default_factory=set)

    def connection_constants(self) -> dict[str, Any]:
        """What ``SMTP.__init__`` would set on each connection, less the per-connection tables."""
        settings = self.settings
        return {
            "admitted": False,
            "__ident__": IDENT,
            "event_handler": self.handler,
            "data_size_limit": settings.max_message_size,  # advertised as SIZE in EHLO
            "enable_SMTPUTF8": True,
            "_decode_data": False,  # keep the raw bytes exactly as received
            "hostname": settings.smtp_hostname or socket.getfqdn(),
            "tls_context": self.tls_context,
            "require_starttls": bool(self.tls_context and settings.smtp_require_starttls),
            "_timeout_duration": settings.smtp_command_timeout,
            "_data_timeout": settings.smtp_data_timeout,
            "_in_data": False,
            "_counted": False,
            "_timeout_handle": None,
            "_tls_handshake_okay": True,
            "_tls_protocol": None,
            "_original_transport": None,
            "session": None,
            "envelope": None,
            "transport": None,
            "_handler_coroutine": None,
            "_auth_require_tls": True,
            "_proxy_timeout": PROXY_TIMEOUT_SECONDS if settings.smtp_proxy_protocol else None,
            "_authenticator": None,
            "_auth_callback": login_always_fail,
            "_auth_required": False,
            "_handle_hooks": self.handle_hooks,
            "_ehlo_hook_ver": "new",
            "_enforce_call_limit": False,
            "_deadline": 0.0,  # when the idle timer really expires (see _reset_timeout)
            "_timer_at": 0.0,  # when the scheduled timer handle fires
        }

    @classmethod
    def build(cls, settings: Settings, handler: GatewayHandler) -> Shared:
        shared = cls(
            settings=settings,
            handler=handler,
            sessions=Sessions(settings.smtp_max_sessions),
            budget=ByteBudget(settings.smtp_max_bytes_in_flight),
            tls_context=tls_context(settings),
        )
        shared.handle_hooks = {
            name.removeprefix("handle_"): getattr(handler, name)
            for name in dir(handler)
            if name.startswith("handle_")
        }
        if "EHLO" in shared.handle_hooks:  # pragma: no cover - our handler has none
            raise RuntimeError("GatewaySMTP does not support a handle_EHLO hook")
        shared.handle_hooks["EHLO"] = ehlo_extensions
        shared.smtp_methods = {
            name.removeprefix("smtp_"): getattr(GatewaySMTP, name)
            for name in dir(GatewaySMTP)
            if name.startswith("smtp_")
        }
        # aiosmtpd's own AUTH mechanisms (never offered: no TLS, AUTH not required),
        # kept so the protocol answers AUTH exactly as the stock server does.
        shared.auth_methods = {
            getattr(func, "__auth_mechanism_name__", name[5:].replace("__", "-")): (func, True)
            for name in dir(GatewaySMTP)
            if name.startswith("auth_") and callable(func := getattr(GatewaySMTP, name))
        }
        for name in dir(handler):
            if name.startswith("auth_"):  # pragma: no cover - our handler has none
                func = getattr(handler, name)
                mech = getattr(func, "__auth_mechanism_name__", name[5:].replace("__", "-"))
                shared.auth_methods[mech] = (func, False)
        shared.constants = shared.connection_constants()
        return shared


class BoundCommands(dict[str, Any]):
    """aiosmtpd's ``_smtp_methods`` for one connection, bound on lookup.

    The same keys as the stock table; binding the dozen command methods of
    every connection up front is work most never use (a delivery sends five).
    """

    __slots__ = ("owner",)

    def __init__(self, functions: dict[str, Callable[..., Any]], owner: GatewaySMTP) -> None:
        super().__init__(functions)
        self.owner = owner

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        func = dict.get(self, name)
        return default if func is None else types.MethodType(func, self.owner)

    def __getitem__(self, name: str) -> Any:
        return types.MethodType(dict.__getitem__(self, name), self.owner)

    def items(self) -> Any:  # type: ignore[override]
        return [(name, types.MethodType(func, self.owner)) for name, func in dict.items(self)]

    def values(self) -> Any:  # type: ignore[override]
        return [types.MethodType(func, self.owner) for func in dict.values(self)]


class BoundMechanisms(dict[str, Any]):
    """aiosmtpd's ``_auth_methods`` for one connection, built on lookup (AUTH is never
    offered here, so most connections never look)."""

    __slots__ = ("owner",)

    def __init__(
        self, mechanisms: dict[str, tuple[Callable[..., Any], bool]], owner: GatewaySMTP
    ) -> None:
        super().__init__(mechanisms)
        self.owner = owner

    def _bind(self, entry: tuple[Callable[..., Any], bool]) -> _AuthMechAttr:
        func, builtin = entry
        return _AuthMechAttr(types.MethodType(func, self.owner) if builtin else func, builtin)

    def __getitem__(self, name: str) -> _AuthMechAttr:
        return self._bind(dict.__getitem__(self, name))

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        entry = dict.get(self, name)
        return default if entry is None else self._bind(entry)

    def items(self) -> Any:  # type: ignore[override]
        return [(name, self._bind(entry)) for name, entry in dict.items(self)]

    def values(self) -> Any:  # type: ignore[override]
        return [self._bind(entry) for entry in dict.values(self)]

    def pop(self, name: str, *default: Any) -> Any:
        entry = dict.pop(self, name, *default)
        return self._bind(entry) if isinstance(entry, tuple) else entry


class GatewaySMTP(SMTP):
    """aiosmtpd's protocol with a fast DATA reader, limits, and our catalogue's replies.

    - ``__init__`` sets what ``SMTP.__init__`` sets, from tables built once
      (``Shared``), without ``socket.getfqdn()``;
    - ``smtp_DATA`` reads the body in chunks (``data.DataReader``) under the
      byte budget;
    - connections over the cap hear ``421 4.3.2`` before the greeting, and
      clients in their throttling cool-down ``421 4.7.0``;
    - a client silent past the command timeout, or inside DATA past the
      data timeout, hears ``421 4.4.2`` before the connection is closed;
    - every reply carries an enhanced status code: aiosmtpd's own replies
      get theirs from the catalogue (``replies.with_status``), and its size
      refusal at ``MAIL FROM ... SIZE=`` becomes the catalogue's whole reply.
    """

    event_handler: GatewayHandler

    def __init__(self, shared: Shared, loop: asyncio.AbstractEventLoop) -> None:
        asyncio.StreamReaderProtocol.__init__(
            self,
            asyncio.StreamReader(loop=loop, limit=self.line_length_limit),
            client_connected_cb=self._cb_client_connected,
            loop=loop,
        )
        self.__dict__.update(shared.constants)
        self.shared = shared
        self.loop = loop
        # Per connection (stock aiosmtpd clears one class-wide dict that every
        # connection's EHLO then adds to).
        self.command_size_limits = collections.defaultdict(lambda: SMTP.command_size_limit)
        self._auth_methods = BoundMechanisms(shared.auth_methods, self)
        self._smtp_methods = BoundCommands(shared.smtp_methods, self)
        self._continued: list[str] = []  # lines of a multi-line reply not yet sent

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None:  # not the second call, made when STARTTLS completes
            self.admitted = self.shared.sessions.enter()
            self._counted = True
            self.shared.open.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        try:
            super().connection_lost(error)
        finally:
            if self._counted:  # aiosmtpd calls it twice after a failed TLS handshake
                self._counted = False
                self.shared.sessions.leave()
                self.shared.open.discard(self)

    async def _handle_client(self) -> None:
        handler = self.event_handler
        refusal = None
        if not self.admitted:
            refusal = handler.refused_busy(self.session)
        elif self._proxy_timeout is None:  # else the client is known after the PROXY header
            refusal = handler.refused_at_connect(self.session)
        if refusal is not None:
            await self.push(refusal)
            if self.transport is not None:
                self.transport.close()
            return
        try:
            await self._serve()
        except (asyncio.IncompleteReadError, ConnectionError):
            # Gone before its PROXY header was complete (aiosmtpd reads it outside
            # its own error handling); nothing to answer.
            if self.transport is not None:
                self.transport.close()

    async def _serve(self) -> None:
        """aiosmtpd 1.4.6's ``_handle_client``, without its per-line logging.

        The stock loop formats and sanitises every command line twice for
        log records that are then dropped; without them a delivery costs
        about a tenth less CPU. Replies and their order are unchanged
        (``tests/gateway/test_data.py`` runs the same script against both).
        Per-command call limits are off here, so their branch is left out.
        """
        session = self.session
        if self._proxy_timeout is not None:
            self._reset_timeout(self._proxy_timeout)
            session.proxy_data = await get_proxy(self._reader)
            status = False
            if session.proxy_data:
                status = await self._call_handler_hook("PROXY", session.proxy_data)
            if status is MISSING or not status:
                self.transport.close()
                return
            self._reset_timeout()
        await self.push(f"220 {self.hostname} {self.__ident__}")
        bogus_budget = BOGUS_LIMIT
        reader = self._reader
        while self.transport is not None:
            try:
                try:
                    line: bytes = await reader.readuntil()
                except asyncio.LimitOverrunError as error:
                    # Line too long: read to its end, then refuse it.
                    await reader.read(error.consumed)
                    while True:
                        try:
                            await reader.readuntil()
                            break
                        except asyncio.LimitOverrunError as more:
                            await reader.read(more.consumed)
                    await self.push("500 Command line too long")
                    continue
                line = line.rstrip(b"\r\n")
                if not line:
                    await self.push("500 Error: bad syntax")
                    continue
                command_bytes, _, arg_bytes = line.partition(b" ")
                try:
                    command = command_bytes.upper().decode("ascii")
                except UnicodeDecodeError:
                    await self.push("500 Error: bad syntax")
                    continue
                arg: str | None = None
                if arg_bytes:
                    # enable_SMTPUTF8 is always on here: undecodable bytes survive
                    # as surrogates and are re-encoded when the command is handled.
                    arg = str(arg_bytes.strip(), encoding="utf-8", errors="surrogateescape")
                if session.extended_smtp:
                    max_size = self.command_size_limits[command]
                else:
                    max_size = self.command_size_limit
                if len(line) > max_size:
                    await self.push("500 Command line too long")
                    continue
                if not self._tls_handshake_okay and command != "QUIT":
                    await self.push("554 Command refused due to lack of security")
                    continue
                if (
                    self.require_starttls
                    and not self._tls_protocol
                    and command not in ALLOWED_BEFORE_STARTTLS
                ):
                    await self.push("530 Must issue a STARTTLS command first")
                    continue
                method = self._smtp_methods.get(command)
                if method is None:
                    bogus_budget -= 1
                    if bogus_budget < 1:
                        await self.push("502 5.5.1 Too many unrecognized commands, goodbye.")
                        self.transport.close()
                        continue
                    await self.push(f'500 Error: command "{command}" not recognized')
                    continue
                self._reset_timeout()
                await method(arg)
            except (asyncio.CancelledError, ConnectionResetError):
                self._writer.close()
                raise
            except Exception as error:
                await self._answer_error(error)
            # The session object changes on STARTTLS (aiosmtpd starts a new one).
            session = self.session

    async def _answer_error(self, error: Exception) -> None:
        """What aiosmtpd answers when a command raised."""
        status = None
        try:
            status = await self.handle_exception(error)
        except Exception as inner:
            try:
                status = f"500 Error: ({inner.__class__.__name__}) {inner}"
            except Exception:
                status = "500 Error: Cannot describe error"
        finally:
            if isinstance(error, TLSSetupException):
                self.transport.close()
                self.connection_lost(error)
            else:
                await self.push(status)

    def _reset_timeout(self, duration: float | None = None) -> None:
        """Push the idle deadline back, re-arming the timer only when it must fire sooner.

        aiosmtpd cancels and schedules a timer for every command; here a
        timer that fires before the deadline schedules itself again
        (``_timer_fired``), so the expiry time is the same.
        """
        loop = self.loop
        deadline = loop.time() + (duration or self._timeout_duration)
        self._deadline = deadline
        handle = self._timeout_handle
        if handle is not None and not handle.cancelled() and self._timer_at <= deadline:
            return
        if handle is not None:
            handle.cancel()
        self._timer_at = deadline
        self._timeout_handle = loop.call_at(deadline, self._timer_fired)

    def _timer_fired(self) -> None:
        if self.loop.time() < self._deadline:
            self._timer_at = self._deadline
            self._timeout_handle = self.loop.call_at(self._deadline, self._timer_fired)
            return
        self._timer_at = math.inf  # spent: the next reset schedules a new one
        self._timeout_cb()

    def _timeout_cb(self) -> None:
        """Say why before closing an idle connection (aiosmtpd closes it silently)."""
        transport = self.transport
        if transport is None:
            return
        waiting_for_proxy = self._proxy_timeout is not None and self.session.proxy_data is None
        if not waiting_for_proxy and not transport.is_closing():
            line = self.event_handler.timed_out(self.session, self.envelope, in_data=self._in_data)
            transport.write(line.encode("ascii") + b"\r\n")
        transport.close()

    async def push(self, status: AnyStr) -> None:
        """Send a reply line; the lines of a multi-line reply (EHLO) go out in one write.

        aiosmtpd writes and drains each line of its EHLO reply alone: six
        system calls where one sends the same bytes.
        """
        if isinstance(status, str):
            if status.startswith("552 Error:"):
                status = self.event_handler.refused_oversize(self.session, self.envelope)
            else:
                status = self._with_status(status)
            if status[3:4] == "-":
                self._continued.append(status)
                return
            if self._continued:
                status = "\r\n".join([*self._continued, status])
                self._continued.clear()
            status = status.encode()  # enable_SMTPUTF8 is on: aiosmtpd encodes as UTF-8
        self._writer.write(status + b"\r\n")
        await self._writer.drain()

    def _with_status(self, line: str) -> str:
        statuses = self.shared.statuses
        found = statuses.get(line)
        if found is None:
            found = replies.with_status(line)
            if len(statuses) >= MEMO_SIZE:
                statuses.clear()
            statuses[line] = found
        return found

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's path parsing, remembered per argument."""
        memo = self.shared.addresses
        key = (arg, self.local_part_limit)
        found = memo.get(key)
        if found is None:
            found = super()._getaddr(arg)
            if len(memo) >= MEMO_SIZE:
                memo.clear()
            memo[key] = found
        return found

    async def smtp_DATA(self, arg: str) -> None:
        """DATA as aiosmtpd 1.4.6 answers it, reading the body in chunks."""
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        budget = self.shared.budget
        wanted = declared_size(self.envelope.mail_options) or INITIAL_RESERVE
        held = await budget.take(wanted, BUDGET_WAIT_SECONDS)
        if not held:
            await self.push(self.event_handler.refused_no_room(self.session, self.envelope))
            return
        self._in_data = True
        try:
            status = await self._receive(held)
        finally:
            self._in_data = False
            budget.give(self._held)
        if status is None:
            return
        self._set_post_data_state()
        await self.push(status)
        self._reset_timeout()  # the command timeout runs again from the reply

    async def _receive(self, held: int) -> str | None:
        """Read one body and hand it to the handler; the reply, or None if the
        connection went away."""
        assert self.envelope is not None
        self._held = held
        budget = self.shared.budget
        reader = DataReader(self.data_size_limit)
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        stream = self._reader
        data_timeout = self._data_timeout
        while not reader.done:
            self._reset_timeout(data_timeout)  # idle time: a slow link is not a stalled one
            chunk = await stream.read(READ_ALL)
            if not chunk:  # the client went away mid-message: no reply to give
                self._writer.close()
                return None
            used = reader.feed(chunk)
            if used < len(chunk) and not stream.at_eof():
                stream.feed_data(chunk[used:])  # the next command, pipelined
            if reader.state is DataState.NOMINAL and reader.size > self._held:
                grow = max(reader.size - self._held, GROW_STEP)
                if budget.try_take(grow):
                    self._held += grow
                else:
                    reader.refuse(DataState.NO_ROOM)
        handler = self.event_handler
        if reader.state is DataState.TOO_LONG:
            return handler.refused_line_too_long(self.session, self.envelope)
        if reader.state is DataState.TOO_MUCH:
            return handler.refused_oversize(self.session, self.envelope)
        if reader.state is DataState.NO_ROOM:
            return handler.refused_no_room(self.session, self.envelope)
        raw = reader.content()
        self.envelope.content = raw
        self.envelope.original_content = raw
        status = await self._call_handler_hook("DATA")
        return "250 OK" if status is MISSING else status


def protocol_factory(settings: Settings, handler: GatewayHandler) -> Callable[[], GatewaySMTP]:
    """A new protocol per connection, all sharing ``handler`` and the limits."""
    shared = Shared.build(settings, handler)

    def make() -> GatewaySMTP:
        return GatewaySMTP(shared, asyncio.get_running_loop())

    make.shared = shared  # type: ignore[attr-defined]
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
        self._open: set[GatewaySMTP] = set()

    async def start(self) -> None:
        """Bind and listen; ``port`` then holds the bound port (useful with port 0)."""
        # The writer and lookup threads wait for the GIL after every database
        # round trip; the default 5 ms hand-over would dominate their latency.
        sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_SECONDS))
        make = protocol_factory(self.settings, self.handler)
        self._open = make.shared.open  # type: ignore[attr-defined]
        loop = asyncio.get_running_loop()
        # SO_REUSEPORT: several gateway processes on one host share the port and
        # the kernel spreads connections over them.
        self._server = await loop.create_server(
            make, self.host, self.port, reuse_port=REUSE_PORT, backlog=BACKLOG
        )
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
        for protocol in list(self._open):
            if protocol.transport is not None:
                protocol.transport.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), grace)
        await asyncio.to_thread(self.handler.close)

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
