"""inbound index for the thread-order rule of claims

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02 04:45:00.000000
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A claim asks, for each candidate, whether an earlier reply of its thread is
    # being processed or waits out a retry: two seeks in this index, where
    # (thread_id, id) walked every earlier reply of the thread, filed ones too.
    with op.batch_alter_table("inbound_mail", schema=None) as batch_op:
        batch_op.create_index(
            "ix_inbound_mail_thread_status", ["thread_id", "status", "id", "claimed_at"]
        )


def downgrade() -> None:
    with op.batch_alter_table("inbound_mail", schema=None) as batch_op:
        batch_op.drop_index("ix_inbound_mail_thread_status")
