"""The inbound queue as operators see it: listings, counts by status, and purging raw bytes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from replygate.errors import Invalid
from replygate.store import sealed
from replygate.store.db import updated
from replygate.store.keyring import SealBroken
from replygate.store.models import InboundMail, InboundStatus
from replygate.store.sealed import TEXT


def list_mail(
    session: Session,
    *,
    status: str | None = None,
    limit: int = 100,
    older_than: datetime | None = None,
    newer_than: datetime | None = None,
    sender: str | None = None,
    thread_id: int | None = None,
) -> Sequence[InboundMail]:
    stmt = select(InboundMail).order_by(InboundMail.id.desc()).limit(limit)
    if status is not None:
        if status not in set(InboundStatus):
            raise Invalid(f"status must be one of {', '.join(InboundStatus)}")
        stmt = stmt.where(InboundMail.status == status)
    if older_than is not None:
        stmt = stmt.where(InboundMail.received_at < older_than)
    if newer_than is not None:
        stmt = stmt.where(InboundMail.received_at >= newer_than)
    if sender:
        stmt = stmt.where(func.lower(InboundMail.mail_from) == sender.strip().lower())
    if thread_id is not None:
        stmt = stmt.where(InboundMail.thread_id == thread_id)
    return session.scalars(stmt).all()


def stats(session: Session) -> list[tuple[str, str | None, int]]:
    """Counts by (status, reason), largest first.

    A reason is sealed, so no two rows store the same bytes: the database counts
    the mail without one, and the rows with one are opened and counted here
    (filed mail, most of the queue, mostly has none).
    """
    counts: Counter[tuple[str, str | None]] = Counter()
    for status, n in session.execute(
        select(InboundMail.status, func.count())
        .where(InboundMail.reason_sealed.is_(None))
        .group_by(InboundMail.status)
    ):
        counts[(status, None)] += int(n)
    for row_id, status, row_uid, stored in session.execute(
        select(
            InboundMail.id, InboundMail.status, InboundMail.row_uid, InboundMail.reason_sealed
        ).where(InboundMail.reason_sealed.is_not(None))
    ):
        counts[(status, _reason(row_id, row_uid, stored))] += 1
    return [(status, reason, n) for (status, reason), n in counts.most_common()]


def _reason(row_id: int, row_uid: bytes | None, stored: bytes | None) -> str:
    try:
        assert row_uid is not None and stored is not None  # selected NOT NULL
        return TEXT.decode(sealed.unseal("inbound_mail", "reason", row_uid, stored, row_id=row_id))
    except SealBroken:
        return "(the stored reason does not open with the encryption keyring)"


FINAL = (
    InboundStatus.FILED,
    InboundStatus.REJECTED,
    InboundStatus.IGNORED,
    InboundStatus.FAILED,
)


def purge(session: Session, *, older_than: datetime) -> int:
    """Drop the raw bytes of finished mail received before ``older_than``.

    The queue row (envelope, status, decisions) and every filed message stay;
    queued, processing and held mail is never purged.
    """
    result = updated(
        session,
        update(InboundMail)
        .where(
            InboundMail.received_at < older_than,
            InboundMail.status.in_(FINAL),
            InboundMail.raw_sealed.is_not(None),
        )
        .values(raw_sealed=None),
    )
    return int(result.rowcount or 0)
