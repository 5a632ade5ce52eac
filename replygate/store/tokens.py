"""Reply tokens as rows: which thread and recipient a token names, expiry, revocation."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session, joinedload

from replygate.store.db import updated
from replygate.store.directory import TRANSACTION_CACHE
from replygate.store.models import ReplyToken

# Per transaction (see ``directory.TRANSACTION_CACHE``): token → row or None,
# and thread id → its unrevoked rows in id order.
_BY_TOKEN = TRANSACTION_CACHE + "tokens.by_token"
_BY_THREAD = TRANSACTION_CACHE + "tokens.by_thread"


def prefetch(session: Session, tokens: Iterable[str]) -> list[ReplyToken]:
    """Load the rows of many tokens (with their people) in one statement for ``find``.

    The engine routes a whole batch of replies in one transaction.
    """
    wanted = set(tokens)
    rows = (
        list(
            session.scalars(
                select(ReplyToken)
                .where(ReplyToken.token.in_(wanted))
                .options(joinedload(ReplyToken.user))
            )
        )
        if wanted
        else []
    )
    cache: dict[str, ReplyToken | None] = session.info.setdefault(_BY_TOKEN, {})
    cache.update(dict.fromkeys(wanted))
    cache.update((row.token, row) for row in rows)
    return rows


def prefetch_threads(session: Session, thread_ids: Iterable[int]) -> None:
    """Load the unrevoked tokens of many threads in one statement for ``current``."""
    wanted = set(thread_ids)
    if not wanted:
        return
    cache: dict[int, list[ReplyToken]] = session.info.setdefault(_BY_THREAD, {})
    for thread_id in wanted:
        cache[thread_id] = []
    for row in session.scalars(
        select(ReplyToken)
        .where(ReplyToken.thread_id.in_(wanted), ReplyToken.revoked_at.is_(None))
        .order_by(ReplyToken.id)
    ):
        cache[row.thread_id].append(row)


def find(session: Session, token: str) -> ReplyToken | None:
    """The token's row with the person it names (routing needs both)."""
    cache = session.info.get(_BY_TOKEN)
    if cache is not None and token in cache:
        return cache[token]
    return session.scalars(
        select(ReplyToken).where(ReplyToken.token == token).options(joinedload(ReplyToken.user))
    ).first()


def current(
    session: Session, thread_id: int, user_id: int, *, now: datetime, min_remaining: timedelta
) -> ReplyToken | None:
    """A live token for (thread, user) that stays valid for at least ``min_remaining``."""
    cached = session.info.get(_BY_THREAD, {}).get(thread_id)
    if cached is not None:
        live = [
            row
            for row in cached
            if row.user_id == user_id
            and row.revoked_at is None
            and row.expires_at > now + min_remaining
        ]
        return live[-1] if live else None
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
    flush: bool = True,
) -> ReplyToken:
    """Issue a token; ``flush=False`` leaves the INSERT to the transaction's next flush."""
    row = ReplyToken(
        token=token, thread_id=thread_id, user_id=user_id, created_at=now, expires_at=expires_at
    )
    session.add(row)
    if flush:
        session.flush()
    cached = session.info.get(_BY_THREAD, {}).get(thread_id)
    if cached is not None:
        cached.append(row)
    found = session.info.get(_BY_TOKEN)
    if found is not None:
        found[token] = row
    return row


def _forget(session: Session) -> None:
    session.info.pop(_BY_TOKEN, None)
    session.info.pop(_BY_THREAD, None)


def revoke(session: Session, token: str, *, now: datetime) -> bool:
    _forget(session)
    result = updated(
        session,
        update(ReplyToken)
        .where(ReplyToken.token == token, ReplyToken.revoked_at.is_(None))
        .values(revoked_at=now),
    )
    return bool(result.rowcount)


def revoke_all(session: Session, *, now: datetime) -> int:
    """Void every outstanding token at once (Convenience Mode switched off)."""
    _forget(session)
    result = updated(
        session, update(ReplyToken).where(ReplyToken.revoked_at.is_(None)).values(revoked_at=now)
    )
    return int(result.rowcount or 0)
