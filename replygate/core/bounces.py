"""Bounces for our notifications: mark the recipient's address failing, and
suppress further notifications after repeated hard bounces on different days.

A bounce counts only when all of this holds (anything else is recorded on
the queue row and changes nobody):

- it came to the signed VERP address of one of our notifications
  (``bounces+<id>-<mac>@<reply domain>``, ``mail.verp``); the notification
  named inside the returned headers is not trusted, since anyone can write it;
- the notification went to the person's current address;
- it is an RFC 3464 delivery report saying delivery to that address failed
  for good (``verp.hard_failure``).

``bounce_suppress_after`` hard bounces suppress the address, but only once
they fell on at least two different UTC days (as Discourse scores bounces):
a burst of reports in one minute, forged or from one bad night of the
recipient's server, leaves the address ``failing``. The day is the day the
bounce arrived (the queue row's ``received_at``), so a replay counts it on
the same day again.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from replygate.config import Settings
from replygate.mail.classify import BounceReport, verp_notification_id
from replygate.mail.compose import message_id_for
from replygate.mail.parse import ParsedMail
from replygate.mail.verp import bounce_key, hard_failure
from replygate.store.models import AddressStatus, OutboxMessage, User

MIN_BOUNCE_DAYS = 2
KEEP_BOUNCE_DAYS = 31  # days remembered per address; two are needed, the rest is for operators


def record_bounce(
    session: Session,
    report: BounceReport,
    mail: ParsedMail,
    *,
    rcpt: str,
    settings: Settings,
    at: datetime,
) -> dict[str, object]:
    """Apply one bounce to the address it concerns; returns what was done, for the record."""
    key = bounce_key(settings.secret_key)
    notification_id = verp_notification_id(rcpt, settings.reply_domain, key)
    if notification_id is None:
        return {
            "matched": False,
            "counted": False,
            "why": "not sent to a signed bounce address of ours",
            "claimed": report.notification_id,
        }
    # Equality, not LIKE: an id may hold "_", which LIKE reads as a wildcard.
    message_id = message_id_for(notification_id, settings.reply_domain)
    row = session.scalars(
        select(OutboxMessage).where(OutboxMessage.header_message_id == message_id)
    ).first()
    user = session.get(User, row.user_id) if row is not None and row.user_id is not None else None
    if row is None or user is None:
        return {"matched": False, "counted": False, "notification": notification_id}
    why = hard_failure(mail, row.recipient)
    if why is None and row.recipient.lower() != user.email.lower():
        why = f"the notification went to {row.recipient}, no longer this person's address"
    if why is None:
        _count(user, at.date().isoformat(), settings.bounce_suppress_after)
    record: dict[str, object] = {
        "matched": True,
        "counted": why is None,
        "notification": notification_id,
        "user": user.email,
        "hard": why is None,
        "address_status": user.address_status,
        "bounce_count": user.bounce_count,
        "bounce_days": len(user.bounce_days or []),
    }
    if why is not None:
        record["why"] = why
    return record


def _count(user: User, day: str, suppress_after: int) -> None:
    """One more hard bounce on ``day``: failing, or suppressed once both thresholds are met."""
    days = sorted({*(user.bounce_days or []), day})[-KEEP_BOUNCE_DAYS:]
    user.bounce_days = days  # a new list: SQLAlchemy sees a JSON column change on assignment
    user.bounce_count += 1
    suppress = user.bounce_count >= suppress_after and len(days) >= MIN_BOUNCE_DAYS
    user.address_status = AddressStatus.SUPPRESSED if suppress else AddressStatus.FAILING
