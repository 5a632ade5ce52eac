"""Read receipts and unread reminders, on both databases: a message is read the
first time its recipient opens the thread in the portal (never by email); its
author sees who of its recipients read it and, if they asked, gets one receipt;
a message still unread after the organisation's delay gets one reminder, once,
however many sweepers run, never to a suppressed address, content-free in
Secure Mode."""

from __future__ import annotations

import threading
from datetime import timedelta
from email import message_from_bytes
from email.policy import default

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.core import inbox, operations, reminders, views
from replygate.core.messaging import Messaging
from replygate.core.workspace import Workspace
from replygate.errors import Invalid
from replygate.mail.compose import SECURE_RECEIPT_SUBJECT, SECURE_REMINDER_SUBJECT
from replygate.store import directory
from replygate.store.db import make_engine, session_factory, transaction
from replygate.store.models import (
    AddressStatus,
    MessageReceipt,
    OutboxMessage,
    User,
    utcnow,
)
from tests.portal_support import CIRCLE, People, file_email_reply, messaging, password_hash, people

__all__ = ["messaging", "password_hash", "people"]  # fixtures

SUBJECT = "Your results are in"
BODY = "Zanzibar quokka thermometer: your results are normal."


@pytest.fixture
def workspace(settings: Settings, sessions: sessionmaker[Session]) -> Workspace:
    return Workspace(sessions, settings)


def _viewer(sessions: sessionmaker[Session], email: str) -> inbox.Viewer:
    with sessions() as s:
        return inbox.viewer(directory.user(s, email))


def _outbox(sessions: sessionmaker[Session], kind: str) -> list[OutboxMessage]:
    with sessions() as s:
        return list(
            s.scalars(select(OutboxMessage).where(OutboxMessage.kind == kind).order_by("id"))
        )


def _text(row: OutboxMessage) -> str:
    mail = message_from_bytes(row.raw, policy=default)
    return f"{mail['Subject']}\n{mail.get_content()}"


def _send_to_circle(messaging: Messaging, people: People, **kwargs: object) -> dict[str, int]:
    sent = messaging.send(
        sender=people.staff, to=[f"circle:{CIRCLE}"], subject=SUBJECT, body=BODY, **kwargs
    )
    return {t.recipient: t.id for t in sent.threads}


def test_the_author_sees_who_of_a_circle_read_it_and_gets_one_content_free_receipt(
    workspace: Workspace, messaging: Messaging, people: People, sessions: sessionmaker[Session]
) -> None:
    threads = _send_to_circle(messaging, people, read_receipt=True)
    staff = _viewer(sessions, people.staff)
    before = workspace.read_thread(threads[people.client1], staff).messages[0]
    assert [(m.email, m.at) for m in before.read_marks] == [
        (people.client1, None),
        (people.client2, None),
    ]

    carol = _viewer(sessions, people.client1)
    seen = workspace.read_thread(threads[people.client1], carol)
    assert seen.messages[0].read_marks == ()  # a recipient sees no marks on others' messages
    workspace.read_thread(threads[people.client1], carol)  # opened again: no second receipt

    (receipt,) = _outbox(sessions, "receipt")
    assert receipt.recipient == people.staff and receipt.status == "queued"
    text = _text(receipt)
    assert SECURE_RECEIPT_SUBJECT in text
    for secret in (SUBJECT, "Zanzibar", "Carol", people.client1):
        assert secret not in text

    # Under either copy the author sees Carol's reading and Dan's absence.
    for thread_id in threads.values():
        marks = workspace.read_thread(thread_id, staff).messages[0].read_marks
        assert [m.email for m in marks] == [people.client1, people.client2]
        assert marks[0].at is not None and marks[1].at is None

    detail = views.thread(sessions, threads[people.client1])
    (read,) = detail.messages[0].read_by
    assert read["user"] == people.client1 and read["at"].startswith(str(utcnow().year))
    assert views.thread(sessions, threads[people.client2]).messages[0].read_by == []


def test_without_the_option_reads_are_marked_but_nobody_is_notified(
    workspace: Workspace, messaging: Messaging, people: People, sessions: sessionmaker[Session]
) -> None:
    threads = _send_to_circle(messaging, people)  # the organisation's default: off
    workspace.read_thread(threads[people.client2], _viewer(sessions, people.client2))
    assert _outbox(sessions, "receipt") == []
    assert [
        r["user"] for r in views.thread(sessions, threads[people.client2]).messages[0].read_by
    ] == [people.client2]


def test_the_organisation_default_ticks_the_option_and_a_reply_can_untick_it(
    workspace: Workspace,
    messaging: Messaging,
    people: People,
    sessions: sessionmaker[Session],
    settings: Settings,
) -> None:
    operations.set_read_receipts_default(sessions, settings, True)
    threads = _send_to_circle(messaging, people)
    carol = _viewer(sessions, people.client1)
    workspace.read_thread(threads[people.client1], carol)
    assert len(_outbox(sessions, "receipt")) == 1
    messaging.reply(
        thread_id=threads[people.client1], author=people.client1, body="Thanks", read_receipt=False
    )
    workspace.read_thread(threads[people.client1], _viewer(sessions, people.staff))
    assert len(_outbox(sessions, "receipt")) == 1


def test_in_convenience_mode_the_receipt_names_reader_and_subject_and_takes_no_reply(
    workspace: Workspace,
    messaging: Messaging,
    people: People,
    sessions: sessionmaker[Session],
    settings: Settings,
) -> None:
    operations.set_convenience_mode(sessions, settings, on=True, acknowledge_hipaa=True)
    threads = _send_to_circle(messaging, people, read_receipt=True)
    workspace.read_thread(threads[people.client1], _viewer(sessions, people.client1))
    (receipt,) = _outbox(sessions, "receipt")
    mail = message_from_bytes(receipt.raw, policy=default)
    assert mail["Subject"] == f"Read: {SUBJECT}"
    assert "Carol Client read your message" in mail.get_content()
    assert mail["Reply-To"] is None and "Zanzibar" not in mail.get_content()


def test_reading_by_email_is_not_reading(
    workspace: Workspace,
    messaging: Messaging,
    people: People,
    sessions: sessionmaker[Session],
    settings: Settings,
) -> None:
    """In Convenience Mode a client may answer by email: the message stays unread."""
    operations.set_convenience_mode(sessions, settings, on=True, acknowledge_hipaa=True)
    threads = _send_to_circle(messaging, people, read_receipt=True)
    file_email_reply(
        sessions, messaging, thread_id=threads[people.client1], author=people.client1, body="Ok"
    )
    staff_message = views.thread(sessions, threads[people.client1]).messages[0]
    assert staff_message.read_by == [] and _outbox(sessions, "receipt") == []
    view = workspace.read_thread(threads[people.client1], _viewer(sessions, people.client1))
    assert view.convenience_mode
    # The staff member has not opened the client's emailed reply either.
    assert views.thread(sessions, threads[people.client1]).messages[1].read_by == []


def _make_due(sessions: sessionmaker[Session]) -> None:
    """Bring every pending reminder's moment to the past (as if the delay had passed)."""
    with transaction(sessions) as s:
        s.execute(
            update(MessageReceipt)
            .where(MessageReceipt.remind_at.is_not(None))
            .values(remind_at=utcnow() - timedelta(seconds=1))
        )


def test_one_reminder_to_whoever_has_not_opened_it_and_never_a_second(
    workspace: Workspace,
    messaging: Messaging,
    people: People,
    sessions: sessionmaker[Session],
    settings: Settings,
) -> None:
    assert operations.set_reminder_delay(sessions, settings, "2h") == 7200
    threads = _send_to_circle(messaging, people)
    now = utcnow()
    assert reminders.send_due(sessions, settings, now=now) == 0  # not yet due
    workspace.read_thread(threads[people.client1], _viewer(sessions, people.client1))
    later = now + timedelta(hours=2, seconds=1)
    assert reminders.send_due(sessions, settings, now=later) == 1
    assert reminders.send_due(sessions, settings, now=later + timedelta(days=3)) == 0
    (reminder,) = _outbox(sessions, "reminder")
    assert reminder.recipient == people.client2 and reminder.thread_id == threads[people.client2]
    text = _text(reminder)
    assert SECURE_REMINDER_SUBJECT in text
    assert SUBJECT not in text and "Zanzibar" not in text and "Sam" not in text
    # Opening it after the reminder changes nothing more.
    workspace.read_thread(threads[people.client2], _viewer(sessions, people.client2))
    assert reminders.send_due(sessions, settings, now=later + timedelta(days=9)) == 0
    assert len(_outbox(sessions, "reminder")) == 1


def test_no_reminders_when_the_delay_is_zero_and_none_sent_to_a_suppressed_address(
    messaging: Messaging, people: People, sessions: sessionmaker[Session], settings: Settings
) -> None:
    operations.set_reminder_delay(sessions, settings, "0")
    _send_to_circle(messaging, people)
    far = utcnow() + timedelta(days=400)
    assert reminders.send_due(sessions, settings, now=far) == 0
    operations.set_reminder_delay(sessions, settings, "30m")
    with transaction(sessions) as s:
        s.execute(
            update(User)
            .where(User.email == people.client2)
            .values(address_status=AddressStatus.SUPPRESSED)
        )
    _send_to_circle(messaging, people)
    assert reminders.send_due(sessions, settings, now=far) == 2
    by_address = {r.recipient: r.status for r in _outbox(sessions, "reminder")}
    assert by_address == {people.client1: "queued", people.client2: "suppressed"}


def test_a_convenience_mode_reminder_carries_the_message_and_its_reply_address(
    messaging: Messaging, people: People, sessions: sessionmaker[Session], settings: Settings
) -> None:
    operations.set_convenience_mode(sessions, settings, on=True, acknowledge_hipaa=True)
    messaging.send(sender=people.staff, to=[people.client1], subject=SUBJECT, body=BODY)
    assert reminders.send_due(sessions, settings, now=utcnow() + timedelta(days=1, seconds=1)) == 1
    (reminder,) = _outbox(sessions, "reminder")
    mail = message_from_bytes(reminder.raw, policy=default)
    assert mail["Subject"] == f"Reminder: {SUBJECT}"
    assert "Zanzibar" in mail.get_content() and mail["Reply-To"].startswith("reply+")


def test_sweepers_racing_queue_each_due_reminder_once(
    messaging: Messaging, people: People, sessions: sessionmaker[Session], settings: Settings
) -> None:
    """Four sweepers, each with its own engine, start together over 60 due reminders."""
    with transaction(sessions) as s:
        for i in range(30):
            directory.add_user(s, f"member{i}@example.test", f"Member {i}", "client")
            directory.add_member(s, CIRCLE, f"member{i}@example.test")
    for _ in range(2):
        _send_to_circle(messaging, people)
    _make_due(sessions)
    with sessions() as s:
        due = s.scalar(select(func.count()).where(MessageReceipt.remind_at.is_not(None)))
    assert due == 64
    start = threading.Barrier(4)
    counts: list[int] = []
    errors: list[BaseException] = []

    def sweep() -> None:
        engine = make_engine(settings.database_url)
        factory = session_factory(engine)
        try:
            start.wait()
            total = 0
            while n := reminders.send_due(factory, settings, now=utcnow(), limit=7):
                total += n
            counts.append(total)
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            engine.dispose()

    sweepers = [threading.Thread(target=sweep) for _ in range(4)]
    for t in sweepers:
        t.start()
    for t in sweepers:
        t.join(120)
    assert not errors, errors
    assert sum(counts) == 64
    sent = _outbox(sessions, "reminder")
    assert len(sent) == 64
    assert len({(r.message_id, r.user_id) for r in sent}) == 64


def test_a_reminder_delay_is_a_duration_with_a_unit(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    for wrong in ("24", "soon", "-1h", "100d"):
        with pytest.raises(Invalid):
            operations.set_reminder_delay(sessions, settings, wrong)
    assert operations.set_reminder_delay(sessions, settings, "1.5h") == 5400
    assert views.organisation_settings(sessions, settings).reminder_delay_seconds == 5400
