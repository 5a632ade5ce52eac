"""The participants' marks a new message moves, written a few statements per flush.

Each message moves every participant row of its thread
(``placement.record_activity``): the activity time, the author's read mark,
everyone else's incoming mark. The ORM writes changed rows together only
when neighbours change the same columns, and a thread's rows alternate
(author, then the others), so it wrote one UPDATE per row: two per reply
filed, each a round trip on PostgreSQL. Here the new values are set on the
objects as stored (``set_committed_value``) and kept for the transaction's
next flush or its commit, which writes them in one statement per set of
columns. Only the columns a message moves are written, so a mark set
meanwhile by someone else (a read in the portal) is not overwritten by an
old value. As with ``new_messages``, a flush with nothing else to write does
not start: the thread's own row changes with every message.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, bindparam, inspect, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from replygate.store import deferred_writes
from replygate.store.directory import TRANSACTION_CACHE
from replygate.store.models import ThreadParticipant

# Per transaction (see ``directory.TRANSACTION_CACHE``): (thread, user) → new values.
_PENDING = TRANSACTION_CACHE + "participant_marks.pending"
_TABLE: Table = ThreadParticipant.__table__  # type: ignore[assignment]


def mark(session: Session, participant: ThreadParticipant, **values: Any) -> None:
    """Set ``values`` on ``participant``, written with the next flush of ``session``."""
    state = inspect(participant)
    if not state.persistent or state.session is not session:
        for key, value in values.items():  # not stored yet: its INSERT carries them
            setattr(participant, key, value)
        return
    for key, value in values.items():
        set_committed_value(participant, key, value)
    row = (participant.thread_id, participant.user_id)
    session.info.setdefault(_PENDING, {}).setdefault(row, {}).update(values)


@deferred_writes.register("participant_marks")
def write_pending(session: Session) -> None:
    """One UPDATE (many rows) per set of columns marked since the last time."""
    pending: dict[tuple[int, int], dict[str, Any]] = session.info.pop(_PENDING, None) or {}
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for (thread_id, user_id), values in pending.items():
        row = {"_thread": thread_id, "_user": user_id, **values}
        groups.setdefault(tuple(sorted(values)), []).append(row)
    for columns, rows in groups.items():
        stmt = (
            update(_TABLE)
            .where(_TABLE.c.thread_id == bindparam("_thread"))
            .where(_TABLE.c.user_id == bindparam("_user"))
            .values({name: bindparam(name, type_=_TABLE.c[name].type) for name in columns})
        )
        session.connection().execute(stmt, rows)
