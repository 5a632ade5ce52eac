"""Operators' operations on a real database: releasing and rejecting held mail,
replaying, retrying every failed notification however many there are,
clearing an address's bounces, the sender policy, revoking a reply address,
purging raw mail."""

from __future__ import annotations

from datetime import timedelta
from email.message import EmailMessage

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.core import operations, views
from replygate.core.messaging import Messaging
from replygate.errors import Invalid, NotFound
from replygate.store import directory, inbound
from replygate.store.db import transaction
from replygate.store.models import InboundMail, Message, OutboxMessage, ReplyToken, utcnow
from replygate.workers.inbound import InboundWorker


@pytest.fixture
def reply_address(sessions: sessionmaker[Session], settings: Settings) -> str:
    """Dana has written to Cleo with Convenience Mode on: Cleo's reply address."""
    with transaction(sessions) as s:
        directory.add_user(s, "dana@staff.test", "Dana Staff", "staff")
        directory.add_user(s, "cleo@example.com", "Cleo Client", "client")
    messaging = Messaging(sessions, settings)
    messaging.set_convenience_mode(on=True, acknowledge_hipaa=True)
    messaging.send(
        sender="dana@staff.test", to=["cleo@example.com"], subject="Hello", body="How are you?"
    )
    with sessions() as s:
        token = s.scalars(select(ReplyToken.token)).one()
    return f"reply+{token}@{settings.reply_domain}"


def _queue(
    sessions: sessionmaker[Session],
    to: str,
    *,
    sender: str = "cleo@example.com",
    message_id: str = "<r1@mail.example.com>",
) -> int:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = "Re: Hello"
    msg["Message-ID"] = message_id
    msg.set_content("I am well, thank you!\n\nOn Mon, Dana Staff wrote:\n> How are you?\n")
    with transaction(sessions) as s:
        row = inbound.enqueue(
            s, mail_from=sender, rcpt=to, raw=msg.as_bytes(), message_id=message_id
        )
        return row.id


def _held(sessions: sessionmaker[Session], settings: Settings, to: str) -> int:
    """A reply from an address the token was not issued to, held by the hold policy."""
    operations.set_sender_policy(sessions, settings, "hold")
    queue_id = _queue(sessions, to, sender="cleo.work@corp.test")
    InboundWorker(sessions, settings).drain()
    assert _row(sessions, queue_id).status == "held"
    return queue_id


def _row(sessions: sessionmaker[Session], queue_id: int) -> InboundMail:
    with sessions() as s:
        row = s.get(InboundMail, queue_id)
        assert row is not None
        return row


def _messages(sessions: sessionmaker[Session]) -> int:
    with sessions() as s:
        return int(s.scalar(select(func.count()).select_from(Message)))


def test_releasing_held_mail_records_the_operator_and_lets_the_worker_file_it(
    sessions: sessionmaker[Session], settings: Settings, reply_address: str
) -> None:
    queue_id = _held(sessions, settings, reply_address)
    operations.release_held(sessions, queue_id)
    row = _row(sessions, queue_id)
    assert row.status == "processing" and row.claimed_at is None
    assert row.decisions[-1] == {"stage": "operator", "action": "release"}
    assert _messages(sessions) == 1  # the release itself files nothing

    outcome = InboundWorker(sessions, settings).process(queue_id, released=True)
    assert outcome.status == "filed"
    assert _row(sessions, queue_id).status == "filed"
    assert _messages(sessions) == 2
    with pytest.raises(Invalid, match=f"mail {queue_id} is filed, not held"):
        operations.release_held(sessions, queue_id)


def test_rejecting_held_mail_drops_it_with_the_reason_and_only_while_held(
    sessions: sessionmaker[Session], settings: Settings, reply_address: str
) -> None:
    queue_id = _held(sessions, settings, reply_address)
    operations.reject_held(sessions, queue_id, "not the client's address")
    row = _row(sessions, queue_id)
    assert (row.status, row.reason) == ("rejected", "not the client's address")
    assert row.decisions[-1] == {"stage": "operator", "action": "reject"}
    assert _messages(sessions) == 1
    with pytest.raises(Invalid, match="is rejected, not held"):
        operations.reject_held(sessions, queue_id)
    with pytest.raises(NotFound):
        operations.reject_held(sessions, queue_id + 100)


def test_replaying_every_failed_mail_files_it_once_and_leaves_the_rest(
    sessions: sessionmaker[Session], settings: Settings, reply_address: str
) -> None:
    failed = _queue(sessions, reply_address)
    other = _queue(sessions, reply_address, message_id="<r2@mail.example.com>")
    with transaction(sessions) as s:
        s.execute(update(InboundMail).values(status="failed"))
        failing = s.get(InboundMail, failed)
        assert failing is not None
        failing.reason = "extractor exploded"
        s.execute(update(InboundMail).where(InboundMail.id == other).values(status="ignored"))
    requeued = operations.requeue_inbound(sessions, all_failed=True)
    assert requeued == [operations.Requeued(failed, "failed")]
    replay = _row(sessions, failed).decisions[-1]
    assert (replay["stage"], replay["previous"], replay["reason"]) == (
        "replay",
        "failed",
        "extractor exploded",
    )
    assert _row(sessions, other).status == "ignored"

    worker = InboundWorker(sessions, settings)
    (done,) = [operations.replay_one(sessions, item, worker.process) for item in requeued]
    assert (done.inbound_id, done.previous, done.status) == (failed, "failed", "filed")
    assert _messages(sessions) == 2
    with pytest.raises(Invalid, match="name the mails"):
        operations.requeue_inbound(sessions)


def test_a_replay_claimed_by_a_running_worker_first_is_left_to_it(
    sessions: sessionmaker[Session], settings: Settings, reply_address: str
) -> None:
    queue_id = _queue(sessions, reply_address)
    with transaction(sessions) as s:
        s.execute(update(InboundMail).values(status="failed"))
    (item,) = operations.requeue_inbound(sessions, [queue_id])
    assert inbound.claim(sessions) == [queue_id]  # another worker takes it meanwhile

    def must_not_run(inbound_id: int) -> object:
        raise AssertionError("filed a mail another worker holds")

    done = operations.replay_one(sessions, item, must_not_run)  # type: ignore[arg-type]
    assert done == operations.Replayed(queue_id, "failed", None, None)


def _failed_notifications(sessions: sessionmaker[Session], n: int, *, status: str) -> None:
    now = utcnow()
    row = dict(
        kind="secure",
        recipient="cleo@example.com",
        envelope_from="bounces@reply.test",
        raw=b"Subject: x\r\n\r\nx\r\n",
        status=status,
        attempts=8,
        last_error="550 5.1.1 no such user" if status == "failed" else None,
        created_at=now,
        next_attempt_at=now + timedelta(days=1),
    )
    with transaction(sessions) as s:
        s.add_all(
            OutboxMessage(**row, header_message_id=f"<rg.n.{status}{i}@reply.test>")
            for i in range(n)
        )


def _outbox_statuses(sessions: sessionmaker[Session]) -> dict[str, int]:
    with sessions() as s:
        rows = s.execute(
            select(OutboxMessage.status, func.count()).group_by(OutboxMessage.status)
        ).all()
    return {views.plain(status): int(n) for status, n in rows}


def test_retrying_all_failed_notifications_takes_every_one_beyond_any_page(
    sessions: sessionmaker[Session],
) -> None:
    """More failed rows than the 10,000 the command once fetched as "all"."""
    _failed_notifications(sessions, 10_050, status="failed")
    _failed_notifications(sessions, 3, status="sent")
    assert operations.retry_notifications(sessions, all_failed=True) == 10_050
    assert _outbox_statuses(sessions) == {"queued": 10_050, "sent": 3}
    with sessions() as s:
        due = s.execute(
            select(func.max(OutboxMessage.attempts), func.max(OutboxMessage.next_attempt_at)).where(
                OutboxMessage.status == "queued"
            )
        ).one()
    assert due[0] == 0 and due[1] <= utcnow()  # a fresh start, due at once
    assert operations.retry_notifications(sessions, all_failed=True) == 0


def test_retrying_named_notifications_touches_only_those_that_failed(
    sessions: sessionmaker[Session],
) -> None:
    _failed_notifications(sessions, 3, status="failed")
    _failed_notifications(sessions, 1, status="sent")
    with sessions() as s:
        ids = list(s.scalars(select(OutboxMessage.id).order_by(OutboxMessage.id)))
    assert operations.retry_notifications(sessions, [ids[0], ids[3]]) == 1
    assert _outbox_statuses(sessions) == {"queued": 1, "failed": 2, "sent": 1}
    with pytest.raises(Invalid):
        operations.retry_notifications(sessions)


def test_resetting_bounces_makes_a_suppressed_address_good_again(
    sessions: sessionmaker[Session],
) -> None:
    with transaction(sessions) as s:
        user = directory.add_user(s, "cleo@example.com", "Cleo", "client")
        user.bounce_count, user.address_status = 3, "suppressed"
    assert operations.reset_bounces(sessions, "  Cleo@Example.COM ") == "cleo@example.com"
    (row,) = views.users(sessions)
    assert (row.address_status, row.bounce_count) == ("ok", 0)
    with pytest.raises(NotFound, match=r"no user with email nobody@example\.com"):
        operations.reset_bounces(sessions, "nobody@example.com")


def test_the_sender_policy_is_stored_and_only_a_known_one(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    assert views.organisation_settings(sessions, settings).sender_policy == "reject"
    operations.set_sender_policy(sessions, settings, "hold")
    assert views.organisation_settings(sessions, settings).sender_policy == "hold"
    with pytest.raises(Invalid, match="sender policy must be one of reject, hold"):
        operations.set_sender_policy(sessions, settings, "file")
    assert views.organisation_settings(sessions, settings).sender_policy == "hold"


def test_a_revoked_reply_address_is_refused_and_cannot_be_revoked_twice(
    sessions: sessionmaker[Session], settings: Settings, reply_address: str
) -> None:
    assert views.reply_address(sessions, settings, reply_address)["accepted"] is True
    operations.revoke_reply_address(sessions, settings, reply_address)
    shown = views.reply_address(sessions, settings, reply_address)
    assert shown["accepted"] is False and "revoked" in shown["reason"]
    assert shown["revoked_at"] is not None
    with pytest.raises(NotFound, match="no live reply address"):
        operations.revoke_reply_address(sessions, settings, reply_address)
    with pytest.raises(NotFound, match=r"is not a reply address of reply\.test"):
        operations.revoke_reply_address(sessions, settings, "cleo@example.com")


def test_purging_drops_only_finished_raw_mail_past_retention(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    old_filed = _queue(sessions, "reply+x@reply.test")
    old_held = _queue(sessions, "reply+x@reply.test", message_id="<r2@x>")
    recent = _queue(sessions, "reply+x@reply.test", message_id="<r3@x>")
    long_ago = utcnow() - timedelta(days=settings.retention_days + 1)
    with transaction(sessions) as s:
        s.execute(update(InboundMail).values(status="filed"))
        s.execute(update(InboundMail).where(InboundMail.id == old_held).values(status="held"))
        s.execute(
            update(InboundMail)
            .where(InboundMail.id.in_([old_filed, old_held]))
            .values(received_at=long_ago)
        )
    assert operations.purge_raw_mail(sessions, settings) == operations.Purged(
        1, settings.retention_days
    )
    assert _row(sessions, old_filed).raw is None
    assert _row(sessions, old_held).raw is not None and _row(sessions, recent).raw is not None
    with pytest.raises(NotFound, match="purged"):
        views.raw_mail(sessions, old_filed)
    assert operations.purge_raw_mail(sessions, settings, 0).count == 1  # the recent one
