"""Portal sessions kept on the server: begun at login, ended by logout, by a new
password, by an operator, or by time.

The browser holds only a random id (256 bits from ``secrets``); the store
keeps its SHA-256, so a copy of the table names no live session and the
cookie names no user. A session ends ``session_idle_seconds`` after its last
request and ``session_max_seconds`` after it began, whatever happens; an
expired one is refused and removed. ``last_seen_at`` is written at most once
a minute (sooner for very short idle limits), not on every request. Callers
own the transaction, except for the two operator calls at the end, which
open their own.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.core import audit
from replygate.store import directory, portal_sessions
from replygate.store.db import transaction
from replygate.store.models import PortalSession, User, utcnow

ID_BYTES = 32
MAX_ID_CHARS = 100  # anything longer is no id of ours; refused before hashing
TOUCH_EVERY = timedelta(seconds=60)
FINGERPRINT_CHARS = 12
MAX_AGENT_CHARS = 200
MAX_ADDRESS_CHARS = 64


@dataclass(frozen=True)
class Lifetimes:
    """How long a session lives without a request (``idle``) and at all (``absolute``)."""

    idle: timedelta
    absolute: timedelta

    @classmethod
    def of(cls, settings: Settings) -> Lifetimes:
        return cls(
            idle=timedelta(seconds=settings.session_idle_seconds),
            absolute=timedelta(seconds=settings.session_max_seconds),
        )

    @property
    def touch_every(self) -> timedelta:
        """How stale ``last_seen_at`` may get: a fraction of the idle limit, at most a minute."""
        return min(TOUCH_EVERY, self.idle / 4)


@dataclass(frozen=True)
class SessionRow:
    """One live session as an operator sees it: never its id, only a fingerprint."""

    fingerprint: str
    created_at: datetime
    last_seen_at: datetime
    address: str
    user_agent: str


def digest(session_id: str) -> str:
    """What the store keeps of a session id."""
    return hashlib.sha256(session_id.encode("utf-8", "replace")).hexdigest()


def start(
    session: Session,
    user: User,
    lifetimes: Lifetimes,
    *,
    address: str,
    user_agent: str,
    now: datetime | None = None,
) -> str:
    """Begin a session for ``user``; returns the id for the cookie (shown nowhere else).

    Sessions of anyone that expired meanwhile are removed on the way.
    """
    now = now or utcnow()
    portal_sessions.remove_expired(
        session, idle_since=now - lifetimes.idle, started_since=now - lifetimes.absolute
    )
    session_id = secrets.token_urlsafe(ID_BYTES)
    portal_sessions.add(
        session,
        id_hash=digest(session_id),
        user_id=user.id,
        now=now,
        address=_printable(address, MAX_ADDRESS_CHARS) or "unknown",
        user_agent=_printable(user_agent, MAX_AGENT_CHARS),
    )
    return session_id


def resume(
    session: Session,
    session_id: str,
    lifetimes: Lifetimes,
    *,
    now: datetime | None = None,
    touch: bool = False,
) -> User | None:
    """The user of a live session, or None for an unknown, ended or expired one.

    ``touch`` restarts its idle time now (the "stay signed in" button) rather
    than at most once a ``touch_every``.
    """
    if not session_id or len(session_id) > MAX_ID_CHARS:
        return None
    now = now or utcnow()
    row = portal_sessions.find(session, digest(session_id))
    if row is None:
        return None
    if _expired(row, lifetimes, now):
        session.delete(row)
        session.flush()
        return None
    if touch or now - row.last_seen_at >= lifetimes.touch_every:
        row.last_seen_at = now
    return session.get(User, row.user_id)


def end(session: Session, session_id: str) -> None:
    """Log one session out (nothing happens for one that is gone already)."""
    if session_id and len(session_id) <= MAX_ID_CHARS:
        portal_sessions.remove(session, digest(session_id))


def end_all(session: Session, user_id: int) -> int:
    """Log a user out everywhere; returns how many sessions ended."""
    return portal_sessions.remove_of_user(session, user_id)


def listing(session: Session, user_id: int, lifetimes: Lifetimes) -> list[SessionRow]:
    """A user's live sessions, the most recently used first."""
    now = utcnow()
    return [
        SessionRow(
            fingerprint=row.id_hash[:FINGERPRINT_CHARS],
            created_at=row.created_at,
            last_seen_at=row.last_seen_at,
            address=row.address,
            user_agent=row.user_agent,
        )
        for row in portal_sessions.of_user(session, user_id)
        if not _expired(row, lifetimes, now)
    ]


# -- for operators ------------------------------------------------------------------------


def sessions_of(factory: sessionmaker[Session], settings: Settings, email: str) -> list[SessionRow]:
    """``replygate users sessions``: ``NotFound`` for an unknown address."""
    with transaction(factory) as session:
        return listing(session, directory.user(session, email).id, Lifetimes.of(settings))


def log_out_everywhere(factory: sessionmaker[Session], settings: Settings, email: str) -> int:
    """``replygate users logout``: end every session of the user; returns how many."""
    with transaction(factory) as session:
        user = directory.user(session, email)
        ended = end_all(session, user.id)
        audit.record(
            session, settings, audit.who(), audit.Action.SESSION_REVOKED,
            object_kind=audit.ObjectKind.USER, object_id=user.id, detail={"sessions": ended},
        )  # fmt: skip
        return ended


def _expired(row: PortalSession, lifetimes: Lifetimes, now: datetime) -> bool:
    return now - row.last_seen_at >= lifetimes.idle or now - row.created_at >= lifetimes.absolute


def _printable(text: str, limit: int) -> str:
    """Only printable characters (what a browser sends is read on operators' terminals)."""
    return "".join(c for c in text if c.isprintable())[:limit]
