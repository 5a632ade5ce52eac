"""How much waits in the inbound queue and the outbox, and since when: what the
metrics read from the database at scrape time, so any process serving them
sees the same figures."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from replygate.store.models import InboundMail, OutboxMessage


@dataclass(frozen=True)
class StatusCount:
    """The rows in one status, and when the oldest of them was written."""

    status: str
    count: int
    oldest: datetime | None


def inbound_by_status(session: Session) -> list[StatusCount]:
    """Inbound mail by status, with the oldest ``received_at`` of each (``min`` keeps the
    column's type, so it comes back timezone-aware on SQLite too)."""
    rows = session.execute(
        select(InboundMail.status, func.count(), func.min(InboundMail.received_at)).group_by(
            InboundMail.status
        )
    )
    return [StatusCount(status, count, oldest) for status, count, oldest in rows]


def outbox_by_status(session: Session) -> list[StatusCount]:
    """Notifications by status, with the oldest ``created_at`` of each."""
    rows = session.execute(
        select(OutboxMessage.status, func.count(), func.min(OutboxMessage.created_at)).group_by(
            OutboxMessage.status
        )
    )
    return [StatusCount(status, count, oldest) for status, count, oldest in rows]
