"""Bounces for our notifications: mark the recipient's address failing, and
suppress further notifications after repeated hard bounces.

A bounce names its notification through the VERP envelope recipient
(``bounces+<id>@<reply domain>``) or, failing that, our Message-ID inside the
returned headers; either leads to the outbox row and so to the person.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from replygate.config import Settings
from replygate.mail.classify import BounceReport, verp_notification_id
from replygate.mail.compose import message_id_for
from replygate.store.models import AddressStatus, OutboxMessage, User


def record_bounce(
    session: Session, report: BounceReport, *, rcpt: str, settings: Settings
) -> dict[str, object]:
    """Apply one bounce to the address it concerns; returns what was done, for the record."""
    notification_id = verp_notification_id(rcpt, settings.reply_domain) or report.notification_id
    if not notification_id:
        return {"matched": False, "why": "the bounce names none of our notifications"}
    # Equality, not LIKE: an id may hold "_", which LIKE reads as a wildcard.
    message_id = message_id_for(notification_id, settings.reply_domain)
    row = session.scalars(
        select(OutboxMessage).where(OutboxMessage.header_message_id == message_id)
    ).first()
    if row is None or row.user_id is None:
        return {"matched": False, "notification": notification_id}
    user = session.get(User, row.user_id)
    if user is None:
        return {"matched": False, "notification": notification_id}
    hard = (report.status or "5").startswith("5")
    if hard:
        user.bounce_count += 1
        user.address_status = (
            AddressStatus.SUPPRESSED
            if user.bounce_count >= settings.bounce_suppress_after
            else AddressStatus.FAILING
        )
    return {
        "matched": True,
        "notification": notification_id,
        "user": user.email,
        "hard": hard,
        "address_status": user.address_status,
        "bounce_count": user.bounce_count,
    }
