"""The upgrade that seals stored content leaves no plain text in the database file: a
thief who takes the SQLite file and its ``-wal`` after ``db upgrade`` reads the
bytes, free pages and all, not the rows. Rows written in plain text at the
revision before sealing hold a marker; after the upgrade neither file holds it.

Two things see to it: every connection sets ``secure_delete`` (a freed row's
bytes are zeroed), and the upgrade ends with ``VACUUM``. The first test runs
the upgrade as a SQLite built without the first would (most builds but
Debian's); without the ``VACUUM`` the old rows' pages stay in the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from replygate.store import dialect
from tests.integration.store.test_seal_content_migration import MARK, before_sealing

__all__ = ["before_sealing"]  # fixture


def _database_files(engine: Engine) -> dict[str, bytes]:
    path = Path(str(make_url(str(engine.url)).database))
    found = {path.name: path.read_bytes()}
    for suffix in ("-wal", "-journal"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            found[side.name] = side.read_bytes()
    return found


@pytest.fixture
def sqlite(engine: Engine) -> Engine:
    if engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL's dead rows are the operator's VACUUM FULL (docs/operating.md)")
    return engine


def test_no_plain_text_is_left_in_the_file_nor_its_wal_after_sealing(
    sqlite: Engine, before_sealing: tuple[Config, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pragmas = dialect._sqlite_pragmas

    def as_most_builds(conn: Any, max_bytes: int = 0) -> None:
        pragmas(conn, max_bytes)
        conn.execute("PRAGMA secure_delete=OFF")

    monkeypatch.setattr(dialect, "_sqlite_pragmas", as_most_builds)
    config, _, sealing = before_sealing
    sqlite.dispose()  # no connection of ours holds the WAL open
    assert any(MARK.encode() in data for data in _database_files(sqlite).values())  # the control
    command.upgrade(config, sealing)
    after = _database_files(sqlite)
    assert not [name for name, data in after.items() if MARK.encode() in data], sorted(after)


def test_every_connection_zeroes_what_it_deletes(sqlite: Engine) -> None:
    with sqlite.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA secure_delete").scalar() == 1
