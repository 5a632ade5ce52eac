"""An operator's list of every thread, as plain values, without loading the ORM.

Apart from ``views`` (which imports the models for everything else an
operator inspects) so that ``replygate threads list`` loads SQLAlchemy Core
and ``store.thread_listing`` alone. It reads on a snapshot engine
(``db.make_read_engine``): a listing never queues for SQLite's write lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from replygate.mail.timestamps import iso_z
from replygate.store import thread_listing

if TYPE_CHECKING:
    from sqlalchemy import Engine


@dataclass(frozen=True)
class ThreadRow:
    """Field order is ``threads list --json``'s, a contract."""

    id: int
    subject: str
    participants: list[str]
    messages: int
    last_activity_at: str


def threads(engine: Engine) -> list[ThreadRow]:
    """Every thread, newest activity first."""
    with engine.connect() as conn:
        found = thread_listing.summaries(conn)
    return [
        ThreadRow(
            id=t.id,
            subject=t.subject,
            participants=t.participants,
            messages=t.messages,
            last_activity_at=iso_z(t.last_activity_at),
        )
        for t in found
    ]
