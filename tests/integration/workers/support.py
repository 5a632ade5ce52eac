"""Helpers for outbound tests: a scriptable smarthost handler, queued mail, polling."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

from aiosmtpd.smtp import SMTP, Envelope
from aiosmtpd.smtp import Session as SMTPSession
from sqlalchemy.orm import Session, sessionmaker

from replygate.mail.compose import compose
from replygate.store import outbox
from replygate.store.db import transaction
from tests.helpers import notification


def free_port() -> int:
    """An unused local port (aiosmtpd's Controller does not take port 0 in every version)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes


@dataclass
class SmarthostHandler:
    """An aiosmtpd handler that accepts mail, or answers with a scripted reply."""

    rcpt_reply: str | None = None
    data_reply: str | None = None
    received: list[Received] = field(default_factory=list)

    async def handle_RCPT(
        self,
        server: SMTP,
        session: SMTPSession,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: SMTPSession, envelope: Envelope) -> str:
        if self.data_reply:
            return self.data_reply
        self.received.append(
            Received(envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.content))
        )
        return "250 2.0.0 Message accepted"


@dataclass
class Smarthost:
    host: str
    port: int
    handler: SmarthostHandler


def queue_mail(
    sessions: sessionmaker[Session], count: int = 1, *, now: datetime, kind: str = "content"
) -> list[int]:
    """Add ``count`` composed notifications to the outbox, due at ``now``."""
    ids = []
    with transaction(sessions) as session:
        for n in range(1, count + 1):
            row = outbox.add(
                session,
                compose(notification(n), now=now),
                kind=kind,
                user_id=None,
                thread_id=None,
                message_id=None,
                now=now,
            )
            ids.append(row.id)
    return ids


async def wait_until(predicate: Callable[[], bool | Awaitable[bool]], timeout: float = 5.0) -> None:
    """Poll ``predicate`` until true, failing after ``timeout`` seconds (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.01)
