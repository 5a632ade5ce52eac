"""What every connection of one gateway shares: the tables ``SMTP.__init__`` builds.

aiosmtpd 1.4.6 rebuilds its hook and method tables with ``dir()`` and
``inspect.getmembers()`` in every connection's ``__init__``; here they are
computed once per gateway (``Shared.build``) and only bound per connection
(``BoundCommands``, ``BoundMechanisms``). Part of the fork of aiosmtpd's
internals that ``protocol`` describes: the private names used here are in its
``PRIVATE_HOOKS``.
"""

from __future__ import annotations

import socket
import ssl
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiosmtpd.smtp  # its undocumented names are looked up where used (see protocol)
from aiosmtpd.smtp import SMTP, Envelope
from aiosmtpd.smtp import Session as SMTPSession

from replygate.config import Settings
from replygate.gateway.limits import ByteBudget, Sessions

if TYPE_CHECKING:  # types only: the protocol imports this module
    from replygate.gateway.handler import GatewayHandler
    from replygate.gateway.protocol import GatewaySMTP

IDENT = "replygate"
# How long a connection may take to send its PROXY header (aiosmtpd warns below 3 s).
PROXY_TIMEOUT_SECONDS = 10.0
# Extensions the EHLO reply adds to aiosmtpd's (RFC 2034).
EXTENSIONS = ("250-ENHANCEDSTATUSCODES",)
# Entries kept in the per-gateway memo tables (parsed addresses, reply lines);
# a burst repeats the same few, and a full table is simply emptied.
MEMO_SIZE = 4096


async def ehlo_extensions(
    server: SMTP, session: SMTPSession, envelope: Envelope, hostname: str, lines: list[str]
) -> list[str]:
    """aiosmtpd's EHLO reply plus ours, less AUTH (no mechanism here ever succeeds)."""
    session.host_name = hostname
    *head, last = lines
    return [*(line for line in head if not line.startswith("250-AUTH")), *EXTENSIONS, last]


@dataclass
class Shared:
    """What every connection of one gateway shares, built once."""

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
    # Reply lines with their enhanced status code (``replies.with_status``) and the
    # key the metrics count them under (``replies.reply_key``).
    statuses: dict[str, tuple[str, str]] = field(default_factory=dict)
    # Replies sent since the gateway started, by ``replies.reply_key`` (``metrics``
    # reads it; a plain dict so that counting costs one increment).
    replies_sent: dict[str, int] = field(default_factory=dict)
    # The attributes every connection starts with, set in one dict update.
    constants: dict[str, Any] = field(default_factory=dict)
    # The open connections, for ``Gateway.stop`` to close.
    open: set[GatewaySMTP] = field(default_factory=set)

    def count_reply(self, key: str) -> None:
        """Count a reply sent (``GatewaySMTP.push`` does the same inline)."""
        self.replies_sent[key] = self.replies_sent.get(key, 0) + 1

    def say_goodbye(self, protocol: GatewaySMTP) -> None:
        """Tell a session ``421 4.3.2`` and close it: the gateway is stopping."""
        transport = protocol.transport
        if transport is None or transport.is_closing():
            return
        line = self.handler.refused_shutting_down(protocol.session)
        transport.write(f"{line}\r\n".encode())  # type: ignore[attr-defined]
        transport.close()

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
            "_auth_callback": aiosmtpd.smtp.login_always_fail,
            "_auth_required": False,
            "_handle_hooks": self.handle_hooks,
            "_ehlo_hook_ver": "new",
            "_enforce_call_limit": False,
            "_deadline": 0.0,  # when the idle timer really expires (see _reset_timeout)
            "_timer_at": 0.0,  # when the scheduled timer handle fires
        }

    @classmethod
    def build(
        cls,
        settings: Settings,
        handler: GatewayHandler,
        protocol: type[SMTP],
        tls_context: ssl.SSLContext | None = None,
    ) -> Shared:
        """The tables for connections of class ``protocol`` answering through ``handler``."""
        shared = cls(
            settings=settings,
            handler=handler,
            sessions=Sessions(settings.smtp_max_sessions),
            budget=ByteBudget(settings.smtp_max_bytes_in_flight),
            tls_context=tls_context,
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
            name.removeprefix("smtp_"): getattr(protocol, name)
            for name in dir(protocol)
            if name.startswith("smtp_")
        }
        # aiosmtpd's own AUTH mechanisms (never offered: no TLS, AUTH not required),
        # kept so the protocol answers AUTH exactly as the stock server does.
        shared.auth_methods = {
            getattr(func, "__auth_mechanism_name__", name[5:].replace("__", "-")): (func, True)
            for name in dir(protocol)
            if name.startswith("auth_") and callable(func := getattr(protocol, name))
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

    def __init__(self, functions: dict[str, Callable[..., Any]], owner: SMTP) -> None:
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

    def __init__(self, mechanisms: dict[str, tuple[Callable[..., Any], bool]], owner: SMTP) -> None:
        super().__init__(mechanisms)
        self.owner = owner

    def _bind(self, entry: tuple[Callable[..., Any], bool]) -> aiosmtpd.smtp._AuthMechAttr:
        func, builtin = entry
        return aiosmtpd.smtp._AuthMechAttr(
            types.MethodType(func, self.owner) if builtin else func, builtin
        )

    def __getitem__(self, name: str) -> aiosmtpd.smtp._AuthMechAttr:
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
