"""Routing: which thread and recipient an envelope recipient names, or why none.

The gateway calls this at RCPT time (refuse early, never backscatter) and the
engine again when filing. Routing comes only from the envelope recipient's
token, never from headers. Mail never starts a thread: an address without a
valid token is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from replygate.errors import (
    ConvenienceModeOff,
    NotAReplyAddress,
    TokenExpired,
    TokenRevoked,
    UnknownToken,
)
from replygate.mail import reply_token
from replygate.store import directory, tokens


@dataclass(frozen=True)
class Route:
    """A valid reply address resolved to its thread and the person it was issued to."""

    token: str
    token_id: int
    thread_id: int
    user_id: int
    user_email: str


def resolve(session: Session, rcpt: str, *, secret: str, reply_domain: str, now: datetime) -> Route:
    """Resolve ``rcpt`` or raise the ``InboundRefused`` subclass that says why not."""
    token = reply_token.token_from_address(rcpt, reply_domain)
    if token is None:
        raise NotAReplyAddress(f"{rcpt} is not a reply address of {reply_domain}")
    if not reply_token.is_authentic(secret, token):
        raise UnknownToken("the reply address is not one we issued")
    row = tokens.find(session, token)
    if row is None:
        raise UnknownToken("the reply address is not one we issued")
    if not directory.organisation(session).convenience_mode:
        raise ConvenienceModeOff("replies by email are switched off for this organisation")
    if row.revoked_at is not None:
        raise TokenRevoked("the reply address has been revoked")
    if row.expires_at <= now:
        raise TokenExpired("the reply address has expired")
    return Route(
        token=token,
        token_id=row.id,
        thread_id=row.thread_id,
        user_id=row.user_id,
        user_email=row.user.email,
    )
