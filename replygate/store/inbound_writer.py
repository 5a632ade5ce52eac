"""Group commit for the inbound queue: one writer thread, many sessions per transaction.

A durable commit costs an fsync (SQLite WAL with ``synchronous=FULL``) or a
WAL flush (PostgreSQL), a few milliseconds on ordinary disks. Committing
each message alone caps a gateway at a few hundred messages a second
whatever the concurrency. Here every SMTP session hands its rows to one
writer thread per process; the writer commits whatever queued up while the
previous commit was running, as one multi-row ``INSERT`` (Core
``executemany``), and only then resolves each session's future, so each
session still answers 250 only once its own rows are durable.

A session on an event loop waits with ``submit_async``: the writer wakes
every session of a batch that shares a loop with one call into that loop
(``call_soon_threadsafe``), not one per message.

The statement is built once per batch size from the table and the
dialect's own bind processors, and runs on a DBAPI connection the writer
keeps: the ORM session and SQLAlchemy's general multi-row path cost more
Python time than the database does, on a thread that shares the GIL with
the SMTP sessions.

Each batch also wakes the engines waiting for mail: on PostgreSQL the
insert statement itself calls ``pg_notify`` on ``inbound.CHANNEL`` (no
extra round trip; PostgreSQL delivers it on commit and sends one per
transaction), and an engine in this process waits on an event the writer
sets once the batch is committed (``wake_on_commit``), on any database.

If a batch fails to commit, its messages are retried one per transaction,
so a message the database refuses (a poison row) fails alone and the others
are stored; the failing session's future raises and the gateway answers
451 4.3.0.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import weakref
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Engine, Table
from sqlalchemy.orm import Session, sessionmaker

from replygate.store import dialect as store_dialect
from replygate.store import sealed
from replygate.store.inbound import CHANNEL
from replygate.store.models import InboundMail

# One transaction holds at most this many messages or bytes: a burst of large
# mail is committed in several steps instead of one huge statement (the driver
# copies every bound value, and those copies count against the memory bound).
MAX_BATCH_MESSAGES = 512
MAX_BATCH_BYTES = 8 * 1024 * 1024

Row = dict[str, Any]


class BulkInsert:
    """``INSERT INTO inbound_mail ... VALUES (...), (...) RETURNING id`` on a kept connection.

    Values go through each column type's bind processor for the dialect,
    exactly as SQLAlchemy would convert them. On PostgreSQL the statement
    also notifies ``CHANNEL`` once (a materialised CTE is evaluated once).
    A failure drops the connection (it may be the one that broke); the next
    batch opens another.
    On SQLite the connection is the writer's own, without a statement cache.
    """

    def __init__(self, engine: Engine) -> None:
        dialect = engine.dialect
        table = cast(Table, InboundMail.__table__)
        self.engine = engine
        self.columns = (*QUEUE_COLUMNS, "row_uid")  # the last one is ``sealed.seal_row``'s
        self.processors = [
            table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
            for name in self.columns
        ]
        self._head = f"INSERT INTO {table.name} ({', '.join(self.columns)}) VALUES "
        self._tail = " RETURNING id"
        # PostgreSQL takes numbered parameters through a raw cursor (see _cursor);
        # SQLite's sqlite3 takes qmarks.
        self._numbered = store_dialect.numbered_parameters(engine)
        if self._numbered:
            self._head = "WITH queued AS (" + self._head
            self._tail = (
                " RETURNING id), wake AS MATERIALIZED"
                f" (SELECT pg_notify('{CHANNEL}', '')) SELECT id FROM queued, wake"
            )
        self._sql: dict[int, str] = {}
        self._conn: Any = None

    def __call__(self, rows: Sequence[Row]) -> list[int]:
        """Insert ``rows`` in one transaction; their ids, in the order of ``rows``."""
        params: list[Any] = []
        seal = sealed.sealer()
        for row in rows:
            row = sealed.seal_row("inbound_mail", row, seal)
            for name, process in zip(self.columns, self.processors, strict=True):
                value = row[name]
                params.append(value if process is None or value is None else process(value))
        sql = self._sql.get(len(rows))
        if sql is None:
            sql = self._head + self._values(len(rows)) + self._tail
            self._sql[len(rows)] = sql
        statement = f"INSERT INTO inbound_mail ({len(rows)} rows)"
        try:
            conn = self._conn if self._conn is not None else self._connect()
        except Exception as exc:  # the pool hands on the driver's own error
            _raise_as_sqlalchemy(self.engine, statement, exc)
            raise
        self._conn = None
        try:
            with store_dialect.write_turn(self.engine):
                cursor = self._cursor(conn)
                cursor.execute(sql, params)
                # One statement numbers its rows in the order of its VALUES (SQLite's
                # rowid, PostgreSQL's sequence), so sorted ids line up with ``rows``.
                ids = sorted(row[0] for row in cursor.fetchall())
                cursor.close()  # both connections autocommit: the statement was its transaction
        except BaseException as exc:
            _discard(conn)
            if isinstance(exc, Exception):
                _raise_as_sqlalchemy(self.engine, statement, exc)
            raise
        self._conn = conn
        return ids

    def _values(self, count: int) -> str:
        width = len(self.columns)
        if not self._numbered:
            row = "(" + ", ".join("?" * width) + ")"
            return ", ".join([row] * count)
        return ", ".join(
            "(" + ", ".join(f"${r * width + c + 1}" for c in range(width)) + ")"
            for r in range(count)
        )

    def _cursor(self, conn: Any) -> Any:
        """A cursor for the batch statement.

        On PostgreSQL a psycopg ``RawCursor``: the statement already has
        ``$n`` parameters, and the default cursor would re-parse its
        ``%s`` marks on every batch (statements this long miss psycopg's
        query cache).
        """
        if not self._numbered:
            return conn.cursor()
        import psycopg  # only with PostgreSQL

        return psycopg.RawCursor(conn.dbapi_connection)

    def _connect(self) -> Any:
        if not self._numbered:
            return store_dialect.sqlite_connection(self.engine)  # no statement cache, see there
        # PostgreSQL in autocommit: the one statement is its own transaction, a
        # single round trip per batch instead of BEGIN, INSERT and COMMIT.
        # Detached from the pool, so no other user ever gets it in that mode.
        conn = self.engine.raw_connection()
        conn.detach()
        dbapi = conn.dbapi_connection
        assert dbapi is not None  # a fresh connection from the pool has its driver's
        dbapi.rollback()
        dbapi.autocommit = True  # type: ignore[attr-defined]  # psycopg's, not in the DBAPI protocol
        return conn

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def _raise_as_sqlalchemy(engine: Engine, statement: str, exc: Exception) -> None:
    """Raise a driver's error as SQLAlchemy would, so callers tell "database away" or
    "full" (``dialect.unreachable``, ``storage_full``) from a refused row; return when
    ``exc`` is not the driver's."""
    wrapped = store_dialect.wrap_driver_error(engine, statement, exc)
    if wrapped is not exc:
        raise wrapped from exc


def _discard(conn: Any) -> None:
    """Drop a connection that failed: a pooled one is invalidated, our own closed."""
    with contextlib.suppress(Exception):
        if hasattr(conn, "invalidate"):
            conn.invalidate()
        else:
            conn.close()


# What ``gateway.intake.queue_rows`` gives for every row, in statement order.
QUEUE_COLUMNS = (
    "received_at",
    "mail_from",
    "rcpt",
    "peer",
    "message_id",
    "size",
    "raw",
    "status",
    "attempts",
    "thread_id",
    "decisions",
)


def insert_rows(insert: BulkInsert, rows: Sequence[Row]) -> list[int]:
    """Insert ``rows`` into ``inbound_mail`` in one transaction; their ids, in order."""
    return insert(rows)


@dataclass
class _Pending:
    rows: list[Row]
    size: int
    future: Future[list[int]] | None = None  # for blocking callers (submit)
    waiter: asyncio.Future[list[int]] | None = None  # for callers on a loop (submit_async)
    loop: asyncio.AbstractEventLoop | None = None


# What a batch's waiters on one loop are woken with: each waiter and its ids or error.
Outcome = tuple["asyncio.Future[list[int]]", list[int] | None, BaseException | None]


class InboundWriter:
    """Commits queued mail in batches from one daemon thread (started on first use)."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        *,
        max_messages: int = MAX_BATCH_MESSAGES,
        max_bytes: int = MAX_BATCH_BYTES,
    ) -> None:
        self.factory = factory
        self._insert: BulkInsert | None = None  # made and used by the writer thread only
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.batches = 0  # commits made (tests and benchmarks read these)
        self.messages = 0
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._wakes: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    def wake_on_commit(self, event: asyncio.Event) -> None:
        """Set ``event``, on the running loop, after every batch this writer commits."""
        self._wakes.append((asyncio.get_running_loop(), event))

    def submit(self, rows: list[Row]) -> Future[list[int]]:
        """Queue one message's rows; the future gives their ids once committed."""
        future: Future[list[int]] = Future()
        self._put(_Pending(rows, _size(rows), future=future))
        return future

    def submit_async(self, rows: list[Row]) -> asyncio.Future[list[int]]:
        """``submit`` for a caller on the running loop; await the result."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[list[int]] = loop.create_future()
        self._put(_Pending(rows, _size(rows), waiter=waiter, loop=loop))
        return waiter

    def _put(self, pending: _Pending) -> None:
        self._ensure_started()
        self._queue.put(pending)

    def alive(self) -> bool:
        """False when the writer thread has died: nothing accepted could be committed.
        (Before the first message it has not started, and is not needed.)"""
        thread = self._thread
        return thread is None or thread.is_alive()

    def close(self, timeout: float = 10.0) -> None:
        """Commit what is queued, then stop the thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)

    def _ensure_started(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None:
                thread = threading.Thread(
                    target=_run, args=(weakref.ref(self), self._queue), name="inbound-writer"
                )
                thread.daemon = True
                thread.start()
                self._thread = thread

    def _next_batch(self, first: _Pending) -> tuple[list[_Pending], bool]:
        """``first`` and whatever else is queued now, within the batch limits."""
        batch, size, stop = [first], first.size, False
        while len(batch) < self.max_messages and size < self.max_bytes:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                stop = True
                break
            batch.append(item)
            size += item.size
        return batch, stop

    def _commit(self, batch: list[_Pending]) -> None:
        rows = [row for pending in batch for row in pending.rows]
        try:
            if self._insert is None:
                with self.factory() as session:
                    bind = session.get_bind()
                    self._insert = BulkInsert(bind if isinstance(bind, Engine) else bind.engine)
            ids = insert_rows(self._insert, rows)
        except Exception as exc:
            if len(batch) == 1:
                _settle_all([(batch[0], None, exc)])
                return
            for pending in batch:  # find the one the database refuses
                self._commit([pending])
            return
        self.batches += 1
        self.messages += len(batch)
        outcomes: list[tuple[_Pending, list[int] | None, BaseException | None]] = []
        at = 0
        for pending in batch:
            n = len(pending.rows)
            outcomes.append((pending, ids[at : at + n], None))
            at += n
        _settle_all(outcomes, self._wakes)


def _size(rows: list[Row]) -> int:
    return sum(len(r.get("raw") or b"") for r in rows)


def _settle_all(
    outcomes: list[tuple[_Pending, list[int] | None, BaseException | None]],
    wakes: Sequence[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = (),
) -> None:
    """Resolve each session's future, then set ``wakes`` (mail was committed);
    one call into each event loop for all of it."""
    by_loop: dict[asyncio.AbstractEventLoop, tuple[list[Outcome], list[asyncio.Event]]] = {}
    for pending, ids, exc in outcomes:
        if pending.future is not None:
            _settle(pending.future, ids, exc)
        if pending.waiter is not None and pending.loop is not None:
            by_loop.setdefault(pending.loop, ([], []))[0].append((pending.waiter, ids, exc))
    for loop, event in wakes:
        by_loop.setdefault(loop, ([], []))[1].append(event)
    for loop, (woken, events) in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            loop.call_soon_threadsafe(_wake, woken, events)


def _wake(woken: list[Outcome], events: Sequence[asyncio.Event] = ()) -> None:
    """On the sessions' loop: hand each waiter its ids, unless it gave up (connection
    closed); then set ``events`` (asyncio's are set from their loop's thread only)."""
    for waiter, ids, exc in woken:
        if waiter.done():
            continue
        if exc is not None:
            waiter.set_exception(exc)
        else:
            waiter.set_result(ids or [])
    for event in events:
        event.set()


def _settle(
    future: Future[list[int]], ids: list[int] | None = None, exc: BaseException | None = None
) -> None:
    """Resolve a session's future unless it gave up waiting (its connection closed)."""
    if not future.set_running_or_notify_cancel():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(ids or [])


def _run(ref: weakref.ref[InboundWriter], work: queue.SimpleQueue[_Pending | None]) -> None:
    """The writer loop; holds the writer only while committing, so an abandoned
    writer is collected and its thread ends."""
    while True:
        try:
            first = work.get(timeout=1.0)
        except queue.Empty:
            if ref() is None:
                return
            continue
        if first is None:
            _close(ref())
            return
        writer = ref()
        if writer is None:
            _settle_all([(first, None, RuntimeError("the inbound writer was closed"))])
            return
        batch, stop = writer._next_batch(first)
        writer._commit(batch)
        if stop:
            _close(writer)
            return
        del writer


def _close(writer: InboundWriter | None) -> None:
    """Close the writer's connection from its own thread (SQLite's rule)."""
    if writer is not None and writer._insert is not None:
        writer._insert.close()
