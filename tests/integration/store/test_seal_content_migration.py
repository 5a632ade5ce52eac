"""The seal_content migration seals the content already stored: a thread, its message
(body, quote, signature, HTML), an attachment and a canned response written in plain
text before it read back the same through the models after it, the columns hold
ciphertext, and its downgrade gives the plain values back."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session, sessionmaker

from replygate.store.models import CannedResponse, Message, MessageAttachment, Thread
from tests.integration.store.migration_support import before_migration

MARK = "Numbatmark"
SUBJECT = f"Biopsy results {MARK}"
BODY = f"Your results are back, {MARK} caf\u00e9."
QUOTE = f"> On Monday {MARK} wrote"
SIGNATURE = f"-- \n{MARK} Clinic"
HTML = f"<p>Your results are back, {MARK}.</p>"
FILENAME = f"{MARK}-scan.pdf"
DATA = f"%PDF-1.4 {MARK}".encode()
CANNED_SUBJECT = f"Follow-up {MARK}"
CANNED_BODY = f"Please book your {MARK} follow-up."
PLAIN = {
    "threads": ("subject",),
    "messages": ("body", "quote", "signature", "body_html"),
    "message_attachments": ("filename", "data"),
    "canned_responses": ("subject", "body"),
}


def _plain_rows(engine: Engine) -> None:
    """Rows as revision 0014 stored them, text as text; a second message with no
    quote, signature or HTML (NULLs stay NULL)."""
    at = datetime(2026, 12, 1, tzinfo=UTC)
    statements = [
        (
            "INSERT INTO users (id, email, name, role, address_status, bounce_count,"
            " bounce_days, created_at) VALUES (1, 'dana@staff.test', 'Dana', 'staff', 'ok', 0,"
            " '[]', :at)",
            {},
        ),
        (
            "INSERT INTO threads (id, subject, created_by_id, created_at, last_activity_at)"
            " VALUES (1, :subject, 1, :at, :at)",
            {"subject": SUBJECT},
        ),
        (
            "INSERT INTO messages (id, thread_id, author_id, body, quote, signature, body_html,"
            " source, created_at, receipt_requested) VALUES (1, 1, 1, :body, :quote,"
            " :signature, :html, 'email', :at, false)",
            {"body": BODY, "quote": QUOTE, "signature": SIGNATURE, "html": HTML},
        ),
        (
            "INSERT INTO messages (id, thread_id, author_id, body, source, created_at,"
            " receipt_requested) VALUES (2, 1, 1, 'ok', 'portal', :at, false)",
            {},
        ),
        (
            "INSERT INTO message_attachments (id, message_id, filename, content_type, size, data)"
            " VALUES (1, 1, :filename, 'application/pdf', :size, :data)",
            {"filename": FILENAME, "size": len(DATA), "data": DATA},
        ),
        (
            "INSERT INTO canned_responses (id, name, subject, body, created_at, updated_at)"
            " VALUES (1, 'Follow-up', :subject, :body, :at, :at)",
            {"subject": CANNED_SUBJECT, "body": CANNED_BODY},
        ),
    ]
    with engine.begin() as conn:
        for sql, params in statements:
            conn.execute(text(sql), {"at": at, **params})
        if engine.dialect.name == "postgresql":  # ids were given: move the sequences past them
            for table in PLAIN:
                conn.execute(
                    text(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                        f"(SELECT max(id) FROM {table}))"
                    )
                )


def _stored(engine: Engine) -> list[bytes]:
    """Every value of the content columns, as the bytes the database holds."""
    found = []
    with engine.connect() as conn:
        for table, columns in PLAIN.items():
            for row in conn.execute(text(f"SELECT {', '.join(columns)} FROM {table}")):
                found += [v.encode() if isinstance(v, str) else bytes(v) for v in row if v]
    return found


@pytest.fixture
def before_sealing(database_url: str, engine: Engine) -> Iterator[tuple[Config, str, str]]:
    """The database before seal_content, with plain rows."""
    with before_migration(database_url, "_seal_content.py", lambda: _plain_rows(engine)) as found:
        yield found


def test_upgrading_seals_stored_content_and_downgrading_opens_it(
    before_sealing: tuple[Config, str, str], engine: Engine, sessions: sessionmaker[Session]
) -> None:
    config, before, sealing = before_sealing
    assert sum(MARK.encode() in v for v in _stored(engine)) == 9

    command.upgrade(config, sealing)
    stored = _stored(engine)
    assert len(stored) == 10 and not [v for v in stored if MARK.encode() in v]
    with sessions() as s:
        thread = s.get_one(Thread, 1)
        first, second = s.scalars(select(Message).order_by(Message.id)).all()
        attachment = s.get_one(MessageAttachment, 1)
        canned = s.get_one(CannedResponse, 1)
        assert thread.subject == SUBJECT
        assert (first.body, first.quote, first.signature, first.body_html) == (
            BODY,
            QUOTE,
            SIGNATURE,
            HTML,
        )
        assert (second.body, second.quote, second.signature, second.body_html) == (
            "ok",
            None,
            None,
            None,
        )
        assert (attachment.filename, attachment.data) == (FILENAME, DATA)
        assert (canned.name, canned.subject, canned.body) == (
            "Follow-up",
            CANNED_SUBJECT,
            CANNED_BODY,
        )
        assert len({thread.row_uid, first.row_uid, second.row_uid, attachment.row_uid}) == 4

    command.downgrade(config, before)
    with engine.connect() as conn:
        values = [
            conn.execute(text(f"SELECT {', '.join(columns)} FROM {table} ORDER BY id")).first()
            for table, columns in PLAIN.items()
        ]
    assert [
        tuple(bytes(v) if isinstance(v, memoryview) else v for v in row or ()) for row in values
    ] == [
        (SUBJECT,),
        (BODY, QUOTE, SIGNATURE, HTML),
        (FILENAME, DATA),
        (CANNED_SUBJECT, CANNED_BODY),
    ]
