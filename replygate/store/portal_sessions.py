"""The ``portal_sessions`` table: rows found by the hash of a session id.

The rules (lifetimes, what an id looks like, when a row is touched) are the
domain's, in ``core.sessions``; callers own the transaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, Delete, delete, or_, select
from sqlalchemy.orm import Session

from replygate.store.models import PortalSession


def add(
    session: Session,
    *,
    id_hash: str,
    user_id: int,
    now: datetime,
    address: str,
    user_agent: str,
) -> PortalSession:
    row = PortalSession(
        id_hash=id_hash,
        user_id=user_id,
        created_at=now,
        last_seen_at=now,
        address=address,
        user_agent=user_agent,
    )
    session.add(row)
    session.flush()
    return row


def find(session: Session, id_hash: str) -> PortalSession | None:
    return session.scalars(select(PortalSession).where(PortalSession.id_hash == id_hash)).first()


def of_user(session: Session, user_id: int) -> list[PortalSession]:
    """A user's sessions, the most recently used first."""
    return list(
        session.scalars(
            select(PortalSession)
            .where(PortalSession.user_id == user_id)
            .order_by(PortalSession.last_seen_at.desc(), PortalSession.id.desc())
        )
    )


def remove(session: Session, id_hash: str) -> int:
    return _deleted(session, delete(PortalSession).where(PortalSession.id_hash == id_hash))


def remove_of_user(session: Session, user_id: int) -> int:
    return _deleted(session, delete(PortalSession).where(PortalSession.user_id == user_id))


def remove_expired(session: Session, *, idle_since: datetime, started_since: datetime) -> int:
    """Drop every row last seen before ``idle_since`` or created before ``started_since``."""
    return _deleted(
        session,
        delete(PortalSession).where(
            or_(PortalSession.last_seen_at < idle_since, PortalSession.created_at < started_since)
        ),
    )


def _deleted(session: Session, statement: Delete) -> int:
    result = cast("CursorResult[Any]", session.execute(statement))
    return result.rowcount or 0
