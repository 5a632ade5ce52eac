"""Alembic environment: run migrations against the URL the caller configured.

On SQLite a batch migration that changes a column's type copies the table
and drops the old one; with foreign keys enforced that drop would first
apply the ON DELETE actions of the tables referring to it (SET NULL,
CASCADE), so they are off while migrating and checked afterwards. A
migration that rewrote values (sealing them) asks for ``VACUUM`` through
``config.attributes["vacuum"]``: the old pages, plain text, leave the file
and its WAL. Both are statements outside any transaction.
"""

from typing import Any

from alembic import context

from replygate.store.db import make_engine
from replygate.store.models import Base

target_metadata = Base.metadata


def run_migrations_online() -> None:
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:  # db.upgrade always sets it; alembic run by hand may not
        raise SystemExit("no sqlalchemy.url configured; run `replygate db upgrade`")
    engine = make_engine(url)
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            _driver(connection).execute("PRAGMA foreign_keys=OFF")
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=sqlite,
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
            if sqlite:
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").first()
                if broken is not None:
                    raise SystemExit(f"the migration left a dangling reference in {broken[0]}")
        if connection.in_transaction():
            connection.commit()
        if sqlite:
            driver = _driver(connection)
            driver.execute("PRAGMA foreign_keys=ON")
            if context.config.attributes.pop("vacuum", False):
                driver.execute("VACUUM")
                driver.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()


def _driver(connection: Any) -> Any:
    """The sqlite3 connection itself (autocommit): PRAGMA foreign_keys and VACUUM
    do nothing, or fail, inside a transaction, and SQLAlchemy would begin one."""
    return connection.connection.dbapi_connection


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run `replygate db upgrade`")
run_migrations_online()
