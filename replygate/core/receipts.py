"""Read receipts: who opened a message in the portal, and when; telling its author.

A message is read by a recipient the first time they open its thread page
in the portal (``mark_read``), never by reading it in an email: a
Convenience Mode notification carries the content, but nobody can tell
whether it was opened, so it does not count. Each recipient of a message
has a row in ``message_receipts``, written with the message; the first
opening stamps ``read_at`` with one conditional UPDATE, so two tabs opening
at once stamp it once and the author, if they asked ("Tell me when it is
read"), gets one receipt notification, content-free in Secure Mode.

A message to several people (a Circle) is one private copy per thread; the
copies share a ``send_id``, and under any of them its author sees who of
them has read it (``read_marks``). Only the author sees these lines.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session, selectinload

from replygate.core.notifying import Notifier
from replygate.store.models import Message, MessageReceipt, Organisation, Thread, User

RECEIPT_KIND = "receipt"


def moment(at: datetime) -> str:
    """A moment as the portal and receipts show it: ``1 Dec 2026, 10:14 UTC``."""
    return at.strftime("%-d %b %Y, %H:%M UTC")


@dataclass(frozen=True)
class ReadMark:
    """One recipient of a message, and when they first opened it (None: not yet)."""

    name: str
    email: str
    at: datetime | None


def expect_reads(
    session: Session,
    message_id: int,
    recipients: Iterable[User],
    org: Organisation,
    *,
    now: datetime,
) -> None:
    """Record who is to read a new message, each with the reminder due if they do not.

    No flush: the rows go in with the transaction's next one.
    """
    delay = org.reminder_delay_seconds
    remind_at = now + timedelta(seconds=delay) if delay > 0 else None
    session.add_all(
        MessageReceipt(message_id=message_id, user_id=person.id, remind_at=remind_at)
        for person in recipients
    )


def mark_read(
    session: Session,
    notifier: Notifier,
    org: Organisation,
    thread: Thread,
    reader: User,
    *,
    now: datetime,
    when: str,
) -> list[int]:
    """Stamp every message of ``thread`` that ``reader`` had not opened; notify their authors.

    Returns the ids newly read. ``when`` is the moment as people read it
    (the portal's form), for Convenience Mode receipts.
    """
    newly = list(
        session.execute(
            update(MessageReceipt)
            .where(
                MessageReceipt.user_id == reader.id,
                MessageReceipt.message_id.in_(
                    select(Message.id).where(Message.thread_id == thread.id)
                ),
                MessageReceipt.read_at.is_(None),
            )
            .values(read_at=now, remind_at=None)
            .returning(MessageReceipt.message_id)
            .execution_options(synchronize_session=False)
        ).scalars()
    )
    if not newly:
        return []
    asked = session.scalars(
        select(Message)
        .where(Message.id.in_(newly), Message.receipt_requested.is_(True))
        .options(selectinload(Message.author))
        .order_by(Message.id)
    ).all()
    for message in asked:
        _queue_receipt(session, notifier, org, thread, message, reader, when=when)
    return sorted(newly)


def _queue_receipt(
    session: Session,
    notifier: Notifier,
    org: Organisation,
    thread: Thread,
    message: Message,
    reader: User,
    *,
    when: str,
) -> None:
    author = message.author
    notification = dataclasses.replace(notifier.secure(org, author, thread.id), purpose="receipt")
    if org.convenience_mode:
        notification = dataclasses.replace(
            notification, mode="content", subject=thread.subject, read_by=reader.name, read_at=when
        )
    notifier.queue(
        session, notification, author, kind=RECEIPT_KIND, thread_id=thread.id, message_id=message.id
    )


def read_marks(
    session: Session, messages: Sequence[Message], author_id: int
) -> dict[int, tuple[ReadMark, ...]]:
    """For each of ``messages`` written by ``author_id``: its recipients (all its
    copies' when it went to several people), readers first in the order they read."""
    mine = [m for m in messages if m.author_id == author_id]
    if not mine:
        return {}
    group = {m.id: m.send_id or m.id for m in mine}
    sends = set(group.values())
    rows = session.execute(
        select(Message.send_id, Message.id, MessageReceipt.read_at, User.name, User.email)
        .join(MessageReceipt, MessageReceipt.message_id == Message.id)
        .join(User, User.id == MessageReceipt.user_id)
        .where(
            Message.author_id == author_id,
            Message.send_id.in_(sends) | Message.id.in_(list(group)),
        )
    ).all()
    by_send: dict[int, list[ReadMark]] = defaultdict(list)
    for send_id, message_id, read_at, name, email in rows:
        key = send_id or message_id
        if key in sends:
            by_send[key].append(ReadMark(name=name, email=email, at=read_at))
    return {
        m_id: tuple(sorted(by_send.get(key, ()), key=_reading_order)) for m_id, key in group.items()
    }


def _reading_order(mark: ReadMark) -> tuple[bool, datetime | str, str]:
    return (mark.at is None, mark.at or "", mark.name.lower())


def read_by(session: Session, message_ids: Sequence[int]) -> dict[int, list[tuple[str, datetime]]]:
    """For each message, who has opened it and when, first reader first (an operator's read)."""
    found: dict[int, list[tuple[str, datetime]]] = {m: [] for m in message_ids}
    if not message_ids:
        return found
    rows = session.execute(
        select(MessageReceipt.message_id, User.email, MessageReceipt.read_at)
        .join(User, User.id == MessageReceipt.user_id)
        .where(MessageReceipt.message_id.in_(message_ids), MessageReceipt.read_at.is_not(None))
        .order_by(MessageReceipt.read_at, User.email)
    ).all()
    for message_id, email, at in rows:
        if at is not None:
            found[message_id].append((email, at))
    return found
