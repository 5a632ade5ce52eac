"""The outbox: notifications waiting for delivery, claimed by outbound workers.

Life of a row::

    queued ──claim──▶ sending ──▶ sent
      ▲                  │ ├────▶ failed      (permanent error, or attempts used up)
      └──── retry ───────┘ └─(lease expires: the worker died)─▶ claimable again

While a row is ``sending``, ``next_attempt_at`` holds the end of the claim's
lease: a row whose lease has passed is due again, so a worker that dies
mid-delivery delays a notification but never loses it. ``attempts`` counts
claims and doubles as a fencing token: a worker whose lease was taken over
finds its ``mark_*`` call matching no row, and so cannot overwrite the result
of the worker that holds the row now.

Several workers on several hosts share the table: on PostgreSQL the claim
selects with ``FOR UPDATE SKIP LOCKED``, so two claimers never take the same
row and never wait for each other; SQLite takes its write lock at ``BEGIN``
(see ``db.py``), so its claims simply run one after another.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol, cast

from sqlalchemy import Table, case, func, insert, literal, select, tuple_, update
from sqlalchemy.orm import Session, sessionmaker

from replygate.store import deferred_writes, sealed
from replygate.store.db import transaction, updated
from replygate.store.directory import TRANSACTION_CACHE
from replygate.store.keyring import SealBroken
from replygate.store.models import OutboxMessage, utcnow

# Per transaction (see ``directory.TRANSACTION_CACHE``): the threads prefetched,
# and (thread id, user id) → the header Message-ID of the latest notification.
_LATEST = TRANSACTION_CACHE + "outbox.latest"
# Per transaction: the rows added with ``flush=False`` and not yet inserted.
_PENDING = TRANSACTION_CACHE + "outbox.pending"

# Error texts are kept for operators, not whole SMTP transcripts.
MAX_ERROR_LENGTH = 2000


class ComposedLike(Protocol):
    """What ``add`` needs of a composed notification (``outbound.compose.ComposedMail``)."""

    @property
    def raw(self) -> bytes: ...
    @property
    def message_id(self) -> str: ...
    @property
    def envelope_from(self) -> str: ...
    @property
    def recipient(self) -> str: ...


@dataclass(frozen=True)
class Claimed:
    """One outbox row taken by a worker: a plain value, detached from any session.

    ``attempts`` includes this claim; pass the object back to ``mark_*``.
    """

    id: int
    kind: str
    recipient: str
    envelope_from: str
    header_message_id: str
    raw: bytes
    attempts: int
    created_at: datetime | None = None  # when it was queued: the delivery lag starts there


def add(
    session: Session,
    composed: ComposedLike,
    *,
    kind: str,
    user_id: int | None,
    thread_id: int | None,
    message_id: int | None,
    now: datetime | None = None,
    status: str = "queued",
    last_error: str | None = None,
    flush: bool = True,
) -> OutboxMessage:
    """Queue a notification in the caller's transaction (no commit), due at once.

    ``message_id`` is the ``messages.id`` that caused it; the header Message-ID
    comes from ``composed``. ``flush=False`` leaves the row to the transaction's
    next flush or its commit, which insert the rows of many in one Core
    statement (``write_pending``): the row returned is then not in the session
    and has no id, which no caller of that form asks for.
    """
    now = now or utcnow()
    row = OutboxMessage(
        kind=kind,
        recipient=composed.recipient,
        user_id=user_id,
        thread_id=thread_id,
        message_id=message_id,
        envelope_from=composed.envelope_from,
        header_message_id=composed.message_id,
        raw=composed.raw,  # sealed as it is set (``store.sealed``)
        status=status,
        last_error=last_error,
        attempts=0,
        created_at=now,
        next_attempt_at=now,
    )
    if flush:
        session.add(row)
        session.flush()
    else:
        stored = {name: getattr(row, key) for key, name in _COLUMNS}
        session.info.setdefault(_PENDING, []).append(stored)
    latest = session.info.get(_LATEST)
    if latest is not None and thread_id in latest[0]:
        latest[1][(thread_id, user_id)] = composed.message_id
    return row


_COLUMNS = deferred_writes.stored_columns(OutboxMessage)


@deferred_writes.register("outbox")
def write_pending(session: Session) -> None:
    """Insert the rows added with ``flush=False`` since the last time, in one statement
    (no ids read back: PostgreSQL's driver sends them in one pipelined round trip)."""
    rows = session.info.pop(_PENDING, None)
    if rows:
        session.connection().execute(insert(OutboxMessage), rows)


def prefetch_latest(session: Session, thread_ids: Iterable[int]) -> None:
    """Load, in one statement, what ``latest_header_message_id`` answers for these threads."""
    wanted = set(thread_ids)
    if not wanted:
        return
    threads, latest = session.info.setdefault(_LATEST, (set(), {}))
    newest = (
        select(func.max(OutboxMessage.id))
        .where(OutboxMessage.thread_id.in_(wanted))
        .group_by(OutboxMessage.thread_id, OutboxMessage.user_id)
    )
    rows = session.execute(
        select(
            OutboxMessage.thread_id, OutboxMessage.user_id, OutboxMessage.header_message_id
        ).where(OutboxMessage.id.in_(newest.scalar_subquery()))
    )
    for thread_id in wanted - threads:
        threads.add(thread_id)
    for thread_id, user_id, header in rows:
        latest.setdefault((thread_id, user_id), header)


def latest_header_message_id(session: Session, thread_id: int, user_id: int) -> str | None:
    """The header Message-ID of the newest notification to ``user_id`` about the thread.

    The next one names it in In-Reply-To, so the recipient's mail client threads them.
    """
    cached = session.info.get(_LATEST)
    if cached is not None and thread_id in cached[0]:
        return cached[1].get((thread_id, user_id))
    return session.scalars(
        select(OutboxMessage.header_message_id)
        .where(OutboxMessage.thread_id == thread_id, OutboxMessage.user_id == user_id)
        .order_by(OutboxMessage.id.desc())
        .limit(1)
    ).first()


# The Core table, for the statements that bypass the ORM. A declarative class's
# ``__table__`` is a Table; SQLAlchemy types the attribute as any FromClause.
_OUTBOX = cast(Table, OutboxMessage.__table__)


def any_due(factory: sessionmaker[Session], *, now: datetime) -> bool:
    """Whether ``claim_due`` would find a row, read without claiming anything.

    For SQLite's idle polls: with a factory of ``db.make_read_engine`` the
    read takes no write lock, where an empty claim would queue for it behind
    every writer (and sleep in SQLite's busy handler) only to find nothing.
    """
    table = _OUTBOX
    with factory() as session:
        found = session.connection().execute(
            select(table.c.id)
            .where(table.c.status.in_(("queued", "sending")), table.c.next_attempt_at <= now)
            .limit(1)
        )
        return found.first() is not None


def claim_due(
    factory: sessionmaker[Session], *, limit: int, now: datetime, lease_seconds: float
) -> list[Claimed]:
    """Take up to ``limit`` due rows for delivery and commit the claim.

    Due means ``queued`` with ``next_attempt_at <= now``, or ``sending`` whose
    lease has run out. Each claimed row becomes ``sending`` with a lease of
    ``lease_seconds`` and one more attempt.
    """
    lease_until = now + timedelta(seconds=lease_seconds)
    table = _OUTBOX
    # SKIP LOCKED is PostgreSQL's; SQLAlchemy leaves FOR UPDATE out on SQLite,
    # where BEGIN IMMEDIATE already serialises the whole transaction. Core
    # statements, one select and one update per batch: workers poll this often.
    stmt = (
        select(
            table.c.id,
            table.c.kind,
            table.c.recipient,
            table.c.envelope_from,
            table.c.header_message_id,
            table.c.row_uid,
            table.c.raw,
            table.c.attempts,
            table.c.created_at,
        )
        .where(
            table.c.status.in_(("queued", "sending")),
            table.c.next_attempt_at <= now,
        )
        .order_by(table.c.next_attempt_at, table.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    with transaction(factory) as session:
        conn = session.connection()
        claimed: list[Claimed] = []
        broken: list[int] = []
        for row in conn.execute(stmt):
            try:
                raw = sealed.unseal("outbox", "raw", row.row_uid, row.raw, row_id=row.id)
            except SealBroken:  # logged by unseal; the row fails where an operator sees it
                broken.append(row.id)
                continue
            claimed.append(
                Claimed(
                    id=row.id,
                    kind=row.kind,
                    recipient=row.recipient,
                    envelope_from=row.envelope_from,
                    header_message_id=row.header_message_id,
                    raw=raw,
                    attempts=row.attempts + 1,
                    created_at=row.created_at,
                )
            )
        if broken:
            conn.execute(
                update(table)
                .where(table.c.id.in_(broken))
                .values(status="failed", last_error=SEAL_BROKEN_ERROR)
            )
        if claimed:
            conn.execute(
                update(table)
                .where(table.c.id.in_([item.id for item in claimed]))
                .values(
                    status="sending", attempts=table.c.attempts + 1, next_attempt_at=lease_until
                )
            )
    return claimed


# The error of a notification whose stored content does not open (never sent empty).
SEAL_BROKEN_ERROR = (
    "its stored content does not open with the encryption keyring (wrong key, or the "
    "value was changed or moved from another row)"
)


def mark_sent(factory: sessionmaker[Session], item: Claimed, *, now: datetime) -> bool:
    """Record a delivery. False when the claim was lost to another worker."""
    return _finish(factory, item, status="sent", sent_at=now, last_error=None)


def mark_sent_many(
    factory: sessionmaker[Session], sent: Sequence[tuple[Claimed, datetime]]
) -> list[bool]:
    """Record deliveries, each with when it was delivered, in one transaction.

    Returns per delivery False when its claim was lost. One commit (on SQLite
    one turn of the single write lock) for a group of deliveries instead of
    one each; each row is fenced as in ``mark_sent``: only a row still
    ``sending`` under this claim's attempt count changes.
    """
    if not sent:
        return []
    table = _OUTBOX
    items = [item for item, _ in sent]
    times = {item.id: literal(at, table.c.sent_at.type) for item, at in sent}
    sent_at = (
        next(iter(times.values()))
        if len({at for _, at in sent}) == 1
        else case(times, value=table.c.id)
    )
    with transaction(factory) as session:
        # ``id IN`` beside the row-value match keeps the primary key index in play.
        owned = set(
            session.connection()
            .execute(
                update(table)
                .where(
                    table.c.id.in_([item.id for item in items]),
                    tuple_(table.c.id, table.c.attempts).in_(
                        [(item.id, item.attempts) for item in items]
                    ),
                    table.c.status == "sending",
                )
                .values(status="sent", sent_at=sent_at, last_error=None)
                .returning(table.c.id)
            )
            .scalars()
        )
    return [item.id in owned for item in items]


def mark_retry(
    factory: sessionmaker[Session], item: Claimed, *, error: str, next_attempt_at: datetime
) -> bool:
    """Put the row back in the queue until ``next_attempt_at``. False when the claim was lost."""
    return _finish(
        factory, item, status="queued", next_attempt_at=next_attempt_at, last_error=_clip(error)
    )


def mark_failed(factory: sessionmaker[Session], item: Claimed, *, error: str) -> bool:
    """Give up on the row, keeping the error for the operator. False when the claim was lost."""
    return _finish(factory, item, status="failed", last_error=_clip(error))


def list_outbox(
    session: Session,
    *,
    status: str | Sequence[str] | None = None,
    limit: int | None = 100,
) -> list[OutboxMessage]:
    """Rows for inspection, newest first, optionally of one or several statuses."""
    stmt = select(OutboxMessage).order_by(OutboxMessage.id.desc())
    if isinstance(status, str):
        stmt = stmt.where(OutboxMessage.status == status)
    elif status is not None:
        stmt = stmt.where(OutboxMessage.status.in_(tuple(status)))
    if limit is not None:
        stmt = stmt.limit(limit)
    return list(session.scalars(stmt))


def get(session: Session, outbox_id: int) -> OutboxMessage | None:
    return session.get(OutboxMessage, outbox_id)


def requeue(session: Session, outbox_ids: Sequence[int], *, now: datetime) -> int:
    """Queue ``failed`` rows again, due at once (an operator's replay). Returns the count."""
    if not outbox_ids:
        return 0
    result = updated(
        session,
        update(OutboxMessage)
        .where(OutboxMessage.id.in_(tuple(outbox_ids)), OutboxMessage.status == "failed")
        .values(status="queued", next_attempt_at=now, attempts=0)
        .execution_options(synchronize_session=False),
    )
    return int(result.rowcount or 0)


def requeue_failed(session: Session, *, now: datetime) -> int:
    """Queue every ``failed`` row again, due at once, in one statement. Returns the count."""
    result = updated(
        session,
        update(OutboxMessage)
        .where(OutboxMessage.status == "failed")
        .values(status="queued", next_attempt_at=now, attempts=0)
        .execution_options(synchronize_session=False),
    )
    return int(result.rowcount or 0)


def _finish(factory: sessionmaker[Session], item: Claimed, **values: object) -> bool:
    # Matching on attempts fences off a worker whose lease was taken over. A
    # Core UPDATE on the session's connection: one per delivered notification,
    # and the ORM's bulk-update machinery cost more than the statement itself.
    table = _OUTBOX
    with transaction(factory) as session:
        result = session.connection().execute(
            update(table)
            .where(
                table.c.id == item.id,
                table.c.status == "sending",
                table.c.attempts == item.attempts,
            )
            .values(**values)
        )
        return bool(result.rowcount)


def _clip(error: str) -> str:
    return error if len(error) <= MAX_ERROR_LENGTH else error[: MAX_ERROR_LENGTH - 1] + "…"
