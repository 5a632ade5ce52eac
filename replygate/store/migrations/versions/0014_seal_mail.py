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

from replygate.errors import ConfigError
from replygate.store import keyring, sealed

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

SEALED = {"inbound_mail": ("raw", "reason", "decisions"), "outbox": ("raw",)}
BATCH = 500


def upgrade() -> None:
    for table in SEALED:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("row_uid", sa.LargeBinary(length=16), nullable=True))
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
        _rewrite(table, columns, seal=True)
    context.config.attributes["vacuum"] = True


def downgrade() -> None:
    for table, columns in SEALED.items():
        _rewrite(table, columns, seal=False)
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
    for table in SEALED:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("row_uid")


def _rewrite(table: str, columns: tuple[str, ...], *, seal: bool) -> None:
    """Seal (or open) every row's ``columns``, BATCH rows per statement, in id order."""
    bind = op.get_bind()
    select = sa.text(
        f"SELECT id, row_uid, {', '.join(columns)} FROM {table} "
        "WHERE id > :after ORDER BY id LIMIT :batch"
    )
    sets = ", ".join(f"{c} = :{c}" for c in columns)
    update = sa.text(f"UPDATE {table} SET row_uid = :row_uid, {sets} WHERE id = :id")
    after = 0
    while rows := bind.execute(select, {"after": after, "batch": BATCH}).all():
        _ring()
        changed = []
        for row_id, uid, *values in rows:
            new_uid = keyring.new_row_uid() if seal else b""
            row: dict[str, object] = {"id": row_id, "row_uid": new_uid or None}
            for column, value in zip(columns, values, strict=True):
                if value is None:
                    row[column] = None
                elif seal:
                    row[column] = sealed.seal(table, column, new_uid, _bytes(value))
                else:
                    row[column] = sealed.unseal(table, column, uid, _bytes(value), row_id=row_id)
            changed.append(row)
        bind.execute(update, changed)
        after = rows[-1][0]


def _bytes(value: object) -> bytes:
    """A stored value as bytes: SQLite may hand back text where the type changed."""
    if isinstance(value, str):
        return value.encode("utf-8")
    return bytes(value)  # type: ignore[call-overload]


def _ring() -> keyring.Keyring:
    try:
        return keyring.current()
    except ConfigError:
        raise ConfigError(
            "sealing the stored mail needs the encryption keyring: migrate with "
            "`replygate db upgrade` (or `serve --migrate`), which loads it"
        ) from None
