"""seal the content at rest: thread subjects, messages, attachments, canned responses

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-03 18:45:00.000000

Like 0014: every existing row gets a row_uid and its values are sealed with
the keyring of the settings the upgrade runs under, in batches; text columns
become bytes first. The downgrade opens them and makes them text again.
"""

import sqlalchemy as sa
from alembic import context

from replygate.store.migrations import sealing

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

# Each sealed column, with its type before sealing (None: it held bytes already).
SEALED: dict[str, dict[str, sa.types.TypeEngine[str] | None]] = {
    "threads": {"subject": sa.String(length=500)},
    "messages": {
        "body": sa.Text(),
        "quote": sa.Text(),
        "signature": sa.Text(),
        "body_html": sa.Text(),
    },
    "message_attachments": {"filename": sa.String(length=255), "data": None},
    "canned_responses": {"subject": sa.String(length=500), "body": sa.Text()},
}


def _text_columns(table: str) -> dict[str, sa.types.TypeEngine[str]]:
    return {c: kind for c, kind in SEALED[table].items() if kind is not None}


def upgrade() -> None:
    sealing.add_row_uid(SEALED)
    for table, columns in SEALED.items():
        sealing.retype(table, _text_columns(table), to_bytes=True)
        sealing.rewrite(table, columns, seal=True)
    context.config.attributes["vacuum"] = True


def downgrade() -> None:
    for table, columns in SEALED.items():
        sealing.rewrite(table, columns, seal=False)
        sealing.retype(table, _text_columns(table), to_bytes=False)
    sealing.drop_row_uid(SEALED)
