"""An operator's read of one person's threads, as that person's inbox filters show them.

The same rows and order as the portal's inbox (``inbox.inbox``), every page
of them, with the other participants named by address.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from replygate.core import inbox
from replygate.core.placement import InboxFilter
from replygate.mail.timestamps import iso_z
from replygate.store import directory
from replygate.store.models import ThreadParticipant, User

CHUNK = 500  # rows per query: the id lists stay short on every backend


@dataclass(frozen=True)
class PersonThreadRow:
    id: int
    subject: str
    with_people: list[str]
    unread: int
    pinned: bool
    archived: bool
    last_activity_at: str


def threads_of(
    factory: sessionmaker[Session], email: str, view: InboxFilter = InboxFilter.ALL
) -> list[PersonThreadRow]:
    """Every thread of the person ``email`` names in ``view`` (``NotFound`` for no such person)."""
    with factory() as session:
        user = directory.user(session, email)
        rows: list[inbox.ThreadRow] = []
        page, more = 0, True
        while more:
            found, more = inbox.inbox(session, user.id, page, view, size=CHUNK)
            rows.extend(found)
            page += 1
        others = _other_addresses(session, user.id, [r.id for r in rows])
        return [
            PersonThreadRow(
                id=r.id,
                subject=r.subject,
                with_people=others.get(r.id, []),
                unread=r.unread,
                pinned=r.pinned,
                archived=r.archived,
                last_activity_at=iso_z(r.last_activity_at),
            )
            for r in rows
        ]


def _other_addresses(session: Session, user_id: int, thread_ids: list[int]) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    for start in range(0, len(thread_ids), CHUNK):
        chunk = thread_ids[start : start + CHUNK]
        for thread_id, email in session.execute(
            select(ThreadParticipant.thread_id, User.email)
            .join(User, User.id == ThreadParticipant.user_id)
            .where(ThreadParticipant.thread_id.in_(chunk), ThreadParticipant.user_id != user_id)
            .order_by(ThreadParticipant.thread_id, User.email)
        ):
            found.setdefault(thread_id, []).append(email)
    return found
