"""The aiosmtpd handler: RCPT and DATA decisions for the inbound gateway.

aiosmtpd's ``SMTP`` owns the grammar and the size limit; this object only
decides. RCPT refuses early (no backscatter): the recipient must be a live
reply token or our bounce address. DATA checks size and sender, then hands
the raw bytes to the process's group-commit writer (``InboundWriter``) and
answers 250 only once the batch holding them has committed. No database
call runs on the event loop: the RCPT lookup runs in a worker thread
(``asyncio.to_thread``), the commit in the writer's thread, and the DATA
checks run inline only for small plain-text mail (anything that may be
parsed whole goes to a thread). Under ``mail_auth = verify`` the gateway's
own SPF, DKIM, ARC and DMARC checks (``authentication``) run first, in a
thread, and stamp the mail with our Authentication-Results. The answers come
from ``replies.CATALOGUE``.

A client IP that keeps naming unknown reply addresses is deferred for a
while (``throttle.Throttle``); behind a load balancer speaking the PROXY
protocol, the client is the one the header names, for the throttle, the
logs and the queue row alike.

Logging: one line per refused recipient (``inbound.rcpt``), and one
canonical line per message at the end of DATA (``inbound.mail``) with the
envelope, decision, reason and queue ids; never the body, and reply
addresses only as fingerprints (``gateway.logged``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any
from weakref import WeakKeyDictionary

from aiosmtpd.proxy_protocol import ProxyData
from aiosmtpd.smtp import SMTP, Envelope, TLSSetupException
from aiosmtpd.smtp import Session as SMTPSession
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.core import intake
from replygate.core.intake import Recipient, StoreUnavailable
from replygate.errors import InboundRefused
from replygate.gateway import logged, replies
from replygate.gateway.authentication import Authenticator
from replygate.gateway.replies import Condition
from replygate.gateway.shared import MEMO_SIZE
from replygate.gateway.throttle import Throttle, parse_networks
from replygate.logs import get_logger
from replygate.mail.headers import lowered_head
from replygate.store.db import close_reads, snapshot_reads
from replygate.store.inbound_writer import InboundWriter
from replygate.store.models import utcnow

log = get_logger("replygate.gateway")

# Refusals that count against a client IP: addresses we never issued. An
# expired or revoked token is a real person replying late, not a guesser.
THROTTLED_CONDITIONS = frozenset(
    {Condition.UNKNOWN_TOKEN, Condition.NOT_A_REPLY_ADDRESS, Condition.UNKNOWN_BOUNCE_ADDRESS}
)
# How long an accepted reply address is trusted without asking the database
# again. A reply storm hits the same few addresses; each lookup is several
# round trips. A token revoked (or Convenience Mode switched off) within
# this window may still be accepted at RCPT; the engine resolves the route
# again before filing and rejects it, so nothing is filed.
RCPT_CACHE_SECONDS = 2.0
# What the canonical line calls a reply, by its first digit (anything else refuses).
_DECISIONS = {2: "accepted", 4: "deferred"}
RCPT_CACHE_SIZE = 10_000


def _proxied(session: SMTPSession) -> ProxyData | None:
    """The PROXY header's data when it names a client (not a balancer's health check)."""
    data = session.proxy_data
    if data is not None and data.valid and data.src_addr is not None:
        return data
    return None


def peer_of(session: SMTPSession) -> str | None:
    """The client's address as ``host:port`` (what the queue row and logs record).

    Behind a load balancer speaking the PROXY protocol, the client it names.
    """
    proxied = _proxied(session)
    if proxied is not None:
        host = str(proxied.src_addr)
        return f"[{host}]:{proxied.src_port}" if ":" in host else f"{host}:{proxied.src_port}"
    peer = session.peer
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer) if peer else None


def client_ip(session: SMTPSession | None) -> str | None:
    """The client's IP address alone, as the throttle counts it."""
    if session is None:
        return None
    proxied = _proxied(session)
    if proxied is not None:
        return str(proxied.src_addr)
    peer = session.peer
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return None


class GatewayHandler:
    """Decides RCPT and DATA for one gateway; shared by all its connections."""

    def __init__(
        self,
        settings: Settings,
        factory: sessionmaker[Session],
        *,
        max_recipients: int | None = None,
        clock: Callable[[], datetime] = utcnow,
        rcpt_cache_seconds: float = RCPT_CACHE_SECONDS,
        throttle: Throttle | None = None,
        authenticator: Authenticator | None = None,
    ) -> None:
        self.settings = settings
        self.authenticator = authenticator or Authenticator(settings)
        self.throttle = throttle or Throttle(
            settings.smtp_throttle_failures,
            settings.smtp_throttle_window_seconds,
            settings.smtp_throttle_cooldown_seconds,
            exempt=parse_networks(settings.smtp_trusted_relays),
        )
        self.rcpt_cache_seconds = rcpt_cache_seconds
        self._recipients: dict[str, tuple[float, Recipient]] = {}
        self._rendered: dict[tuple[Condition, str | None], str] = {}
        self.factory = factory
        self.max_recipients = max_recipients or settings.smtp_max_recipients
        self.clock = clock
        self.writer = InboundWriter(factory)
        # On SQLite, RCPT lookups read a snapshot instead of taking turns with
        # the writer's commits for the write lock (see ``db.snapshot_reads``).
        self._reads = snapshot_reads(factory)
        self.read_factory = self._reads or factory
        # The routes accepted at RCPT, per transaction; aiosmtpd makes a new
        # envelope after DATA and RSET, so finished transactions drop out.
        self._accepted: WeakKeyDictionary[Envelope, list[Recipient]] = WeakKeyDictionary()
        # Set by ``Gateway.stop``: new sessions hear 421 4.3.2, one in DATA finishes first.
        self.draining = False

    def _render(self, condition: Condition, address: str | None = None) -> str:
        """The reply line, made once per condition and address: MAIL, RCPT and DATA
        give the same few answers mail after mail."""
        key = (condition, address)
        line = self._rendered.get(key)
        if line is None:
            line = replies.reply(condition).render(address, limit=self.settings.max_message_size)
            if len(self._rendered) >= MEMO_SIZE:
                self._rendered.clear()
            self._rendered[key] = line
        return line

    async def handle_PROXY(
        self, server: SMTP, session: SMTPSession, envelope: Envelope, proxy_data: ProxyData
    ) -> bool:
        """Admit a connection once the load balancer's header names the client.

        A client in its cool-down hears ``421 4.7.0`` here, the first moment
        its address is known; False makes aiosmtpd close the connection.
        """
        refusal = self.refused_at_connect(session)
        if refusal is not None:
            await server.push(refusal)
            return False
        return True

    async def handle_MAIL(
        self,
        server: SMTP,
        session: SMTPSession,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        """Take the reverse-path as aiosmtpd would, answering with the catalogue's 2.1.0."""
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return self._render(Condition.SENDER_OK)

    async def handle_RCPT(
        self,
        server: SMTP,
        session: SMTPSession,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        accepted = self._accepted.setdefault(envelope, [])
        if any(r.address.lower() == address.lower() for r in accepted):
            return self._render(Condition.RECIPIENT_OK, address)  # listed once, stored once
        if len(accepted) >= self.max_recipients:
            self._log_rcpt(session, envelope, address, Condition.TOO_MANY_RECIPIENTS, None)
            return self._render(Condition.TOO_MANY_RECIPIENTS, address)
        ip = client_ip(session)
        left = self.throttle.blocked(ip)
        if left:
            reason = f"{ip} named too many unknown addresses; {left:.0f} s of cool-down left"
            self._log_rcpt(session, envelope, address, Condition.THROTTLED, reason)
            return self._render(Condition.THROTTLED, address)
        try:
            recipient = await self._lookup(address)
        except InboundRefused as exc:
            condition = replies.condition_for(exc)
            self._log_rcpt(session, envelope, address, condition, exc)
            if condition in THROTTLED_CONDITIONS and self.throttle.failed(ip):
                log.warning(
                    "inbound.throttle",
                    decision="deferred",
                    peer=peer_of(session),
                    failures=self.throttle.max_failures,
                    window_s=self.throttle.window,
                    cooldown_s=self.throttle.cooldown,
                )
            return self._render(condition, address)
        except StoreUnavailable as exc:
            self._log_rcpt(session, envelope, address, Condition.STORE_UNAVAILABLE, str(exc))
            return self._render(Condition.STORE_UNAVAILABLE, address)
        except Exception as exc:  # a bug: answer 4xx so the MTA retries after the fix
            shown = logged.address(self.settings, address)
            log.error("inbound.error", stage="rcpt", recipient=shown, exc_info=exc)
            return self._render(Condition.INTERNAL_ERROR, address)
        accepted.append(recipient)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        if recipient.kind == "bounce":
            return self._render(Condition.BOUNCE_RECIPIENT_OK, address)
        return self._render(Condition.RECIPIENT_OK, address)

    async def _lookup(self, address: str) -> Recipient:
        """The recipient behind ``address``, from the short-lived cache or the store."""
        key = address.lower()
        now = time.monotonic()
        hit = self._recipients.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        recipient = await asyncio.to_thread(
            intake.check_recipient, self.read_factory, self.settings, address, now=self.clock()
        )
        if self.rcpt_cache_seconds > 0:
            if len(self._recipients) >= RCPT_CACHE_SIZE:
                self._recipients.clear()
            self._recipients[key] = (now + self.rcpt_cache_seconds, recipient)
        return recipient

    async def handle_DATA(self, server: SMTP, session: SMTPSession, envelope: Envelope) -> str:
        started = time.perf_counter()
        recipients = self._accepted.pop(envelope, [])
        raw = envelope.original_content or b""
        fields: dict[str, Any] = {
            "via": "smtp",
            "peer": peer_of(session),
            "tls": session.ssl is not None,
            "mail_from": intake.envelope_sender(envelope.mail_from),
            "rcpt": [r.address for r in recipients],
            "size": len(raw),
        }
        if not recipients:  # aiosmtpd refuses DATA before any RCPT; this is belt and braces
            return self._finish(Condition.INTERNAL_ERROR, "no accepted recipient", fields, started)
        try:
            # The header block, lower-cased once for every check that looks into it.
            head = lowered_head(raw)
            authentication = None
            if self.authenticator.mode == "verify":  # DNS: in a thread, within the time budget
                prepared = await self.authenticator.prepare_async(
                    raw,
                    client_ip=client_ip(session),
                    helo=session.host_name,
                    mail_from=fields["mail_from"],
                    head=head,
                )
                stored, authentication = prepared.raw, prepared.decision
            else:  # the claims strip alone, no lookup: here, without a coroutine
                stored = self.authenticator.strip_claims(raw, head)
            if stored is not raw:  # claims stripped, or our own results stamped
                raw = stored
                head = lowered_head(raw)
            if authentication is not None:
                fields.update(spf=authentication.spf, dmarc=authentication.dmarc)
            if intake.needs_parsing(raw, head):
                checked = await asyncio.to_thread(
                    intake.check,
                    self.settings,
                    recipients=recipients,
                    raw=raw,
                    via="smtp",
                    authentication=authentication,
                    head=head,
                )
            else:
                checked = intake.check(
                    self.settings,
                    recipients=recipients,
                    raw=raw,
                    via="smtp",
                    authentication=authentication,
                    head=head,
                )
            rows = intake.queue_rows(
                checked,
                mail_from=fields["mail_from"],
                recipients=recipients,
                raw=raw,
                peer=fields["peer"],
                now=self.clock(),
            )
            queue_ids = await self.writer.submit_async(rows)
        except InboundRefused as exc:
            return self._finish(replies.condition_for(exc), exc, fields, started)
        except (SQLAlchemyError, OSError) as exc:
            reason = f"cannot store the message: {exc}"
            return self._finish(replies.store_condition(exc), reason, fields, started)
        except Exception as exc:  # a bug: 4xx keeps the message at the sender's MTA
            log.error("inbound.error", stage="data", exc_info=exc)
            error = f"{type(exc).__name__}: {exc}"
            return self._finish(Condition.INTERNAL_ERROR, error, fields, started)
        fields.update(queue_ids=queue_ids, message_id=checked.message_id)
        return self._finish(Condition.ACCEPTED, None, fields, started)

    def wake_on_commit(self, event: asyncio.Event) -> None:
        """Set ``event`` (on its loop, the running one) after each batch of mail is committed.

        An engine in this process waits on it, and claims the mail at once
        instead of at its next poll.
        """
        self.writer.wake_on_commit(event)

    def close(self) -> None:
        """Commit what is queued and stop the writer thread (and the check threads)."""
        self.writer.close()
        self.authenticator.close()
        close_reads(self._reads)

    async def handle_exception(self, error: Exception) -> str:
        """A bug or an unexpected failure: answer 4xx so the sending MTA retries, log it.

        A failed TLS handshake is the client's business, logged without a
        traceback; aiosmtpd closes that connection without a reply.
        """
        if isinstance(error, TLSSetupException):
            cause = error.__cause__
            log.info("inbound.tls", decision="failed", error=f"{type(cause).__name__}: {cause}")
        else:
            shown = logged.reason(self.settings, f"{type(error).__name__}: {error}")
            log.error("inbound.error", error=shown, exc_info=error)
        return self._render(Condition.INTERNAL_ERROR)

    def refused_at_connect(self, session: SMTPSession | None) -> str | None:
        """``421 4.3.2`` while the gateway stops, ``421 4.7.0`` for a client in its
        cool-down (then closed), else None."""
        if self.draining:
            return self.refused_shutting_down(session)
        left = self.throttle.blocked(client_ip(session))
        if not left:
            return None
        return self._refused_connection(
            Condition.THROTTLED_AT_CONNECT, session, f"{left:.0f} s of cool-down left"
        )

    def timed_out(
        self, session: SMTPSession | None, envelope: Envelope | None, *, in_data: bool
    ) -> str:
        """The ``421 4.4.2`` a stalled client hears before the connection is closed."""
        condition = Condition.DATA_TIMEOUT if in_data else Condition.COMMAND_TIMEOUT
        if in_data:
            reason = f"no data for {self.settings.smtp_data_timeout} s"
            return self._refused_unread(condition, reason, session, envelope)
        reason = f"no command for {self.settings.smtp_command_timeout} s"
        return self._refused_connection(condition, session, reason)

    def refused_oversize(self, session: SMTPSession | None, envelope: Envelope | None) -> str:
        """The reply (and the log line) when the protocol stops an oversize message."""
        reason = f"message exceeds the limit of {self.settings.max_message_size} bytes"
        return self._refused_unread(Condition.MESSAGE_TOO_LARGE, reason, session, envelope)

    def refused_line_too_long(self, session: SMTPSession | None, envelope: Envelope | None) -> str:
        """The reply when a line of DATA is over the RFC 5321 limit."""
        reason = "a line exceeds 1000 octets"
        return self._refused_unread(Condition.LINE_TOO_LONG, reason, session, envelope)

    def refused_no_room(self, session: SMTPSession | None, envelope: Envelope | None) -> str:
        """The reply when the gateway's byte budget has no room for this message now."""
        reason = "the gateway holds as many message bytes as it may"
        return self._refused_unread(Condition.NO_ROOM, reason, session, envelope)

    def refused_shutting_down(self, session: SMTPSession | None) -> str:
        """The ``421 4.3.2`` of a gateway that is stopping (the connection is then closed)."""
        return self._refused_connection(Condition.SHUTTING_DOWN, session, "the gateway is stopping")

    def refused_busy(self, session: SMTPSession | None) -> str:
        """The greeting for a connection over the cap (the protocol then closes it)."""
        return self._refused_connection(Condition.TOO_MANY_CONNECTIONS, session, None)

    def _refused_connection(
        self, condition: Condition, session: SMTPSession | None, reason: str | None
    ) -> str:
        """Log and answer a connection the gateway closes outside a transaction."""
        reply = replies.reply(condition)
        log.warning(
            "inbound.connection",
            decision="deferred",
            condition=str(condition),
            reply=f"{reply.code} {reply.status}",
            reason=reason,
            peer=peer_of(session) if session is not None else None,
        )
        return self._render(condition)

    def _refused_unread(
        self,
        condition: Condition,
        reason: str,
        session: SMTPSession | None,
        envelope: Envelope | None,
    ) -> str:
        """Log and answer a message the protocol stopped before the handler saw it."""
        recipients = self._accepted.pop(envelope, []) if envelope is not None else []
        fields: dict[str, Any] = {
            "via": "smtp",
            "peer": peer_of(session) if session is not None else None,
            "tls": session is not None and session.ssl is not None,
            "mail_from": intake.envelope_sender(envelope.mail_from if envelope else None),
            "rcpt": [r.address for r in recipients],
        }
        return self._finish(condition, reason, fields, time.perf_counter())

    def _finish(
        self,
        condition: Condition,
        reason: InboundRefused | str | None,
        fields: dict[str, Any],
        started: float,
    ) -> str:
        """Write the canonical line for one message and return its reply (``fields``,
        the caller's own for this line, are rewritten in place)."""
        reply = replies.reply(condition)
        fields["mail_from"] = logged.address(self.settings, fields["mail_from"])
        fields["rcpt"] = [logged.address(self.settings, rcpt) for rcpt in fields["rcpt"]]
        decision = _DECISIONS.get(reply.code // 100, "refused")
        log_at = log.warning if decision == "deferred" else log.info
        log_at(
            "inbound.mail",
            decision=decision,
            condition=str(condition),
            reply=f"{reply.code} {reply.status}",
            reason=logged.reason(self.settings, reason),
            ms=round((time.perf_counter() - started) * 1000, 1),
            **fields,
        )
        return self._render(condition)

    def _log_rcpt(
        self,
        session: SMTPSession,
        envelope: Envelope,
        address: str,
        condition: Condition,
        reason: InboundRefused | str | None,
    ) -> None:
        reply = replies.reply(condition)
        log.info(
            "inbound.rcpt",
            decision="deferred" if reply.code // 100 == 4 else "refused",
            condition=str(condition),
            reply=f"{reply.code} {reply.status}",
            reason=logged.reason(self.settings, reason),
            via="smtp",
            peer=peer_of(session),
            mail_from=logged.address(self.settings, intake.envelope_sender(envelope.mail_from)),
            recipient=logged.address(self.settings, address),
        )
