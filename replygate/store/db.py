"""Engines, sessions and schema upgrades.

SQLite is the embedded default: WAL so readers never block the writer,
``synchronous=FULL`` so a commit survives a power cut (we answer 250 after
it), and a busy timeout so concurrent processes wait instead of failing.
PostgreSQL (psycopg 3) is the path to several hosts.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).with_name("migrations")
SQLITE_BUSY_TIMEOUT_MS = 30_000


def normalise_url(url: str) -> str:
    """Use psycopg 3 for plain ``postgresql://`` URLs."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str, *, pool_size: int = 10) -> Engine:
    url = normalise_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "isolation_level": None}
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin_immediate)
        return engine
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


def make_read_engine(url: str, *, pool_size: int = 10) -> Engine:
    """An engine for read-only lookups (the gateway's RCPT checks).

    On SQLite its transactions begin DEFERRED: they read a WAL snapshot and
    never take, or queue for, the write lock that the inbound writer commits
    under. Elsewhere it is an ordinary engine.
    """
    url = normalise_url(url)
    if make_url(url).get_backend_name() != "sqlite":
        return make_engine(url, pool_size=pool_size)
    engine = create_engine(
        url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "isolation_level": None}
    )
    event.listen(engine, "connect", _sqlite_pragmas)
    event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN"))
    return engine


def bound_engine(factory: sessionmaker[Session]) -> Engine | None:
    """The engine ``factory`` makes sessions on, or None for any other session maker."""
    bind = getattr(factory, "kw", {}).get("bind")
    return bind if isinstance(bind, Engine) else None


def sqlite_read_factory(factory: sessionmaker[Session]) -> sessionmaker[Session] | None:
    """On SQLite, sessions on a ``make_read_engine`` engine for ``factory``'s file; else None.

    ``make_engine`` begins every SQLite transaction IMMEDIATE (the write
    lock), so an idle poll or a lookup on ``factory`` would queue behind the
    gateway's and the engine's commits, and sleep in SQLite's busy handler,
    only to read. These sessions read a WAL snapshot and take no lock.
    PostgreSQL needs none of this: its readers never wait for writers.
    Dispose of the engine (``factory.kw["bind"]``) when done with it.
    """
    bind = bound_engine(factory)
    if bind is None or bind.dialect.name != "sqlite":
        return None
    return session_factory(make_read_engine(bind.url.render_as_string(hide_password=False)))


def sqlite_connection(engine: Engine, *, cached_statements: int = 0) -> sqlite3.Connection:
    """A DBAPI connection of its own to ``engine``'s SQLite file, with the pragmas above.

    For a caller that binds large blobs: a prepared statement kept in the
    driver's cache keeps a copy of every value last bound to it, so a cached
    multi-row insert of 10 MB messages would hold them until reused.
    """
    database = engine.url.database or ":memory:"
    conn = sqlite3.connect(
        database,
        timeout=SQLITE_BUSY_TIMEOUT_MS / 1000,
        isolation_level=None,
        cached_statements=cached_statements,
        check_same_thread=False,
    )
    _sqlite_pragmas(conn, None)
    return conn


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _sqlite_begin_immediate(conn) -> None:
    # Take the write lock at BEGIN: a read-then-write transaction that started
    # deferred could otherwise fail with "database is locked" at its first write
    # instead of waiting for the busy timeout.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work commits on success and rolls back on any error.

    On SQLite it waits for the process's write turn first (``write_turn``).
    """
    with write_turn(bound_engine(factory)), factory() as session, session.begin():
        yield session


# SQLite lets one transaction write at a time. Writers in one process (the
# gateway's writer, the engine, the outbound worker in ``serve``) queue here
# for their turn and are handed it as it is released, instead of sleeping in
# SQLite's busy handler, whose growing naps (up to 100 ms) let a waiter lose
# the race again and again while the others keep the lock busy. Other
# processes still meet at SQLite's own lock.
_TURNS: dict[str, threading.RLock] = {}
_TURNS_GUARD = threading.Lock()


@contextmanager
def write_turn(bind: Engine | None) -> Iterator[None]:
    """Hold this process's turn to write to ``bind``'s SQLite file; a no-op elsewhere.

    Re-entrant in one thread. Waits as long as SQLite's busy timeout, then
    fails as SQLite would.
    """
    if bind is None or bind.dialect.name != "sqlite":
        yield
        return
    key = bind.url.database or ":memory:"
    with _TURNS_GUARD:
        turn = _TURNS.setdefault(key, threading.RLock())
    if not turn.acquire(timeout=SQLITE_BUSY_TIMEOUT_MS / 1000):
        raise sqlite3.OperationalError("database is locked (this process's writers are queued)")
    try:
        yield
    finally:
        turn.release()


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the schema to ``revision`` with Alembic."""
    command.upgrade(alembic_config(url), revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
