"""Reply-address token codec (pure).

A token is 128 random bits plus a 40-bit HMAC tag over them, both in
lowercase base32 (34 characters): ``reply+<token>@<reply domain>`` is 40
octets of local part, inside the 64 allowed. The random part makes it
unguessable; the tag lets the gateway refuse a forged or mistyped token
without touching the database. Which thread and recipient a token names,
its expiry and revocation live in the store.

Logs name a token only by its ``fingerprint``: an HMAC under a key of its
own, so a log line lets an operator find the token (``tokens inspect``
shows the same fingerprint) but never lets its reader post as the client.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os

from replygate.mail.markers import TOKEN_LENGTH

LOCAL_PREFIX = "reply+"
RANDOM_BYTES = 16
TAG_BYTES = 5
_ALPHABET = frozenset("abcdefghijklmnopqrstuvwxyz234567")
FINGERPRINT_LENGTH = 12  # hex characters: 48 bits, enough to tell a day's tokens apart


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode("ascii").rstrip("=").lower()


def _tag(secret: str, random_part: str) -> str:
    mac = hmac.new(secret.encode(), b"reply-token:" + random_part.encode(), hashlib.sha256)
    return _b32(mac.digest()[:TAG_BYTES])


def new_token(secret: str, random_bytes: bytes | None = None) -> str:
    """A fresh token; ``random_bytes`` (16 bytes) only for tests."""
    raw = os.urandom(RANDOM_BYTES) if random_bytes is None else random_bytes
    if len(raw) != RANDOM_BYTES:
        raise ValueError(f"need {RANDOM_BYTES} random bytes")
    random_part = _b32(raw)
    return random_part + _tag(secret, random_part)


def is_authentic(secret: str, token: str) -> bool:
    """True when ``token`` is well-formed and its tag was made with ``secret``."""
    if len(token) != TOKEN_LENGTH or not set(token) <= _ALPHABET:
        return False
    random_part, tag = token[:26], token[26:]
    return hmac.compare_digest(tag, _tag(secret, random_part))


def reply_address(token: str, domain: str) -> str:
    return f"{LOCAL_PREFIX}{token}@{domain.lower()}"


def token_from_address(address: str, domain: str) -> str | None:
    """The token in ``reply+<token>@<domain>``, or ``None`` when the address is not one.

    Case is folded (some relays upper-case local parts) and angle brackets
    tolerated; the domain must be ours exactly.
    """
    addr = address.strip().strip("<>").strip().lower()
    local, at, addr_domain = addr.rpartition("@")
    if not at or addr_domain != domain.lower().rstrip("."):
        return None
    if not local.startswith(LOCAL_PREFIX):
        return None
    token = local[len(LOCAL_PREFIX) :]
    return token or None


@functools.lru_cache(maxsize=4)
def _fingerprint_key(secret: str) -> bytes:
    """The key of fingerprints: HMAC(secret, "log-fingerprint"), used for nothing else."""
    return hmac.new(secret.encode(), b"log-fingerprint", hashlib.sha256).digest()


def fingerprint(secret: str, token: str) -> str:
    """What logs show instead of ``token``: 12 hex characters of a keyed HMAC.

    One-way and keyed, so neither the token nor a guess at it can be had from
    a log; case is folded as ``token_from_address`` folds it.
    """
    mac = hmac.new(_fingerprint_key(secret), token.lower().encode(), hashlib.sha256)
    return mac.hexdigest()[:FINGERPRINT_LENGTH]
