"""per-user thread state: pinned and archived

Each participant row gains where the thread stands for its person (pinned,
archived) and two values copied from the messages (the thread's last
activity and the newest message by someone else), so an inbox of any size is
one index range read in order, and its unread rows a smaller index of their own.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 04:20:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# The rows the unread index holds (models.UNREAD_SQL, as it was written here).
UNREAD = "last_incoming_message_id > coalesce(last_read_message_id, 0)"

COPY_ACTIVITY = """
UPDATE thread_participants SET
  last_activity_at = (
    SELECT threads.last_activity_at FROM threads WHERE threads.id = thread_participants.thread_id
  ),
  last_incoming_message_id = (
    SELECT max(messages.id) FROM messages
    WHERE messages.thread_id = thread_participants.thread_id
      AND messages.author_id != thread_participants.user_id
  )
"""


def upgrade() -> None:
    with op.batch_alter_table("thread_participants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("last_incoming_message_id", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column("last_activity_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("pinned", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(
            sa.Column("archived", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.execute(COPY_ACTIVITY)
    with op.batch_alter_table("thread_participants", schema=None) as batch_op:
        batch_op.alter_column(
            "last_activity_at", existing_type=sa.DateTime(timezone=True), nullable=False
        )
        batch_op.create_index(
            "ix_thread_participants_inbox",
            ["user_id", "archived", "pinned", "last_activity_at", "thread_id"],
            unique=False,
        )
        batch_op.create_index(
            "ix_thread_participants_unread",
            [
                "user_id",
                "archived",
                "pinned",
                "last_activity_at",
                "thread_id",
                "last_incoming_message_id",
                "last_read_message_id",
            ],
            unique=False,
            sqlite_where=sa.text(UNREAD),
            postgresql_where=sa.text(UNREAD),
        )


def downgrade() -> None:
    with op.batch_alter_table("thread_participants", schema=None) as batch_op:
        batch_op.drop_index("ix_thread_participants_unread")
        batch_op.drop_index("ix_thread_participants_inbox")
        batch_op.drop_column("archived")
        batch_op.drop_column("pinned")
        batch_op.drop_column("last_activity_at")
        batch_op.drop_column("last_incoming_message_id")
