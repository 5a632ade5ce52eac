"""The organisation's settings as a page shows them, its name, and its
read-receipt and reminder settings.

Convenience Mode is switched here (``switch_convenience``): on only with an
explicit HIPAA acknowledgement, recorded with who gave it and when; off
voids every reply address sent out. Callers own the transaction: each
function takes a ``Session``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from replygate.config import Settings
from replygate.core import audit
from replygate.errors import Invalid
from replygate.store import directory, tokens
from replygate.store.models import utcnow

MAX_NAME = 200
# A reminder later than this is no reminder; the column is an integer of seconds.
MAX_REMINDER_DELAY_SECONDS = 90 * 86_400
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
_DELAY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class OrganisationView:
    name: str
    convenience_mode: bool
    acknowledged_by: str | None
    acknowledged_at: datetime | None
    read_receipts_default: bool = False
    reminder_delay_seconds: int = 0

    @property
    def reminder_delay_hours(self) -> str:
        """The delay as the settings page's field shows it: ``24``, ``0.5``."""
        return f"{self.reminder_delay_seconds / 3600:.4f}".rstrip("0").rstrip(".")


def view(session: Session, default_name: str) -> OrganisationView:
    org = directory.organisation(session, default_name=default_name)
    return OrganisationView(
        name=org.name,
        convenience_mode=org.convenience_mode,
        acknowledged_by=org.hipaa_acknowledged_by,
        acknowledged_at=org.hipaa_acknowledged_at,
        read_receipts_default=org.read_receipts_default,
        reminder_delay_seconds=org.reminder_delay_seconds,
    )


def rename(session: Session, name: str, default_name: str) -> None:
    """Give the organisation a new name, kept to one line."""
    name = " ".join(name.split())[:MAX_NAME]
    if not name:
        raise Invalid("the organisation needs a name")
    directory.organisation(session, default_name=default_name).name = name


def set_read_receipts_default(session: Session, on: bool, default_name: str) -> None:
    """Whether "Tell me when it is read" starts ticked at compose and reply."""
    directory.organisation(session, default_name=default_name).read_receipts_default = on


def set_reminder_delay(session: Session, seconds: float, default_name: str) -> int:
    """After how long an unread message gets its one reminder (0: never); returns the
    seconds kept. Messages sent before keep the delay they were sent with."""
    if not 0 <= seconds <= MAX_REMINDER_DELAY_SECONDS:
        raise Invalid(
            f"the reminder delay must be between 0 (no reminders) and "
            f"{MAX_REMINDER_DELAY_SECONDS // 86_400} days"
        )
    kept = round(seconds)
    directory.organisation(session, default_name=default_name).reminder_delay_seconds = kept
    return kept


def parse_delay(text: str) -> float:
    """Seconds in ``90s``, ``30m``, ``24h``, ``2d`` or ``0``; ``Invalid`` otherwise."""
    if text.strip() == "0":
        return 0
    found = _DELAY.match(text)
    if found is None:
        raise Invalid(f"not a delay: {text!r} (write it as 90s, 30m, 24h, 2d, or 0 for none)")
    return float(found.group(1)) * _UNITS[found.group(2).lower()]


def switch_convenience(
    session: Session,
    settings: Settings,
    *,
    on: bool,
    acknowledged_by: str | None = None,
    acknowledge_hipaa: bool = False,
) -> int:
    """Switch Convenience Mode; returns how many reply tokens were voided (when off)."""
    org = directory.organisation(session, default_name=settings.organisation_name)
    now = utcnow()
    by = directory.find_user(session, acknowledged_by) if acknowledged_by else None
    detail: dict[str, str | int | bool | None]
    if on:
        if not acknowledge_hipaa:
            raise Invalid(
                "Convenience Mode puts message content in email; it needs an explicit "
                "HIPAA acknowledgement"
            )
        org.convenience_mode = True
        org.hipaa_acknowledged_by = acknowledged_by or "operator (command line)"
        org.hipaa_acknowledged_at = now
        voided, action = 0, audit.Action.CONVENIENCE_ON
        detail = {"acknowledged_by": org.hipaa_acknowledged_by}
    else:
        org.convenience_mode = False
        voided, action = tokens.revoke_all(session, now=now), audit.Action.CONVENIENCE_OFF
        detail = {"voided": voided}
    audit.record(
        session, settings, audit.who(by), action,
        object_kind=audit.ObjectKind.SETTING, detail=detail,
    )  # fmt: skip
    return voided
