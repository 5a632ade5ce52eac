"""The inbound writer's own INSERT stores what the ORM would, and gives ids in row order."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from replygate.store.inbound_writer import QUEUE_COLUMNS, InboundWriter
from replygate.store.models import InboundMail


def _row(i: int, **extra: object) -> dict[str, object]:
    row: dict[str, object] = {
        "received_at": datetime(2026, 11, 26, 12, 0, i, 123456, tzinfo=UTC),
        "mail_from": f"sender{i}@client.test",
        "rcpt": f"r{i}@reply.test",
        "peer": "192.0.2.7",
        "message_id": f"<m{i}@client.test>",
        "size": 5,
        "raw": b"\x00\xff8-bit\r\n.",
        "status": "queued",
        "attempts": 0,
        "thread_id": None,
        "decisions": [{"stage": "accept", "via": "smtp", "note": "caf\u00e9", "n": i}],
    }
    row.update(extra)
    assert tuple(row) == QUEUE_COLUMNS
    return row


def test_rows_read_back_through_the_orm_as_written(sessions: sessionmaker[Session]) -> None:
    writer = InboundWriter(sessions)
    try:
        rows = [_row(i) for i in range(7)]
        futures = [writer.submit(rows[:3]), writer.submit(rows[3:4]), writer.submit(rows[4:])]
        ids = [f.result(10) for f in futures]
    finally:
        writer.close()
    assert [len(x) for x in ids] == [3, 1, 3]
    flat = [i for x in ids for i in x]
    with sessions() as session:
        stored = {m.id: m for m in session.scalars(select(InboundMail))}
    assert sorted(stored) == sorted(flat)
    for queue_id, row in zip(flat, rows, strict=True):
        mail = stored[queue_id]
        assert mail.rcpt == row["rcpt"]  # each session gets the ids of its own rows
        assert mail.received_at == row["received_at"]
        assert mail.raw == row["raw"]
        assert mail.decisions == row["decisions"]
        assert (mail.thread_id, mail.status, mail.attempts) == (None, "queued", 0)
        assert mail.reason is None and mail.claimed_at is None


def test_a_refused_batch_is_retried_row_by_row(sessions: sessionmaker[Session]) -> None:
    """A row the database refuses fails alone; the connection it broke is replaced."""
    writer = InboundWriter(sessions)
    try:
        good = writer.submit([_row(1)])
        good.result(10)
        bad = writer.submit([_row(2, mail_from=None)])  # NOT NULL
        after = writer.submit([_row(3)])
        assert after.result(10)
        try:
            bad.result(10)
        except Exception as exc:
            assert "mail_from" in str(exc) or "null" in str(exc).lower()
        else:
            raise AssertionError("a NULL mail_from was stored")
    finally:
        writer.close()
    with sessions() as session:
        assert sorted(session.scalars(select(InboundMail.mail_from))) == [
            "sender1@client.test",
            "sender3@client.test",
        ]


def test_the_postgresql_writer_commits_alone_on_a_connection_outside_the_pool(
    sessions: sessionmaker[Session],
) -> None:
    """Its batch is one autocommitted statement, so its connection never goes
    back to the pool, where a session would get it in autocommit mode."""
    engine = sessions.kw["bind"]
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite's writer has a connection of its own already")
    writer = InboundWriter(sessions)
    try:
        [queue_id] = writer.submit([_row(1)]).result(10)
        assert engine.pool.checkedout() == 0
        insert = writer._insert
        assert insert is not None and insert._conn.dbapi_connection.autocommit
    finally:
        writer.close()
    with sessions() as session:
        assert session.get(InboundMail, queue_id) is not None
        # Sessions still run in transactions: the pool never saw the writer's connection.
        assert not session.connection().connection.dbapi_connection.autocommit
    assert engine.pool.checkedout() == 0
