"""Portal accounts: argon2 password hashes, login with throttling, session tags.

Failed logins are rows in the store (``login_attempts``), not process memory,
so every portal process sharing the database throttles the same guesser.
Callers own the transaction: each function takes a ``Session``.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import ColumnElement, delete, func, select
from sqlalchemy.orm import Session

from replygate.errors import Invalid
from replygate.store import directory
from replygate.store.models import LoginAttempt, User, utcnow

MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 1024
THROTTLE_WINDOW = timedelta(minutes=15)
MAX_FAILURES_PER_ACCOUNT = 5
MAX_FAILURES_PER_ADDRESS = 30
FORGET_AFTER = timedelta(days=1)

_hasher = PasswordHasher()
# Verified against when the account does not exist, so a wrong email costs
# the same time as a wrong password and does not reveal who has an account.
_DUMMY_HASH = _hasher.hash("replygate: no such account")


@dataclass(frozen=True)
class LoginResult:
    """What a login attempt came to: a user, a refusal, or a throttle."""

    user: User | None
    throttled: bool = False
    retry_after: int = 0


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def check_password_rules(password: str) -> None:
    """Refuse passwords too short to resist guessing (or absurdly long)."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise Invalid(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise Invalid(f"a password has at most {MAX_PASSWORD_LENGTH} characters")


def set_password(session: Session, email: str, password: str) -> None:
    """Set a user's portal password (used by ``replygate users set-password``).

    Raises ``NotFound`` for an unknown email and ``Invalid`` for a weak
    password. Sessions signed with the old password stop working, because
    their tag (see ``session_tag``) covers the hash.
    """
    check_password_rules(password)
    user = directory.user(session, email)
    user.password_hash = hash_password(password)
    session.flush()


def session_tag(user: User, secret_key: str) -> str:
    """A short MAC over the user's id and password hash, kept in the session cookie.

    Changing the password changes the tag, which logs out every other session.
    """
    material = f"{user.id}:{user.password_hash or ''}".encode()
    return hmac.new(secret_key.encode(), material, hashlib.sha256).hexdigest()[:32]


def tag_matches(user: User, secret_key: str, tag: str) -> bool:
    return hmac.compare_digest(session_tag(user, secret_key), tag)


def session_user(session: Session, user_id: int, tag: str, secret_key: str) -> User | None:
    """The user a session cookie names, or None once they are gone or their password changed."""
    user = session.get(User, user_id)
    if user is None or not tag_matches(user, secret_key, tag):
        return None
    return user


def authenticate(
    session: Session, email: str, password: str, *, address: str, now: datetime | None = None
) -> LoginResult:
    """Check a login, refusing outright while the account or address is throttled.

    A throttled attempt does not verify the password at all, so guessing
    continues to learn nothing until the window has passed.
    """
    now = now or utcnow()
    email = directory.normalise_email(email)[:320]
    address = (address or "unknown")[:64]
    since = now - THROTTLE_WINDOW
    by_account = _failures(session, LoginAttempt.email == email, since)
    by_address = _failures(session, LoginAttempt.address == address, since)
    if by_account >= MAX_FAILURES_PER_ACCOUNT or by_address >= MAX_FAILURES_PER_ADDRESS:
        return LoginResult(user=None, throttled=True, retry_after=int(THROTTLE_WINDOW.seconds))

    user = directory.find_user(session, email)
    stored = user.password_hash if user is not None else None
    ok = _verify(stored or _DUMMY_HASH, password) and stored is not None
    if not ok:
        session.add(LoginAttempt(email=email, address=address, attempted_at=now))
        session.execute(delete(LoginAttempt).where(LoginAttempt.attempted_at < now - FORGET_AFTER))
        session.flush()
        return LoginResult(user=None)
    assert user is not None and stored is not None
    session.execute(delete(LoginAttempt).where(LoginAttempt.email == email))
    if _hasher.check_needs_rehash(stored):
        user.password_hash = hash_password(password)
    session.flush()
    return LoginResult(user=user)


def _verify(stored: str, password: str) -> bool:
    if len(password) > MAX_PASSWORD_LENGTH:
        return False
    try:
        return _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


def _failures(session: Session, condition: ColumnElement[bool], since: datetime) -> int:
    count = session.scalar(
        select(func.count(LoginAttempt.id)).where(condition, LoginAttempt.attempted_at >= since)
    )
    return count or 0
