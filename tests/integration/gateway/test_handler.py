"""The handler's decisions, called directly: no socket, no SMTP grammar."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from aiosmtpd.smtp import Envelope
from aiosmtpd.smtp import Session as SMTPSession
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from structlog.testing import capture_logs

from replygate.config import Settings
from replygate.gateway.handler import GatewayHandler
from replygate.mail import reply_token
from replygate.mail.verp import bounce_address
from replygate.store import directory, inbound_writer
from replygate.store.db import make_engine, session_factory, transaction
from replygate.store.models import Thread, ThreadParticipant
from tests.helpers import BOUNCE_KEY, as_sent
from tests.integration.gateway.conftest import (
    World,
    add_reply_address,
    queued,
    reply_message,
    reply_with_attachment,
)

BODY_MARK = "Tuesday at 10 works for me."
BOUNCES = bounce_address("9f2c41d0a7b35e6c8d12", "reply.test", BOUNCE_KEY)


def _session() -> SMTPSession:
    session = SMTPSession(asyncio.get_running_loop())
    session.peer = ("192.0.2.7", 40000)
    return session


def _envelope(mail_from: str) -> Envelope:
    envelope = Envelope()
    envelope.mail_from = mail_from
    return envelope


async def _transaction(
    handler: GatewayHandler, mail_from: str, rcpts: list[str], raw: bytes
) -> tuple[list[str], str | None]:
    """RCPT each address, then DATA when one was accepted; the replies in order."""
    session, envelope = _session(), _envelope(mail_from)
    answers = [await handler.handle_RCPT(None, session, envelope, r, []) for r in rcpts]
    if not envelope.rcpt_tos:
        return answers, None
    envelope.original_content = envelope.content = raw
    return answers, await handler.handle_DATA(None, session, envelope)


def test_accepted_recipient_is_added_to_the_envelope(
    settings: Settings, sessions: sessionmaker[Session], world: World
) -> None:
    """handle_RCPT must append to rcpt_tos itself; refused ones are not appended."""

    async def run() -> tuple[list[str], Envelope]:
        handler = GatewayHandler(settings, sessions)
        session, envelope = _session(), _envelope(world.client_email)
        answers = [
            await handler.handle_RCPT(None, session, envelope, world.address, []),
            await handler.handle_RCPT(None, session, envelope, "nobody@reply.test", []),
            await handler.handle_RCPT(None, session, envelope, world.address.upper(), []),
        ]
        return answers, envelope

    answers, envelope = asyncio.run(run())
    assert answers[0].startswith("250 2.1.5")
    assert answers[1].startswith("550 5.1.1 <nobody@reply.test>:")
    assert answers[2].startswith("250 2.1.5")  # listed twice, kept once
    assert envelope.rcpt_tos == [world.address]


def test_bounce_address_accepted_without_token_and_without_from_check(
    settings: Settings, sessions: sessionmaker[Session], world: World
) -> None:
    """DSNs for our notifications reach the engine; a DSN's From is a mailer, not checked."""
    raw = reply_message(from_="Mail Delivery System <mailer-daemon@mx.client.test>", to="x")
    answers, data = asyncio.run(
        _transaction(GatewayHandler(settings, sessions), "", [BOUNCES], raw)
    )
    assert answers[0].startswith("250 2.1.5")
    assert data == "250 2.0.0 Message accepted for delivery"
    (row,) = queued(sessions)
    assert row.rcpt == BOUNCES and row.mail_from == ""
    assert row.decisions[0]["kind"] == "bounce"


@pytest.mark.parametrize(
    "address",
    [
        "bounces+@reply.test",
        "bounces+a.b@reply.test",
        "bounces+x@elsewhere.test",
        "bounces@reply.test",
        "postmaster@x.y",
    ],
)
def test_anything_else_is_refused(
    settings: Settings, sessions: sessionmaker[Session], address: str
) -> None:
    answers, _ = asyncio.run(
        _transaction(GatewayHandler(settings, sessions), "a@b.test", [address], b"")
    )
    assert answers[0].startswith(f"550 5.1.1 <{address}>:")


def test_too_many_recipients(
    settings: Settings, sessions: sessionmaker[Session], world: World
) -> None:
    handler = GatewayHandler(settings, sessions, max_recipients=1)
    answers, _ = asyncio.run(
        _transaction(handler, world.client_email, [world.address, BOUNCES], b"")
    )
    assert answers[0].startswith("250 ")
    assert answers[1].startswith("452 4.5.3 ")


def test_two_reply_addresses_of_one_person_make_two_rows_in_one_transaction(
    settings: Settings, sessions: sessionmaker[Session], world: World
) -> None:
    """One queue row per recipient, same bytes, and each row records its own route."""
    with transaction(sessions) as session:
        other = Thread(subject="Your invoice", created_by_id=world.client_id)
        session.add(other)
        session.flush()
        session.add(ThreadParticipant(thread_id=other.id, user_id=world.client_id))
        other_id = other.id
    second = add_reply_address(sessions, settings, thread_id=other_id, user_id=world.client_id)
    raw = reply_message(from_=f"Cleo <{world.client_email}>", to=world.address)
    _, data = asyncio.run(
        _transaction(
            GatewayHandler(settings, sessions), world.client_email, [world.address, second], raw
        )
    )
    assert data is not None and data.startswith("250 2.0.0")
    rows = queued(sessions)
    assert [r.rcpt for r in rows] == [world.address, second]
    assert all(as_sent(r.raw) == raw and r.status == "queued" for r in rows)
    stages = [d["stage"] for d in rows[0].decisions]
    assert stages == ["rcpt", "data", "data", "authentication", "accept"]
    assert rows[0].decisions[0]["token"] == "ok"
    assert rows[0].decisions[0]["thread_id"] == world.thread_id
    assert rows[1].decisions[0]["thread_id"] == other_id


def test_a_message_to_two_peoples_addresses_is_refused_whole(
    settings: Settings, sessions: sessionmaker[Session], world: World
) -> None:
    """One From cannot be two people: refused, nothing stored for either."""
    with transaction(sessions) as session:
        other = directory.add_user(session, "dan@client.test", "Dan", "client").id
    theirs = add_reply_address(sessions, settings, thread_id=world.thread_id, user_id=other)
    raw = reply_message(from_=world.client_email, to=world.address)
    _, data = asyncio.run(
        _transaction(
            GatewayHandler(settings, sessions), world.client_email, [world.address, theirs], raw
        )
    )
    assert data is not None and data.startswith("550 5.7.1 ")
    assert queued(sessions) == []


@pytest.mark.parametrize(
    "headers",
    [
        b"To: x\r\nSubject: no from\r\n\r\nbody\r\n",
        b"From: cleo@client.test\r\nFrom: mallory@evil.test\r\n\r\nbody\r\n",
    ],
    ids=["no From", "two From"],
)
def test_missing_or_doubled_from_is_refused(
    settings: Settings, sessions: sessionmaker[Session], world: World, headers: bytes
) -> None:
    _, data = asyncio.run(
        _transaction(
            GatewayHandler(settings, sessions), world.client_email, [world.address], headers
        )
    )
    assert data is not None and data.startswith("550 5.7.1 ")
    assert queued(sessions) == []


def test_hold_policy_accepts_a_mismatch_for_the_engine_to_hold(
    settings: Settings, sessions: sessionmaker[Session], world: World
) -> None:
    """Under ``sender_policy = hold`` the gateway queues the mail and records why."""
    with transaction(sessions) as session:
        directory.organisation(session).sender_policy = "hold"
    raw = reply_message(from_="someone@else.test", to=world.address)
    _, data = asyncio.run(
        _transaction(GatewayHandler(settings, sessions), "someone@else.test", [world.address], raw)
    )
    assert data is not None and data.startswith("250 2.0.0")
    (row,) = queued(sessions)
    sender = row.decisions[1]
    assert sender["sender"] == "mismatch" and sender["policy"] == "hold"


def test_from_is_read_from_the_headers_not_the_body(
    settings: Settings, sessions: sessionmaker[Session], world: World
) -> None:
    raw = (
        b"From: mallory@evil.test\r\nSubject: hi\r\n\r\n"
        b"From: cleo@client.test\r\n"  # looks like a header, but it is the body
    )
    _, data = asyncio.run(
        _transaction(GatewayHandler(settings, sessions), world.client_email, [world.address], raw)
    )
    assert data is not None and data.startswith("550 5.7.1 ")


def test_store_failure_at_data_is_temporary_and_stores_nothing(
    settings: Settings,
    sessions: sessionmaker[Session],
    world: World,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """451 4.3.0: the sending MTA keeps the message and retries; nothing is lost."""

    def broken(*args: object, **kwargs: object) -> None:
        raise OperationalError("INSERT INTO inbound_mail", {}, Exception("disk I/O error"))

    monkeypatch.setattr(inbound_writer, "insert_rows", broken)
    raw = reply_message(from_=world.client_email, to=world.address)
    _, data = asyncio.run(
        _transaction(GatewayHandler(settings, sessions), world.client_email, [world.address], raw)
    )
    assert data is not None and data.startswith("451 4.3.0 ")
    monkeypatch.undo()
    assert queued(sessions) == []


def test_unreachable_database_at_rcpt_is_temporary(settings: Settings, world: World) -> None:
    engine = make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    try:
        down = session_factory(engine)
        answers, _ = asyncio.run(
            _transaction(GatewayHandler(settings, down), world.client_email, [world.address], b"")
        )
    finally:
        engine.dispose()
    assert answers[0].startswith(f"451 4.3.0 <{world.address}>:")


def test_rcpt_lookup_does_not_block_the_event_loop(
    settings: Settings, sessions: sessionmaker[Session], world: World
) -> None:
    """While a slow lookup runs, the loop still serves other work (it runs in a thread)."""
    import threading

    release = threading.Event()
    real = sessions

    def slow_factory() -> Session:
        assert release.wait(10), "the loop never got to run while the lookup waited"
        return real()

    async def run() -> str:
        handler = GatewayHandler(settings, slow_factory)  # type: ignore[arg-type]
        session, envelope = _session(), _envelope(world.client_email)
        rcpt = asyncio.create_task(handler.handle_RCPT(None, session, envelope, world.address, []))
        await asyncio.sleep(0)  # let the RCPT start and hand off to its thread
        release.set()  # runs on the loop: only possible if the loop is free
        return await rcpt

    assert asyncio.run(run()).startswith("250 ")


def test_one_canonical_log_line_per_mail_without_the_body(
    settings: Settings, sessions: sessionmaker[Session], world: World
) -> None:
    raw = reply_message(from_=world.client_email, to=world.address, body=BODY_MARK)
    with capture_logs() as logs:
        asyncio.run(
            _transaction(
                GatewayHandler(settings, sessions), world.client_email, [world.address], raw
            )
        )
    (line,) = [e for e in logs if e["event"] == "inbound.mail"]
    (row,) = queued(sessions)
    assert line["decision"] == "accepted"
    assert line["queue_ids"] == [row.id]
    token = world.address.removeprefix("reply+").partition("@")[0]
    assert line["rcpt"] == [
        f"reply+fp:{reply_token.fingerprint(settings.secret_key, token)}@reply.test"
    ]
    assert line["mail_from"] == world.client_email
    assert line["peer"] == "192.0.2.7:40000"
    assert line["message_id"] == row.message_id
    assert BODY_MARK not in repr(logs)


def test_refusal_log_lines_say_why(
    settings: Settings, sessions: sessionmaker[Session], world: World
) -> None:
    small = dataclasses.replace(settings, max_message_size=10)
    raw = reply_message(from_=world.client_email, to=world.address)
    with capture_logs() as logs:
        _, data = asyncio.run(
            _transaction(
                GatewayHandler(small, sessions),
                world.client_email,
                ["nobody@reply.test", world.address],
                raw,
            )
        )
    assert data is not None and data.startswith("552 5.3.4 ")
    rcpt = next(e for e in logs if e["event"] == "inbound.rcpt")
    mail = next(e for e in logs if e["event"] == "inbound.mail")
    assert rcpt["condition"] == "not_a_reply_address" and rcpt["decision"] == "refused"
    assert mail["condition"] == "message_too_large" and "limit of 10" in mail["reason"]


@pytest.mark.parametrize(
    ("filename", "content_type", "size", "expected"),
    [
        ("form.pdf", "application/pdf", 2_000, "250 2.0.0 "),
        ("setup.exe", "application/x-msdownload", 2_000, "554 5.6.1 "),
        ("scan.pdf", "application/pdf", 6_000, "552 5.3.4 "),
    ],
    ids=["allowed", "type refused", "file too large"],
)
def test_attachments_are_checked_at_data_with_the_engines_rules(
    settings: Settings,
    sessions: sessionmaker[Session],
    world: World,
    filename: str,
    content_type: str,
    size: int,
    expected: str,
) -> None:
    """Refused at DATA so the sender hears why, rather than the reply vanishing later."""
    limited = dataclasses.replace(settings, attachment_max_bytes=5_000)
    raw = reply_with_attachment(
        from_=world.client_email,
        to=world.address,
        filename=filename,
        content_type=content_type,
        payload=b"%PDF-1.4 " + b"x" * size,
    )
    _, data = asyncio.run(
        _transaction(GatewayHandler(limited, sessions), world.client_email, [world.address], raw)
    )
    assert data is not None and data.startswith(expected), data
    rows = queued(sessions)
    if expected.startswith("250"):
        assert as_sent(rows[0].raw) == raw and rows[0].decisions[2]["attachments"] == 1
    else:
        assert rows == []
