"""The inbound queue: raw mail committed before 250, claimed by engine workers.

Claiming commits a ``processing`` mark with a lease; a worker that dies leaves
the row to be reclaimed when the lease runs out, or replayed by an operator.
On PostgreSQL the claim uses ``FOR UPDATE SKIP LOCKED`` so any number of
workers on any number of hosts never take the same mail; SQLite serialises
writers itself (``BEGIN IMMEDIATE``, see ``db.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import Select, and_, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from replygate.errors import Invalid, NotFound
from replygate.store.models import INBOUND_STATUSES, InboundMail, utcnow

REPLAYABLE = ("failed", "processing", "rejected", "ignored", "held", "queued", "filed")


def enqueue(
    session: Session,
    *,
    mail_from: str,
    rcpt: str,
    raw: bytes,
    message_id: str | None,
    peer: str | None = None,
    decisions: list[dict] | None = None,
) -> InboundMail:
    """Add one accepted mail for one recipient (the caller commits)."""
    row = InboundMail(
        mail_from=mail_from,
        rcpt=rcpt,
        raw=raw,
        size=len(raw),
        message_id=message_id,
        peer=peer,
        status="queued",
        attempts=0,
        decisions=decisions or [],
    )
    session.add(row)
    session.flush()
    return row


def _claimable(now: datetime, lease: timedelta) -> Select[tuple[InboundMail]]:
    return (
        select(InboundMail)
        .where(
            or_(
                InboundMail.status == "queued",
                and_(InboundMail.status == "processing", InboundMail.claimed_at < now - lease),
            )
        )
        .order_by(InboundMail.id)
    )


def claim(
    factory: sessionmaker[Session],
    *,
    limit: int = 1,
    lease_seconds: float = 300,
    now: datetime | None = None,
) -> list[int]:
    """Mark up to ``limit`` claimable mails ``processing`` and return their ids."""
    now = now or utcnow()
    with factory() as session, session.begin():
        stmt = _claimable(now, timedelta(seconds=lease_seconds)).limit(limit)
        if session.bind.dialect.name == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True)
        rows = list(session.scalars(stmt))
        for row in rows:
            row.status = "processing"
            row.claimed_at = now
            row.attempts += 1
        return [row.id for row in rows]


def claim_one(factory: sessionmaker[Session], inbound_id: int) -> bool:
    """Claim one queued mail by id (an operator's replay); False if another worker has it."""
    with factory() as session, session.begin():
        result = session.execute(
            update(InboundMail)
            .where(InboundMail.id == inbound_id, InboundMail.status == "queued")
            .values(status="processing", claimed_at=utcnow(), attempts=InboundMail.attempts + 1)
        )
        return bool(result.rowcount)


def get(session: Session, inbound_id: int) -> InboundMail:
    row = session.get(InboundMail, inbound_id)
    if row is None:
        raise NotFound(f"no queued mail with id {inbound_id}")
    return row


def lock(session: Session, inbound_id: int) -> InboundMail:
    """The row, locked for this transaction on PostgreSQL (SQLite holds the write lock already)."""
    stmt = select(InboundMail).where(InboundMail.id == inbound_id)
    if session.bind.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    row = session.scalars(stmt).first()
    if row is None:
        raise NotFound(f"no queued mail with id {inbound_id}")
    return row


def record(row: InboundMail, status: str, reason: str | None, decision: dict | None = None) -> None:
    """Set the outcome and append to the decision history operators read."""
    if status not in INBOUND_STATUSES:
        raise ValueError(status)
    row.status = status
    row.reason = reason
    row.processed_at = utcnow()
    if decision is not None:
        row.decisions = [*(row.decisions or []), decision]


def list_mail(
    session: Session, *, status: str | None = None, limit: int = 100
) -> Sequence[InboundMail]:
    stmt = select(InboundMail).order_by(InboundMail.id.desc()).limit(limit)
    if status is not None:
        if status not in INBOUND_STATUSES:
            raise Invalid(f"status must be one of {', '.join(INBOUND_STATUSES)}")
        stmt = stmt.where(InboundMail.status == status)
    return session.scalars(stmt).all()


def requeue(session: Session, ids: Sequence[int]) -> list[int]:
    """Put mails back in the queue for the engine to process again."""
    done = []
    for inbound_id in ids:
        row = get(session, inbound_id)
        if row.raw is None:
            raise Invalid(f"mail {inbound_id} was purged; its raw bytes are gone")
        if row.status not in REPLAYABLE:
            raise Invalid(f"mail {inbound_id} is {row.status} and cannot be replayed")
        row.status = "queued"
        row.claimed_at = None
        row.decisions = [*(row.decisions or []), {"event": "replay", "at": utcnow().isoformat()}]
        done.append(inbound_id)
    return done


def failed_ids(session: Session) -> list[int]:
    return list(session.scalars(select(InboundMail.id).where(InboundMail.status == "failed")))
