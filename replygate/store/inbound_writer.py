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
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session, sessionmaker

from replygate.store.models import InboundMail

# One transaction holds at most this many messages or bytes: a burst of large
# mail is committed in several steps instead of one huge statement.
MAX_BATCH_MESSAGES = 512
MAX_BATCH_BYTES = 32 * 1024 * 1024

Row = dict[str, Any]


def insert_rows(factory: sessionmaker[Session], rows: Sequence[Row]) -> list[int]:
    """Insert ``rows`` into ``inbound_mail`` in one transaction; their ids, in order."""
    table = InboundMail.__table__
    stmt = insert(table).returning(table.c.id, sort_by_parameter_order=True)
    with factory() as session, session.begin():
        return list(session.connection().execute(stmt, list(rows)).scalars())


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
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.batches = 0  # commits made (tests and benchmarks read these)
        self.messages = 0
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

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
            ids = insert_rows(self.factory, rows)
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
        _settle_all(outcomes)


def _size(rows: list[Row]) -> int:
    return sum(len(r.get("raw") or b"") for r in rows)


def _settle_all(outcomes: list[tuple[_Pending, list[int] | None, BaseException | None]]) -> None:
    """Resolve each session's future; one wake-up per event loop for its waiters."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Outcome]] = {}
    for pending, ids, exc in outcomes:
        if pending.future is not None:
            _settle(pending.future, ids, exc)
        if pending.waiter is not None and pending.loop is not None:
            by_loop.setdefault(pending.loop, []).append((pending.waiter, ids, exc))
    for loop, woken in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            loop.call_soon_threadsafe(_wake, woken)


def _wake(woken: list[Outcome]) -> None:
    """On the sessions' loop: hand each waiter its ids, unless it gave up (connection closed)."""
    for waiter, ids, exc in woken:
        if waiter.done():
            continue
        if exc is not None:
            waiter.set_exception(exc)
        else:
            waiter.set_result(ids or [])


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
            return
        writer = ref()
        if writer is None:
            _settle_all([(first, None, RuntimeError("the inbound writer was closed"))])
            return
        batch, stop = writer._next_batch(first)
        writer._commit(batch)
        del writer
        if stop:
            return
