"""The marks a new message moves on its thread's participant rows: written a few
statements per flush, only the columns it moves, all or nothing with the transaction."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, event, select
from sqlalchemy.orm import Session, selectinload, sessionmaker

from replygate.core.placement import record_activity
from replygate.store import directory
from replygate.store.db import transaction
from replygate.store.models import Message, Thread, ThreadParticipant, utcnow


@pytest.fixture
def threads(sessions: sessionmaker[Session]) -> tuple[list[int], int, int]:
    """Five threads between a staff member and a client, one of them archived by staff."""
    with transaction(sessions) as session:
        staff = directory.add_user(session, "staff@clinic.test", "Staff", "staff")
        client = directory.add_user(session, "client@client.test", "Client", "client")
        ids = []
        for n in range(5):
            thread = Thread(subject=f"Appointment {n}", created_by_id=staff.id)
            session.add(thread)
            session.flush()
            session.add_all(
                [
                    ThreadParticipant(thread_id=thread.id, user_id=staff.id, archived=n == 0),
                    ThreadParticipant(thread_id=thread.id, user_id=client.id),
                ]
            )
            ids.append(thread.id)
        return ids, staff.id, client.id


@pytest.fixture
def updates(engine: Engine) -> Iterator[list[str]]:
    seen: list[str] = []

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        if statement.lstrip().upper().startswith("UPDATE THREAD_PARTICIPANTS"):
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    yield seen
    event.remove(engine, "before_cursor_execute", record)


def test_replies_to_many_threads_move_the_marks_in_a_few_statements(
    sessions: sessionmaker[Session], threads: tuple[list[int], int, int], updates: list[str]
) -> None:
    """Two replies by the client in each of five threads: the client has read them, staff
    has them incoming, the archived thread is back; three UPDATEs (one per set of columns,
    one for the archived row), not one per row and reply."""
    thread_ids, staff_id, client_id = threads
    at = utcnow()
    newest: dict[int, int] = {}
    with transaction(sessions) as session:
        messages = [
            Message(thread_id=thread_id, author_id=client_id, body="hi", source="email")
            for thread_id in thread_ids * 2
        ]
        session.add_all(messages)
        session.flush()
        # Loaded up front, as the engine's prefetch does: no query between the marks.
        loaded = {
            t.id: t
            for t in session.scalars(select(Thread).options(selectinload(Thread.participants)))
        }
        for message in messages:
            record_activity(session, loaded[message.thread_id], message, at)
            newest[message.thread_id] = message.id
    updates_in_transaction = len(updates)
    with sessions() as session:
        rows = {(p.thread_id, p.user_id): p for p in session.scalars(select(ThreadParticipant))}
    for thread_id in thread_ids:
        client, staff = rows[(thread_id, client_id)], rows[(thread_id, staff_id)]
        assert client.last_read_message_id == newest[thread_id]
        assert staff.last_incoming_message_id == newest[thread_id]
        assert staff.last_read_message_id is None and client.last_incoming_message_id is None
        assert client.last_activity_at == staff.last_activity_at == at
        assert not staff.archived
    assert updates_in_transaction == 3


def test_a_mark_set_meanwhile_is_not_overwritten(
    sessions: sessionmaker[Session], threads: tuple[list[int], int, int]
) -> None:
    """Staff read the thread in another transaction while a reply is being filed: the
    filing writes staff's incoming mark and activity, not the read mark it loaded."""
    thread_ids, staff_id, client_id = threads
    thread_id = thread_ids[1]
    with transaction(sessions) as session:
        thread = session.get(Thread, thread_id)
        assert thread is not None
        _ = [p.last_read_message_id for p in thread.participants]  # loaded: None
        message = Message(thread_id=thread_id, author_id=client_id, body="hi", source="email")
        session.add(message)
        session.flush()
        record_activity(session, thread, message, utcnow())
        staff_row = session.get(ThreadParticipant, (thread_id, staff_id))
        assert staff_row is not None and staff_row.last_incoming_message_id == message.id
        # What a read in the portal wrote meanwhile (the same connection on SQLite,
        # whose transaction holds the write lock).
        session.connection().execute(
            ThreadParticipant.__table__.update()
            .where(ThreadParticipant.thread_id == thread_id)
            .where(ThreadParticipant.user_id == staff_id)
            .values(last_read_message_id=message.id)
        )
    with sessions() as session:
        staff_row = session.get(ThreadParticipant, (thread_id, staff_id))
        assert staff_row is not None
        assert staff_row.last_read_message_id == message.id
        assert staff_row.last_incoming_message_id == message.id
