"""The operator's list of threads, read with Core alone, says what the models say.

Order is newest activity first, the newer thread first among equal times;
participants come in user-id order (not by address); every message counts.
Checked against the same threads read through the ORM, on both backends.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.core import thread_list
from replygate.core.messaging import Messaging
from replygate.mail.timestamps import iso_z
from replygate.store import directory
from replygate.store.db import make_read_engine, transaction
from replygate.store.models import Thread


def _through_the_orm(sessions: sessionmaker[Session]) -> list[thread_list.ThreadRow]:
    with sessions() as s:
        found = s.scalars(select(Thread).order_by(Thread.last_activity_at.desc(), Thread.id.desc()))
        return [
            thread_list.ThreadRow(
                id=t.id,
                subject=t.subject,
                participants=[p.user.email for p in t.participants],
                messages=len(t.messages),
                last_activity_at=iso_z(t.last_activity_at),
            )
            for t in found
        ]


def test_the_listing_matches_the_models(
    sessions: sessionmaker[Session], settings: Settings, database_url: str
) -> None:
    with transaction(sessions) as s:
        # Added in this order so that user-id order and address order differ.
        directory.add_user(s, "zed@staff.test", "Zed Staff", "staff")
        directory.add_user(s, "bea@example.com", "Bea Client", "client")
        directory.add_user(s, "al@example.com", "Al Client", "client")
    messaging = Messaging(sessions, settings)
    sent = messaging.send(
        sender="zed@staff.test",
        to=["bea@example.com", "al@example.com"],
        subject="Results \x1b[2J in",
        body="See the portal.",
    )
    first, second = (t.id for t in sent.threads)
    messaging.reply(thread_id=first, author="bea@example.com", body="Thanks.")
    messaging.reply(thread_id=first, author="zed@staff.test", body="Welcome.")
    alone = messaging.send(
        sender="zed@staff.test", to=["al@example.com"], subject="Older", body="Hello."
    ).threads[0]
    tie = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    with transaction(sessions) as s:
        s.execute(update(Thread).where(Thread.id.in_([first, second])).values(last_activity_at=tie))
        s.execute(
            update(Thread)
            .where(Thread.id == alone.id)
            .values(last_activity_at=tie - timedelta(days=1))
        )
    reads: Engine = make_read_engine(database_url, pool_size=1)
    try:
        listed = thread_list.threads(reads)
    finally:
        reads.dispose()
    assert listed == _through_the_orm(sessions)
    assert [(t.id, t.messages) for t in listed] == [(second, 1), (first, 3), (alone.id, 1)]
    assert listed[0].participants == ["zed@staff.test", "al@example.com"]
    assert listed[1].last_activity_at == "2026-01-02T03:04:05Z"
    assert listed[1].subject == "Results \x1b[2J in"


def test_no_threads_is_an_empty_list(database_url: str) -> None:
    reads = make_read_engine(database_url, pool_size=1)
    try:
        assert thread_list.threads(reads) == []
    finally:
        reads.dispose()
