"""The mail pipeline keeps no patient text in the database: a reply received over
real SMTP and filed leaves its words neither in the inbound queue (raw mail,
reason, decision records) nor in the outbox (the notification that carries it),
and a sealed value moved to another row is refused loudly, never used as empty.

The stored columns are read with SQL, as a stolen backup would be read.
"""

from __future__ import annotations

import asyncio
import smtplib
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import make_msgid

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker
from structlog.testing import capture_logs

from replygate.config import Settings
from replygate.core.messaging import Messaging
from replygate.gateway.server import GatewayThread
from replygate.mail import reply_token
from replygate.store import directory, inbound, outbox
from replygate.store.db import transaction
from replygate.store.models import InboundMail, InboundStatus, Message, OutboxMessage, ReplyToken
from replygate.workers.drain import drain_once, outbound_worker
from replygate.workers.inbound import InboundWorker

MARK = "Quokkasealmark"


@pytest.fixture
def reply_address(settings: Settings, sessions: sessionmaker[Session]) -> str:
    """Dana wrote to Cleo in Convenience Mode (notifications carry the text): Cleo's address."""
    with transaction(sessions) as s:
        directory.add_user(s, "dana@staff.test", "Dana Staff", "staff")
        directory.add_user(s, "cleo@example.com", "Cleo Client", "client")
    messaging = Messaging(sessions, settings)
    messaging.set_convenience_mode(on=True, acknowledge_hipaa=True)
    messaging.send(sender="dana@staff.test", to=["cleo@example.com"], subject="Hi", body="Hi?")
    with sessions() as s:
        token = s.scalars(select(ReplyToken.token)).one()
    return reply_token.reply_address(token, settings.reply_domain)


def _reply(to: str, words: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Cleo <cleo@example.com>"
    msg["To"] = to
    msg["Subject"] = f"Re: Hi {MARK}"
    msg["Message-ID"] = make_msgid(domain="example.com")
    msg.set_content(f"{words}\n")
    return msg.as_bytes(policy=SMTP)


def _send_over_smtp(settings: Settings, sessions: sessionmaker[Session], *mails: bytes) -> None:
    gateway = GatewayThread(settings, sessions, host="127.0.0.1", port=0)
    gateway.start()
    try:
        with smtplib.SMTP("127.0.0.1", gateway.port, timeout=10) as smtp:
            for raw in mails:
                to = raw.split(b"\nTo: ", 1)[1].split(b"\r", 1)[0].decode()
                assert smtp.sendmail("cleo@example.com", [to], raw) == {}
    finally:
        gateway.stop()


def _stored(sessions: sessionmaker[Session], sql: str) -> list[bytes]:
    """Every non-NULL value the SQL selects, as the bytes the database holds."""
    with sessions() as s:
        values = s.connection().exec_driver_sql(sql).scalars()
        return [v.encode() if isinstance(v, str) else bytes(v) for v in values if v is not None]


def test_a_filed_reply_leaves_no_text_in_the_queue_or_the_outbox(
    settings: Settings, sessions: sessionmaker[Session], reply_address: str
) -> None:
    _send_over_smtp(settings, sessions, _reply(reply_address, f"My results: {MARK}."))
    filed, delivered = drain_once(settings, sessions)
    assert filed == 1 and delivered >= 2  # Dana's first message, and Dana told of the reply
    with sessions() as s:
        mail = s.scalars(select(InboundMail)).one()
        assert mail.status == InboundStatus.FILED and MARK.encode() in (mail.raw or b"")
        assert mail.decisions and mail.decisions[-1]["stage"] == "extract"
        told = [row.raw for row in s.scalars(select(OutboxMessage))]
        assert any(MARK.encode() in raw for raw in told)  # the notification carries the reply
    stored = _stored(sessions, "SELECT raw FROM inbound_mail")
    stored += _stored(sessions, "SELECT reason FROM inbound_mail")
    stored += _stored(sessions, "SELECT decisions FROM inbound_mail")
    stored += _stored(sessions, "SELECT raw FROM outbox")
    assert len(stored) >= 4
    assert not [value for value in stored if MARK.encode() in value or b"Cleo" in value]


def test_raw_mail_moved_from_another_row_is_held_and_logged_never_filed_empty(
    settings: Settings, sessions: sessionmaker[Session], reply_address: str
) -> None:
    _send_over_smtp(
        settings,
        sessions,
        _reply(reply_address, f"First reply {MARK}."),
        _reply(reply_address, "Second reply."),
    )
    with transaction(sessions) as s:
        first, second = s.scalars(select(InboundMail.id).order_by(InboundMail.id)).all()
        s.execute(
            text(
                "UPDATE inbound_mail SET raw = (SELECT raw FROM inbound_mail WHERE id = :a) "
                "WHERE id = :b"
            ).bindparams(a=first, b=second)
        )
    with capture_logs() as logged:
        assert InboundWorker(sessions, settings).drain() >= 1
    broken = [e for e in logged if e["event"] == "store.seal_broken"]
    assert broken and broken[0]["table"] == "inbound_mail" and broken[0]["row"] == second
    assert broken[0]["log_level"] == "error"
    with sessions() as s:
        held = s.get(InboundMail, second)
        assert held is not None and held.status == InboundStatus.HELD
        assert held.reason == inbound.SEAL_BROKEN_REASON
        assert "does not open" in (held.decisions or [{}])[-1].get("error", "")
        bodies = {m.inbound_id: m.body for m in s.scalars(select(Message))}
    assert second not in bodies and f"First reply {MARK}." in bodies[first]


def test_a_notification_moved_from_another_row_fails_for_the_operator_never_sent(
    settings: Settings, sessions: sessionmaker[Session], reply_address: str
) -> None:
    Messaging(sessions, settings).send(
        sender="dana@staff.test", to=["cleo@example.com"], subject="Again", body="Again?"
    )
    with transaction(sessions) as s:
        first, second = s.scalars(select(OutboxMessage.id).order_by(OutboxMessage.id)).all()
        s.execute(
            text(
                "UPDATE outbox SET raw = (SELECT raw FROM outbox WHERE id = :a) WHERE id = :b"
            ).bindparams(a=first, b=second)
        )
    worker = outbound_worker(settings, sessions)
    try:
        with capture_logs() as logged:
            assert asyncio.run(worker.run_once()) == 1
    finally:
        worker.close()
    assert [e["row"] for e in logged if e["event"] == "store.seal_broken"] == [second]
    with sessions() as s:
        rows = {row.id: row for row in outbox.list_outbox(s)}
    assert rows[first].status == "sent"
    assert rows[second].status == "failed" and rows[second].last_error == outbox.SEAL_BROKEN_ERROR


def test_a_reply_to_a_thread_whose_subject_does_not_open_is_held_never_filed(
    settings: Settings, sessions: sessionmaker[Session], reply_address: str
) -> None:
    with transaction(sessions) as s:
        s.execute(text("UPDATE threads SET subject = (SELECT body FROM messages WHERE id = 1)"))
    _send_over_smtp(settings, sessions, _reply(reply_address, f"My reply {MARK}."))
    with capture_logs() as logged:
        assert InboundWorker(sessions, settings).drain() >= 1
    broken = [e for e in logged if e["event"] == "store.seal_broken"]
    assert broken and (broken[0]["table"], broken[0]["column"]) == ("threads", "subject")
    with sessions() as s:
        mail = s.scalars(select(InboundMail)).one()
        assert mail.status == InboundStatus.HELD and mail.reason == inbound.SEAL_BROKEN_REASON
        assert s.scalars(select(Message).where(Message.source == "email")).all() == []
