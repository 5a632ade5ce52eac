"""The smarthost down and back, and a connection cut after DATA, under the real
outbound loop (``OutboundWorker.run``, real time, a real aiosmtpd smarthost).

- Down: the smarthost answers ``421 4.3.2`` (service not available) to every
  session for a while, then accepts. The outbox retries with a growing delay
  and delivers each notification once.
- Cut: the smarthost takes the whole message, then drops the connection
  before its reply. The worker cannot know the mail arrived, so it sends it
  again: at most one duplicate, carrying the same Message-ID.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.policy import default
from itertools import pairwise

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope
from aiosmtpd.smtp import Session as SMTPSession
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from replygate.store.models import OutboxMessage, utcnow
from replygate.workers.outbound import OutboundWorker
from replygate.workers.transports import SmtpTransport
from tests.integration.workers.support import SmarthostHandler, free_port, queue_mail, wait_until

BACKOFF = 0.4  # seconds: the first retry after 0.2 s (rng 0: the lower edge of the jitter)


@dataclass
class ChaosHandler(SmarthostHandler):
    """A smarthost that refuses the first ``refuse`` sessions with 421, and cuts the
    connection after the DATA of the first ``cut`` messages it receives."""

    refuse: int = 0
    cut: int = 0
    refused_at: list[float] = field(default_factory=list)
    accepted_at: list[float] = field(default_factory=list)

    async def handle_MAIL(
        self,
        server: SMTP,
        session: SMTPSession,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if len(self.refused_at) < self.refuse:
            self.refused_at.append(time.monotonic())
            return "421 4.3.2 Service not available, closing transmission channel"
        envelope.mail_from = address
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: SMTPSession, envelope: Envelope) -> str:
        reply = await super().handle_DATA(server, session, envelope)
        self.accepted_at.append(time.monotonic())
        if self.cut > 0:
            self.cut -= 1
            assert server.transport is not None
            server.transport.abort()  # the mail is in; the client never hears so
        return reply


@pytest.fixture
def chaos() -> Iterator[tuple[ChaosHandler, int]]:
    handler = ChaosHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


def _outbox(sessions: sessionmaker[Session]) -> list[OutboxMessage]:
    with sessions() as session:
        return list(session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))


def _deliver_until_sent(sessions: sessionmaker[Session], port: int, count: int) -> None:
    """Run the outbound loop until ``count`` rows are ``sent``, then stop it."""
    worker = OutboundWorker(
        sessions,
        SmtpTransport("127.0.0.1", port, starttls=False, timeout=5),
        max_attempts=8,
        backoff_seconds=BACKOFF,
        rng=lambda: 0.0,
    )

    async def scenario() -> None:
        stop = asyncio.Event()
        loop = asyncio.create_task(worker.run(stop, 0.02))
        try:
            await wait_until(
                lambda: sum(r.status == "sent" for r in _outbox(sessions)) == count, timeout=20
            )
        finally:
            stop.set()
            await loop

    asyncio.run(scenario())


def _message_ids(handler: SmarthostHandler) -> Counter[str]:
    return Counter(
        str(message_from_bytes(r.content, policy=default)["Message-ID"]) for r in handler.received
    )


def test_smarthost_down_then_back_delivers_each_notification_once_with_backoff(
    sessions: sessionmaker[Session], chaos: tuple[ChaosHandler, int]
) -> None:
    handler, port = chaos
    handler.refuse = 3
    [oid] = queue_mail(sessions, now=utcnow())
    _deliver_until_sent(sessions, port, 1)
    [row] = _outbox(sessions)
    assert row.id == oid and row.status == "sent"
    assert row.attempts == 4, "three refusals, then the delivery"
    assert list(_message_ids(handler).values()) == [1], "delivered once"
    moments = [*handler.refused_at, handler.accepted_at[0]]
    gaps = [b - a for a, b in pairwise(moments)]
    # Each retry waits at least twice as long as the one before (rng 0: BACKOFF/2, then
    # doubling); a slow machine only adds to a gap, so only the lower bound is exact.
    floors = [BACKOFF / 2 * 2**n for n in range(3)]
    assert all(gap >= floor for gap, floor in zip(gaps, floors, strict=True)), (gaps, floors)


def test_smarthost_down_then_back_delivers_a_batch_once_each(
    sessions: sessionmaker[Session], chaos: tuple[ChaosHandler, int]
) -> None:
    handler, port = chaos
    handler.refuse = 12
    queue_mail(sessions, 6, now=utcnow())
    _deliver_until_sent(sessions, port, 6)
    ids = _message_ids(handler)
    assert len(ids) == 6 and set(ids.values()) == {1}, ids
    assert all(r.status == "sent" and r.attempts >= 2 for r in _outbox(sessions))


def test_a_connection_cut_after_data_delivers_at_most_one_duplicate(
    sessions: sessionmaker[Session], chaos: tuple[ChaosHandler, int]
) -> None:
    handler, port = chaos
    handler.cut = 1
    queue_mail(sessions, 3, now=utcnow())
    _deliver_until_sent(sessions, port, 3)
    ids = _message_ids(handler)
    assert len(ids) == 3, ids
    assert sorted(ids.values()) == [1, 1, 2], "one duplicate, of the mail whose reply was cut"
    [(twice, _)] = [(mid, n) for mid, n in ids.items() if n == 2]
    copies = [r.content for r in handler.received if twice.encode() in r.content]
    assert len(copies) == 2 and copies[0] == copies[1], "the same mail, the same Message-ID"
    assert all(r.status == "sent" for r in _outbox(sessions))
