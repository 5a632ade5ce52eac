"""Helpers for gateway tests: a seeded organisation with a live reply address,
reply messages as mail clients send them, and a gateway on an ephemeral port."""

from __future__ import annotations

import dataclasses
import smtplib
import socket
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from email.utils import make_msgid
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.gateway.server import GatewayThread
from replygate.mail import reply_token
from replygate.store import directory, tokens
from replygate.store.db import transaction
from replygate.store.models import InboundMail, Thread, ThreadParticipant, utcnow


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


@dataclass(frozen=True)
class TLSFiles:
    """A self-signed certificate for the gateway's name and 127.0.0.1, and its key."""

    cert: Path
    key: Path


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    """Made once per run with ``openssl req`` (an EC key: quick to generate)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "2", "-subj", "/CN=reply.test",
            "-addext", "subjectAltName=DNS:reply.test,IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return TLSFiles(cert, key)


DEADLINE_SECONDS = 10.0


class Dialogue:
    """A raw SMTP client: sends lines as given and reads whole replies."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_SECONDS)
        self.buffer = b""

    def line(self) -> bytes:
        """One reply line without its CRLF; b"" once the server has closed."""
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                rest, self.buffer = self.buffer, b""
                return rest
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def reply(self) -> list[bytes]:
        """Every line of one reply (several for EHLO)."""
        lines = [self.line()]
        while lines[-1][3:4] == b"-":
            lines.append(self.line())
        return lines

    def send(self, command: bytes) -> list[bytes]:
        self.sock.sendall(command + b"\r\n")
        return self.reply()

    def closed(self) -> bool:
        """Whether the server has closed the connection (waits up to the deadline)."""
        return self.sock.recv(1) == b""

    def close(self) -> None:
        self.sock.close()


@contextmanager
def dialogue(port: int) -> Iterator[Dialogue]:
    d = Dialogue(port)
    try:
        yield d
    finally:
        d.close()
