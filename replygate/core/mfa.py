"""Two-factor login: TOTP codes (RFC 6238, ``pyotp``) and single-use recovery codes.

Who must enrol is the organisation's ``mfa_required`` (staff and admins by
default, ``settings mfa require``); anyone may enrol. Enrolment keeps a new
secret as pending until the first code made from it is given, so a secret
that never reached an authenticator never locks its owner out. A code is
accepted once: the 30-second step it belongs to is remembered, and a code of
that step or an earlier one is refused, so a code seen over a shoulder is
worth nothing after it was used. Recovery codes are random, shown once, kept
only as SHA-256 hashes, and each works once. The code step counts failures
with the password step (``accounts.must_wait``), so it is throttled alike.
Callers own the transaction.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import pyotp
import segno
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from replygate.core import accounts
from replygate.errors import Invalid
from replygate.store.models import MfaRequirement, RecoveryCode, User, UserRole, utcnow

STEP_SECONDS = 30
RECOVERY_CODES = 10
_RECOVERY_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i to misread
_RECOVERY_LENGTH = 12  # about 59 bits each
MAX_CODE_CHARS = 64


class SecondStep(StrEnum):
    """What a login needs after the password."""

    CODE = "code"  # enrolled: a TOTP or recovery code
    ENROL = "enrol"  # required but not enrolled yet: enrol first


def enrolled(user: User) -> bool:
    """Whether ``user`` has a second factor, known without opening the sealed secret: a
    secret that does not open fails the code step (``SealBroken``), never skips it."""
    return user.mfa_secret_sealed is not None


def second_step(user: User, requirement: str) -> SecondStep | None:
    if enrolled(user):
        return SecondStep.CODE
    if required(user, requirement):
        return SecondStep.ENROL
    return None


def required(user: User, requirement: str) -> bool:
    if requirement == MfaRequirement.ALL:
        return True
    if requirement == MfaRequirement.STAFF:
        return user.role in (UserRole.STAFF, UserRole.ADMIN)
    return False


@dataclass(frozen=True)
class Enrolment:
    """What enrolment shows once: the secret, its ``otpauth://`` URI and a QR code of it."""

    secret: str
    uri: str
    qr_svg: str


def begin_enrolment(user: User, issuer: str) -> Enrolment:
    """A new pending secret for ``user`` (replacing any earlier pending one).

    Someone enrolled already cannot enrol again this way, or a stolen password
    would let the thief enrol their own phone: an operator resets it first.
    """
    _not_enrolled(user)
    user.mfa_pending_secret = pyotp.random_base32()
    return enrolment_of(user, issuer)


def enrolment_of(user: User, issuer: str) -> Enrolment:
    """The pending secret as the enrolment page shows it (``Invalid`` if there is none)."""
    secret = user.mfa_pending_secret
    if not secret:
        raise Invalid("no enrolment was started; start again")
    uri = pyotp.TOTP(secret).provisioning_uri(name=user.email, issuer_name=issuer)
    svg = segno.make(uri, error="m").svg_inline(scale=4, dark="#111", light="#fff")
    return Enrolment(secret=secret, uri=uri, qr_svg=svg)


def finish_enrolment(
    session: Session, user: User, code: str, now: datetime | None = None
) -> list[str]:
    """Enrol with the first code of the pending secret; the recovery codes, shown once."""
    _not_enrolled(user)
    secret = user.mfa_pending_secret
    if not secret:
        raise Invalid("no enrolment was started; start again")
    step = _matching_step(secret, code, now or utcnow(), after=None)
    if step is None:
        raise Invalid("that code does not match; check the time on your phone and try again")
    user.mfa_secret, user.mfa_pending_secret = secret, None
    user.mfa_enrolled_at, user.mfa_last_step = now or utcnow(), step
    return new_recovery_codes(session, user)


def _not_enrolled(user: User) -> None:
    if enrolled(user):
        raise Invalid("a second factor is set up already; an operator can reset it")


def enrol_now(session: Session, user: User, issuer: str) -> tuple[Enrolment, list[str]]:
    """An operator's enrolment: the secret is live at once (its URI is printed once)."""
    user.mfa_pending_secret = pyotp.random_base32()
    shown = enrolment_of(user, issuer)
    user.mfa_secret, user.mfa_pending_secret = shown.secret, None
    user.mfa_enrolled_at, user.mfa_last_step = utcnow(), None
    return shown, new_recovery_codes(session, user)


def new_recovery_codes(session: Session, user: User) -> list[str]:
    session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user.id))
    codes = [
        "".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(_RECOVERY_LENGTH))
        for _ in range(RECOVERY_CODES)
    ]
    session.add_all(RecoveryCode(user_id=user.id, code_hash=_hash(c)) for c in codes)
    session.flush()
    return [f"{c[:4]}-{c[4:8]}-{c[8:]}" for c in codes]


def reset(session: Session, user: User) -> None:
    """Forget the second factor: the next login enrols again (when required)."""
    user.mfa_secret = user.mfa_pending_secret = None
    user.mfa_enrolled_at = user.mfa_last_step = None
    session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user.id))


@dataclass(frozen=True)
class CodeResult:
    ok: bool
    throttled: bool = False
    retry_after: int = 0
    recovery: bool = False  # a recovery code was used (one fewer left)


def check_code(
    session: Session, user: User, code: str, *, address: str, now: datetime | None = None
) -> CodeResult:
    """A TOTP code (each accepted once) or an unused recovery code, throttled with logins."""
    now = now or utcnow()
    address = (address or "unknown")[:64]
    wait = accounts.must_wait(session, user.email, address, now)
    if wait:
        return CodeResult(ok=False, throttled=True, retry_after=wait)
    secret = user.mfa_secret  # sealed: one that does not open raises, logged
    if secret and len(code) <= MAX_CODE_CHARS:
        step = _matching_step(secret, code, now, after=user.mfa_last_step)
        if step is not None:
            user.mfa_last_step = step
            accounts.forget_failures(session, user.email, address)
            return CodeResult(ok=True)
        if _use_recovery_code(session, user, code, now):
            accounts.forget_failures(session, user.email, address)
            return CodeResult(ok=True, recovery=True)
    accounts.count_failure(session, user.email, address, now)
    return CodeResult(ok=False)


def _matching_step(secret: str, code: str, now: datetime, *, after: int | None) -> int | None:
    """The step (now, or one either side for clock drift) whose code ``code`` is, if later
    than ``after``."""
    typed = "".join(code.split())
    if not (typed.isdigit() and len(typed) == 6):
        return None
    totp = pyotp.TOTP(secret)
    current = int(now.timestamp()) // STEP_SECONDS
    for step in (current - 1, current, current + 1):
        if after is not None and step <= after:
            continue
        if hmac.compare_digest(totp.at(step * STEP_SECONDS), typed):
            return step
    return None


def _use_recovery_code(session: Session, user: User, code: str, now: datetime) -> bool:
    typed = "".join(ch for ch in code.lower() if ch.isalnum())
    if len(typed) != _RECOVERY_LENGTH:
        return False
    found = session.scalars(
        select(RecoveryCode).where(
            RecoveryCode.user_id == user.id,
            RecoveryCode.code_hash == _hash(typed),
            RecoveryCode.used_at.is_(None),
        )
    ).first()
    if found is None:
        return False
    found.used_at = now
    return True


def recovery_codes_left(session: Session, user: User) -> int:
    return len(
        session.scalars(
            select(RecoveryCode.id).where(
                RecoveryCode.user_id == user.id, RecoveryCode.used_at.is_(None)
            )
        ).all()
    )


def _hash(code: str) -> str:
    return hashlib.sha256(b"replygate-recovery:" + code.encode()).hexdigest()
