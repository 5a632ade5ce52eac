"""organisation dmarc policy

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 02:30:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("organisation", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "dmarc_policy",
                sa.String(length=20),
                nullable=False,
                server_default="reject-fail",
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("organisation", schema=None) as batch_op:
        batch_op.drop_column("dmarc_policy")
