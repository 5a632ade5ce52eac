"""The outbound worker: delivers due outbox rows through a transport.

Each round claims a batch (``store.outbox.claim_due``), delivers the mails
concurrently and records each outcome:

- delivered → ``sent``, after the transport has the mail durably (the Maildir
  file fsynced, the smarthost's 250), with ``sent_at`` the moment it had it.
  Deliveries that finish while an earlier group is being recorded are
  recorded together in the next transaction, so a batch costs a few commits,
  not one per mail, and none waits for the slowest;
- ``TransientDeliveryError`` → ``queued`` again after an exponential backoff
  with jitter, capped, until ``max_attempts`` claims have been used;
- ``PermanentDeliveryError``, attempts used up, or any unexpected error on the
  last attempt → ``failed`` with the error, for an operator to read and replay.

Database calls run in a thread (``asyncio.to_thread``) so the event loop that
also serves SMTP never waits on the database. Every delivery logs one
canonical line, ``outbox.delivery``, and never the mail's content; a
smarthost's error quoting our bounce address shows it as a fingerprint.

When idle the worker polls; an engine in the same process that has just
written notifications sets the ``wake`` event so they go out at once, and
polling remains for rows written by other processes.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from replygate import metrics
from replygate.logs import get_logger
from replygate.mail.redaction import redact
from replygate.store import dialect, outbox
from replygate.store.db import close_reads, snapshot_reads
from replygate.store.models import utcnow
from replygate.store.outbox import Claimed
from replygate.workers.transports import PermanentDeliveryError, TransientDeliveryError, Transport
from replygate.workers.waiting import first_of, through_outages

log = get_logger("replygate.outbound")

MAX_BACKOFF_SECONDS = 3600.0


def backoff_delay(
    attempt: int,
    base_seconds: float,
    *,
    cap_seconds: float = MAX_BACKOFF_SECONDS,
    rng: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based).

    ``base * 2**(attempt-1)``, capped, then "equal jitter": somewhere in the
    upper half of that, so retries of many mails that failed together (a
    smarthost outage) spread out, yet none comes back sooner than half the
    intended delay.
    """
    exponent = min(max(attempt - 1, 0), 32)
    delay = min(cap_seconds, base_seconds * 2**exponent)
    return delay / 2 + rng() * delay / 2


class OutboundWorker:
    """Delivers the outbox; one instance per process, any number of processes."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        transport: Transport,
        *,
        max_attempts: int,
        backoff_seconds: float,
        batch: int = 50,
        lease_seconds: float = 300,
        concurrency: int = 8,
        max_backoff_seconds: float = MAX_BACKOFF_SECONDS,
        clock: Callable[[], datetime] = utcnow,
        rng: Callable[[], float] = random.random,
        secret: str | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.factory = factory
        self.transport = transport
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self.batch = batch
        self.lease_seconds = lease_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.clock = clock
        self.rng = rng
        self.concurrency = concurrency
        self.secret = secret  # fingerprints addresses in log lines; without it they are hidden
        self.peek = snapshot_reads(factory)
        # Delivered while the database was away, so not yet marked sent: recorded
        # first thing next round, instead of sent again once their lease runs out.
        self._unrecorded: list[tuple[Claimed, datetime]] = []

    async def run_once(self) -> int:
        """Claim one batch of due mail and deliver it; returns how many were claimed."""
        await self._record_unrecorded()
        now = self.clock()
        if self.peek is not None and not await asyncio.to_thread(
            outbox.any_due, self.peek, now=now
        ):
            return 0
        claimed = await asyncio.to_thread(
            outbox.claim_due,
            self.factory,
            limit=self.batch,
            now=now,
            lease_seconds=self.lease_seconds,
        )
        if claimed:
            slots = asyncio.Semaphore(self.concurrency)
            sent = _GroupRecorder(self._mark_sent)
            results = await asyncio.gather(
                *(self._deliver_one(item, slots, sent) for item in claimed),
                return_exceptions=True,
            )
            for item, result in zip(claimed, results, strict=True):
                if isinstance(result, BaseException):
                    # Outcome not recorded (database away): the lease brings it back.
                    log.error("outbox.record_failed", outbox_id=item.id, error=repr(result))
        return len(claimed)

    async def run(
        self, stop: asyncio.Event, poll_seconds: float, *, wake: asyncio.Event | None = None
    ) -> None:
        """Deliver until ``stop`` is set, polling every ``poll_seconds`` when idle.

        A full batch goes straight on to the next, and so does a round after
        ``wake`` was set (by the engine of this process, having written
        notifications). While the database is unreachable the round is retried
        with a short capped backoff (``through_outages``), so the worker outlives
        outages; any other error in a round is logged and the round tried again
        after the poll interval.
        """
        try:
            while not stop.is_set():
                if wake is not None:
                    wake.clear()  # set again during the round: the next one starts at once
                try:
                    count = await through_outages(self.run_once, stop, part="outbox")
                except Exception as exc:
                    if not dialect.unreachable(exc):  # an outage ends only at a stop
                        log.exception("outbox.round_failed")
                    count = 0
                if count >= self.batch:
                    continue
                await first_of(stop, wake, timeout=poll_seconds)
        finally:
            self.close()

    def close(self) -> None:
        """Let go of the snapshot reads (SQLite); the worker may still be used after."""
        close_reads(self.peek)

    async def _mark_sent(self, sent: list[tuple[Claimed, datetime]]) -> list[bool]:
        return await asyncio.to_thread(outbox.mark_sent_many, self.factory, sent)

    async def _deliver_one(
        self, item: Claimed, slots: asyncio.Semaphore, sent: _GroupRecorder
    ) -> None:
        started = time.monotonic()
        fields: dict[str, object] = {
            "outbox_id": item.id,
            "kind": item.kind,
            "recipient": item.recipient,
            "message_id": item.header_message_id,
            "attempt": item.attempts,
            "transport": getattr(self.transport, "name", type(self.transport).__name__),
        }
        if item.attempts > self.max_attempts:
            # Claimed again and again without an outcome: workers keep dying on it.
            error = f"no outcome after {item.attempts - 1} claims; giving up"
            owned = await asyncio.to_thread(outbox.mark_failed, self.factory, item, error=error)
            self._log(fields, started, "failed", owned, error=error)
            return
        try:
            async with slots:  # the slot bounds deliveries; recording waits outside it
                started = time.monotonic()
                await self.transport.send(item)
        except PermanentDeliveryError as exc:
            error = str(exc)
            owned = await asyncio.to_thread(outbox.mark_failed, self.factory, item, error=error)
            self._log(fields, started, "failed", owned, error=error)
        except Exception as exc:
            # Transient, or a bug in a transport: neither should lose the mail at once.
            error = str(exc) if isinstance(exc, TransientDeliveryError) else repr(exc)
            await self._retry_or_fail(item, error, fields, started)
        else:
            at = self.clock()
            try:
                owned = await sent.record((item, at))
            except Exception as exc:
                if dialect.unreachable(exc):
                    self._unrecorded.append((item, at))
                raise
            self._log(fields, started, "sent", owned)
            found = metrics.instruments()
            if found is not None and owned and item.created_at is not None:
                found.delivery_lag.observe(max(0.0, (at - item.created_at).total_seconds()))

    async def _record_unrecorded(self) -> None:
        """Mark sent what was delivered while the database was away (kept if it still is)."""
        if not self._unrecorded:
            return
        pending, self._unrecorded = self._unrecorded, []
        try:
            owned = await self._mark_sent(pending)
        except Exception:
            self._unrecorded = pending + self._unrecorded
            raise
        for (item, _), ok in zip(pending, owned, strict=True):
            log.info("outbox.recorded_late", outbox_id=item.id, owned=ok)

    async def _retry_or_fail(
        self, item: Claimed, error: str, fields: dict[str, object], started: float
    ) -> None:
        if item.attempts >= self.max_attempts:
            error = f"gave up after {item.attempts} attempts: {error}"
            owned = await asyncio.to_thread(outbox.mark_failed, self.factory, item, error=error)
            self._log(fields, started, "failed", owned, error=error)
            return
        delay = backoff_delay(
            item.attempts, self.backoff_seconds, cap_seconds=self.max_backoff_seconds, rng=self.rng
        )
        next_at = self.clock() + timedelta(seconds=delay)
        owned = await asyncio.to_thread(
            outbox.mark_retry, self.factory, item, error=error, next_attempt_at=next_at
        )
        self._log(fields, started, "retry", owned, error=error, next_attempt_at=next_at.isoformat())

    def _log(
        self,
        fields: dict[str, object],
        started: float,
        outcome: str,
        owned: bool,
        **extra: object,
    ) -> None:
        duration_ms = round((time.monotonic() - started) * 1000, 1)
        if not owned:
            # Our lease ran out and another worker holds the row: its outcome counts.
            extra["lease_lost"] = True
        error = extra.get("error")
        if isinstance(error, str):
            extra["error"] = redact(self.secret, error)
        found = metrics.instruments()
        if found is not None and owned:
            found.delivery_attempts.labels(outcome).inc()
        level = log.info if outcome == "sent" else log.warning
        level("outbox.delivery", outcome=outcome, duration_ms=duration_ms, **fields, **extra)


class _GroupRecorder:
    """Records outcomes as they arrive, a group per transaction (group commit).

    The first outcome is recorded at once; those that arrive while its
    transaction runs wait and go together in the next one, and so on. Each
    outcome carries its own time, so waiting here never shifts what is recorded.
    """

    def __init__(
        self, record: Callable[[list[tuple[Claimed, datetime]]], Awaitable[Sequence[bool]]]
    ) -> None:
        self._record = record
        self._waiting: list[tuple[tuple[Claimed, datetime], asyncio.Future[bool]]] = []
        self._flushing: asyncio.Task[None] | None = None

    async def record(self, outcome: tuple[Claimed, datetime]) -> bool:
        """Record ``outcome``; returns whether its claim was still ours."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append((outcome, future))
        if self._flushing is None:
            self._flushing = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        try:
            while self._waiting:
                group, self._waiting = self._waiting, []
                try:
                    owned = await self._record([outcome for outcome, _ in group])
                except Exception as exc:
                    for _, future in group:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), ok in zip(group, owned, strict=True):
                    if not future.done():
                        future.set_result(ok)
        finally:
            self._flushing = None
