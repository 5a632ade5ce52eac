"""The checks and the durable enqueue shared by the SMTP handler and the pipe ingress.

Both ingresses make the same decisions through these functions, so a reply
refused over SMTP is refused through ``replygate ingest`` for the same reason:

- recipient: a live reply token of ours (``routing.resolve``), or our VERP
  bounce address ``bounces+<id>@<reply domain>`` (accepted unrouted, so
  delivery reports about our notifications reach the engine); anything else
  raises the ``InboundRefused`` subclass that says why;
- size: at most ``settings.max_message_size`` bytes;
- attachments: within the per-file and total limits and of an allowed type
  (the engine's own rules, ``threading.attachments``), checked here so the
  sender hears why instead of the reply vanishing;
- sender: the message's single From header names the address each token was
  issued to (not checked for bounce addresses: a DSN comes from a mailer).
  When the organisation's sender policy is ``hold``, a mismatch is accepted
  and recorded instead, so the engine holds it for an operator;
- enqueue: one queue row per accepted recipient, all in one transaction,
  committed before the caller may answer 250.

Everything here is synchronous and may touch the database: the SMTP handler
runs it in a worker thread, never on the event loop.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from datetime import datetime
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses
from typing import Any, Literal

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.core import routing
from replygate.core.routing import Route
from replygate.errors import DmarcFailed, MessageTooLarge, SenderMismatch
from replygate.mail import attachments
from replygate.mail.classify import verp_notification_id
from replygate.mail.parse import parse_message
from replygate.mail.sender import dmarc_failed, same_sender
from replygate.store import directory, inbound
from replygate.store.db import transaction

MAX_MESSAGE_ID = 998

Decision = dict[str, Any]


class StoreUnavailable(Exception):
    """Raised when the database cannot be read or cannot commit.

    Always temporary from the sender's side: the gateway answers 451 (or the
    pipe exits 75) and the sending MTA keeps the message and retries.
    """


@dataclass(frozen=True)
class Recipient:
    """An envelope recipient we accept, and the decision recorded on its queue row."""

    address: str
    kind: Literal["reply", "bounce"]
    route: Route | None
    decision: Decision
    sender_policy: str = "reject"


@dataclass(frozen=True)
class Accepted:
    """A message durably queued: one row per recipient."""

    queue_ids: list[int]
    message_id: str | None
    decisions: list[Decision] = field(default_factory=list)


def check_recipient(
    factory: sessionmaker[Session], settings: Settings, address: str, *, now: datetime
) -> Recipient:
    """Accept ``address`` or raise the ``InboundRefused`` that says why (``StoreUnavailable``
    when the database cannot answer)."""
    ident = verp_notification_id(address, settings.reply_domain)
    if ident is not None:
        decision = {"stage": "rcpt", "recipient": address, "kind": "bounce", "bounce_id": ident}
        return Recipient(address, "bounce", None, decision)
    try:
        with factory() as session, session.begin():
            route = routing.resolve(
                session,
                address,
                secret=settings.secret_key,
                reply_domain=settings.reply_domain,
                now=now,
            )
            policy = directory.organisation(session).sender_policy
    except (SQLAlchemyError, OSError) as exc:
        raise StoreUnavailable(f"cannot look up the reply address: {exc}") from exc
    decision = {
        "stage": "rcpt",
        "recipient": address,
        "kind": "reply",
        "token": "ok",
        "token_id": route.token_id,
        "thread_id": route.thread_id,
        "user_id": route.user_id,
    }
    return Recipient(address, "reply", route, decision, sender_policy=policy)


def check_size(settings: Settings, size: int) -> None:
    if size > settings.max_message_size:
        raise MessageTooLarge(
            f"message of {size} bytes exceeds the limit of {settings.max_message_size}"
        )


@dataclass(frozen=True)
class Headers:
    """The few header values the gateway needs, read without parsing the body."""

    from_values: list[str]
    message_id: str | None
    content_type: str = "text/plain"
    authentication_results: tuple[str, ...] = ()


def read_headers(raw: bytes) -> Headers:
    """Parse only the header block (a 25 MB body is never walked here)."""
    end = raw.find(b"\r\n\r\n")
    end = len(raw) if end == -1 else end + 4
    # A bare LF LF before that ends the block sooner; searching for it past
    # ``end`` would walk the whole body of most mail.
    bare = raw.find(b"\n\n", 0, end)
    if bare != -1:
        end = min(end, bare + 2)
    if raw.startswith((b"\r\n", b"\n")):
        end = 0
    block = raw[:end]
    fields = _plain_header_fields(block)
    if fields is None:
        msg = BytesHeaderParser(policy=compat32).parsebytes(block)
        from_values = [str(v) for v in msg.get_all("From", [])]
        message_id = msg.get("Message-ID")
        content_type = msg.get("Content-Type")
        auth_results = [str(v) for v in msg.get_all("Authentication-Results", [])]
    else:
        from_values = fields.get("from", [])
        message_id = fields.get("message-id", [None])[0]
        content_type = fields.get("content-type", [None])[0]
        auth_results = fields.get("authentication-results", [])
    message_id = str(message_id).strip()[:MAX_MESSAGE_ID] if message_id else None
    content_type = str(content_type or "text/plain").strip().lower()
    return Headers(
        from_values=from_values,
        message_id=message_id or None,
        content_type=content_type,
        authentication_results=tuple(auth_results),
    )


# A header field line as the email package's feed parser takes it: a name of
# printable characters other than the colon, then a colon.
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+:")
_WANTED = frozenset({"from", "message-id", "content-type", "authentication-results"})


def _plain_header_fields(block: bytes) -> dict[str, list[str]] | None:
    """The From, Message-ID and Content-Type values of a plain header block, or None.

    Gives what ``BytesHeaderParser(policy=compat32)`` gives for a block of
    ASCII lines ended by CRLF only, each a ``name:`` field or a folded
    continuation (``tests/gateway/test_headers.py`` compares both); for
    anything else (8-bit octets, bare CR or LF, a unix-from line, defects)
    None, and the caller asks the email package. The parser costs more than
    the rest of a small reply's DATA checks.
    """
    if not block.endswith(b"\r\n\r\n") or not block.isascii():
        return None
    crlf = block.count(b"\r\n")
    if block.count(b"\r") != crlf or block.count(b"\n") != crlf:
        return None
    fields: dict[str, list[str]] = {}
    name: str | None = None  # the wanted field being read, if any
    value: list[str] = []
    seen = False  # a field line came before (a continuation first is a defect)
    for line in block[:-4].decode("ascii").split("\r\n"):
        if line[:1] in (" ", "\t"):
            if not seen:
                return None
            if name is not None:
                value.append(line)
            continue
        if name is not None:
            fields.setdefault(name, []).append("\r\n".join(value).rstrip("\r\n"))
            name = None
        if line.startswith("From ") or not _FIELD_NAME.match(line):
            return None
        seen = True
        key, _, first = line.partition(":")
        key = key.lower()
        if key in _WANTED:
            name, value = key, [first.lstrip(" \t")]
    if name is not None:
        fields.setdefault(name, []).append("\r\n".join(value).rstrip("\r\n"))
    return fields


def check_sender(
    headers: Headers, recipients: list[Recipient], *, allow_plus_tags: bool = False
) -> Decision:
    """Refuse unless the one From header names the address every token was issued to.

    A message to several reply addresses of different people has one From
    and so cannot be theirs at once: it is refused whole (DATA has one reply).
    Under the ``hold`` sender policy the mismatch is returned as the decision
    instead of raised, and the engine holds the mail for review.
    """
    replies = [r for r in recipients if r.route is not None]
    if not replies:
        return {
            "stage": "data",
            "check": "sender",
            "sender": "not checked",
            "reason": "delivery report address",
        }
    reason = None
    if len(headers.from_values) != 1:
        found = "no From header" if not headers.from_values else "several From headers"
        reason = f"the message has {found}"
    else:
        from_value = headers.from_values[0]
        for r in replies:
            assert r.route is not None
            if not _same_sender(from_value, r.route.user_email, allow_plus_tags):
                reason = (
                    f"From {from_value!r} is not the address reply token {r.route.token_id} "
                    "was issued to"
                )
                break
    if reason is None:
        return {"stage": "data", "check": "sender", "sender": "ok"}
    if all(r.sender_policy == "hold" for r in replies):
        return {
            "stage": "data",
            "check": "sender",
            "sender": "mismatch",
            "policy": "hold",
            "reason": reason,
        }
    raise SenderMismatch(reason)


@functools.lru_cache(maxsize=4096)
def _same_sender(from_value: str, issued_to: str, allow_plus_tags: bool) -> bool:
    """``same_sender`` remembered: a pure function whose address parsing is the
    costliest step of a small reply's DATA checks, and a burst repeats senders."""
    return same_sender(from_value, issued_to, allow_plus_tags=allow_plus_tags)


def check_attachments(
    settings: Settings, raw: bytes, headers: Headers, recipients: list[Recipient]
) -> Decision:
    """Refuse attachments the engine would refuse; a plain-text reply is not parsed at all."""
    if not any(r.route is not None for r in recipients):
        return {
            "stage": "data",
            "check": "attachments",
            "attachments": "not checked",
            "reason": "delivery report",
        }
    if headers.content_type.startswith("text/"):
        return {"stage": "data", "check": "attachments", "attachments": 0}
    kept = attachments.files_to_keep(
        parse_message(raw).attachments,
        max_file=settings.attachment_max_bytes,
        max_total=settings.attachments_total_max_bytes,
        allowed=attachments.parse_allow_list(settings.attachment_types),
    )
    return {"stage": "data", "check": "attachments", "attachments": len(kept)}


def enqueue(
    factory: sessionmaker[Session],
    *,
    mail_from: str,
    recipients: list[Recipient],
    raw: bytes,
    message_id: str | None,
    peer: str | None,
    decisions: list[Decision],
) -> list[int]:
    """Store the raw bytes once per recipient in one transaction, committed on return."""
    try:
        with transaction(factory) as session:
            rows = []
            for r in recipients:
                row = inbound.enqueue(
                    session,
                    mail_from=mail_from,
                    rcpt=r.address,
                    raw=raw,
                    message_id=message_id,
                    peer=peer,
                    decisions=[r.decision, *decisions],
                )
                if r.route is not None:  # keeps one thread's replies in order (inbound.claim)
                    row.thread_id = r.route.thread_id
                rows.append(row)
            session.flush()
            ids = [row.id for row in rows]
            inbound.notify_queued(session)
    except (SQLAlchemyError, OSError) as exc:
        raise StoreUnavailable(f"cannot store the message: {exc}") from exc
    return ids


@dataclass(frozen=True)
class Checked:
    """A message that passed the DATA checks, with what its queue rows record."""

    message_id: str | None
    decisions: list[Decision]


def check(
    settings: Settings, *, recipients: list[Recipient], raw: bytes, via: Literal["smtp", "pipe"]
) -> Checked:
    """Size, sender and attachment checks; raises what refuses the message."""
    check_size(settings, len(raw))
    headers = read_headers(raw)
    sender = check_sender(headers, recipients, allow_plus_tags=settings.sender_allow_plus_tags)
    check_dmarc(settings, headers, recipients)
    files = check_attachments(settings, raw, headers, recipients)
    decisions = [sender, files, {"stage": "accept", "via": via, "size": len(raw)}]
    return Checked(headers.message_id, decisions)


def check_dmarc(settings: Settings, headers: Headers, recipients: list[Recipient]) -> None:
    """Refuse a reply whose From domain failed DMARC, as a trusted relay reports it.

    Only ``Authentication-Results`` from our own MTAs (``trusted_authserv_ids``)
    count: anyone can write the header, so untrusted ones are ignored.
    """
    if not settings.trusted_authserv or not any(r.route is not None for r in recipients):
        return
    from_domain = next(
        (a.rpartition("@")[2] for _, a in getaddresses(headers.from_values) if "@" in a), None
    )
    if dmarc_failed(list(headers.authentication_results), settings.trusted_authserv, from_domain):
        raise DmarcFailed(f"DMARC failed for {from_domain} (trusted Authentication-Results)")


def needs_parsing(raw: bytes) -> bool:
    """Whether ``check`` may walk the whole message (not only its header block).

    Small messages are checked on the event loop; anything that may be parsed
    for attachments, or is large, goes to a worker thread.
    """
    if len(raw) > INLINE_CHECK_MAX:
        return True
    end = raw.find(b"\r\n\r\n")
    block = (raw if end == -1 else raw[:end]).lower()
    at = block.find(b"\ncontent-type:")
    if at == -1:
        return block.startswith(b"content-type:") and not _text_at(block, 13)
    return not _text_at(block, at + 14)


def _text_at(block: bytes, at: int) -> bool:
    return block[at : at + 64].lstrip(b" \t\r\n").startswith(b"text/")


INLINE_CHECK_MAX = 256 * 1024


def queue_rows(
    checked: Checked,
    *,
    mail_from: str,
    recipients: list[Recipient],
    raw: bytes,
    peer: str | None,
    now: datetime,
) -> list[dict[str, Any]]:
    """The ``inbound_mail`` rows of one accepted message, one per recipient.

    The thread a reply token names is recorded now, so workers can keep the
    replies of one thread in arrival order (``inbound.claim``).
    """
    return [
        {
            "received_at": now,
            "mail_from": mail_from,
            "rcpt": r.address,
            "peer": peer,
            "message_id": checked.message_id,
            "size": len(raw),
            "raw": raw,
            "status": "queued",
            "attempts": 0,
            "thread_id": r.route.thread_id if r.route is not None else None,
            "decisions": [r.decision, *checked.decisions],
        }
        for r in recipients
    ]


def accept(
    factory: sessionmaker[Session],
    settings: Settings,
    *,
    mail_from: str,
    recipients: list[Recipient],
    raw: bytes,
    peer: str | None,
    via: Literal["smtp", "pipe"],
) -> Accepted:
    """The checks, then the durable enqueue (the pipe ingress: one message per process)."""
    checked = check(settings, recipients=recipients, raw=raw, via=via)
    headers_message_id, decisions = checked.message_id, checked.decisions
    ids = enqueue(
        factory,
        mail_from=mail_from,
        recipients=recipients,
        raw=raw,
        message_id=headers_message_id,
        peer=peer,
        decisions=decisions,
    )
    return Accepted(queue_ids=ids, message_id=headers_message_id, decisions=decisions)


def envelope_sender(mail_from: str | None) -> str:
    """The envelope sender as stored: the null reverse-path ``<>`` becomes ``""``."""
    value = (mail_from or "").strip()
    return "" if value in ("", "<>") else value
