"""New messages of a transaction, written together in one INSERT ahead of its next flush.

Filing a batch of replies adds a message per reply, and what else each one
writes (the participants' marks, notifications, read receipts, the audit
trail) names that message's id. So the id is reserved when the message is
added (``add``, through ``dialect.new_ids``) and nothing waits for the row:
the rows of every message added since the last flush are inserted in one
statement as the next flush starts (before what refers to them), or as the
transaction commits. A constraint the rows break (the same mail filed twice)
raises there, and the transaction rolls back whole. (A flush with nothing else
to write does not start, so a message is added together with what names it:
filing a reply changes its thread's row.)

The message's text is sealed at rest: the caller builds the ``Message`` with
its plain values (its ``Sealed`` attributes seal them, with the row's
``row_uid``), and what is inserted is what the object holds, ciphertext.

PostgreSQL hands out ids from the table's sequence, one round trip for as
many as the caller said to expect (``expect``); SQLite counts on from the
largest id, read again once the rows are in (the write lock keeps anyone
else from adding messages meanwhile).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from replygate.store import deferred_writes, dialect
from replygate.store.directory import TRANSACTION_CACHE
from replygate.store.models import Message

# Per transaction (see ``directory.TRANSACTION_CACHE``): the rows not yet inserted,
# and ids reserved and not yet used.
_PENDING = TRANSACTION_CACHE + "new_messages.pending"
_IDS = TRANSACTION_CACHE + "new_messages.ids"


def expect(session: Session, count: int) -> None:
    """Reserve ids for ``count`` messages this transaction is about to add (PostgreSQL:
    one round trip for all of them; an id left over is a gap in the sequence)."""
    ids: list[int] = session.info.setdefault(_IDS, [])
    if count > len(ids) and dialect.backend(session) is dialect.Backend.POSTGRESQL:
        ids.extend(dialect.new_ids(session, Message.__tablename__, count - len(ids)))


_COLUMNS = deferred_writes.stored_columns(Message)


def add(session: Session, message: Message) -> int:
    """Give ``message`` (transient, every column set but ``id``) its id, reserved now,
    and queue its row as the object holds it.

    The row is inserted by the transaction's next flush or its commit; the caller
    attaches the object to the session as already stored."""
    ids: list[int] = session.info.setdefault(_IDS, [])
    if not ids:
        ids.extend(dialect.new_ids(session, Message.__tablename__, 1))
    new_id = ids.pop(0)
    if dialect.backend(session) is dialect.Backend.SQLITE:
        ids.append(new_id + 1)  # counted on; read again after the rows are written
    message.id = new_id
    row: dict[str, Any] = {name: getattr(message, key) for key, name in _COLUMNS}
    session.info.setdefault(_PENDING, []).append({**row, "id": new_id})
    return new_id


@deferred_writes.register("new_messages")
def write_pending(session: Session) -> None:
    """Insert the messages added since the last time, in one statement."""
    rows = session.info.pop(_PENDING, None)
    if not rows:
        return
    if dialect.backend(session) is dialect.Backend.SQLITE:
        session.info.pop(_IDS, None)  # other writes may follow: count from the table again
    session.connection().execute(insert(Message), rows)
