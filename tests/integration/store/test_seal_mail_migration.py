"""The seal_mail migration seals the mail already stored: rows written in plain text before it
read back the same through the models after it, and the columns hold ciphertext;
its downgrade gives the plain values back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session, sessionmaker

from replygate.store.models import InboundMail, OutboxMessage
from tests.integration.store.migration_support import before_migration

RAW = "From: cleo@example.com\r\nSubject: Re: results Wombatmark\r\n\r\nMy A1c is 6.1.\r\n"
REASON = "From cleo@evil.test, not Wombatmark's address"
DECISIONS = [{"stage": "rcpt", "note": "Wombatmark caf\u00e9"}, {"stage": "sender", "n": 2}]
NOTIFICATION = b"Subject: New reply\r\n\r\nWombatmark wrote: my A1c is 6.1.\r\n"


def _plain_rows(engine: Engine) -> None:
    """Rows as revision 0013 stored them: raw bytes, reason text, decisions JSON."""
    at = datetime(2026, 12, 1, tzinfo=UTC)
    with engine.begin() as conn:
        for i, (raw, reason, decisions) in enumerate(
            [(RAW.encode(), REASON, json.dumps(DECISIONS)), (None, None, None)]
        ):
            conn.execute(
                text(
                    "INSERT INTO inbound_mail (received_at, mail_from, rcpt, size, raw, status,"
                    " reason, attempts, decisions) VALUES (:at, 'c@x.test', :rcpt, 1, :raw,"
                    " 'held', :reason, 0, :decisions)"
                ),
                {
                    "at": at,
                    "rcpt": f"r{i}@reply.test",
                    "raw": raw,
                    "reason": reason,
                    "decisions": decisions,
                },
            )
        conn.execute(
            text(
                "INSERT INTO outbox (created_at, kind, recipient, envelope_from,"
                " header_message_id, raw, status, attempts, next_attempt_at) VALUES"
                " (:at, 'reply', 'dana@staff.test', 'b@reply.test', '<n@reply.test>', :raw,"
                " 'queued', 0, :at)"
            ),
            {"at": at, "raw": NOTIFICATION},
        )


def _stored(engine: Engine) -> bytes:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT raw, reason, decisions FROM inbound_mail UNION ALL "
                "SELECT raw, NULL, NULL FROM outbox"
            )
        ).all()
    return b"".join(_as_bytes(v) for row in rows for v in row if v is not None)


def _as_bytes(value: object) -> bytes:
    if isinstance(value, bytes | memoryview):
        return bytes(value)
    return (value if isinstance(value, str) else json.dumps(value)).encode()


@pytest.fixture
def before_sealing(database_url: str, engine: Engine) -> Iterator[tuple[Config, str, str]]:
    """The database before the seal_mail migration, with plain rows."""
    with before_migration(database_url, "_seal_mail.py", lambda: _plain_rows(engine)) as found:
        yield found


def test_upgrading_seals_stored_mail_and_downgrading_opens_it(
    before_sealing: tuple[Config, str, str], engine: Engine, sessions: sessionmaker[Session]
) -> None:
    config, before, sealing = before_sealing
    assert b"Wombatmark" in _stored(engine)

    command.upgrade(config, sealing)
    assert b"Wombatmark" not in _stored(engine)
    with sessions() as s:
        mails = s.scalars(select(InboundMail).order_by(InboundMail.id)).all()
        assert [(m.raw, m.reason, m.decisions) for m in mails] == [
            (RAW.encode(), REASON, DECISIONS),
            (None, None, None),
        ]
        assert all(m.row_uid is not None for m in mails)
        assert s.scalars(select(OutboxMessage)).one().raw == NOTIFICATION

    command.downgrade(config, before)
    with engine.connect() as conn:
        raw, reason, decisions = conn.execute(
            text("SELECT raw, reason, decisions FROM inbound_mail ORDER BY id")
        ).first() or (None, None, None)
        (notification,) = conn.execute(text("SELECT raw FROM outbox")).one()
    assert (bytes(raw), reason, bytes(notification)) == (RAW.encode(), REASON, NOTIFICATION)
    assert (json.loads(decisions) if isinstance(decisions, str) else decisions) == DECISIONS
