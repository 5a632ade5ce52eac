"""Helpers for gateway tests: a seeded organisation with a live reply address,
reply messages as mail clients send them, and a gateway on an ephemeral port."""

from __future__ import annotations

import dataclasses
import smtplib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from email.utils import make_msgid

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.gateway.server import GatewayThread
from replygate.store import directory, tokens
from replygate.store.db import transaction
from replygate.store.models import InboundMail, Thread, ThreadParticipant, utcnow
from replygate.threading import reply_token


@dataclass(frozen=True)
class World:
    """One staff member, one client, their thread, and the client's reply address."""

    staff_email: str
    client_email: str
    client_id: int
    thread_id: int
    address: str


def add_reply_address(
    sessions: sessionmaker[Session],
    settings: Settings,
    *,
    thread_id: int,
    user_id: int,
    expires_in: timedelta = timedelta(days=90),
    revoked: bool = False,
) -> str:
    """Issue a token row directly and return its reply address."""
    now = utcnow()
    token = reply_token.new_token(settings.secret_key)
    with transaction(sessions) as session:
        tokens.add(session, token, thread_id, user_id, now=now, expires_at=now + expires_in)
        if revoked:
            tokens.revoke(session, token, now=now)
    return reply_token.reply_address(token, settings.reply_domain)


def set_convenience_mode(sessions: sessionmaker[Session], on: bool) -> None:
    with transaction(sessions) as session:
        directory.organisation(session).convenience_mode = on


@pytest.fixture
def world(settings: Settings, sessions: sessionmaker[Session]) -> World:
    with transaction(sessions) as session:
        directory.organisation(session).convenience_mode = True
        staff = directory.add_user(session, "dr.hale@clinic.test", "Dr Hale", "staff")
        client = directory.add_user(session, "cleo@client.test", "Cleo Park", "client")
        thread = Thread(subject="Your appointment", created_by_id=staff.id)
        session.add(thread)
        session.flush()
        session.add_all(
            [
                ThreadParticipant(thread_id=thread.id, user_id=staff.id),
                ThreadParticipant(thread_id=thread.id, user_id=client.id),
            ]
        )
        ids = (staff.email, client.email, client.id, thread.id)
    address = add_reply_address(sessions, settings, thread_id=ids[3], user_id=ids[2])
    return World(ids[0], ids[1], ids[2], ids[3], address)


def reply_message(
    *,
    from_: str,
    to: str,
    body: str = "Tuesday at 10 works for me.",
    message_id: str | None = None,
    headers: tuple[tuple[str, str], ...] = (),
) -> bytes:
    """A plain reply with CRLF line ends, byte for byte what a client sends."""
    lines = [
        f"From: {from_}",
        f"To: {to}",
        "Subject: Re: Your appointment",
        f"Message-ID: {message_id or make_msgid(domain='client.test')}",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        *(f"{name}: {value}" for name, value in headers),
        "",
        body,
        "",
        "On Mon, Dr Hale wrote:",
        "> When suits you?",
        "",
    ]
    return "\r\n".join(lines).encode()


def queued(sessions: sessionmaker[Session]) -> list[InboundMail]:
    with sessions() as session:
        return list(session.scalars(select(InboundMail).order_by(InboundMail.id)))


@pytest.fixture
def start(
    sessions: sessionmaker[Session],
) -> Iterator[Callable[[Settings], GatewayThread]]:
    """Start a gateway on an ephemeral port with the given settings; stopped at teardown."""
    running: list[GatewayThread] = []

    def start(settings: Settings, **changes: object) -> GatewayThread:
        if changes:
            settings = dataclasses.replace(settings, **changes)
        gateway = GatewayThread(settings, sessions, host="127.0.0.1", port=0)
        gateway.start()
        running.append(gateway)
        return gateway

    yield start
    for gateway in running:
        gateway.stop()


@pytest.fixture
def gateway(settings: Settings, start: Callable[..., GatewayThread]) -> GatewayThread:
    return start(settings)


@pytest.fixture
def client(gateway: GatewayThread) -> Iterator[smtplib.SMTP]:
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=10) as smtp:
        smtp.ehlo("mx.client.test")
        yield smtp


def reply_with_attachment(
    *, from_: str, to: str, filename: str, content_type: str, payload: bytes
) -> bytes:
    """A reply carrying one attached file, as a mail client builds it."""
    from email.message import EmailMessage
    from email.policy import SMTP

    msg = EmailMessage()
    msg["From"] = from_
    msg["To"] = to
    msg["Subject"] = "Re: Your appointment"
    msg["Message-ID"] = make_msgid(domain="client.test")
    msg.set_content("Here is the form.\n")
    maintype, subtype = content_type.split("/", 1)
    msg.add_attachment(payload, maintype=maintype, subtype=subtype, filename=filename)
    return msg.as_bytes(policy=SMTP)
