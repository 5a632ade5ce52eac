"""Re-sealing stored values with the keyring's active key, in batches.

Safe while ``serve`` runs: each batch is its own short transaction, and a
value is replaced only if it is still the one read (so a value a worker wrote
meanwhile, already under the new key, is never overwritten with an older
one). Running processes seal with the new key from their next seal on, since
the keyring notices the key file changed. A pass that finds nothing left on
an old version ends the work; an interrupted run is resumed by running again.

A value that does not open (tampered with, moved from another row) is never
re-sealed, which would make garbage look sound under the new key: it is left
on its old key, logged, and named at the end, so that its key cannot be
retired while it is there and the operator knows which row to restore.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass

from sqlalchemy import Column, ColumnElement, Table, and_, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from replygate.store import sealed
from replygate.store.db import transaction, updated
from replygate.store.keyring import HEADER, Keyring, SealBroken
from replygate.store.models import Base


@dataclass(frozen=True)
class SealedColumn:
    table: Table
    column: Column[bytes]

    @property
    def name(self) -> str:
        return f"{self.table.name}.{self.column.name}"


def sealed_columns() -> list[SealedColumn]:
    """Every sealed column of the schema, in a stable order."""
    found = []
    for table in Base.metadata.sorted_tables:
        for name in sorted(sealed.REGISTRY.get(table.name, {})):
            found.append(SealedColumn(table, table.c[name]))
    return found


def _version(column: Column[bytes]) -> ColumnElement[bytes]:
    return func.substr(column, 1, HEADER.size)


# What a stored value too short to name its key counts under: no key has this version.
NOT_SEALED = 0


def _version_named(head: bytes) -> int:
    return int(HEADER.unpack(head)[0]) if len(head) == HEADER.size else NOT_SEALED


def versions_in_use(session: Session) -> dict[str, dict[int, int]]:
    """Rows per key version, per sealed column (NULLs are not counted); a value too
    short to be sealed counts under ``NOT_SEALED``, which ``keys status`` shows missing."""
    counts: dict[str, dict[int, int]] = {}
    for target in sealed_columns():
        head = _version(target.column)
        rows = session.execute(
            select(head, func.count())
            .select_from(target.table)
            .where(target.column.is_not(None))
            .group_by(head)
        ).all()
        per_version: dict[int, int] = {}
        for stored_head, n in rows:
            version = _version_named(bytes(stored_head))
            per_version[version] = per_version.get(version, 0) + int(n)
        counts[target.name] = per_version
    return counts


def left_on_old_keys(session: Session, active: int) -> int:
    """How many stored values are sealed with a key other than ``active``."""
    return sum(
        n
        for per_version in versions_in_use(session).values()
        for version, n in per_version.items()
        if version != active
    )


def _stale(target: SealedColumn, active: int, skip: Collection[int]) -> ColumnElement[bool]:
    stale = and_(target.column.is_not(None), _version(target.column) != HEADER.pack(active))
    return and_(stale, target.table.c.id.not_in(skip)) if skip else stale


# Rows whose stored value does not open, by sealed column ("table.column"): a rotation
# leaves them as they are (on their old key) and names them; it never re-seals them.
Broken = dict[str, set[int]]


def reseal_batch(
    factory: sessionmaker[Session],
    keyring: Keyring,
    target: SealedColumn,
    limit: int = 200,
    broken: Broken | None = None,
) -> int:
    """Re-seal up to ``limit`` values of one column; returns how many were replaced.
    A value that does not open (logged ``store.seal_broken``) is added to ``broken``
    and passed over from then on."""
    table, column = target.table, target.column
    active = keyring.active
    skip = (broken if broken is not None else {}).setdefault(target.name, set())
    with transaction(factory) as session:
        rows = session.execute(
            select(table.c.id, table.c.row_uid, column)
            .where(_stale(target, active, skip))
            .order_by(table.c.id)
            .limit(limit)
        ).all()
        replaced = 0
        for row_id, row_uid, stored in rows:
            try:
                plain = sealed.unseal(table.name, column.name, row_uid, stored, row_id=row_id)
            except SealBroken:
                skip.add(row_id)
                continue
            fresh = sealed.seal(table.name, column.name, row_uid, plain)
            done = updated(
                session,
                update(table)
                .where(table.c.id == row_id, column == stored)
                .values({column.name: fresh}),
            )
            replaced += done.rowcount or 0
        return replaced


def reseal_all(
    factory: sessionmaker[Session], keyring: Keyring, limit: int = 200, broken: Broken | None = None
) -> Iterator[int]:
    """Re-seal every value not on the active key; yields each batch's count as it goes,
    until a whole pass over every column finds nothing left but the values in ``broken``
    (those that do not open, gathered there)."""
    broken = broken if broken is not None else {}
    while True:
        moved = 0
        for target in sealed_columns():
            while count := reseal_batch(factory, keyring, target, limit, broken):
                moved += count
                yield count
        if not moved and not _stale_left(factory, keyring.active, broken):
            return


def _stale_left(factory: sessionmaker[Session], active: int, broken: Broken) -> bool:
    """Whether a value that opens is still on an old key (a worker sealed it meanwhile)."""
    return _any_row(factory, lambda target: _stale(target, active, broken.get(target.name, set())))


def _any_row(
    factory: sessionmaker[Session], where: Callable[[SealedColumn], ColumnElement[bool]]
) -> bool:
    """Whether some sealed column has a row that ``where`` (given the column) selects."""
    with factory() as session:
        return any(
            session.execute(select(target.table.c.id).where(where(target)).limit(1)).first()
            for target in sealed_columns()
        )


def version_used(factory: sessionmaker[Session], version: int) -> bool:
    """Whether any stored value is still sealed with ``version``."""
    return _any_row(
        factory,
        lambda target: and_(
            target.column.is_not(None), _version(target.column) == HEADER.pack(version)
        ),
    )


def newest_open(session: Session) -> tuple[list[str], bool]:
    """Try the newest stored value of each sealed column: the columns tried (as
    ``table.column row N``), and whether any of them opened (each that does not is
    logged ``store.seal_broken``)."""
    tried, opened = [], False
    for target in sealed_columns():
        table, column = target.table, target.column
        row = session.execute(
            select(table.c.id, table.c.row_uid, column)
            .where(column.is_not(None))
            .order_by(table.c.id.desc())
            .limit(1)
        ).first()
        if row is None:
            continue
        tried.append(f"{target.name} row {row.id}")
        try:
            sealed.unseal(table.name, column.name, row.row_uid, row[2], row_id=row.id)
        except SealBroken:
            continue
        opened = True
    return tried, opened
