"""The outbound worker: outcomes recorded, backoff scheduled, one log line per delivery."""

from __future__ import annotations

import asyncio
import mailbox
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, event, update
from sqlalchemy.orm import Session, sessionmaker
from structlog.testing import capture_logs

from replygate.mail.verp import bounce_address
from replygate.store import outbox
from replygate.store.db import transaction
from replygate.store.models import OutboxMessage
from replygate.store.outbox import Claimed
from replygate.workers.outbound import OutboundWorker, backoff_delay
from replygate.workers.transports import (
    MaildirTransport,
    MemoryTransport,
    PermanentDeliveryError,
    SmtpTransport,
    TransientDeliveryError,
    Transport,
)
from tests.helpers import BODY_WORDS, BOUNCE_KEY
from tests.integration.workers.support import (
    Smarthost,
    free_port,
    queue_mail,
    wait_until,
)

T0 = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
BASE = 30.0


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def worker(
    sessions: sessionmaker[Session], transport: Transport, clock: Clock, **kw: object
) -> OutboundWorker:
    options: dict[str, object] = dict(max_attempts=3, backoff_seconds=BASE, clock=clock)
    options.update(kw)
    # rng 0: the lower edge of the jitter, so scheduled times are exact.
    return OutboundWorker(sessions, transport, rng=lambda: 0.0, **options)  # type: ignore[arg-type]


def row(sessions: sessionmaker[Session], outbox_id: int) -> OutboxMessage:
    with sessions() as session:
        found = session.get(OutboxMessage, outbox_id)
        assert found is not None
        return found


def deliveries(logs: list[dict]) -> list[dict]:
    return [e for e in logs if e["event"] == "outbox.delivery"]


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    assert [backoff_delay(a, 30, rng=lambda: 0.0) for a in (1, 2, 3, 4)] == [15, 30, 60, 120]
    assert [backoff_delay(a, 30, rng=lambda: 1.0) for a in (1, 2, 3)] == [30, 60, 120]
    assert backoff_delay(50, 30, rng=lambda: 1.0) == 3600
    assert backoff_delay(10_000, 30, cap_seconds=600, rng=lambda: 0.5) == 450


def test_delivers_due_mail_and_logs_one_line_each(sessions: sessionmaker[Session]) -> None:
    ids = queue_mail(sessions, 3, now=T0)
    transport = MemoryTransport()
    clock = Clock()
    with capture_logs() as logs:
        assert asyncio.run(worker(sessions, transport, clock).run_once()) == 3
        assert asyncio.run(worker(sessions, transport, clock).run_once()) == 0
    assert sorted(m.id for m in transport.sent) == ids
    for oid in ids:
        r = row(sessions, oid)
        assert (r.status, r.attempts, r.sent_at) == ("sent", 1, T0)
    lines = deliveries(logs)
    assert sorted(e["outbox_id"] for e in lines) == ids
    assert {e["outcome"] for e in lines} == {"sent"}
    assert all("duration_ms" in e and e["transport"] == "memory" for e in lines)
    assert BODY_WORDS.split()[0] not in repr(logs)


def test_transient_errors_back_off_then_give_up(sessions: sessionmaker[Session]) -> None:
    """Each transient failure schedules the next try later than the one before;
    after max_attempts the row is failed with the last error, not retried forever."""
    [oid] = queue_mail(sessions, now=T0)
    transport = MemoryTransport(fail=lambda m: TransientDeliveryError("451 4.3.0 busy"))
    clock = Clock()
    w = worker(sessions, transport, clock, max_attempts=3)

    with capture_logs() as logs:
        assert asyncio.run(w.run_once()) == 1
        r = row(sessions, oid)
        assert (r.status, r.attempts, r.last_error) == ("queued", 1, "451 4.3.0 busy")
        assert r.next_attempt_at == T0 + timedelta(seconds=BASE / 2)

        assert asyncio.run(w.run_once()) == 0  # not due yet
        clock.now = r.next_attempt_at
        assert asyncio.run(w.run_once()) == 1
        r = row(sessions, oid)
        assert (r.status, r.attempts) == ("queued", 2)
        assert r.next_attempt_at == clock.now + timedelta(seconds=BASE)

        clock.now = r.next_attempt_at
        assert asyncio.run(w.run_once()) == 1
    r = row(sessions, oid)
    assert (r.status, r.attempts) == ("failed", 3)
    assert r.last_error == "gave up after 3 attempts: 451 4.3.0 busy"
    assert [e["outcome"] for e in deliveries(logs)] == ["retry", "retry", "failed"]
    clock.now += timedelta(days=30)
    assert asyncio.run(w.run_once()) == 0


def test_permanent_error_fails_at_once(sessions: sessionmaker[Session]) -> None:
    [oid] = queue_mail(sessions, now=T0)
    transport = MemoryTransport(fail=lambda m: PermanentDeliveryError("550 5.1.1 no such user"))
    asyncio.run(worker(sessions, transport, Clock()).run_once())
    r = row(sessions, oid)
    assert (r.status, r.attempts, r.last_error) == ("failed", 1, "550 5.1.1 no such user")


def test_unexpected_transport_error_is_retried_not_lost(sessions: sessionmaker[Session]) -> None:
    [oid] = queue_mail(sessions, now=T0)
    transport = MemoryTransport(fail=lambda m: RuntimeError("bug"))
    asyncio.run(worker(sessions, transport, Clock()).run_once())
    r = row(sessions, oid)
    assert (r.status, r.last_error) == ("queued", "RuntimeError('bug')")


def test_mail_of_a_dead_worker_is_delivered_after_its_lease(
    sessions: sessionmaker[Session],
) -> None:
    [oid] = queue_mail(sessions, now=T0)
    outbox.claim_due(sessions, limit=10, now=T0, lease_seconds=60)  # ...and the claimer dies
    transport = MemoryTransport()
    clock = Clock()
    w = worker(sessions, transport, clock, lease_seconds=60)
    assert asyncio.run(w.run_once()) == 0
    clock.now = T0 + timedelta(seconds=61)
    assert asyncio.run(w.run_once()) == 1
    assert [m.id for m in transport.sent] == [oid]
    assert (row(sessions, oid).status, row(sessions, oid).attempts) == ("sent", 2)


def test_mail_that_keeps_killing_workers_is_failed(sessions: sessionmaker[Session]) -> None:
    [oid] = queue_mail(sessions, now=T0)
    clock = Clock()
    for n in range(3):  # three claims, no outcome
        outbox.claim_due(sessions, limit=1, now=T0 + timedelta(hours=n), lease_seconds=60)
    clock.now = T0 + timedelta(hours=5)
    transport = MemoryTransport()
    asyncio.run(worker(sessions, transport, clock, max_attempts=3).run_once())
    assert transport.sent == []
    r = row(sessions, oid)
    assert r.status == "failed"
    assert "no outcome after 3 claims" in (r.last_error or "")


def test_run_delivers_until_stopped(sessions: sessionmaker[Session], tmp_path: Path) -> None:
    """The loop picks up mail queued while it runs, and stops promptly when told."""
    maildir = tmp_path / "outbox"

    async def scenario() -> None:
        stop = asyncio.Event()
        w = OutboundWorker(
            sessions, MaildirTransport(maildir), max_attempts=3, backoff_seconds=BASE
        )
        task = asyncio.create_task(w.run(stop, poll_seconds=0.02))
        await asyncio.to_thread(queue_mail, sessions, 2, now=datetime.now(UTC))
        await wait_until(lambda: len(list(maildir.glob("new/*"))) == 2)
        stop.set()
        await asyncio.wait_for(task, timeout=5)

    asyncio.run(scenario())
    assert len(mailbox.Maildir(maildir)) == 2
    with sessions() as session:
        assert {r.status for r in outbox.list_outbox(session)} == {"sent"}


def test_run_survives_a_failing_round(sessions: sessionmaker[Session]) -> None:
    calls = 0

    class Flaky(OutboundWorker):
        async def run_once(self) -> int:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise ConnectionError("database away")
            return await super().run_once()

    async def scenario() -> None:
        stop = asyncio.Event()
        w = Flaky(sessions, MemoryTransport(), max_attempts=3, backoff_seconds=BASE)
        task = asyncio.create_task(w.run(stop, poll_seconds=0.01))
        await wait_until(lambda: calls >= 3)
        stop.set()
        await asyncio.wait_for(task, timeout=5)

    with capture_logs() as logs:
        asyncio.run(scenario())
    assert any(e["event"] == "outbox.round_failed" for e in logs)


# --- recording deliveries in groups --------------------------------------------


def test_marking_a_group_sent_fences_rows_whose_lease_was_taken(
    sessions: sessionmaker[Session],
) -> None:
    """One transaction for the group, yet row by row: a row another worker
    claimed after our lease ran out is left to that worker, the others are sent."""
    a, b, c = queue_mail(sessions, 3, now=T0)
    stale = outbox.claim_due(sessions, limit=3, now=T0, lease_seconds=60)
    after_lease = T0 + timedelta(seconds=61)
    with transaction(sessions) as session:  # only b is left expired, so only b is taken over
        session.execute(
            update(OutboxMessage)
            .where(OutboxMessage.id.in_([a, c]))
            .values(next_attempt_at=T0 + timedelta(hours=1))
        )
    [fresh] = outbox.claim_due(sessions, limit=3, now=after_lease, lease_seconds=60)
    assert (fresh.id, fresh.attempts) == (b, 2)

    times = [after_lease + timedelta(milliseconds=n) for n in range(3)]
    assert outbox.mark_sent_many(sessions, list(zip(stale, times, strict=True))) == [
        True,
        False,
        True,
    ]
    assert [row(sessions, i).status for i in (a, b, c)] == ["sent", "sending", "sent"]
    assert [row(sessions, i).sent_at for i in (a, c)] == [times[0], times[2]]  # each its own
    assert outbox.mark_sent_many(sessions, [(fresh, after_lease)]) == [True]
    assert (row(sessions, b).status, row(sessions, b).attempts) == ("sent", 2)
    assert row(sessions, b).sent_at == after_lease
    assert outbox.mark_sent_many(sessions, [(fresh, after_lease)]) == [False]  # once only
    assert outbox.mark_sent_many(sessions, []) == []


def test_a_round_records_its_deliveries_in_one_transaction(
    sessions: sessionmaker[Session], engine: Engine
) -> None:
    """Deliveries that finish together are marked together: ten mails cost the
    claim's commit and one more, and still one log line each."""
    ids = queue_mail(sessions, 10, now=T0)
    commits = 0

    def count(_conn: object) -> None:
        nonlocal commits
        commits += 1

    event.listen(engine, "commit", count)
    try:
        with capture_logs() as logs:
            assert asyncio.run(worker(sessions, MemoryTransport(), Clock()).run_once()) == 10
    finally:
        event.remove(engine, "commit", count)
    assert commits == 2
    assert {row(sessions, i).status for i in ids} == {"sent"}
    assert sorted(e["outbox_id"] for e in deliveries(logs)) == ids
    assert not any("lease_lost" in e for e in deliveries(logs))


def test_sent_at_is_when_each_mail_was_delivered_not_when_it_was_recorded(
    sessions: sessionmaker[Session],
) -> None:
    ids = queue_mail(sessions, 3, now=T0)
    clock = Clock()

    def a_second_each(mail: Claimed) -> None:
        clock.now += timedelta(seconds=1)

    asyncio.run(worker(sessions, MemoryTransport(fail=a_second_each), clock).run_once())
    assert [row(sessions, i).sent_at for i in ids] == [T0 + timedelta(seconds=n) for n in (1, 2, 3)]


def test_a_lost_lease_is_reported_on_its_own_line(sessions: sessionmaker[Session]) -> None:
    """Another worker takes one row over while we deliver: its result stands,
    ours is not written, and our line for that row says the lease was lost."""
    a, b, c = queue_mail(sessions, 3, now=T0)

    def taken_over(mail: Claimed) -> None:
        if mail.id == b:  # what another worker's claim does to the row
            with transaction(sessions) as session:
                session.execute(
                    update(OutboxMessage)
                    .where(OutboxMessage.id == b)
                    .values(attempts=OutboxMessage.attempts + 1)
                )

    transport = MemoryTransport(fail=taken_over)
    with capture_logs() as logs:
        asyncio.run(worker(sessions, transport, Clock()).run_once())
    assert [row(sessions, i).status for i in (a, b, c)] == ["sent", "sending", "sent"]
    lost = {e["outbox_id"]: e.get("lease_lost", False) for e in deliveries(logs)}
    assert lost == {a: False, b: True, c: False}
    assert {e["outcome"] for e in deliveries(logs)} == {"sent"}


def test_a_slow_delivery_does_not_hold_back_recording_the_others(
    sessions: sessionmaker[Session],
) -> None:
    first, *others = queue_mail(sessions, 4, now=T0)
    release = asyncio.Event()

    class OneSlow(MemoryTransport):
        async def send(self, mail: Claimed) -> None:
            if mail.id == first:
                await release.wait()
            await super().send(mail)

    async def scenario() -> None:
        task = asyncio.create_task(worker(sessions, OneSlow(), Clock()).run_once())
        await wait_until(lambda: all(row(sessions, i).status == "sent" for i in others))
        assert row(sessions, first).status == "sending"
        release.set()
        assert await asyncio.wait_for(task, timeout=5) == 4

    asyncio.run(scenario())
    assert row(sessions, first).status == "sent"


def test_wake_delivers_without_waiting_for_the_poll(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    """Mail queued while the worker sleeps between polls goes out as soon as
    ``wake`` is set, well before a 30 s poll interval would bring it."""
    maildir = tmp_path / "outbox"

    class Counted(OutboundWorker):
        rounds = 0

        async def run_once(self) -> int:
            count = await super().run_once()
            self.rounds += 1
            return count

    async def scenario() -> None:
        stop, wake = asyncio.Event(), asyncio.Event()
        w = Counted(sessions, MaildirTransport(maildir), max_attempts=3, backoff_seconds=BASE)
        task = asyncio.create_task(w.run(stop, poll_seconds=30, wake=wake))
        await wait_until(lambda: w.rounds >= 1)  # idle now, until the poll 30 s on
        ids = await asyncio.to_thread(queue_mail, sessions, 2, now=datetime.now(UTC))
        wake.set()
        await wait_until(lambda: all(row(sessions, i).status == "sent" for i in ids), timeout=5)
        assert len(list(maildir.glob("new/*"))) == 2
        stop.set()
        await asyncio.wait_for(task, timeout=5)

    asyncio.run(scenario())
    with sessions() as session:
        assert {r.status for r in outbox.list_outbox(session)} == {"sent"}


def test_any_due_answers_what_a_claim_would_find(sessions: sessionmaker[Session]) -> None:
    assert outbox.any_due(sessions, now=T0) is False
    queue_mail(sessions, now=T0 + timedelta(minutes=1))
    assert outbox.any_due(sessions, now=T0) is False
    assert outbox.any_due(sessions, now=T0 + timedelta(minutes=1)) is True
    outbox.claim_due(sessions, limit=1, now=T0 + timedelta(minutes=1), lease_seconds=60)
    assert outbox.any_due(sessions, now=T0 + timedelta(seconds=90)) is False  # leased
    assert outbox.any_due(sessions, now=T0 + timedelta(minutes=3)) is True  # lease ran out


def test_an_idle_poll_on_sqlite_does_not_queue_for_the_write_lock(
    sessions: sessionmaker[Session], engine: Engine
) -> None:
    """While another connection holds SQLite's write lock (the gateway or the
    engine committing), a poll that finds nothing due returns at once."""
    if engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL claims skip locked rows; there is no database-wide lock")
    w = worker(sessions, MemoryTransport(), Clock())
    assert w.peek is not None
    with engine.connect() as writer:
        writer.exec_driver_sql("UPDATE outbox SET status = status")  # BEGIN IMMEDIATE: lock held
        started = time.monotonic()
        assert asyncio.run(w.run_once()) == 0
        assert time.monotonic() - started < 1  # the busy timeout is 30 s
        writer.rollback()


# --- against a real smarthost -------------------------------------------------


def smtp_worker(sessions: sessionmaker[Session], port: int, clock: Clock) -> OutboundWorker:
    transport = SmtpTransport("127.0.0.1", port, starttls=False, timeout=5)
    return worker(sessions, transport, clock)


def test_smtp_success(sessions: sessionmaker[Session], smarthost: Smarthost) -> None:
    [oid] = queue_mail(sessions, now=T0)
    with capture_logs() as logs:
        assert asyncio.run(smtp_worker(sessions, smarthost.port, Clock()).run_once()) == 1
    [got] = smarthost.handler.received
    assert got.mail_from == bounce_address("n0001abc", "reply.test", BOUNCE_KEY)
    assert got.rcpt_tos == ["client1@example.com"]
    assert row(sessions, oid).status == "sent"
    [line] = deliveries(logs)
    assert (line["outcome"], line["transport"]) == ("sent", "smtp")


def test_smtp_451_schedules_a_retry(sessions: sessionmaker[Session], smarthost: Smarthost) -> None:
    smarthost.handler.rcpt_reply = "451 4.3.0 Greylisted, try again later"
    [oid] = queue_mail(sessions, now=T0)
    clock = Clock()
    asyncio.run(smtp_worker(sessions, smarthost.port, clock).run_once())
    r = row(sessions, oid)
    assert (r.status, r.attempts) == ("queued", 1)
    assert r.next_attempt_at == T0 + timedelta(seconds=BASE / 2)
    assert "451" in (r.last_error or "")

    # The smarthost accepts the retry.
    smarthost.handler.rcpt_reply = None
    clock.now = r.next_attempt_at
    asyncio.run(smtp_worker(sessions, smarthost.port, clock).run_once())
    assert row(sessions, oid).status == "sent"
    assert len(smarthost.handler.received) == 1


def test_smtp_550_fails(sessions: sessionmaker[Session], smarthost: Smarthost) -> None:
    smarthost.handler.rcpt_reply = "550 5.1.1 No such user here"
    [oid] = queue_mail(sessions, now=T0)
    asyncio.run(smtp_worker(sessions, smarthost.port, Clock()).run_once())
    r = row(sessions, oid)
    assert r.status == "failed"
    assert "550 5.1.1 No such user here" in (r.last_error or "")


def test_smarthost_down_schedules_a_retry(sessions: sessionmaker[Session]) -> None:
    [oid] = queue_mail(sessions, now=T0)
    asyncio.run(smtp_worker(sessions, free_port(), Clock()).run_once())
    r = row(sessions, oid)
    assert (r.status, r.attempts) == ("queued", 1)
    assert r.next_attempt_at == T0 + timedelta(seconds=BASE / 2)
    assert "unavailable" in (r.last_error or "")


@pytest.mark.parametrize("workers", [2, 4])
def test_concurrent_workers_deliver_each_mail_once(
    sessions: sessionmaker[Session], smarthost: Smarthost, workers: int
) -> None:
    """Several workers over one outbox and one smarthost: every mail arrives exactly once."""
    queue_mail(sessions, 40, now=T0)

    async def scenario() -> None:
        clock = Clock()
        pool = [
            worker(
                sessions,
                SmtpTransport("127.0.0.1", smarthost.port, starttls=False, timeout=5),
                clock,
                batch=5,
            )
            for _ in range(workers)
        ]
        while sum(await asyncio.gather(*(w.run_once() for w in pool))):
            pass

    asyncio.run(scenario())
    recipients = [r.rcpt_tos[0] for r in smarthost.handler.received]
    assert sorted(recipients) == sorted(f"client{n}@example.com" for n in range(1, 41))
    with sessions() as session:
        assert {r.status for r in outbox.list_outbox(session, limit=None)} == {"sent"}
