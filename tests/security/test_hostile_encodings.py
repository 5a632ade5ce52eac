"""Mail whose encoding or structure was built to break the parser, sent to a running gateway.

Each is the client's reply to their own live reply address, from their own
address, so every other check passes: what it tests is only how its body
and headers are encoded. A verified sender is never rejected for that: the
gateway answers 250 and the worker files the words the person wrote (a
charset that is a codec, BOM-less UTF-16, sloppy base64, a thousand levels
of nesting in the parser). The one exception is refused at DATA, while the
sender can still be told: parts nested past ``nesting.MAX_NESTING`` levels,
554 5.6.0 with the catalogue's sentence, nothing queued.
"""

from __future__ import annotations

import base64
import smtplib
import time
from collections.abc import Callable

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.gateway.replies import CATALOGUE, Condition
from replygate.gateway.server import GatewayThread
from replygate.mail import nesting
from replygate.store import inbound
from replygate.store.db import transaction
from replygate.store.models import InboundMail, Message
from replygate.workers.inbound import InboundWorker
from tests.integration.gateway import conftest as gateway_tests
from tests.integration.gateway.conftest import World, queued

world = gateway_tests.world
start = gateway_tests.start

REPLY = "Oui, jeudi à dix heures me convient."


def send(gateway: GatewayThread, world: World, raw: bytes) -> tuple[int, str]:
    """The gateway's answer to DATA: (code, "status text")."""
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=30) as smtp:
        smtp.ehlo("mx.client.test")
        try:
            smtp.sendmail(world.client_email, [world.address], raw)
        except smtplib.SMTPDataError as exc:
            return exc.smtp_code, exc.smtp_error.decode()
    return 250, ""


def assert_refused(answer: tuple[int, str], code: int, status: str, condition: str) -> None:
    """The answer is a refusal with this code and status, in the catalogue's sentence."""
    assert answer[0] == code and answer[1].startswith(f"{status} "), answer
    entry = CATALOGUE[Condition(condition)]
    assert answer == (entry.code, entry.describe())


def head(
    world: World,
    content_type: str,
    *extra: str,
    subject: str = "Re: Your appointment",
    name: str = "Cleo Park",
) -> bytes:
    lines = [
        f"From: {name} <{world.client_email}>",
        f"To: {world.address}",
        f"Subject: {subject}",
        "Message-ID: <hostile@client.test>",
        "MIME-Version: 1.0",
        f"Content-Type: {content_type}",
        *extra,
        "",
        "",
    ]
    return "\r\n".join(lines).encode()


def codec_label_body(world: World) -> bytes:
    return (
        head(world, "text/plain; charset=rot13", "Content-Transfer-Encoding: 8bit")
        + REPLY.encode("utf-8")
        + b"\r\n"
    )


def codec_label_subject(world: World) -> bytes:
    return head(world, "text/plain; charset=utf-8", subject="=?base64?q?R=E9?=") + (
        REPLY.encode("utf-8") + b"\r\n"
    )


def codec_label_from_name(world: World) -> bytes:
    """The display name is the encoded word: it must not make the From unreadable."""
    return head(world, "text/plain; charset=utf-8", name="=?rot13?q?Cl=E9o?=") + (
        REPLY.encode("utf-8") + b"\r\n"
    )


def base64_trailing_space(world: World) -> bytes:
    body = base64.encodebytes(REPLY.encode("utf-8")).replace(b"\n", b"\r\n")
    return head(world, "text/plain; charset=utf-8", "Content-Transfer-Encoding: base64 ") + body


def base64_one_past(world: World) -> bytes:
    body = base64.b64encode(REPLY.encode("utf-8")) + b"Q\r\n"
    return head(world, "text/plain; charset=utf-8", "Content-Transfer-Encoding: base64") + body


def utf16_without_bom(world: World) -> bytes:
    """The plain part and the HTML part both UTF-16LE without a byte-order mark."""
    plain = base64.encodebytes(REPLY.encode("utf-16-le"))
    html = base64.encodebytes(f"<p>{REPLY}</p>".encode("utf-16-le"))
    return head(world, 'multipart/alternative; boundary="b"') + (
        b"--b\r\nContent-Type: text/plain; charset=utf-16\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + plain + b"--b\r\n"
        b"Content-Type: text/html\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + html
        + b"--b--\r\n"
    )


def supercite(world: World) -> bytes:
    quoted = "DH> an earlier line of the thread\r\nan answer to it\r\n" * 4_000
    return head(world, "text/plain; charset=utf-8") + f"{REPLY}\r\n\r\n{quoted}".encode()


def nested(world: World, depth: int) -> bytes:
    parts = [f"--b0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{REPLY}\r\n".encode()]
    for i in range(1, depth + 1):
        parts.append(b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i - 1, i))
    parts.append(b"--b%d\r\nContent-Type: text/plain\r\n\r\ndeep\r\n" % depth)
    parts.extend(b"--b%d--\r\n" % i for i in range(depth, -1, -1))
    return head(world, 'multipart/mixed; boundary="b0"') + b"".join(parts)


FILED: dict[str, Callable[[World], bytes]] = {
    "a body labelled rot13": codec_label_body,
    "a Subject in an encoded word labelled base64": codec_label_subject,
    "a From display name in an encoded word labelled rot13": codec_label_from_name,
    "base64 declared with a trailing space": base64_trailing_space,
    "base64 one character past a group of four": base64_one_past,
    "UTF-16 without a byte-order mark, plain and HTML": utf16_without_bom,
}


@pytest.fixture
def gateway(settings: Settings, start: Callable[..., GatewayThread]) -> GatewayThread:
    return start(settings)


def filed_body(sessions: sessionmaker[Session]) -> str:
    with sessions() as s:
        row = s.scalars(select(InboundMail)).one()
        assert row.status == "filed", (row.status, row.decisions)
        message = s.scalars(select(Message).where(Message.source == "email")).one()
        return message.body.strip()


@pytest.mark.parametrize("shape", list(FILED))
def test_a_verified_sender_is_never_refused_for_how_the_body_is_encoded(
    shape: str,
    gateway: GatewayThread,
    world: World,
    settings: Settings,
    sessions: sessionmaker[Session],
) -> None:
    assert send(gateway, world, FILED[shape](world)) == (250, "")
    started = time.monotonic()
    assert InboundWorker(sessions, settings).drain() == 1
    assert time.monotonic() - started < 30
    assert filed_body(sessions) == REPLY


def test_parts_nested_past_the_limit_are_refused_at_data(
    gateway: GatewayThread, world: World, sessions: sessionmaker[Session]
) -> None:
    answer = send(gateway, world, nested(world, 1_000))
    assert_refused(answer, 554, "5.6.0", "nested_too_deep")
    assert queued(sessions) == []


def test_nesting_up_to_the_limit_is_accepted_and_filed(
    gateway: GatewayThread, world: World, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    assert send(gateway, world, nested(world, nesting.MAX_NESTING - 1)) == (250, "")
    InboundWorker(sessions, settings).drain()
    assert filed_body(sessions) == REPLY


def test_deep_nesting_already_queued_is_filed_with_its_reply(
    world: World, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    """A mail queued before the rule (or replayed) keeps its reply: the parser cuts
    the levels past the limit instead of recursing into them."""
    with transaction(sessions) as s:
        inbound.enqueue(
            s,
            mail_from=world.client_email,
            rcpt=world.address,
            raw=nested(world, 1_000),
            message_id=None,
        )
    InboundWorker(sessions, settings).drain()
    assert filed_body(sessions) == REPLY


def test_supercite_quotes_alternating_with_answers_are_filed_in_linear_time(
    gateway: GatewayThread, world: World, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    """Quotes answered inline stay with their answers (the extraction rule), all 8,000 of
    them; the cut once took time quadratic in the runs (250 KB: 20 s)."""
    assert send(gateway, world, supercite(world)) == (250, "")
    started = time.monotonic()
    InboundWorker(sessions, settings).drain()
    assert time.monotonic() - started < 10
    body = filed_body(sessions)
    assert body.startswith(REPLY) and body.endswith("an answer to it")
    assert body.count("an answer to it") == 4_000


def test_a_from_of_thousands_of_encoded_words_is_refused_quickly(
    gateway: GatewayThread, world: World, sessions: sessionmaker[Session]
) -> None:
    """The header parser takes time quadratic in a From's encoded words (224 KB: 16 s,
    during the SMTP dialogue); no person's From is that long, so it names no mailbox."""
    name = "\r\n ".join(["=?utf-8?q?Cl=C3=A9o?="] * 10_000)  # folded, one word a line
    started = time.monotonic()
    answer = send(gateway, world, head(world, "text/plain; charset=utf-8", name=name) + b"Yes\r\n")
    assert time.monotonic() - started < 10
    assert_refused(answer, 550, "5.7.1", "sender_mismatch")
    assert queued(sessions) == []
