"""The inbound worker: claim queued mail in batches and hand it to ``core.filing``.

Runs off the SMTP path; ``Filing`` decides and records each mail in the
transaction that locks its row, so this loop holds no rules of its own.

An idle engine waits for a wake-up, with polling as the fallback: a gateway
in the same process sets the ``wake`` event once it has committed mail; on
PostgreSQL the engine also LISTENs on ``inbound.CHANNEL``, which every
process that queues mail notifies in the queuing transaction. A lost
listener connection is logged once and retried with backoff; meanwhile the
poll (``worker_poll_seconds``) files the mail, as it does for SQLite
gateways in other processes, which cannot notify.

A running engine has an owner id (``host:pid:start``) recorded on each of
its claims and marks itself alive for its whole life (``claim_owners.hold_owner``:
a file lock on SQLite, an advisory lock on PostgreSQL). On start, and every
``TAKE_BACK_SECONDS`` after, it takes back the claims of owners that are
gone, so mail held by a worker that was killed is filed within seconds, not
at the end of its lease.

While the database is unreachable (restarted, its backends terminated) a
round is retried with a short capped backoff (``waiting.through_outages``);
the claims a failed round left are given back to the queue at the next,
uncounted, and the owner lock, which the server dropped with its
connection, is taken again, so the worker is back at work within seconds
of the database's return without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from replygate import metrics
from replygate.config import Settings
from replygate.core.filing import Filing, Outcome, Prepared
from replygate.logs import get_logger
from replygate.store import claim_owners, dialect, inbound
from replygate.store.db import bound_engine, close_reads, snapshot_reads
from replygate.workers.waiting import first_of, through_outages

log = get_logger("replygate.engine")

# How often a running engine looks for claims of workers that are gone.
TAKE_BACK_SECONDS = 2.0

# What one batch takes at most: a batch's own statements (the claim, the reads
# before deciding, the commit) cost about as much as filing ten replies, so a
# backlog is filed in large batches; the runs of at most ``BATCH_THREADS``
# threads, so that another worker beside this one finds threads of its own
# to file rather than only later replies of these; and at most
# ``BATCH_BYTES`` of raw mail in memory (at least one mail).
BATCH_MAILS = 100
BATCH_THREADS = 20
BATCH_BYTES = 8 * 1024 * 1024


class InboundWorker:
    """Processes the inbound queue. Safe to run many of, on many hosts."""

    def __init__(self, factory: sessionmaker[Session], settings: Settings) -> None:
        self.factory = factory
        self.settings = settings
        self.filing = Filing(factory, settings)
        self.peek = snapshot_reads(factory)
        self.owner: str | None = None  # set while ``run`` holds the owner lock
        self._release: Callable[[], None] | None = None  # lets go of the owner lock
        self._next_take_back = 0.0
        self._stranded = False  # a round failed on the store: its claims wait for nobody

    # -- the loop ---------------------------------------------------------------------------

    async def run(
        self,
        stop: asyncio.Event,
        *,
        notified: asyncio.Event | None = None,
        wake: asyncio.Event | None = None,
    ) -> None:
        """Process until ``stop`` is set; when the queue is empty, wait for a wake-up or a poll.

        ``notified`` is set after a batch that filed a reply (and so wrote its
        notifications to the outbox): the outbound worker of this process waits
        on it, and delivers without waiting for its next poll. ``wake`` is set
        by whoever queued mail in this process (the gateway's writer); on
        PostgreSQL a listener for ``inbound.CHANNEL`` sets it too.
        """
        wake = wake or asyncio.Event()
        owner = claim_owners.owner_id()

        async def mark_alive() -> Callable[[], None]:
            return await asyncio.to_thread(claim_owners.hold_owner, self.factory, owner)

        try:  # a database away just after start-up is waited out like one later
            self._release = await through_outages(mark_alive, stop, part="engine")
        except Exception as exc:
            if stop.is_set() and dialect.unreachable(exc):
                return  # stopped before the database came back: nothing was claimed
            raise
        self.owner = owner
        listener = None
        url = _listen_url(self.factory)
        if url is not None:
            listener = asyncio.create_task(listen_for_mail(url, wake, stop))
        try:
            while not stop.is_set():
                wake.clear()  # set again during the batch: the next one starts at once
                try:
                    outcomes = await through_outages(self._round, stop, part="engine")
                except Exception as exc:  # keep the worker alive; the row's status tells
                    if not dialect.unreachable(exc):  # (an outage ends only at a stop)
                        log.exception("engine.loop_error")
                    outcomes = []
                if notified is not None and any(o.message_id is not None for o in outcomes):
                    notified.set()  # from the loop's thread: asyncio.Event is not thread-safe
                if not outcomes:
                    await first_of(stop, wake, timeout=self.settings.worker_poll_seconds)
        finally:
            self.close()
            if listener is not None:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener
            self.owner = None
            release, self._release = self._release, None
            if release is not None:
                release()

    async def _round(self) -> list[Outcome]:
        """One batch in a thread; a failed one leaves claims ``_run_batch`` gives back."""
        try:
            return await asyncio.to_thread(self._run_batch)
        except Exception:
            self._stranded = self.owner is not None
            raise

    def run_once(self, limit: int = BATCH_MAILS) -> int:
        """Claim and process up to ``limit`` mails; returns how many were processed."""
        return len(self._run_batch(limit))

    def _run_batch(self, limit: int = BATCH_MAILS) -> list[Outcome]:
        """Claim and process up to ``limit`` mails; returns their outcomes.

        A claimed batch holds a run of each thread's replies in arrival order
        (the claim takes none past an undecided earlier one), and the whole
        batch is decided and filed in one transaction, in that order: one
        commit and a handful of statements per mail instead of a transaction
        each. If that transaction fails for any reason, it rolls back whole
        and each mail is processed again in its own transaction, in order, so
        one bad mail never holds back the rest.
        """
        self._recover()
        self._take_back_dead()
        if self.peek is not None and not inbound.any_claimable(
            self.peek, lease_seconds=self.settings.worker_lease_seconds
        ):
            return []
        claimed = inbound.claim_mail(
            self.factory,
            limit=limit,
            lease_seconds=self.settings.worker_lease_seconds,
            owner=self.owner,
            threads=BATCH_THREADS,
            max_bytes=BATCH_BYTES,
        )
        if not claimed:
            return []
        started = time.perf_counter()
        prepared: list[Prepared | Exception] = []
        for mail in claimed:
            try:
                prepared.append(
                    self.filing.prepare(mail.raw, mail_from=mail.mail_from, rcpt=mail.rcpt)
                )
            except Exception as exc:  # recorded on the row with the batch
                prepared.append(exc)
        try:
            outcomes = self.filing.write_batch(claimed, prepared)
        except Exception as exc:
            log.warning(
                "engine.batch_failed", size=len(claimed), error=f"{type(exc).__name__}: {exc}"
            )
            outcomes = self.filing.process_each(claimed)
            _count(outcomes, prepared, time.perf_counter() - started)
            return outcomes
        took = time.perf_counter() - started
        _count(outcomes, prepared, took)
        ms = round(took * 1000, 1)
        for outcome in outcomes:
            # Why it was decided stays on the queue row (``queue explain``), with the mail:
            # a reason may quote it (an attachment's name, a header).
            log.info(
                "inbound.processed",
                queue_id=outcome.inbound_id,
                status=outcome.status,
                message=outcome.message_id,
                batch=len(claimed),
                ms=ms,
            )
        return outcomes

    def _recover(self) -> None:
        """After a round that failed on the store: mark this worker alive again if the
        mark was lost with its connection, and give back the claims the round left."""
        if not self._stranded or self.owner is None:
            return
        self._hold_again()
        given = claim_owners.give_back(self.factory, self.owner)
        self._stranded = False
        if given:
            log.warning("engine.given_back", count=len(given), queue_ids=given[:20])

    def _hold_again(self) -> None:
        """Hold the owner lock again when the server dropped it (restarted, or the
        backend terminated); otherwise other workers would take back every claim."""
        assert self.owner is not None
        if claim_owners.owner_alive(self.factory, self.owner):
            return
        if self._release is not None:
            self._release()
        self._release = claim_owners.hold_owner(self.factory, self.owner)
        log.info("engine.owner_held_again", owner=self.owner)

    def _take_back_dead(self) -> None:
        """While running as an owner: take back the claims of dead owners, at most
        every ``TAKE_BACK_SECONDS`` (the first batch does it at once)."""
        if self.owner is None or time.monotonic() < self._next_take_back:
            return
        self._next_take_back = time.monotonic() + TAKE_BACK_SECONDS
        self._hold_again()
        taken = claim_owners.take_back_dead(self.factory)
        if taken:
            log.warning("engine.taken_back", count=len(taken), queue_ids=taken[:20])

    def process(self, inbound_id: int, *, released: bool = False) -> Outcome:
        """Decide one claimed mail now (``queue release`` and ``queue replay``)."""
        return self.filing.process(inbound_id, released=released)

    def close(self) -> None:
        """Let go of the snapshot reads (SQLite); the worker may still be used after."""
        close_reads(self.peek)

    def drain(self) -> int:
        """Process until the queue is empty (tests and the ``worker --once`` command)."""
        total = 0
        while n := self.run_once():
            total += n
        return total

    # -- one mail ---------------------------------------------------------------------------


def _count(outcomes: list[Outcome], prepared: list[Prepared | Exception], seconds: float) -> None:
    """Record a batch in the metrics, when they are on."""
    found = metrics.instruments()
    if found is None:
        return
    found.engine_batch.observe(seconds)
    for outcome in outcomes:
        found.inbound_processed.labels(outcome.status).inc()
    for item in prepared:
        if isinstance(item, Prepared):
            if item.extract_seconds is not None:
                found.extraction.observe(item.extract_seconds)
            if item.verdict.kind == "bounce":
                found.bounces.inc()


LISTEN_RETRY_SECONDS = 1.0
LISTEN_RETRY_MAX_SECONDS = 30.0


def _listen_url(factory: sessionmaker[Session]) -> str | None:
    """A libpq URL for the listener when ``factory`` is bound to PostgreSQL; else None."""
    return dialect.listen_url(bound_engine(factory))


async def listen_for_mail(url: str, wake: asyncio.Event, stop: asyncio.Event) -> None:
    """Set ``wake`` at every notification on ``inbound.CHANNEL`` until ``stop`` is set.

    A connection of its own, in autocommit, waited on by the event loop (no
    thread). When it fails (the server restarted, the backend was
    terminated) the loss is logged once, polling carries on, and connecting
    is retried with backoff; once listening again ``wake`` is set, since mail
    queued meanwhile notified nobody.
    """
    import psycopg  # the PostgreSQL driver; not needed on SQLite

    delay, lost = LISTEN_RETRY_SECONDS, False
    while not stop.is_set():
        try:
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                await conn.execute(f"LISTEN {inbound.CHANNEL}")
                if lost:
                    log.info("engine.listening_again", channel=inbound.CHANNEL)
                delay, lost = LISTEN_RETRY_SECONDS, False
                wake.set()
                async for _ in conn.notifies():
                    wake.set()
        except Exception as exc:  # psycopg.Error, OSError; never let the worker go down
            if not lost:
                log.warning(
                    "engine.listen_lost",
                    channel=inbound.CHANNEL,
                    error=f"{type(exc).__name__}: {exc}",
                    fallback="polling",
                )
            lost = True
        await first_of(stop, None, timeout=delay)
        delay = min(delay * 2, LISTEN_RETRY_MAX_SECONDS)
