"""seal the mail at rest: inbound raw mail, reasons and decisions, outbox payloads

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02 19:00:00.000000

Every existing row gets a row_uid and its values are sealed with the keyring
of the settings the upgrade runs under (``replygate db upgrade`` loads it),
in batches. The downgrade opens them again.
"""

import sqlalchemy as sa
from alembic import context, op

from replygate.store.migrations import sealing

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

SEALED = {"inbound_mail": ("raw", "reason", "decisions"), "outbox": ("raw",)}


def upgrade() -> None:
    sealing.add_row_uid(SEALED)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "ALTER TABLE inbound_mail ALTER COLUMN reason TYPE bytea "
            "USING convert_to(reason, 'UTF8')"
        )
        op.execute(
            "ALTER TABLE inbound_mail ALTER COLUMN decisions TYPE bytea "
            "USING convert_to(decisions::text, 'UTF8')"
        )
    else:
        with op.batch_alter_table("inbound_mail", schema=None) as batch_op:
            batch_op.alter_column("reason", existing_type=sa.Text(), type_=sa.LargeBinary())
            batch_op.alter_column("decisions", existing_type=sa.JSON(), type_=sa.LargeBinary())
    for table, columns in SEALED.items():
        sealing.rewrite(table, columns, seal=True)
    context.config.attributes["vacuum"] = True


def downgrade() -> None:
    for table, columns in SEALED.items():
        sealing.rewrite(table, columns, seal=False)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "ALTER TABLE inbound_mail ALTER COLUMN reason TYPE text "
            "USING convert_from(reason, 'UTF8')"
        )
        op.execute(
            "ALTER TABLE inbound_mail ALTER COLUMN decisions TYPE json "
            "USING convert_from(decisions, 'UTF8')::json"
        )
    else:
        with op.batch_alter_table("inbound_mail", schema=None) as batch_op:
            batch_op.alter_column("reason", existing_type=sa.LargeBinary(), type_=sa.Text())
            batch_op.alter_column("decisions", existing_type=sa.LargeBinary(), type_=sa.JSON())
        # Alembic copies into a JSON column without a cast: JSON is text in SQLite.
        op.execute("UPDATE inbound_mail SET decisions = CAST(decisions AS TEXT)")
    sealing.drop_row_uid(SEALED)
