"""Every thread at a glance, read with SQLAlchemy Core alone: an operator's listing.

``replygate threads list`` starts a process of its own each time, and mapping
the ORM models (``models``) costs it more than its queries do
(``bench/cli_startup.py``). So this module names the few columns it reads as
lightweight ``table()``/``column()`` clauses instead of importing the models;
``tests/unit/store/test_thread_listing.py`` checks each one against the models'
tables, so the two cannot drift apart.

Two queries, whatever the number of threads: the threads with their message
counts, then every participant's address.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Integer, LargeBinary, String, column, func, select, table

from replygate.store import sealed
from replygate.store.utc import UTCDateTime

THREADS = table(
    "threads",
    column("id", Integer),
    column("row_uid", LargeBinary),
    column("subject", LargeBinary),
    column("last_activity_at", UTCDateTime()),
)
THREAD_PARTICIPANTS = table(
    "thread_participants", column("thread_id", Integer), column("user_id", Integer)
)
USERS = table("users", column("id", Integer), column("email", String))
MESSAGES = table("messages", column("id", Integer), column("thread_id", Integer))

TABLES = (THREADS, THREAD_PARTICIPANTS, USERS, MESSAGES)


@dataclass(frozen=True)
class ThreadSummary:
    """One thread: its subject, its participants' addresses (by user id), how many messages."""

    id: int
    subject: str
    participants: list[str]
    messages: int
    last_activity_at: datetime


def subject(thread_id: int, row_uid: bytes, stored: bytes) -> str:
    """Thread ``thread_id``'s subject as people read it, from what its column holds
    (sealed at rest: a value that does not open raises ``SealBroken``, logged)."""
    return sealed.unseal("threads", "subject", row_uid, stored, row_id=thread_id).decode("utf-8")


def summaries(conn: Connection) -> list[ThreadSummary]:
    """Every thread, newest activity first (the newest thread first among equals)."""
    messages = (
        select(func.count(MESSAGES.c.id))
        .where(MESSAGES.c.thread_id == THREADS.c.id)
        .scalar_subquery()
    )
    found = conn.execute(
        select(
            THREADS.c.id,
            THREADS.c.row_uid,
            THREADS.c.subject,
            THREADS.c.last_activity_at,
            messages,
        ).order_by(THREADS.c.last_activity_at.desc(), THREADS.c.id.desc())
    ).all()
    addresses: dict[int, list[str]] = {}
    for thread_id, email in conn.execute(
        select(THREAD_PARTICIPANTS.c.thread_id, USERS.c.email)
        .select_from(THREAD_PARTICIPANTS.join(USERS, USERS.c.id == THREAD_PARTICIPANTS.c.user_id))
        .order_by(THREAD_PARTICIPANTS.c.thread_id, THREAD_PARTICIPANTS.c.user_id)
    ):
        addresses.setdefault(thread_id, []).append(email)
    return [
        ThreadSummary(
            id=thread_id,
            subject=subject(thread_id, row_uid, stored),
            participants=addresses.get(thread_id, []),
            messages=count,
            last_activity_at=at,
        )
        for thread_id, row_uid, stored, at, count in found
    ]
