"""Portal accounts: argon2 password hashes, and login with throttling.

Failed logins are rows in the store (``login_attempts``), not process memory,
so every portal process sharing the database throttles the same guesser.
They count per account *and client address*, and per address: an attacker's
failures slow that attacker down, never the account's owner logging in from
elsewhere, so nobody can lock anybody out. Past the allowance each further
attempt waits for a delay that doubles with every failure (1, 2, 4 …
minutes, at most an hour). The address is the peer's, or what a trusted
proxy says (``trusted_proxies``; the portal works it out). Sessions live in
``core.sessions``. Callers own the transaction: each function takes a
``Session``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import ColumnElement, delete, func, select
from sqlalchemy.orm import Session

from replygate.core import sessions
from replygate.errors import Invalid
from replygate.store import directory
from replygate.store.models import LoginAttempt, User, utcnow

MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 1024
MAX_FAILURES_PER_ACCOUNT = 5  # for one account from one address, in FORGET_AFTER
MAX_FAILURES_PER_ADDRESS = 30  # from one address for any accounts, in ADDRESS_WINDOW
ADDRESS_WINDOW = timedelta(hours=1)
FIRST_DELAY = timedelta(minutes=1)
MAX_DELAY = timedelta(hours=1)
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
    password. Every session of the user ends: whoever knew the old password
    is logged out.
    """
    check_password_rules(password)
    user = directory.user(session, email)
    user.password_hash = hash_password(password)
    sessions.end_all(session, user.id)
    session.flush()


def change_password(
    session: Session,
    email: str,
    current: str,
    new: str,
    *,
    address: str,
    now: datetime | None = None,
) -> LoginResult:
    """A person's own change of password, which needs the current one.

    The current password is checked (and throttled) as a login is; on
    success every session of the user ends, and the caller starts a new one
    for the browser that asked. Raises ``Invalid`` for a weak new password.
    """
    check_password_rules(new)
    result = authenticate(session, email, current, address=address, now=now)
    if result.user is not None:
        result.user.password_hash = hash_password(new)
        sessions.end_all(session, result.user.id)
        session.flush()
    return result


def authenticate(
    session: Session, email: str, password: str, *, address: str, now: datetime | None = None
) -> LoginResult:
    """Check a login, refusing outright while this address must wait for this account.

    A throttled attempt does not verify the password at all, so guessing
    continues to learn nothing until the delay has passed. A success forgets
    the failures of this account from this address.
    """
    now = now or utcnow()
    email = directory.normalise_email(email)[:320]
    address = (address or "unknown")[:64]
    retry_after = must_wait(session, email, address, now)
    if retry_after:
        return LoginResult(user=None, throttled=True, retry_after=retry_after)

    user = directory.find_user(session, email)
    stored = user.password_hash if user is not None else None
    ok = _verify(stored or _DUMMY_HASH, password) and stored is not None
    if not ok:
        count_failure(session, email, address, now)
        return LoginResult(user=None)
    assert user is not None and stored is not None
    forget_failures(session, email, address)
    if _hasher.check_needs_rehash(stored):
        user.password_hash = hash_password(password)
    session.flush()
    return LoginResult(user=user)


def must_wait(session: Session, email: str, address: str, now: datetime) -> int:
    """Seconds this address must wait before trying this account again (0: it may now).

    The password step and the second-factor step share the count.
    """
    waits = [
        _wait_until(
            session,
            (LoginAttempt.email == email) & (LoginAttempt.address == address),
            now - FORGET_AFTER,
            MAX_FAILURES_PER_ACCOUNT,
        ),
        _wait_until(
            session, LoginAttempt.address == address, now - ADDRESS_WINDOW, MAX_FAILURES_PER_ADDRESS
        ),
    ]
    until = max((w for w in waits if w is not None), default=None)
    if until is None or until <= now:
        return 0
    return math.ceil((until - now).total_seconds())


def count_failure(session: Session, email: str, address: str, now: datetime) -> None:
    session.add(LoginAttempt(email=email, address=address, attempted_at=now))
    session.execute(delete(LoginAttempt).where(LoginAttempt.attempted_at < now - FORGET_AFTER))
    session.flush()


def forget_failures(session: Session, email: str, address: str) -> None:
    session.execute(
        delete(LoginAttempt).where(LoginAttempt.email == email, LoginAttempt.address == address)
    )


def _verify(stored: str, password: str) -> bool:
    if len(password) > MAX_PASSWORD_LENGTH:
        return False
    try:
        return _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


def _wait_until(
    session: Session, condition: ColumnElement[bool], since: datetime, allowed: int
) -> datetime | None:
    """When the next attempt may come, once ``allowed`` failures since ``since`` are used up.

    Each failure past the allowance doubles the delay after the latest one.
    """
    query = select(func.count(LoginAttempt.id), func.max(LoginAttempt.attempted_at)).where(
        condition, LoginAttempt.attempted_at >= since
    )
    row = session.execute(query).one()
    count: int = row[0]
    latest: datetime | None = row[1]  # the column's type: aware UTC on every backend
    if count < allowed or latest is None:
        return None
    delay = min(FIRST_DELAY * (1 << min(count - allowed, 16)), MAX_DELAY)
    return latest + delay
