"""The gateway at DATA and the inbound worker read a hostile From header alike.

Each case is the mail as an attacker holding a client's reply address would
send it, accepted under the ``hold`` sender policy (so the gateway lets it
through with its decision recorded) and then filed by the worker: the mail
must end held for an operator, never filed as the client's words.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.core import intake
from replygate.core.messaging import Messaging
from replygate.errors import DmarcFailed, SenderMismatch
from replygate.store import directory, inbound
from replygate.store.db import transaction
from replygate.store.models import InboundMail, Message, ReplyToken
from replygate.workers.inbound import InboundWorker

HOSTILE_FROM = {
    "two mailboxes, the client's first": "Cleo <cleo@example.com>, Eve <eve@evil.test>",
    "a group holding the client": "friends: cleo@example.com;",
    "the client's address with a domain after it": "<cleo@example.com>@evil.test",
    "the client's address as bare text before the real one": "cleo@example.com <eve@evil.test>",
    "obsolete route syntax": "<@evil.test:cleo@example.com>",
    "the client's address as display name": '"cleo@example.com" <eve@evil.test>',
    "an encoded display name that decodes to the address": (
        "=?utf-8?q?cleo=40example=2Ecom?= <eve@evil.test>"
    ),
    "an unbalanced quote": '"Cleo <cleo@example.com>',
}


@pytest.fixture
def reply_address(sessions: sessionmaker[Session], settings: Settings) -> str:
    with transaction(sessions) as s:
        directory.add_user(s, "dana@staff.test", "Dana Staff", "staff")
        directory.add_user(s, "cleo@example.com", "Cleo Client", "client")
        directory.organisation(s).sender_policy = "hold"
    messaging = Messaging(sessions, settings)
    messaging.set_convenience_mode(on=True, acknowledge_hipaa=True)
    messaging.send(sender="dana@staff.test", to=["cleo@example.com"], subject="Hi", body="Hi?")
    with sessions() as s:
        token = s.scalars(select(ReplyToken.token)).one()
    return f"reply+{token}@{settings.reply_domain}"


def _raw(from_value: str, to: str, extra: str = "", *, field: str = "From: ") -> bytes:
    return (
        f"{field}{from_value}\r\nTo: {to}\r\nSubject: Re: Hi\r\n"
        f"Message-ID: <attack@evil.test>\r\n{extra}\r\nI am Cleo, trust me.\r\n"
    ).encode()


@pytest.mark.parametrize("from_value", list(HOSTILE_FROM.values()), ids=list(HOSTILE_FROM))
def test_a_from_the_gateway_holds_is_held_by_the_worker_too(
    sessions: sessionmaker[Session], settings: Settings, reply_address: str, from_value: str
) -> None:
    now = datetime.now(UTC)
    recipient = intake.check_recipient(sessions, settings, reply_address, now=now)
    accepted = intake.accept(
        sessions,
        settings,
        mail_from="eve@evil.test",
        recipients=[recipient],
        raw=_raw(from_value, reply_address),
        peer=None,
        via="pipe",
    )
    assert accepted.decisions[0].sender == "mismatch"
    InboundWorker(sessions, settings).drain()
    with sessions() as s:
        row = s.get(InboundMail, accepted.queue_ids[0])
        assert row is not None
        assert row.status == "held", row.reason
        assert s.scalars(select(Message).where(Message.source == "email")).first() is None


@pytest.mark.parametrize("from_value", list(HOSTILE_FROM.values()), ids=list(HOSTILE_FROM))
def test_under_the_reject_policy_the_gateway_refuses_it(
    sessions: sessionmaker[Session], settings: Settings, reply_address: str, from_value: str
) -> None:
    with transaction(sessions) as s:
        directory.organisation(s).sender_policy = "reject"
    recipient = intake.check_recipient(sessions, settings, reply_address, now=datetime.now(UTC))
    with pytest.raises(SenderMismatch):
        intake.check(
            settings, recipients=[recipient], raw=_raw(from_value, reply_address), via="smtp"
        )


def test_the_dmarc_domain_is_the_one_mailbox_the_sender_check_read(
    sessions: sessionmaker[Session], settings: Settings, reply_address: str
) -> None:
    """A trusted relay's dmarc=fail for the client's domain refuses the mail at the
    gateway and in the worker alike, whichever way the From header is written."""
    trusted = dataclasses.replace(settings, trusted_authserv_ids="mx.practice.test")
    results = (
        "Authentication-Results: mx.practice.test; dmarc=fail (p=reject) "
        "header.from=example.com\r\n"
    )
    raw = _raw("Cleo Client <CLEO@Example.COM>", reply_address, results)
    recipient = intake.check_recipient(sessions, trusted, reply_address, now=datetime.now(UTC))
    with pytest.raises(DmarcFailed, match=r"(?i)example\.com"):
        intake.check(trusted, recipients=[recipient], raw=raw, via="smtp")
    with transaction(sessions) as s:
        queue_id = inbound.enqueue(
            s, mail_from="cleo@example.com", rcpt=reply_address, raw=raw, message_id=None
        ).id
    InboundWorker(sessions, trusted).drain()
    with sessions() as s:
        row = s.get(InboundMail, queue_id)
        assert row is not None
        assert (row.status, "DMARC failed" in (row.reason or "")) == ("rejected", True)


def test_an_obsolete_from_field_before_the_real_one_counts_as_a_second_from(
    sessions: sessionmaker[Session], settings: Settings, reply_address: str
) -> None:
    """``From :`` (RFC 5322's obsolete spelling) is a From field too: with the
    attacker's own From after it, the message has two, and is refused."""
    raw = _raw(
        "Cleo <cleo@example.com>", reply_address, "From: Eve <eve@evil.test>\r\n", field="From : "
    )
    with transaction(sessions) as s:
        directory.organisation(s).sender_policy = "reject"
    recipient = intake.check_recipient(sessions, settings, reply_address, now=datetime.now(UTC))
    with pytest.raises(SenderMismatch, match="several From headers"):
        intake.check(settings, recipients=[recipient], raw=raw, via="smtp")


def test_a_legally_folded_from_is_the_client(
    sessions: sessionmaker[Session], settings: Settings, reply_address: str
) -> None:
    """A From folded over two lines (as long display names are) is read whole and filed."""
    raw = _raw('"Cleo Client, RN"\r\n <cleo@example.com>', reply_address)
    recipient = intake.check_recipient(sessions, settings, reply_address, now=datetime.now(UTC))
    accepted = intake.accept(
        sessions,
        settings,
        mail_from="cleo@example.com",
        recipients=[recipient],
        raw=raw,
        peer=None,
        via="pipe",
    )
    assert accepted.decisions[0].sender == "ok"
    InboundWorker(sessions, settings).drain()
    with sessions() as s:
        row = s.get(InboundMail, accepted.queue_ids[0])
        assert row is not None and row.status == "filed", row.reason
