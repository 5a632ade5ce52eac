"""The one place that knows SQLite from PostgreSQL.

Everything else in the store asks here instead of testing a dialect's name:

- engines: SQLite with WAL (readers never block the writer),
  ``synchronous=FULL`` (a commit survives a power cut: we answer 250 after
  it), a busy timeout, and IMMEDIATE transactions; PostgreSQL (psycopg 3)
  with a pool;
  both with ``hide_parameters``: an SQL error names its statement but not
  the values bound to it (raw mail, tokens), since its text reaches logs;
- snapshot reads: on SQLite, read-only sessions that begin DEFERRED and read
  a WAL snapshot, so idle polls and RCPT lookups never queue for the write
  lock; PostgreSQL's readers never wait for writers, so it needs none;
- write turns: SQLite lets one transaction write at a time, and writers
  take turns (on a lock of the process, then on an ``flock`` of
  ``<file>.write-turn`` across processes) instead of racing in SQLite's
  busy handler; a no-op on PostgreSQL;
- row locks: ``FOR UPDATE [SKIP LOCKED]`` on PostgreSQL, where several
  workers claim side by side; on SQLite the IMMEDIATE transaction already
  holds the whole database;
- serial sections: a transaction that must see the last row another wrote
  (the audit chain) waits for an advisory lock on PostgreSQL; on SQLite
  the IMMEDIATE transaction is already alone;
- wake-ups: ``pg_notify`` and a libpq URL to LISTEN with on PostgreSQL;
  SQLite cannot notify another process, so its workers poll;
- trouble: which errors mean the database is away or full (``unreachable``,
  ``storage_full``: SQLite's ``SQLITE_FULL``, PostgreSQL's ``disk_full``)
  rather than a statement it refused;
- claim owners: a worker process holds a mark of being alive for as long as
  it lives, and the OS or the server drops it when the process dies, so a
  claim's owner can be seen to be gone: on SQLite an ``flock`` on a file of
  its own beside the database (``<file>.owners/``), on PostgreSQL a
  session-level advisory lock on a hash of its id, held by a connection of
  its own (``pg_locks`` shows who holds one).

The process-wide table of write turns below is the one piece of global
state in the store.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVarTuple
from urllib.parse import quote

from sqlalchemy import Engine, Select, create_engine, event, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

if TYPE_CHECKING:  # the ORM is not loaded for a listing that reads with Core alone
    from sqlalchemy.orm import Session

SQLITE_BUSY_TIMEOUT_MS = 30_000

Ts = TypeVarTuple("Ts")


class Backend(StrEnum):
    SQLITE = "sqlite"
    POSTGRESQL = "postgresql"


def backend(bind: Engine | Session) -> Backend:
    """The backend a bound session or an engine talks to."""
    engine = bind if isinstance(bind, Engine) else bind.get_bind()
    return Backend(engine.dialect.name)


def url_backend(url: str) -> Backend:
    return Backend(make_url(url).get_backend_name())


# -- engines -----------------------------------------------------------------------------------


def engine_for(url: str, *, pool_size: int, sqlite_max_bytes: int = 0) -> Engine:
    """The engine for a normalised ``url`` (see ``db.make_engine``); on SQLite the file
    may grow to ``sqlite_max_bytes`` (0: no cap), and a write past it is ``storage_full``."""
    if url_backend(url) is Backend.SQLITE:
        engine = _sqlite_engine(url, sqlite_max_bytes)
        event.listen(engine, "begin", _begin_immediate)
        return engine
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        hide_parameters=True,
    )


def snapshot_engine_for(url: str, *, pool_size: int) -> Engine:
    """An engine for read-only lookups: on SQLite its transactions begin DEFERRED and read
    a WAL snapshot, never taking the write lock; elsewhere an ordinary engine."""
    if url_backend(url) is not Backend.SQLITE:
        return engine_for(url, pool_size=pool_size)
    engine = _sqlite_engine(url)
    event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN"))
    return engine


def snapshot_reads(bind: Engine) -> Engine | None:
    """On SQLite, a snapshot engine for ``bind``'s file (dispose of it when done); else None.

    ``engine_for`` begins every SQLite transaction IMMEDIATE, so an idle poll
    or a lookup on ``bind`` would queue behind the gateway's and the worker's
    commits only to read.
    """
    if backend(bind) is not Backend.SQLITE:
        return None
    return snapshot_engine_for(bind.url.render_as_string(hide_password=False), pool_size=10)


def check_reachable(bind: Engine) -> None:
    """Raise (``sqlite3.Error``, ``SQLAlchemyError``) unless the database answers now.

    On SQLite the file itself must still be there, open for writing and ours
    (an empty file made in its place is not): a pooled connection keeps a
    moved or deleted file open and would answer.
    On PostgreSQL a pooled connection must answer (``pool_pre_ping`` replaces
    one the server dropped, so a server that is down fails here).
    """
    if backend(bind) is Backend.SQLITE:
        path = bind.url.database
        if not path or path == ":memory:":
            return
        raw = sqlite3.connect(f"file:{quote(path)}?mode=rw", uri=True, timeout=1.0)
        try:
            raw.execute("SELECT version_num FROM alembic_version").fetchone()
        finally:
            raw.close()
        return
    with bind.connect() as conn:
        conn.execute(text("SELECT 1"))


def _sqlite_engine(url: str, max_bytes: int = 0) -> Engine:
    parsed = make_url(url)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "isolation_level": None},
        hide_parameters=True,
    )
    event.listen(engine, "connect", lambda conn, _record: _sqlite_pragmas(conn, max_bytes))
    return engine


def sqlite_connection(engine: Engine, *, cached_statements: int = 0) -> sqlite3.Connection:
    """A DBAPI connection of its own to ``engine``'s SQLite file, with the same pragmas.

    For a caller that binds large blobs: a prepared statement kept in the
    driver's cache keeps a copy of every value last bound to it, so a cached
    multi-row insert of 10 MB messages would hold them until reused.
    """
    with engine.connect() as pooled:  # its cap on the file's size, set when it connected
        max_pages = pooled.exec_driver_sql("PRAGMA max_page_count").scalar()
    conn = sqlite3.connect(
        engine.url.database or ":memory:",
        timeout=SQLITE_BUSY_TIMEOUT_MS / 1000,
        isolation_level=None,
        cached_statements=cached_statements,
        check_same_thread=False,
    )
    _sqlite_pragmas(conn)
    conn.execute(f"PRAGMA max_page_count={int(max_pages or 0)}")
    return conn


def _sqlite_pragmas(dbapi_conn: Any, max_bytes: int = 0) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA foreign_keys=ON")
    # A deleted row's bytes are zeroed, not left in a free page (Debian's default only).
    cur.execute("PRAGMA secure_delete=ON")
    if max_bytes:
        page_size = cur.execute("PRAGMA page_size").fetchone()[0]
        # A connection's cap, never stored in the file: every connection sets it.
        cur.execute(f"PRAGMA max_page_count={max(1, max_bytes // page_size)}")
    cur.close()


def _begin_immediate(conn: Any) -> None:
    # Take the write lock at BEGIN: a read-then-write transaction that started
    # deferred could otherwise fail with "database is locked" at its first write
    # instead of waiting for the busy timeout.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


# -- trouble ---------------------------------------------------------------------------------

# PostgreSQL's SQLSTATE for "could not extend file: No space left on device".
PG_DISK_FULL = "53100"


def storage_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the database has no room for what was written: SQLite's
    ``SQLITE_FULL`` (the disk, or the file's cap) or PostgreSQL's ``disk_full``."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    if isinstance(orig, sqlite3.Error):
        return getattr(orig, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    return getattr(orig, "sqlstate", None) == PG_DISK_FULL


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` is the database's trouble rather than the statement's: the
    connection refused or lost, the server shutting down or starting, the file
    locked or full. Whatever was being written may succeed as it is, later."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, (OperationalError, InterfaceError))


def wrap_driver_error(engine: Engine, statement: str, exc: Exception) -> Exception:
    """A driver's own exception (from a raw DBAPI cursor) as SQLAlchemy would raise it
    (``OperationalError`` and so on, with ``orig``); anything else unchanged."""
    dbapi = engine.dialect.loaded_dbapi
    if not isinstance(exc, dbapi.Error):
        return exc
    return DBAPIError.instance(
        statement, None, exc, dbapi.Error, hide_parameters=True, dialect=engine.dialect
    )


# -- write turns (SQLite) ----------------------------------------------------------------------

# Writers (the gateway's writer, the inbound worker, the outbound worker) take
# turns and are handed the turn as it is released, instead of sleeping in
# SQLite's busy handler, whose growing naps (up to 100 ms) let a waiter lose
# the race again and again while the others keep the lock busy. In one
# process they queue on a lock of the process; across processes (``serve``
# files in a process of its own beside the gateway's) on an ``flock`` of a
# file beside the database (``<file>.write-turn``), tried every half
# millisecond while it is held.
TURN_RETRY_SECONDS = 0.0005


def _open_turn_file(path: Path) -> int:
    """The turn file, open for ``flock``, readable by whoever may write the database.

    Made with the database file's permissions: the gateway's user, a Postfix
    pipe's (``replygate ingest``) and the workers' must all be able to take
    the turn. It holds nothing, and a lock needs only a read-only descriptor,
    so a file made by another user is opened for reading.
    """
    database = path.with_name(path.name.removesuffix(".write-turn"))
    try:
        mode = database.stat().st_mode & 0o666
    except OSError:
        mode = 0o600
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        try:
            return os.open(path, os.O_RDWR)
        except PermissionError:
            return os.open(path, os.O_RDONLY)
    os.fchmod(fd, mode)  # as the database's, whatever the umask
    return fd


class _Turn:
    """One database file's write turn in this process: a re-entrant lock, and the
    file lock taken by its outermost holder."""

    def __init__(self, path: Path | None) -> None:
        self.lock = threading.RLock()
        self.depth = 0  # changed only by the thread holding ``lock``
        self.fd: int | None = None
        self.path = path

    def take_file(self, deadline: float) -> None:
        if self.path is None:
            return
        if self.fd is None:  # opened once; not inherited by child processes
            self.fd = _open_turn_file(self.path)
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise sqlite3.OperationalError(
                        "database is locked (another process holds the write turn)"
                    ) from None
                time.sleep(TURN_RETRY_SECONDS)

    def drop_file(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)


_TURNS: dict[str, _Turn] = {}
_TURNS_GUARD = threading.Lock()


@contextmanager
def write_turn(bind: Engine | None) -> Iterator[None]:
    """Hold the turn to write to ``bind``'s SQLite file (this process's, then the file's
    across processes); a no-op elsewhere.

    Re-entrant in one thread. Waits as long as SQLite's busy timeout, then
    fails as SQLite would.
    """
    if bind is None or backend(bind) is not Backend.SQLITE:
        yield
        return
    key = bind.url.database or ":memory:"
    with _TURNS_GUARD:
        turn = _TURNS.get(key)
        if turn is None:
            path = (
                None if key == ":memory:" else Path(key).with_name(f"{Path(key).name}.write-turn")
            )
            turn = _TURNS[key] = _Turn(path)
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    if not turn.lock.acquire(timeout=SQLITE_BUSY_TIMEOUT_MS / 1000):
        raise sqlite3.OperationalError("database is locked (this process's writers are queued)")
    try:
        if turn.depth == 0:
            turn.take_file(deadline)
        turn.depth += 1
        try:
            yield
        finally:
            turn.depth -= 1
            if turn.depth == 0:
                turn.drop_file()
    finally:
        turn.lock.release()


# -- row locks and wake-ups --------------------------------------------------------------------


def locked(stmt: Select[*Ts], session: Session, *, skip_locked: bool = False) -> Select[*Ts]:
    """``stmt`` locking the rows it reads for this transaction, where rows can be locked."""
    if backend(session) is Backend.POSTGRESQL:
        return stmt.with_for_update(skip_locked=skip_locked)
    return stmt


# The first key of the transaction locks ``serialise`` takes (the second is hashtext of its name).
SERIAL_LOCK_SPACE = 0x52475331  # "RGS1"


def serialise(session: Session, name: str) -> None:
    """Let one transaction at a time past this point until it ends (``name`` says which line).

    PostgreSQL: a transaction-level advisory lock. SQLite: nothing to do, as
    the IMMEDIATE transaction already holds the database's write lock.
    """
    if backend(session) is Backend.POSTGRESQL:
        session.execute(
            text("SELECT pg_advisory_xact_lock(:space, hashtext(:name))"),
            {"space": SERIAL_LOCK_SPACE, "name": name},
        )


def new_ids(session: Session, table: str, count: int) -> list[int]:
    """Ids for ``count`` rows the caller will insert into ``table`` (integer key ``id``).

    PostgreSQL: from the column's sequence, never handed out twice. SQLite: after the
    largest id, which only this transaction can move (it holds the write lock), so
    they hold until it inserts into ``table`` some other way."""
    if backend(session) is Backend.POSTGRESQL:
        sql = "SELECT nextval(pg_get_serial_sequence(:t, 'id')) FROM generate_series(1, :n)"
        return list(session.scalars(text(sql), {"t": table, "n": count}))
    top = session.scalar(text(f"SELECT coalesce(max(id), 0) FROM {table}"))
    return list(range(int(top or 0) + 1, int(top or 0) + 1 + count))


def notify(session: Session, channel: str) -> None:
    """Notify ``channel`` when this transaction commits (PostgreSQL); elsewhere nothing."""
    if backend(session) is Backend.POSTGRESQL:
        session.execute(select(func.pg_notify(channel, "")))


def listen_url(bind: Engine | None) -> str | None:
    """A libpq URL to LISTEN with when ``bind`` is PostgreSQL; None where nobody notifies."""
    if bind is None or backend(bind) is not Backend.POSTGRESQL:
        return None
    return bind.url.set(drivername="postgresql").render_as_string(hide_password=False)


def numbered_parameters(bind: Engine) -> bool:
    """Whether a raw cursor takes ``$1``-style parameters (psycopg) rather than qmarks."""
    return backend(bind) is Backend.POSTGRESQL


# -- claim owners ------------------------------------------------------------------------------

# The first key of every owner's advisory lock (the second is hashtext of the
# owner's id), so our locks never meet another application's one-key locks.
OWNER_LOCK_SPACE = 0x52474331  # "RGC1"


def hold_owner(bind: Engine, owner: str) -> Callable[[], None]:
    """Mark ``owner`` alive until the returned function is called or the process dies.

    SQLite: an exclusive ``flock`` on ``<database>.owners/<hash of owner>``,
    which the kernel drops with the process. PostgreSQL: a session-level
    advisory lock held by a connection of its own, which the server drops
    when the connection goes (the process died, or the link was lost: its
    claims are then taken back and filed once by the duplicate check).
    """
    if backend(bind) is Backend.SQLITE:
        return _hold_owner_file(_owner_file(bind, owner))
    conn = bind.connect().execution_options(isolation_level="AUTOCOMMIT")
    got = conn.execute(
        text("SELECT pg_try_advisory_lock(:space, hashtext(:owner))"),
        {"space": OWNER_LOCK_SPACE, "owner": owner},
    ).scalar()
    if not got:
        conn.close()
        raise RuntimeError(f"the owner lock of {owner} is held by another session")

    def release() -> None:
        try:
            conn.execute(
                text("SELECT pg_advisory_unlock(:space, hashtext(:owner))"),
                {"space": OWNER_LOCK_SPACE, "owner": owner},
            )
        except (OperationalError, InterfaceError):
            pass  # the connection is gone, and the lock went with it
        finally:
            conn.invalidate()  # never back to the pool still holding a lock
            conn.close()

    return release


def dead_owners(session: Session, owners: Collection[str]) -> set[str]:
    """Those of ``owners`` that no living process holds (see ``hold_owner``)."""
    if not owners:
        return set()
    if backend(session) is Backend.SQLITE:
        engine = session.get_bind()
        assert isinstance(engine, Engine)
        return {owner for owner in owners if not _owner_file_held(_owner_file(engine, owner))}
    alive = session.execute(
        text(
            "SELECT owner FROM unnest(CAST(:owners AS text[])) AS owner WHERE EXISTS ("
            " SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted"
            " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " AND l.classid = CAST(:space AS oid) AND l.objid = CAST(hashtext(owner) AS oid)"
            " AND l.objsubid = 2)"
        ),
        {"owners": list(owners), "space": OWNER_LOCK_SPACE},
    ).scalars()
    return set(owners) - set(alive)


def _owner_file(bind: Engine, owner: str) -> Path:
    database = Path(bind.url.database or "memory")
    name = hashlib.sha256(owner.encode()).hexdigest()[:32]
    return database.with_name(f"{database.name}.owners") / f"{name}.lock"


def _hold_owner_file(path: Path) -> Callable[[], None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a fresh id: nobody else holds it

    def release() -> None:
        try:
            path.unlink(missing_ok=True)
        finally:
            os.close(fd)

    return release


def _owner_file_held(path: Path) -> bool:
    """Whether a living process holds ``path``'s lock; a dead owner's file is removed."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        path.unlink(missing_ok=True)
        return False
    finally:
        os.close(fd)
