"""The gateway's SMTP protocol: aiosmtpd's ``SMTP``, forked where it was slow or silent.

``GatewaySMTP`` keeps aiosmtpd's grammar, command methods and reply order,
and replaces what cost CPU per connection or per command, or left a client
without an answer (its class docstring lists what). That makes it a fork of
aiosmtpd's internals, written against aiosmtpd ``AIOSMTPD_VERSION`` (pinned
to that exact version in pyproject.toml): ``check_aiosmtpd`` refuses to start
the gateway over any other, and ``tests/unit/gateway/test_aiosmtpd_hooks.py``
checks that every name below still exists. Upgrading aiosmtpd means reading
its changes to ``smtp.py`` against this list, then moving the pin.

The private (or undocumented) names the fork relies on, here and in
``shared`` (the tables connections share), all in ``PRIVATE_HOOKS``:

Methods of ``SMTP`` overridden
    ``_handle_client``: the command loop, copied (``_serve``) without its
    per-line logging, behind our refusals before the greeting (too many
    connections, a client in cool-down). ``_reset_timeout``: one timer,
    re-armed only when it must fire sooner. ``_timeout_cb``: a 421 before an
    idle connection is closed. ``_getaddr``: remembered per argument.

Methods of ``SMTP`` called
    ``_cb_client_connected`` (the stream callback that sets ``_reader`` and
    ``_writer``), ``_call_handler_hook`` (the handler's PROXY and DATA hooks,
    as stock calls them), ``_set_post_data_state`` (a new envelope after
    DATA).

Attributes ``SMTP.__init__`` sets
    ``SMTP.__init__`` is not called (it rebuilds its tables with ``dir()`` and
    calls ``socket.getfqdn()`` for every connection), so ``__init__`` and
    ``Shared.connection_constants`` set what it sets, which the stock command
    methods we keep then read: ``__ident__``, ``_decode_data``,
    ``_timeout_duration``, ``_timeout_handle``, ``_tls_handshake_okay``,
    ``_tls_protocol``, ``_original_transport``, ``_handler_coroutine``,
    ``_auth_require_tls``, ``_proxy_timeout``, ``_authenticator``,
    ``_auth_callback``, ``_auth_required``, ``_handle_hooks``,
    ``_ehlo_hook_ver``, ``_enforce_call_limit`` (off, so the call-limit tables
    are never read); ``_smtp_methods`` and ``_auth_methods`` are per-connection
    views of tables built once (``shared.BoundCommands``,
    ``shared.BoundMechanisms``). The loop, DATA and the timer read
    ``_proxy_timeout``, ``_tls_handshake_okay``, ``_tls_protocol``,
    ``_smtp_methods``, ``_timeout_duration`` and ``_timeout_handle``.

Attributes ``SMTP._cb_client_connected`` sets
    ``_reader`` and ``_writer``: the loop reads commands from the one (and
    DATA reads the body, handing back what follows it), replies go to the
    other.

Undocumented module names
    ``aiosmtpd.smtp.ALLOWED_BEFORE_STARTTLS`` and ``BOGUS_LIMIT`` (the loop's
    rules, with stock's values), ``_AuthMechAttr`` (the entries of
    ``_auth_methods``), ``login_always_fail`` (stock's default
    ``_auth_callback``), ``aiosmtpd.proxy_protocol.get_proxy`` (reads the
    PROXY header, as stock's loop does).
"""

from __future__ import annotations

import asyncio
import collections
import math
from typing import TYPE_CHECKING, AnyStr, cast

# aiosmtpd's undocumented names are looked up on their modules where used, so
# a release without one still imports and fails the checks, naming it.
import aiosmtpd
import aiosmtpd.proxy_protocol
import aiosmtpd.smtp
from aiosmtpd.smtp import MISSING, SMTP, TLSSetupException

from replygate.errors import ConfigError
from replygate.gateway import replies
from replygate.gateway.data import DataReader, DataState
from replygate.gateway.shared import MEMO_SIZE, BoundCommands, BoundMechanisms, Shared

if TYPE_CHECKING:  # the type only: the protocol needs no database to load
    from replygate.gateway.handler import GatewayHandler

# The aiosmtpd release whose internals this module copies; pyproject.toml pins it.
AIOSMTPD_VERSION = "1.4.6"

# Where each private name the fork relies on lives (the module docstring says why):
# a module, the ``SMTP`` class, or an ``SMTP`` instance after the method named.
PRIVATE_HOOKS: dict[str, tuple[str, ...]] = {
    "aiosmtpd.smtp": (
        "ALLOWED_BEFORE_STARTTLS",
        "BOGUS_LIMIT",
        "_AuthMechAttr",
        "login_always_fail",
    ),
    "aiosmtpd.proxy_protocol": ("get_proxy",),
    "SMTP": (
        "_handle_client",
        "_reset_timeout",
        "_timeout_cb",
        "_getaddr",
        "_cb_client_connected",
        "_call_handler_hook",
        "_set_post_data_state",
    ),
    "SMTP.__init__": (
        "__ident__",
        "_decode_data",
        "_timeout_duration",
        "_timeout_handle",
        "_tls_handshake_okay",
        "_tls_protocol",
        "_original_transport",
        "_handler_coroutine",
        "_auth_require_tls",
        "_proxy_timeout",
        "_authenticator",
        "_auth_callback",
        "_auth_required",
        "_handle_hooks",
        "_ehlo_hook_ver",
        "_enforce_call_limit",
        "_smtp_methods",
        "_auth_methods",
    ),
    "SMTP._cb_client_connected": ("_reader", "_writer"),
}

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


def check_aiosmtpd() -> None:
    """Refuse to serve over an aiosmtpd whose internals may differ from the copied ones."""
    installed = aiosmtpd.__version__
    if installed != AIOSMTPD_VERSION:
        raise ConfigError(
            f"aiosmtpd {installed} is installed, but the gateway's protocol is a fork of "
            f"aiosmtpd {AIOSMTPD_VERSION}'s internals: install aiosmtpd=={AIOSMTPD_VERSION}"
        )


def declared_size(mail_options: list[str]) -> int:
    """The ``SIZE=`` a client declared at MAIL FROM (RFC 1870), or 0."""
    for option in mail_options:
        name, _, value = option.partition("=")
        if name.upper() == "SIZE" and value.isdigit():
            return int(value)
    return 0


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
    # Set from ``Shared.constants`` (``__dict__.update``) and by the timers.
    _data_timeout: float
    _timer_at: float
    _deadline: float

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
        (``tests/integration/gateway/test_data_stock.py`` runs one script
        against both).
        Per-command call limits are off here, so their branch is left out.
        """
        session = self.session
        assert session is not None and self.transport is not None  # set on connection
        if self._proxy_timeout is not None:
            self._reset_timeout(self._proxy_timeout)
            session.proxy_data = await aiosmtpd.proxy_protocol.get_proxy(self._reader)
            status = False
            if session.proxy_data:
                status = await self._call_handler_hook("PROXY", session.proxy_data)
            if status is MISSING or not status:
                self.transport.close()
                return
            self._reset_timeout()
        await self.push(f"220 {self.hostname} {self.__ident__}")
        bogus_budget = aiosmtpd.smtp.BOGUS_LIMIT
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
                    and command not in aiosmtpd.smtp.ALLOWED_BEFORE_STARTTLS
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
            if self.session is not None:
                session = self.session

    async def _answer_error(self, error: Exception) -> None:
        """What aiosmtpd answers when a command raised."""
        status = "500 Error: Cannot describe error"
        try:
            status = await self.handle_exception(error)
        except Exception as inner:
            try:
                status = f"500 Error: ({inner.__class__.__name__}) {inner}"
            except Exception:
                status = "500 Error: Cannot describe error"
        finally:
            if isinstance(error, TLSSetupException):
                if self.transport is not None:
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
        session = self.session
        waiting_for_proxy = self._proxy_timeout is not None and (
            session is None or session.proxy_data is None
        )
        if not waiting_for_proxy and not transport.is_closing():
            line = self.event_handler.timed_out(session, self.envelope, in_data=self._in_data)
            self.shared.count_reply(replies.reply_key(line))
            cast(asyncio.WriteTransport, transport).write(line.encode("ascii") + b"\r\n")
        transport.close()

    async def push(self, status: AnyStr) -> None:
        """Send a reply line; the lines of a multi-line reply (EHLO) go out in one write.

        aiosmtpd writes and drains each line of its EHLO reply alone: six
        system calls where one sends the same bytes.
        """
        if isinstance(status, str):
            if status.startswith("552 Error:"):
                line = self.event_handler.refused_oversize(self.session, self.envelope)
                key = replies.reply_key(line)
            else:
                line, key = self._with_status(status)
            if line[3:4] == "-":
                self._continued.append(line)
                return
            sent = self.shared.replies_sent  # the metrics' tally: one dict increment
            sent[key] = sent.get(key, 0) + 1
            if self._continued:
                line = "\r\n".join([*self._continued, line])
                self._continued.clear()
            data = line.encode()  # enable_SMTPUTF8 is on: aiosmtpd encodes as UTF-8
        else:
            data = bytes(status)
        self._writer.write(data + b"\r\n")
        await self._writer.drain()

    def _with_status(self, line: str) -> tuple[str, str]:
        """``line`` with its enhanced status code, and what the metrics count it under."""
        statuses = self.shared.statuses
        found = statuses.get(line)
        if found is None:
            completed = replies.with_status(line)
            found = (completed, replies.reply_key(completed))
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
        if self.event_handler.draining:  # the gateway is stopping: this message was the last
            self.shared.say_goodbye(self)

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
