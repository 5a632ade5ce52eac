"""Signed bounce addresses (VERP), and what a bounce to one must prove to count.

A notification goes out with the envelope sender
``bounces+<notification id>-<mac>@<reply domain>``: delivery reports come back
to it and name the notification that failed. Notification ids are not
secret (they are in every notification's Message-ID, and in the
In-Reply-To of every reply to it), so the address carries an HMAC of the id
under a key of its own, derived from the installation's secret: only we can
make an address that verifies, and a guessed or harvested id alone is
refused before anything is stored.

The MAC is 80 bits in lowercase base32 (16 characters): every guess costs an
SMTP command, so 80 bits are far out of reach, and ``bounces+`` plus a
20-character id, the dash and the MAC fit a local part (64 octets) with room
to spare. Our ids and the MAC are lowercase, so relays that fold the case of
local parts leave the address as it was.

Addresses of the old, unsigned form ``bounces+<id>@`` do not verify: anyone
could write them, so they are treated as unknown.

The second half is the rule for counting: only an RFC 3464 delivery report
(``multipart/report; report-type=delivery-status``) whose block for the
notification's recipient (Final-Recipient or Original-Recipient) says
``Action: failed`` with a ``5.x.x`` status is a hard bounce. Anything else a
null sender sends (a plain "undeliverable" text, a delay, a report about
somebody else) is recorded and not counted.

Pure: strings and the parsed mail in, answers out; ``hmac``/``hashlib`` for
the MAC and the email package for the report's fields.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from email import message_from_string
from email.message import Message
from email.utils import parseaddr
from typing import TYPE_CHECKING

from replygate.mail.markers import NOTIFICATION_ID, VERP_PREFIX

if TYPE_CHECKING:  # the record's type only
    from replygate.mail.parse import ParsedMail

MAC_BYTES = 10  # 80 bits: 16 base32 characters
MAC_LENGTH = 16
MAX_LOCAL_PART = 64  # RFC 5321 4.5.3.1.1
_SEPARATOR = "-"  # ids may hold "-" too; the MAC, which never does, is after the last one
_BASE32 = frozenset("abcdefghijklmnopqrstuvwxyz234567")


def bounce_key(secret: str) -> bytes:
    """The key that signs bounce addresses: HMAC(secret, "verp"), used for nothing else."""
    return hmac.new(secret.encode(), b"verp", hashlib.sha256).digest()


def _mac(key: bytes, notification_id: str) -> str:
    digest = hmac.new(key, notification_id.encode(), hashlib.sha256).digest()[:MAC_BYTES]
    return base64.b32encode(digest).decode("ascii").lower()


def bounce_address(notification_id: str, domain: str, key: bytes) -> str:
    """``bounces+<id>-<mac>@<domain>``; ``ValueError`` for a malformed id or a missing key."""
    if not key:
        raise ValueError("a bounce address needs its signing key")
    if not NOTIFICATION_ID.fullmatch(notification_id):
        raise ValueError(f"notification id is not url-safe or too long: {notification_id!r}")
    local = f"{VERP_PREFIX}{notification_id}{_SEPARATOR}{_mac(key, notification_id)}"
    if len(local) > MAX_LOCAL_PART:
        raise ValueError(f"notification id too long for a bounce address: {notification_id!r}")
    return f"{local}@{domain.lower()}"


def _after_prefix(address: str, domain: str) -> str | None:
    """What follows ``bounces+`` in an address of ``domain``, or ``None`` for any other address.

    The prefix and the domain are compared case-insensitively, angle brackets
    and a display name tolerated.
    """
    value = address or ""
    addr = parseaddr(value)[1] or value.strip().strip("<>")
    local, at, addr_domain = addr.rpartition("@")
    if not at or addr_domain.lower().rstrip(".") != (domain or "").strip().lower().rstrip("."):
        return None
    if not local.lower().startswith(VERP_PREFIX):
        return None
    return local[len(VERP_PREFIX) :]


def is_bounce_address(address: str, domain: str) -> bool:
    """Whether ``address`` claims to be one of our bounce addresses (signed or not)."""
    return _after_prefix(address, domain) is not None


def _split(address: str, domain: str) -> tuple[str, str] | None:
    """(id, mac) of an address of the signed shape, neither checked against the key."""
    rest = _after_prefix(address, domain)
    if rest is None:
        return None
    ident, sep, mac = rest.rpartition(_SEPARATOR)
    if not sep or len(mac) != MAC_LENGTH or not set(mac.lower()) <= _BASE32:
        return None
    if not NOTIFICATION_ID.fullmatch(ident):
        return None
    return ident, mac.lower()


def claimed_notification_id(address: str, domain: str) -> str | None:
    """The id a signed-shape bounce address names, NOT verified: for the record only."""
    parts = _split(address, domain)
    return parts[0] if parts else None


def verified_notification_id(address: str, domain: str, key: bytes) -> str | None:
    """The notification id of ``address`` when its MAC was made with ``key``, else ``None``."""
    parts = _split(address, domain)
    if parts is None or not key:
        return None
    ident, mac = parts
    return ident if hmac.compare_digest(mac, _mac(key, ident)) else None


# -- what counts as a hard bounce ------------------------------------------------------------


def hard_failure(mail: ParsedMail, recipient: str) -> str | None:
    """``None`` when ``mail`` proves delivery to ``recipient`` failed for good, else why not.

    - the mail is ``multipart/report; report-type=delivery-status`` (RFC 3464)
      and carries its ``message/delivery-status`` part;
    - one per-recipient block names ``recipient`` (case-insensitively) as its
      Final-Recipient or Original-Recipient;
    - that block says ``Action: failed`` and a ``5.x.x`` Status.
    """
    if mail.content_type != "multipart/report" or mail.report_type != "delivery-status":
        return "not an RFC 3464 delivery report (multipart/report; report-type=delivery-status)"
    if not mail.report_parts:
        return "the delivery report has no message/delivery-status part"
    wanted = recipient.strip().lower()
    blocks = _recipient_blocks(mail.report_parts[0])
    named = [b for b in blocks if wanted in _addresses(b)]
    if not named:
        others = sorted({a for b in blocks for a in _addresses(b)})
        about = ", ".join(others) or "no recipient"
        return f"the report is about {about[:200]}, not {wanted}"
    for block in named:
        action = (block.get("Action") or "").strip().lower()
        status = (block.get("Status") or "").strip().split(" ")[0]
        if action == "failed" and _permanent(status):
            return None
    block = named[0]
    action = (block.get("Action") or "").strip().lower() or "no action"
    status = (block.get("Status") or "").strip() or "no status"
    return f"delivery to {wanted} is reported as {action[:40]} ({status[:40]}), not a hard failure"


def _recipient_blocks(text: str) -> list[Message]:
    """The per-recipient field blocks of a ``message/delivery-status`` body.

    The email package splits the body into one header block per paragraph
    (the first describes the message, the rest one recipient each) and
    unfolds the fields.
    """
    part = message_from_string("Content-Type: message/delivery-status\n\n" + text)
    payload = part.get_payload()
    if not isinstance(payload, list):
        return []
    blocks = [b for b in payload if isinstance(b, Message)]
    return [b for b in blocks if "Final-Recipient" in b or "Original-Recipient" in b]


def _addresses(block: Message) -> set[str]:
    """The addresses ``rfc822; user@example.org`` of Final- and Original-Recipient, lowercased."""
    found = set()
    for name in ("Final-Recipient", "Original-Recipient"):
        value = str(block.get(name) or "")
        kind, sep, rest = value.partition(";")
        if not sep or kind.strip().lower() not in ("rfc822", "utf-8"):
            continue
        address = parseaddr(rest.strip())[1] or rest.strip().strip("<>")
        if address:
            found.add(address.lower())
    return found


def _permanent(status: str) -> bool:
    """A ``5.x.x`` RFC 3463 status code."""
    pieces = status.split(".")
    return len(pieces) == 3 and pieces[0] == "5" and all(p.isdigit() for p in pieces[1:])
