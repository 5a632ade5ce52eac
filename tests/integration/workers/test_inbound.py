"""The engine files each accepted reply exactly once, whatever happens:
the same mail delivered twice, a worker killed between claim and commit,
an operator replaying it afterwards."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
import time
from datetime import timedelta
from email.message import EmailMessage

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from replygate.cli import main
from replygate.config import Settings
from replygate.core.messaging import Messaging
from replygate.store import directory, inbound
from replygate.store.db import transaction
from replygate.store.models import InboundMail, Message, OutboxMessage, ReplyToken, utcnow
from replygate.workers.inbound import InboundWorker
from tests.helpers import cli_env, wait_for


@pytest.fixture
def reply_address(sessions: sessionmaker[Session], settings: Settings) -> tuple[int, str]:
    with transaction(sessions) as s:
        directory.add_user(s, "dana@staff.test", "Dana Staff", "staff")
        directory.add_user(s, "cleo@example.com", "Cleo Client", "client")
    messaging = Messaging(sessions, settings)
    messaging.set_convenience_mode(on=True, acknowledge_hipaa=True)
    sent = messaging.send(
        sender="dana@staff.test", to=["cleo@example.com"], subject="Hello", body="How are you?"
    )
    with sessions() as s:
        token = s.scalars(select(ReplyToken.token)).one()
    return sent.threads[0].id, f"reply+{token}@{settings.reply_domain}"


def reply_mail(
    to: str,
    *,
    message_id: str = "<r1@mail.example.com>",
    sender: str = "cleo@example.com",
    headers: dict[str, str] | None = None,
) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Cleo Client <{sender}>"
    msg["To"] = to
    msg["Subject"] = "Re: Hello"
    msg["Message-ID"] = message_id
    for k, v in (headers or {}).items():
        msg[k] = v
    msg.set_content("I am well, thank you!\n\nOn Mon, Dana Staff wrote:\n> How are you?\n")
    return msg.as_bytes()


def enqueue(
    sessions: sessionmaker[Session], rcpt: str, raw: bytes, mail_from: str = "cleo@example.com"
) -> int:
    with transaction(sessions) as s:
        return inbound.enqueue(s, mail_from=mail_from, rcpt=rcpt, raw=raw, message_id=None).id


def count(sessions: sessionmaker[Session], model: type) -> int:
    with sessions() as s:
        return int(s.scalar(select(func.count()).select_from(model)))


def test_a_reply_is_filed_and_the_sender_notified(
    sessions: sessionmaker[Session], settings: Settings, reply_address: tuple[int, str]
) -> None:
    thread_id, address = reply_address
    queue_id = enqueue(sessions, address, reply_mail(address))
    assert InboundWorker(sessions, settings).drain() == 1
    with sessions() as s:
        row = s.get(InboundMail, queue_id)
        assert (row.status, row.thread_id) == ("filed", thread_id)
        message = s.scalars(select(Message).where(Message.source == "email")).one()
        assert message.body.strip() == "I am well, thank you!"
        assert "How are you?" in (message.quote or "")
        notified = s.scalars(
            select(OutboxMessage).where(OutboxMessage.message_id == message.id)
        ).one()
        assert notified.recipient == "dana@staff.test"
        assert b"I am well, thank you!" in notified.raw


def test_the_same_mail_delivered_twice_is_filed_once(
    sessions: sessionmaker[Session], settings: Settings, reply_address: tuple[int, str]
) -> None:
    _, address = reply_address
    enqueue(sessions, address, reply_mail(address))
    enqueue(sessions, address, reply_mail(address))
    InboundWorker(sessions, settings).drain()
    assert count(sessions, Message) == 2  # the original and one reply
    assert count(sessions, OutboxMessage) == 2  # Cleo's notification and Dana's, once
    with sessions() as s:
        statuses = sorted(s.scalars(select(InboundMail.status)))
        reasons = [m.reason for m in s.scalars(select(InboundMail)) if m.reason]
    assert statuses == ["filed", "filed"]
    assert reasons == ["already filed (same Message-ID delivered again)"]


@pytest.mark.parametrize(
    ("headers", "mail_from", "needle"),
    [
        ({"Auto-Submitted": "auto-replied"}, "cleo@example.com", "Auto-Submitted"),
        ({}, "", "bounce"),
    ],
)
def test_automatic_mail_is_recorded_ignored_never_filed(
    sessions: sessionmaker[Session],
    settings: Settings,
    reply_address: tuple[int, str],
    headers: dict[str, str],
    mail_from: str,
    needle: str,
) -> None:
    _, address = reply_address
    queue_id = enqueue(sessions, address, reply_mail(address, headers=headers), mail_from=mail_from)
    InboundWorker(sessions, settings).drain()
    with sessions() as s:
        row = s.get(InboundMail, queue_id)
        assert row.status == "ignored"
        assert needle.lower() in (row.reason or "").lower()
    assert count(sessions, Message) == 1
    assert count(sessions, OutboxMessage) == 1


def test_a_forged_from_is_rejected_by_the_engine_too(
    sessions: sessionmaker[Session], settings: Settings, reply_address: tuple[int, str]
) -> None:
    _, address = reply_address
    queue_id = enqueue(sessions, address, reply_mail(address, sender="mallory@evil.test"))
    InboundWorker(sessions, settings).drain()
    with sessions() as s:
        assert s.get(InboundMail, queue_id).status == "rejected"
    assert count(sessions, Message) == 1


KILL_AFTER_CLAIM = """
import os, signal, sys
from pathlib import Path
from replygate.store.db import make_engine, session_factory
from replygate.store import inbound, keyring
keyring.install(keyring.Keyring(Path(sys.argv[2])))  # the claim opens the raw mail
ids = inbound.claim(session_factory(make_engine(sys.argv[1])), limit=10)
assert ids, "nothing claimed"
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_worker_killed_after_its_claim_leaves_the_mail_replayable(
    sessions: sessionmaker[Session], settings: Settings, reply_address: tuple[int, str]
) -> None:
    _, address = reply_address
    queue_id = enqueue(sessions, address, reply_mail(address))
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            KILL_AFTER_CLAIM,
            settings.database_url,
            str(settings.encryption_keys_file),
        ]
    )
    assert proc.returncode == -9
    with sessions() as s:
        assert s.get(InboundMail, queue_id).status == "processing"
    assert count(sessions, Message) == 1

    env = cli_env(settings)
    runner = CliRunner()
    for _ in range(2):  # replaying twice still files once
        result = runner.invoke(main, ["queue", "replay", str(queue_id)], env=env)
        assert result.exit_code == 0, result.output
    assert count(sessions, Message) == 2
    assert count(sessions, OutboxMessage) == 2
    listed = runner.invoke(main, ["queue", "list", "--json"], env=env)
    (row,) = json.loads(listed.output)
    assert set(row) >= {"id", "status", "reason", "mail_from", "rcpt", "message_id"}
    assert row["status"] == "filed"


def test_an_unexpected_error_marks_the_mail_failed_and_replay_files_it(
    sessions: sessionmaker[Session],
    settings: Settings,
    reply_address: tuple[int, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, address = reply_address
    queue_id = enqueue(sessions, address, reply_mail(address))
    engine = InboundWorker(sessions, dataclasses.replace(settings, worker_max_attempts=2))

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("extractor exploded")

    monkeypatch.setattr("replygate.core.filing.extract_from_parts", broken)
    engine.drain()
    with sessions() as s:
        row = s.get(InboundMail, queue_id)
        assert row.status == "queued" and "extractor exploded" in row.reason  # retried later
    assert inbound.claim(sessions) == []  # not before its retry delay
    assert inbound.claim(sessions, now=utcnow() + timedelta(minutes=5)) == [queue_id]
    engine.process(queue_id)
    with sessions() as s:
        row = s.get(InboundMail, queue_id)
        assert row.status == "failed" and row.attempts == 2  # quarantined
    monkeypatch.undo()
    with transaction(sessions) as s:
        assert inbound.requeue(s, inbound.failed_ids(s)) == [queue_id]
    engine.drain()
    assert count(sessions, Message) == 2


def test_dmarc_fail_from_a_trusted_relay_is_rejected_and_untrusted_ones_are_ignored(
    sessions: sessionmaker[Session], settings: Settings, reply_address: tuple[int, str]
) -> None:
    _, address = reply_address
    trusted = dataclasses.replace(settings, trusted_authserv_ids="mx.ours.test")
    fail = "mx.ours.test; dmarc=fail (p=reject) header.from=example.com"
    forged = "mx.evil.test; dmarc=fail header.from=example.com"
    a = enqueue(sessions, address, reply_mail(address, headers={"Authentication-Results": fail}))
    b = enqueue(
        sessions,
        address,
        reply_mail(address, message_id="<r2@x>", headers={"Authentication-Results": forged}),
    )
    InboundWorker(sessions, trusted).drain()
    with sessions() as s:
        assert s.get(InboundMail, a).status == "rejected"
        assert "DMARC" in s.get(InboundMail, a).reason
        assert s.get(InboundMail, b).status == "filed"


def test_hold_policy_holds_a_mismatched_sender_until_an_operator_decides(
    sessions: sessionmaker[Session], settings: Settings, reply_address: tuple[int, str]
) -> None:
    _, address = reply_address
    with transaction(sessions) as s:
        directory.organisation(s).sender_policy = "hold"
    queue_id = enqueue(sessions, address, reply_mail(address, sender="cleo.work@corp.test"))
    InboundWorker(sessions, settings).drain()
    with sessions() as s:
        assert s.get(InboundMail, queue_id).status == "held"
    assert count(sessions, Message) == 1
    env = cli_env(settings)
    explained = CliRunner().invoke(main, ["queue", "explain", str(queue_id)], env=env)
    assert "did not match" in explained.output and "held" in explained.output
    released = CliRunner().invoke(main, ["queue", "release", str(queue_id)], env=env)
    assert released.exit_code == 0 and "filed" in released.output
    assert count(sessions, Message) == 2


def test_a_bounce_for_a_notification_marks_the_address_and_suppresses_after_repeats(
    sessions: sessionmaker[Session], settings: Settings, reply_address: tuple[int, str]
) -> None:
    with sessions() as s:
        verp = s.scalars(select(OutboxMessage.envelope_from)).one()  # the signed VERP address
    dsn = (
        "From: MAILER-DAEMON@mx.example.com\r\nTo: " + verp + "\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain\r\n\r\nI'm sorry.\r\n"
        "--b\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.com\r\n\r\n"
        "Final-Recipient: rfc822; cleo@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
        "--b--\r\n"
    ).encode()
    tight = dataclasses.replace(settings, bounce_suppress_after=2)
    for day in range(2):  # suppression needs hard bounces on two different days
        queue_id = enqueue(sessions, verp, dsn, mail_from="")
        with transaction(sessions) as s:
            s.get(InboundMail, queue_id).received_at += timedelta(days=day)
        InboundWorker(sessions, tight).drain()
        with sessions() as s:
            cleo = directory.user(s, "cleo@example.com")
            state = (cleo.address_status, cleo.bounce_count)
    assert state == ("suppressed", 2)
    # A suppressed address gets no more notifications (recorded, not sent).
    Messaging(sessions, tight).send(
        sender="dana@staff.test", to=["cleo@example.com"], subject="Again", body="Hello?"
    )
    with sessions() as s:
        last = s.scalars(select(OutboxMessage).order_by(OutboxMessage.id.desc())).first()
        assert last.status == "suppressed"


def test_a_bounce_address_of_wildcards_matches_no_notification(
    sessions: sessionmaker[Session], settings: Settings, reply_address: tuple[int, str]
) -> None:
    """An attacker's DSN to ``bounces+<twenty underscores>@`` (``_`` is LIKE's wildcard)
    names no notification of ours, so nobody's address is marked failing."""
    verp = f"bounces+{'_' * 20}@{settings.reply_domain}"
    dsn = (
        "From: MAILER-DAEMON@evil.test\r\nTo: " + verp + "\r\n"
        "Subject: Undelivered\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; evil.test\r\n\r\n"
        "Final-Recipient: rfc822; cleo@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
        "--b--\r\n"
    ).encode()
    with sessions() as s:
        header_id = s.scalars(select(OutboxMessage.header_message_id)).one()
    assert len(header_id.split(".")[2].split("@")[0]) == 20  # the sweep has the right length
    for _ in range(3):
        enqueue(sessions, verp, dsn, mail_from="")
    InboundWorker(sessions, settings).drain()
    with sessions() as s:
        cleo = directory.user(s, "cleo@example.com")
        assert (cleo.address_status, cleo.bounce_count) == ("ok", 0)
        assert {row.status for row in s.scalars(select(InboundMail))} == {"ignored"}


def test_the_running_engine_signals_when_it_has_written_notifications(
    sessions: sessionmaker[Session], settings: Settings, reply_address: tuple[int, str]
) -> None:
    """``notified`` is set after a batch that filed a reply (its notification is
    in the outbox by then), and not after one that only ignored mail."""
    _, address = reply_address
    slow = dataclasses.replace(settings, worker_poll_seconds=30)

    async def scenario() -> None:
        stop, notified = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(InboundWorker(sessions, slow).run(stop, notified=notified))
        enqueue(sessions, address, reply_mail(address, headers={"Auto-Submitted": "auto-replied"}))
        await asyncio.to_thread(wait_for, lambda: queue_idle(sessions), what="mail ignored")
        stop.set()
        await asyncio.wait_for(task, timeout=5)
        assert not notified.is_set()  # ignored mail writes no notification

        stop = asyncio.Event()
        enqueue(sessions, address, reply_mail(address, message_id="<r2@mail.example.com>"))
        task = asyncio.create_task(InboundWorker(sessions, slow).run(stop, notified=notified))
        await asyncio.wait_for(notified.wait(), timeout=5)
        assert count(sessions, OutboxMessage) == 2  # Cleo's first, and now Dana's
        stop.set()
        await asyncio.wait_for(task, timeout=5)

    asyncio.run(scenario())


def queue_idle(sessions: sessionmaker[Session]) -> bool:
    with sessions() as s:
        statuses = set(s.scalars(select(InboundMail.status)))
    return not statuses & {"queued", "processing"}


def test_an_idle_poll_on_sqlite_does_not_queue_for_the_write_lock(
    sessions: sessionmaker[Session], settings: Settings, reply_address: tuple[int, str]
) -> None:
    """While another connection holds SQLite's write lock, a poll of an empty
    queue returns at once instead of waiting for the lock to claim nothing."""
    engine = InboundWorker(sessions, settings)
    if engine.peek is None:
        pytest.skip("PostgreSQL claims skip locked rows; there is no database-wide lock")
    _, address = reply_address
    with sessions() as s, s.begin():
        s.connection()  # BEGIN IMMEDIATE: the write lock is held from here
        started = time.monotonic()
        assert engine.run_once() == 0
        assert time.monotonic() - started < 1  # the busy timeout is 30 s
        s.add(
            InboundMail(mail_from="cleo@example.com", rcpt=address, raw=reply_mail(address), size=1)
        )
    assert engine.run_once() == 1
