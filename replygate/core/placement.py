"""Where a thread stands in one person's inbox: pinned, archived, or neither.

Each person decides for themselves (the state lives on their participant
row): pinning keeps a thread at the top of their inbox, archiving takes it
out until someone else writes in it (``record_activity``, which ``messaging``
calls with every message, portal or email, brings it back). A thread is
never both: pinning an archived thread brings it back, archiving a pinned
one unpins it. Everyone else's view of the thread is untouched, and a
thread the person does not take part in does not exist for them (the same
``NotFound`` as for one that does not exist).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import ColumnElement, and_, false, func, literal_column, true
from sqlalchemy.orm import Session

from replygate.errors import NotFound
from replygate.store import participant_marks
from replygate.store.models import Message, Thread, ThreadParticipant


class InboxFilter(StrEnum):
    """The views of one person's threads (the portal's tabs, the CLI's flags)."""

    ALL = "all"  # the inbox: everything not archived, pinned first
    UNREAD = "unread"  # in the inbox, with something by someone else not yet read
    PINNED = "pinned"
    ARCHIVED = "archived"


class Change(StrEnum):
    """What a person may do to where a thread stands for them."""

    PIN = "pin"
    UNPIN = "unpin"
    ARCHIVE = "archive"
    UNARCHIVE = "unarchive"


def is_unread() -> ColumnElement[bool]:
    """Someone else wrote after the participant's read mark.

    Written as ``models.UNREAD_SQL`` is, with the 0 in the SQL text rather than
    a bound parameter: only then do the databases see that the partial index
    ``ix_thread_participants_unread`` holds exactly these rows.
    """
    return ThreadParticipant.last_incoming_message_id > func.coalesce(
        ThreadParticipant.last_read_message_id, literal_column("0")
    )


def shown_in(view: InboxFilter) -> ColumnElement[bool]:
    """Which of a person's participant rows a view lists (with ``user_id`` fixed)."""
    if view is InboxFilter.ARCHIVED:
        return ThreadParticipant.archived == true()
    in_inbox = ThreadParticipant.archived == false()
    if view is InboxFilter.PINNED:
        return and_(in_inbox, ThreadParticipant.pinned == true())
    if view is InboxFilter.UNREAD:
        return and_(in_inbox, is_unread())
    return in_inbox


def change(session: Session, thread_id: int, user_id: int, what: Change) -> None:
    """Pin, unpin, archive or unarchive one thread for one person (idempotent)."""
    row = session.get(ThreadParticipant, (thread_id, user_id))
    if row is None:
        raise NotFound(f"no thread {thread_id}")
    if what is Change.PIN:
        row.pinned, row.archived = True, False
    elif what is Change.UNPIN:
        row.pinned = False
    elif what is Change.ARCHIVE:
        row.pinned, row.archived = False, True
    else:
        row.archived = False


def record_activity(session: Session, thread: Thread, message: Message, at: datetime) -> None:
    """What a new message changes for each participant: the one rule, portal or email.

    The author has read what they wrote; for everyone else it is incoming,
    and a thread they archived comes back to their inbox. Every row carries
    the thread's new activity time, the key their inbox is ordered by. The
    rows are written together at the next flush (``participant_marks``).
    """
    thread.last_activity_at = at
    for p in thread.participants:
        if p.user_id == message.author_id:
            participant_marks.mark(session, p, last_activity_at=at, last_read_message_id=message.id)
        else:
            p.archived = False  # when it was (rarely), the ORM writes it
            participant_marks.mark(
                session, p, last_activity_at=at, last_incoming_message_id=message.id
            )
