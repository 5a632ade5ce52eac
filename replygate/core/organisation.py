"""The organisation's settings as a page shows them, and its name.

Convenience Mode is switched by ``Messaging.set_convenience_mode``, which
also voids reply tokens; here is only what is safe to read and rename.
Callers own the transaction: each function takes a ``Session``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from replygate.errors import Invalid
from replygate.store import directory

MAX_NAME = 200


@dataclass(frozen=True)
class OrganisationView:
    name: str
    convenience_mode: bool
    acknowledged_by: str | None
    acknowledged_at: datetime | None


def view(session: Session, default_name: str) -> OrganisationView:
    org = directory.organisation(session, default_name=default_name)
    return OrganisationView(
        name=org.name,
        convenience_mode=org.convenience_mode,
        acknowledged_by=org.hipaa_acknowledged_by,
        acknowledged_at=org.hipaa_acknowledged_at,
    )


def rename(session: Session, name: str, default_name: str) -> None:
    """Give the organisation a new name, kept to one line."""
    name = " ".join(name.split())[:MAX_NAME]
    if not name:
        raise Invalid("the organisation needs a name")
    directory.organisation(session, default_name=default_name).name = name
