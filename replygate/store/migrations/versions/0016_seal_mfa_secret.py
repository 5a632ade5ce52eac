"""seal the two-factor secrets at rest: users.mfa_secret and mfa_pending_secret

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-03 19:45:00.000000

Like 0015: every user gets a row_uid and each stored TOTP secret (enrolled or
pending) is sealed with the keyring of the settings the upgrade runs under; the
columns become bytes first. The downgrade opens them and makes them text again.
"""

import sqlalchemy as sa
from alembic import context

from replygate.store.migrations import sealing

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

# Each sealed column, with its type before sealing.
SEALED: dict[str, sa.types.TypeEngine[str]] = {
    "mfa_secret": sa.String(length=64),
    "mfa_pending_secret": sa.String(length=64),
}


def upgrade() -> None:
    sealing.add_row_uid(["users"])
    sealing.retype("users", SEALED, to_bytes=True)
    sealing.rewrite("users", SEALED, seal=True)
    context.config.attributes["vacuum"] = True


def downgrade() -> None:
    sealing.rewrite("users", SEALED, seal=False)
    sealing.retype("users", SEALED, to_bytes=False)
    sealing.drop_row_uid(["users"])
