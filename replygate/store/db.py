"""Engines, sessions, transactions and schema upgrades.

What differs between SQLite (the embedded default) and PostgreSQL (the path
to several hosts) is decided in ``dialect``; this module is the same for both.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Engine, Update
from sqlalchemy.engine import CursorResult

from replygate.store import dialect

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).with_name("migrations")


def normalise_url(url: str) -> str:
    """Use psycopg 3 for plain ``postgresql://`` URLs."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str, *, pool_size: int = 10, sqlite_max_bytes: int = 0) -> Engine:
    """The engine for ``url``, set up as its backend needs (``dialect.engine_for``);
    ``sqlite_max_bytes`` caps an SQLite file's size (0: no cap)."""
    return dialect.engine_for(
        normalise_url(url), pool_size=pool_size, sqlite_max_bytes=sqlite_max_bytes
    )


def make_read_engine(url: str, *, pool_size: int = 10) -> Engine:
    """An engine for read-only lookups; on SQLite its reads never queue for the write lock."""
    return dialect.snapshot_engine_for(normalise_url(url), pool_size=pool_size)


def bound_engine(factory: sessionmaker[Session]) -> Engine | None:
    """The engine ``factory`` makes sessions on, or None for any other session maker."""
    bind = getattr(factory, "kw", {}).get("bind")
    return bind if isinstance(bind, Engine) else None


def snapshot_reads(factory: sessionmaker[Session]) -> sessionmaker[Session] | None:
    """Sessions reading a snapshot of ``factory``'s database where reads would otherwise
    queue for the write lock (SQLite), else None; see ``dialect.snapshot_reads``.
    Give it back to ``close_reads`` when done."""
    bind = bound_engine(factory)
    if bind is None:
        return None
    engine = dialect.snapshot_reads(bind)
    return None if engine is None else session_factory(engine)


def close_reads(reads: sessionmaker[Session] | None) -> None:
    """Dispose of the engine behind a ``snapshot_reads`` session maker (None: nothing)."""
    bind = bound_engine(reads) if reads is not None else None
    if bind is not None:
        bind.dispose()


def database_problem(factory: sessionmaker[Session]) -> str | None:
    """None when ``factory``'s database answers now, else why not (one line)."""
    bind = bound_engine(factory)
    if bind is None:
        return None
    try:
        dialect.check_reachable(bind)
    except Exception as exc:  # whatever the driver raises, the answer is "not reachable"
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


def updated(session: Session, statement: Update) -> CursorResult[Any]:
    """Run an UPDATE; its result is a CursorResult, which has the row count."""
    return cast("CursorResult[Any]", session.execute(statement))


def session_factory(engine: Engine) -> sessionmaker[Session]:
    # The ORM is imported here: a listing that reads with Core alone never loads it.
    from sqlalchemy.orm import sessionmaker

    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work commits on success and rolls back on any error.

    On SQLite it waits for the process's write turn first (``dialect.write_turn``).
    """
    with dialect.write_turn(bound_engine(factory)), factory() as session, session.begin():
        yield session


def alembic_config(url: str) -> Config:
    # Alembic (and Mako, Pygments under it) is imported where it is used: every
    # start of the command line would pay for it, and only schema work needs it.
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the schema to ``revision`` with Alembic."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str:
    """The newest Alembic revision this release ships."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    assert head is not None, "no migrations shipped"
    return head


def schema_problem(engine: Engine) -> str | None:
    """None when the database has the schema this release writes (the newest
    revision), else one sentence saying what is wrong and what to run."""
    from alembic.script import ScriptDirectory

    current, head = current_revision(engine), head_revision()
    if current == head:
        return None
    fix = "run `replygate db upgrade` first (or start with `replygate serve --migrate`)"
    if current is None:
        return f"the database has no replygate schema yet: {fix}"
    known = {script.revision for script in ScriptDirectory(str(MIGRATIONS)).walk_revisions()}
    if current in known:
        return f"the database schema is at revision {current}, behind {head}: {fix}"
    return (
        f"the database schema is at revision {current}, which this replygate does not know "
        f"(written by a newer release?); its newest is {head}"
    )
