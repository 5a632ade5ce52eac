"""The inbound queue as operators see it: listings, counts by status, and purging raw bytes."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from replygate.errors import Invalid
from replygate.store.db import updated
from replygate.store.models import InboundMail, InboundStatus


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
    """Counts by (status, reason), largest first."""
    rows = session.execute(
        select(InboundMail.status, InboundMail.reason, func.count())
        .group_by(InboundMail.status, InboundMail.reason)
        .order_by(func.count().desc())
    ).all()
    return [(status, reason, int(n)) for status, reason, n in rows]


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
            InboundMail.raw.is_not(None),
        )
        .values(raw=None),
    )
    return int(result.rowcount or 0)
