"""Canned responses: named texts staff start a message from.

Names are unique and kept to one line; a response needs a body. Callers own
the transaction: each function takes a ``Session``.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from replygate.errors import Invalid, NotFound
from replygate.store.models import CannedResponse, utcnow

MAX_NAME = 200
MAX_SUBJECT = 500


@dataclass(frozen=True)
class Canned:
    id: int
    name: str
    subject: str
    body: str


def all_responses(session: Session) -> list[Canned]:
    """Every canned response, by name."""
    return [
        _record(c) for c in session.scalars(select(CannedResponse).order_by(CannedResponse.name))
    ]


def get(session: Session, canned_id: int) -> Canned:
    return _record(_row(session, canned_id))


def save(
    session: Session, *, canned_id: int | None, name: str, subject: str, body: str, author_id: int
) -> int:
    """Create (``canned_id`` None) or update a canned response; names are unique."""
    name = " ".join(name.split())[:MAX_NAME]
    subject = " ".join(subject.split())[:MAX_SUBJECT]
    if not name:
        raise Invalid("a canned response needs a name")
    if not body.strip():
        raise Invalid("a canned response needs a body")
    clash = session.scalars(select(CannedResponse.id).where(CannedResponse.name == name)).first()
    if clash is not None and clash != canned_id:
        raise Invalid(f"a canned response named {name!r} already exists")
    if canned_id is None:
        row = CannedResponse(name=name, created_by_id=author_id, body=body)
        session.add(row)
    else:
        row = _row(session, canned_id)
    row.name, row.subject, row.body, row.updated_at = name, subject or None, body, utcnow()
    session.flush()
    return row.id


def delete(session: Session, canned_id: int) -> None:
    session.delete(_row(session, canned_id))


def _row(session: Session, canned_id: int) -> CannedResponse:
    row = session.get(CannedResponse, canned_id)
    if row is None:
        raise NotFound(f"no canned response {canned_id}")
    return row


def _record(row: CannedResponse) -> Canned:
    return Canned(id=row.id, name=row.name, subject=row.subject or "", body=row.body)
