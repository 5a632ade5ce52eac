"""Unread reminders: one notification to a recipient who has not opened a message.

A message's receipt row carries ``remind_at``, set when it is written from
the organisation's delay (none when the delay is 0) and cleared when the
recipient opens it. ``send_due`` claims due rows and clears them in the
transaction that queues their reminders, so each reminder is queued once
however many workers sweep at the same moment: on PostgreSQL the rows are
read ``FOR UPDATE SKIP LOCKED`` (two sweepers never take the same row) and
the clearing UPDATE matches only rows still due; SQLite's IMMEDIATE
transactions sweep one at a time.

A reminder goes through the outbox like every notification: content-free in
Secure Mode, recorded but never sent to an address suppressed after repeated
bounces. A reminder about a message whose stored text does not open is logged
and dropped, never sent empty, and never holds up the reminders after it.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, tuple_, update
from sqlalchemy.orm import Session, selectinload, sessionmaker

from replygate.config import Settings
from replygate.core.notifying import Notifier
from replygate.errors import SealBroken
from replygate.logs import get_logger
from replygate.store import dialect, directory
from replygate.store.db import transaction
from replygate.store.models import Message, MessageReceipt, Thread, ThreadParticipant, User

REMINDER_KIND = "reminder"
BATCH = 100

log = get_logger("replygate.reminders")


def any_due(session: Session, *, now: datetime) -> bool:
    """Whether some reminder is due (a cheap read, for an idle sweeper)."""
    return (
        session.scalars(
            select(MessageReceipt.message_id).where(MessageReceipt.remind_at <= now).limit(1)
        ).first()
        is not None
    )


def send_due(
    factory: sessionmaker[Session],
    settings: Settings,
    *,
    now: datetime,
    limit: int = BATCH,
    notifier: Notifier | None = None,
) -> int:
    """Queue the reminders due at ``now``, at most ``limit``; returns how many were claimed."""
    notifier = notifier or Notifier(settings)
    with transaction(factory) as session:
        due = session.execute(
            dialect.locked(
                select(MessageReceipt.message_id, MessageReceipt.user_id)
                .where(MessageReceipt.remind_at <= now, MessageReceipt.read_at.is_(None))
                .order_by(MessageReceipt.remind_at)
                .limit(limit),
                session,
                skip_locked=True,
            )
        ).all()
        if not due:
            return 0
        claimed = session.execute(
            update(MessageReceipt)
            .where(
                tuple_(MessageReceipt.message_id, MessageReceipt.user_id).in_(
                    [tuple(row) for row in due]
                ),
                MessageReceipt.remind_at.is_not(None),
                MessageReceipt.read_at.is_(None),
            )
            .values(remind_at=None, reminded_at=now)
            .returning(MessageReceipt.message_id, MessageReceipt.user_id)
            .execution_options(synchronize_session=False)
        ).all()
        if not claimed:
            return 0
        org = directory.organisation(session, default_name=settings.organisation_name)
        messages = {
            m.id: m
            for m in session.scalars(
                select(Message)
                .where(Message.id.in_({message_id for message_id, _ in claimed}))
                .options(
                    selectinload(Message.author),
                    selectinload(Message.thread)
                    .selectinload(Thread.participants)
                    .selectinload(ThreadParticipant.user),
                )
            )
        }
        people = {
            u.id: u
            for u in session.scalars(
                select(User).where(User.id.in_({user_id for _, user_id in claimed}))
            )
        }
        for message_id, user_id in sorted(claimed):
            message, person = messages[message_id], people[user_id]
            try:
                with session.begin_nested():
                    notification = notifier.about_message(
                        session,
                        org,
                        message.thread,
                        message,
                        message.author,
                        person,
                        now=now,
                        purpose="reminder",
                    )
                    notifier.queue(
                        session,
                        notification,
                        person,
                        kind=REMINDER_KIND,
                        thread_id=message.thread_id,
                        message_id=message.id,
                    )
            except SealBroken:
                # Logged where it was read (store.seal_broken); this reminder is dropped,
                # claimed like the others, so that it does not stop every sweep after it.
                log.error("reminders.not_sent", message=message_id, user=user_id)
        log.info("reminders.queued", count=len(claimed))
        return len(claimed)
