"""New messages of a transaction: ids reserved at once, rows written in one INSERT before
what refers to them, all or nothing with the transaction."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from replygate.store import directory, new_messages
from replygate.store.db import transaction
from replygate.store.models import Message, MessageReceipt, Thread, utcnow


def values(thread_id: int, author_id: int, n: int, **changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = dict(
        thread_id=thread_id,
        author_id=author_id,
        body=f"reply {n}",
        source="email",
        quote=None,
        signature=None,
        inbound_id=None,
        email_message_id=f"<m{n}@client.test>",
        body_html=None,
        created_at=utcnow(),
        receipt_requested=False,
        send_id=None,
    )
    fields.update(changes)
    return fields


def message(thread_id: int, author_id: int, n: int, **changes: Any) -> Message:
    """A new message as filing builds it: plain values, sealed by the model."""
    return Message(**values(thread_id, author_id, n, **changes))


@pytest.fixture
def people(sessions: sessionmaker[Session]) -> tuple[int, int, int]:
    """A thread, its client (the author) and its staff member."""
    with transaction(sessions) as session:
        staff = directory.add_user(session, "staff@clinic.test", "Staff", "staff")
        client = directory.add_user(session, "client@client.test", "Client", "client")
        thread = Thread(subject="Appointment", created_by_id=staff.id)
        session.add(thread)
        session.flush()
        return thread.id, client.id, staff.id


@pytest.fixture
def inserts(engine: Engine) -> Iterator[list[str]]:
    """The INSERT statements into ``messages`` the engine runs."""
    seen: list[str] = []

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO MESSAGES"):
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    yield seen
    event.remove(engine, "before_cursor_execute", record)


def test_a_transactions_messages_go_in_one_insert_ahead_of_the_rows_naming_them(
    sessions: sessionmaker[Session], people: tuple[int, int, int], inserts: list[str]
) -> None:
    """Ten messages, each with a read receipt row naming its id (a foreign key), are
    written by one INSERT; the ids are distinct and are the rows' ids."""
    thread_id, client_id, staff_id = people
    with transaction(sessions) as session:
        new_messages.expect(session, 10)
        ids = []
        for n in range(10):
            new_id = new_messages.add(session, message(thread_id, client_id, n))
            session.add(MessageReceipt(message_id=new_id, user_id=staff_id))
            ids.append(new_id)
    assert len(set(ids)) == 10
    assert len(inserts) == 1
    with sessions() as session:
        stored = [(m.id, m.body) for m in session.scalars(select(Message).order_by(Message.id))]
        receipts = session.scalars(select(MessageReceipt.message_id)).all()
        raw = session.connection().exec_driver_sql("SELECT body FROM messages").scalars().all()
    assert [(i, f"reply {n}") for n, i in enumerate(ids)] == stored
    assert not [b for b in raw if b"reply" in bytes(b)]  # the INSERT wrote them sealed
    assert sorted(receipts) == sorted(ids)


def test_ids_stay_distinct_across_flushes_and_after_other_messages(
    sessions: sessionmaker[Session], people: tuple[int, int, int]
) -> None:
    """A message added the ORM's way between two adds (its flush writes the first
    before it) takes no id twice: SQLite counts on from the table again after each write."""
    thread_id, client_id, _ = people
    with transaction(sessions) as session:
        first = new_messages.add(session, message(thread_id, client_id, 1))
        other = Message(thread_id=thread_id, author_id=client_id, body="portal", source="portal")
        session.add(other)
        session.flush()
        second = new_messages.add(session, message(thread_id, client_id, 2))
    with sessions() as session:
        ids = session.scalars(select(Message.id).order_by(Message.id)).all()
    assert len({first, other.id, second}) == 3
    assert sorted(ids) == sorted([first, other.id, second])


def test_a_rolled_back_transaction_writes_none_of_its_messages(
    sessions: sessionmaker[Session], people: tuple[int, int, int]
) -> None:
    """The same Message-ID twice breaks the dedup constraint as the rows go in: the
    transaction fails whole, and the next one files normally."""
    thread_id, client_id, _ = people
    with pytest.raises(IntegrityError), transaction(sessions) as session:
        new_messages.add(session, message(thread_id, client_id, 1))
        new_messages.add(session, message(thread_id, client_id, 1))
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Message)) == 0
    with transaction(sessions) as session:
        new_messages.add(session, message(thread_id, client_id, 1))
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Message)) == 1
