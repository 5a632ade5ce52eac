"""read receipts and unread reminders

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 04:20:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("organisation", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "read_receipts_default", sa.Boolean(), server_default=sa.false(), nullable=False
            )
        )
        batch_op.add_column(
            sa.Column(
                "reminder_delay_seconds", sa.Integer(), server_default="86400", nullable=False
            )
        )
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("receipt_requested", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.add_column(sa.Column("send_id", sa.Integer(), nullable=True))
        batch_op.create_index("ix_messages_send_id", ["send_id"], unique=False)
    op.create_table(
        "message_receipts",
        sa.Column("message_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("read_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("remind_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reminded_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name=op.f("fk_message_receipts_message_id_messages"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_message_receipts_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("message_id", "user_id", name=op.f("pk_message_receipts")),
    )
    op.create_index("ix_message_receipts_remind_at", "message_receipts", ["remind_at"])
    op.create_index("ix_message_receipts_user_id", "message_receipts", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_message_receipts_user_id", table_name="message_receipts")
    op.drop_index("ix_message_receipts_remind_at", table_name="message_receipts")
    op.drop_table("message_receipts")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_send_id")
        batch_op.drop_column("send_id")
        batch_op.drop_column("receipt_requested")
    with op.batch_alter_table("organisation", schema=None) as batch_op:
        batch_op.drop_column("reminder_delay_seconds")
        batch_op.drop_column("read_receipts_default")
