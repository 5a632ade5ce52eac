"""Reply tokens as rows: which thread and recipient a token names, expiry, revocation."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session, joinedload

from replygate.store.models import ReplyToken


def find(session: Session, token: str) -> ReplyToken | None:
    """The token's row with the person it names (routing needs both)."""
    return session.scalars(
        select(ReplyToken).where(ReplyToken.token == token).options(joinedload(ReplyToken.user))
    ).first()


def current(
    session: Session, thread_id: int, user_id: int, *, now: datetime, min_remaining: timedelta
) -> ReplyToken | None:
    """A live token for (thread, user) that stays valid for at least ``min_remaining``."""
    return session.scalars(
        select(ReplyToken)
        .where(
            ReplyToken.thread_id == thread_id,
            ReplyToken.user_id == user_id,
            ReplyToken.revoked_at.is_(None),
            ReplyToken.expires_at > now + min_remaining,
        )
        .order_by(ReplyToken.id.desc())
        .limit(1)
    ).first()


def add(
    session: Session,
    token: str,
    thread_id: int,
    user_id: int,
    *,
    now: datetime,
    expires_at: datetime,
) -> ReplyToken:
    row = ReplyToken(
        token=token, thread_id=thread_id, user_id=user_id, created_at=now, expires_at=expires_at
    )
    session.add(row)
    session.flush()
    return row


def revoke(session: Session, token: str, *, now: datetime) -> bool:
    result = session.execute(
        update(ReplyToken)
        .where(ReplyToken.token == token, ReplyToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    return bool(result.rowcount)


def revoke_all(session: Session, *, now: datetime) -> int:
    """Void every outstanding token at once (Convenience Mode switched off)."""
    result = session.execute(
        update(ReplyToken).where(ReplyToken.revoked_at.is_(None)).values(revoked_at=now)
    )
    return int(result.rowcount or 0)
