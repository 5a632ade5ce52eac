"""What the migrations that seal stored values share: retyping text columns to
bytes and back, and sealing (or opening) every row's values in batches.

They run under the keyring of the settings ``replygate db upgrade`` loaded; a
migration calls these with the table and column names it seals, never the
models (which describe only the newest schema).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import sqlalchemy as sa
from alembic import op

from replygate.errors import ConfigError
from replygate.store import keyring, sealed

BATCH = 500


def retype(table: str, columns: Mapping[str, sa.types.TypeEngine[str]], *, to_bytes: bool) -> None:
    """Make text ``columns`` (name: their text type) bytes, or bytes text again.

    PostgreSQL converts in place through UTF-8; SQLite copies the table (batch mode)
    and, going back to text, casts each value, since a copied BLOB stays a BLOB.
    """
    if not columns:
        return
    if op.get_bind().dialect.name == "postgresql":
        for column, text_type in columns.items():
            if to_bytes:
                op.execute(
                    f"ALTER TABLE {table} ALTER COLUMN {column} TYPE bytea "
                    f"USING convert_to({column}, 'UTF8')"
                )
            else:
                kind = text_type.compile(dialect=op.get_bind().dialect)
                op.execute(
                    f"ALTER TABLE {table} ALTER COLUMN {column} TYPE {kind} "
                    f"USING convert_from({column}, 'UTF8')"
                )
        return
    with op.batch_alter_table(table, schema=None) as batch_op:
        for column, text_type in columns.items():
            before, after = (
                (text_type, sa.LargeBinary()) if to_bytes else (sa.LargeBinary(), text_type)
            )
            batch_op.alter_column(column, existing_type=before, type_=after)
    if not to_bytes:
        sets = ", ".join(f"{c} = CAST({c} AS TEXT)" for c in columns)
        op.execute(f"UPDATE {table} SET {sets}")


def add_row_uid(tables: Iterable[str]) -> None:
    for table in tables:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("row_uid", sa.LargeBinary(length=16), nullable=True))


def drop_row_uid(tables: Iterable[str]) -> None:
    for table in tables:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("row_uid")


def rewrite(table: str, columns: Iterable[str], *, seal: bool) -> None:
    """Seal (or open) every row's ``columns``, BATCH rows per statement, in id order.

    Sealing gives each row a new ``row_uid``; opening clears it."""
    columns = tuple(columns)
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
