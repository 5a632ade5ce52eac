"""The outbox as a queue: claims, leases, fencing, and claimers that never share a row."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from replygate.mail.compose import compose
from replygate.store import outbox
from replygate.store.db import transaction
from replygate.store.models import OutboxMessage
from tests.integration.workers.support import notification, queue_mail

T0 = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
LEASE = 300


def status_of(sessions: sessionmaker[Session], outbox_id: int) -> OutboxMessage:
    with sessions() as session:
        row = session.get(OutboxMessage, outbox_id)
        assert row is not None
        return row


def test_add_writes_in_the_callers_transaction(sessions: sessionmaker[Session]) -> None:
    """``add`` flushes but never commits: a rolled-back cause leaves no notification."""
    composed = compose(notification(), now=T0)
    with sessions() as session:
        session.begin()
        row = outbox.add(
            session, composed, kind="content", user_id=None, thread_id=None, message_id=None
        )
        assert row.id is not None
        session.rollback()
    with sessions() as session:
        assert outbox.list_outbox(session) == []

    with transaction(sessions) as session:
        row = outbox.add(
            session,
            composed,
            kind="content",
            user_id=None,
            thread_id=None,
            message_id=None,
            now=T0,
        )
    stored = status_of(sessions, row.id)
    assert (stored.status, stored.attempts) == ("queued", 0)
    assert stored.raw == composed.raw
    assert stored.recipient == "client1@example.com"
    assert stored.envelope_from == composed.envelope_from
    assert stored.header_message_id == composed.message_id
    assert stored.next_attempt_at == T0


def test_claim_takes_due_rows_once(sessions: sessionmaker[Session]) -> None:
    [due] = queue_mail(sessions, now=T0)
    [later] = queue_mail(sessions, now=T0 + timedelta(hours=1))

    claimed = outbox.claim_due(sessions, limit=10, now=T0, lease_seconds=LEASE)
    assert [c.id for c in claimed] == [due]
    assert claimed[0].attempts == 1
    assert claimed[0].raw.startswith(b"From: ")
    row = status_of(sessions, due)
    assert row.status == "sending"
    assert row.next_attempt_at == T0 + timedelta(seconds=LEASE)

    # Claimed is claimed: nobody else takes it while the lease runs.
    assert (
        outbox.claim_due(sessions, limit=10, now=T0 + timedelta(seconds=10), lease_seconds=LEASE)
        == []
    )
    assert status_of(sessions, later).status == "queued"


def test_claim_respects_limit_and_order(sessions: sessionmaker[Session]) -> None:
    ids = queue_mail(sessions, 5, now=T0)
    first = outbox.claim_due(sessions, limit=2, now=T0, lease_seconds=LEASE)
    second = outbox.claim_due(sessions, limit=10, now=T0, lease_seconds=LEASE)
    assert [c.id for c in first] == ids[:2]
    assert [c.id for c in second] == ids[2:]


def test_expired_lease_makes_a_row_claimable_and_fences_the_old_claim(
    sessions: sessionmaker[Session],
) -> None:
    """A worker that died mid-delivery: its row comes back after the lease, and
    if it wakes up later its outcome no longer counts."""
    [oid] = queue_mail(sessions, now=T0)
    [stale] = outbox.claim_due(sessions, limit=1, now=T0, lease_seconds=LEASE)

    after_lease = T0 + timedelta(seconds=LEASE + 1)
    [fresh] = outbox.claim_due(sessions, limit=1, now=after_lease, lease_seconds=LEASE)
    assert fresh.id == oid
    assert fresh.attempts == 2

    assert outbox.mark_failed(sessions, stale, error="late") is False
    assert outbox.mark_sent(sessions, fresh, now=after_lease) is True
    row = status_of(sessions, oid)
    assert (row.status, row.sent_at, row.last_error) == ("sent", after_lease, None)
    assert (
        outbox.claim_due(sessions, limit=1, now=after_lease + timedelta(days=9), lease_seconds=1)
        == []
    )


def test_retry_and_failure_are_recorded(sessions: sessionmaker[Session]) -> None:
    a, b = queue_mail(sessions, 2, now=T0)
    ca, cb = outbox.claim_due(sessions, limit=2, now=T0, lease_seconds=LEASE)
    retry_at = T0 + timedelta(minutes=5)
    assert outbox.mark_retry(sessions, ca, error="451 try later", next_attempt_at=retry_at)
    assert outbox.mark_failed(sessions, cb, error="550 no such user" + "x" * 5000)

    ra, rb = status_of(sessions, a), status_of(sessions, b)
    assert (ra.status, ra.attempts, ra.last_error, ra.next_attempt_at) == (
        "queued",
        1,
        "451 try later",
        retry_at,
    )
    assert rb.status == "failed"
    assert rb.last_error is not None
    assert rb.last_error.startswith("550 no such user")
    assert len(rb.last_error) <= outbox.MAX_ERROR_LENGTH

    # Not due before its time, due after; a failed row is never claimed.
    assert (
        outbox.claim_due(
            sessions, limit=9, now=retry_at - timedelta(seconds=1), lease_seconds=LEASE
        )
        == []
    )
    assert [
        c.id for c in outbox.claim_due(sessions, limit=9, now=retry_at, lease_seconds=LEASE)
    ] == [a]


def test_list_and_requeue(sessions: sessionmaker[Session]) -> None:
    a, b, c = queue_mail(sessions, 3, now=T0)
    _, cb, _ = outbox.claim_due(sessions, limit=3, now=T0, lease_seconds=LEASE)
    outbox.mark_failed(sessions, cb, error="550")
    with sessions() as session:
        assert [r.id for r in outbox.list_outbox(session)] == [c, b, a]
        assert [r.id for r in outbox.list_outbox(session, status="failed")] == [b]
        assert [r.id for r in outbox.list_outbox(session, status=["failed", "sending"])] == [
            c,
            b,
            a,
        ]
        assert [r.id for r in outbox.list_outbox(session, limit=1)] == [c]
    with transaction(sessions) as session:
        assert outbox.requeue(session, [a, b], now=T0) == 1  # a is not failed
    row = status_of(sessions, b)
    assert (row.status, row.attempts) == ("queued", 0)


def test_concurrent_claimers_never_share_a_row(sessions: sessionmaker[Session]) -> None:
    """Several claimers racing over one queue (threads, each its own connection):
    every row is claimed exactly once."""
    ids = queue_mail(sessions, 120, now=T0)
    start = threading.Barrier(4)

    def claimer() -> list[int]:
        start.wait()
        mine: list[int] = []
        while batch := outbox.claim_due(sessions, limit=7, now=T0, lease_seconds=LEASE):
            mine.extend(c.id for c in batch)
        return mine

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: claimer(), range(4)))
    counts = Counter(i for r in results for i in r)
    assert sorted(counts) == ids
    assert set(counts.values()) == {1}


def test_claim_skips_rows_another_transaction_holds(
    engine: Engine, sessions: sessionmaker[Session]
) -> None:
    """PostgreSQL: a row locked by another claimer's open transaction is skipped
    at once (SKIP LOCKED), neither waited for nor taken twice."""
    if engine.dialect.name != "postgresql":
        pytest.skip("row locks are PostgreSQL's; SQLite serialises whole transactions")
    a, b, c = queue_mail(sessions, 3, now=T0)
    pool = ThreadPoolExecutor(1)
    try:
        with sessions() as holder, holder.begin():
            locked = holder.scalars(
                select(OutboxMessage).where(OutboxMessage.id == a).with_for_update()
            ).one()
            assert locked.id == a
            future = pool.submit(outbox.claim_due, sessions, limit=10, now=T0, lease_seconds=LEASE)
            try:
                claimed = future.result(timeout=10)
            except TimeoutError:
                pytest.fail("the claim waited for a locked row instead of skipping it")
            assert [x.id for x in claimed] == [b, c]
    finally:
        pool.shutdown(wait=True)  # after the holder's transaction ended, so never stuck
    # The lock is gone with its transaction: the row is claimable now.
    assert [x.id for x in outbox.claim_due(sessions, limit=10, now=T0, lease_seconds=LEASE)] == [a]
