"""The checks and the durable enqueue shared by the SMTP handler and the pipe ingress.

Both ingresses make the same decisions through these functions, so a reply
refused over SMTP is refused through ``replygate ingest`` for the same reason:

- recipient: a live reply token of ours (``routing.resolve``), or the signed
  VERP bounce address of one of our notifications
  ``bounces+<id>-<mac>@<reply domain>`` (accepted unrouted, so delivery
  reports about our notifications reach the engine; a bounce address whose
  MAC does not verify, the old unsigned form included, is unknown); anything
  else raises the ``InboundRefused`` subclass that says why;
- size: at most ``settings.max_message_size`` bytes, parts nested at most
  ``nesting.MAX_NESTING`` levels (554 5.6.0: parsers recurse per level);
- attachments: not too many, each of an allowed type that its name and
  content agree with, within the per-file and total limits (the worker's
  own rules, ``mail.attachments``), checked here so the sender hears why
  instead of the reply vanishing;
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

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, NamedTuple

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.core import routing
from replygate.core.routing import Route
from replygate.errors import SenderMismatch, UnknownBounceAddress
from replygate.mail.classify import verp_notification_id
from replygate.mail.decisions import DataChecked, Decision, RecipientAccepted, Stored
from replygate.mail.headers import Headers, lowered_head, read_headers
from replygate.mail.mime_walk import only_body
from replygate.mail.parse import parse_message
from replygate.mail.policy import (
    Policy,
    check_dmarc,
    check_nesting,
    check_size,
    files_to_keep,
    sender_mismatch,
)
from replygate.mail.verp import bounce_key, is_bounce_address
from replygate.store import directory, inbound
from replygate.store.db import transaction
from replygate.store.models import DmarcPolicy, InboundStatus, SenderPolicy


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
    decision: RecipientAccepted
    sender_policy: str = SenderPolicy.REJECT
    dmarc_policy: str = DmarcPolicy.REJECT_FAIL


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
    if is_bounce_address(address, settings.reply_domain):
        key = bounce_key(settings.secret_key)
        ident = verp_notification_id(address, settings.reply_domain, key)
        if ident is None:
            raise UnknownBounceAddress(
                f"{address} is not a signed bounce address of ours (forged, guessed or unsigned)"
            )
        decision = RecipientAccepted(address, "bounce", bounce_id=ident)
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
            org = directory.organisation(session)
    except (SQLAlchemyError, OSError) as exc:
        raise StoreUnavailable(f"cannot look up the reply address: {exc}") from exc
    decision = RecipientAccepted(
        address,
        "reply",
        token="ok",
        token_id=route.token_id,
        thread_id=route.thread_id,
        user_id=route.user_id,
    )
    return Recipient(
        address,
        "reply",
        route,
        decision,
        sender_policy=org.sender_policy,
        dmarc_policy=org.dmarc_policy,
    )


def acceptance_policy(settings: Settings) -> Policy:
    """The acceptance policy of ``settings`` (the gateway and the worker use this one).

    Remembered per settings object, by identity: hashing a frozen ``Settings``
    walks every one of its fields, which cost more than the checks it serves.
    """
    found = _POLICIES.get(id(settings))
    if found is None or found[0] is not settings:
        if len(_POLICIES) >= 64:
            _POLICIES.clear()
        found = _POLICIES[id(settings)] = (settings, _policy_of(settings))
    return found[1]


# Each entry holds its settings, so their id cannot be reused while it lives.
_POLICIES: dict[int, tuple[Settings, Policy]] = {}


def _policy_of(settings: Settings) -> Policy:
    return Policy(
        max_message_size=settings.max_message_size,
        attachment_max_bytes=settings.attachment_max_bytes,
        attachments_total_max_bytes=settings.attachments_total_max_bytes,
        attachment_types=settings.attachment_allow_list,
        trusted_authserv=settings.authserv_ids_believed,
        allow_plus_tags=settings.sender_allow_plus_tags,
        max_attachments=settings.max_attachments,
    )


# The DATA decisions of most replies, made once (so is their record, ``Decision.to_record``).
SENDER_OK = DataChecked("sender", sender="ok")
NO_FILES = DataChecked("attachments", attachments=0)


def check_sender(policy: Policy, headers: Headers, recipients: list[Recipient]) -> DataChecked:
    """Refuse unless the one From header names the address every token was issued to.

    DATA has one reply for all recipients, so a mismatch for one refuses the
    message whole. Under the ``hold`` sender policy the mismatch is returned
    as the decision instead of raised, and the worker holds the mail for review.
    """
    replies = [r.route for r in recipients if r.route is not None]
    if not replies:
        return DataChecked("sender", sender="not checked", reason="delivery report address")
    reason = sender_mismatch(policy, headers, [route.user_email for route in replies])
    if reason is None:
        return SENDER_OK
    if all(r.sender_policy == SenderPolicy.HOLD for r in recipients if r.route is not None):
        return DataChecked(
            "sender", sender="mismatch", policy=SenderPolicy.HOLD.value, reason=reason
        )
    raise SenderMismatch(reason)


def check_attachments(
    policy: Policy,
    raw: bytes,
    headers: Headers,
    recipients: list[Recipient],
    head: bytes | None = None,
) -> DataChecked:
    """Refuse attachments the worker would refuse.

    A reply that is one body part (text/plain or text/html, unnamed, not an
    attachment: what the parser reads as body) is not parsed whole; one
    text part named or marked as an attachment is a file like any other.
    ``head`` is the header block lower-cased, if read already (``lowered_head``).
    """
    if not any(r.route is not None for r in recipients):
        return DataChecked("attachments", attachments="not checked", reason="delivery report")
    top = headers.content_type.split(";")[0].strip()
    if top in ("text/plain", "text/html") and only_body(raw, head):
        return NO_FILES
    kept = files_to_keep(policy, parse_message(raw).attachments)
    return DataChecked("attachments", attachments=len(kept))


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
                    decisions=[d.to_record() for d in (r.decision, *decisions)],
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


class Checked(NamedTuple):
    """A message that passed the DATA checks, with what its queue rows record (a named
    tuple: made for every mail at DATA, at a third of a frozen dataclass's cost)."""

    message_id: str | None
    decisions: list[Decision]


def check(
    settings: Settings,
    *,
    recipients: list[Recipient],
    raw: bytes,
    via: Literal["smtp", "pipe"],
    authentication: Decision | None = None,
    head: bytes | None = None,
) -> Checked:
    """The acceptance policy at DATA; raises what refuses the message.

    ``raw`` is what will be stored: under ``mail_auth = verify`` already
    stamped with the gateway's own Authentication-Results, whose findings
    ``authentication`` records. ``head`` is its header block lower-cased, if
    the caller has read it (``lowered_head``): read here otherwise, once for
    every check that looks into it.
    """
    policy = acceptance_policy(settings)
    check_size(policy, len(raw))
    if head is None:
        head = lowered_head(raw)
    check_nesting(policy, raw, head)
    headers = read_headers(raw)
    sender = check_sender(policy, headers, recipients)
    if any(r.route is not None for r in recipients):
        require_pass = DmarcPolicy.REQUIRE_PASS in [r.dmarc_policy for r in recipients]
        check_dmarc(policy, headers, require_pass=require_pass)
    files = check_attachments(policy, raw, headers, recipients, head)
    decisions: list[Decision] = [sender, files, Stored(via, len(raw))]
    if authentication is not None:
        decisions.insert(2, authentication)
    return Checked(headers.message_id, decisions)


def needs_parsing(raw: bytes, head: bytes | None = None) -> bool:
    """Whether ``check`` may walk the whole message (not only its header block).

    Small messages are checked on the event loop; anything that may be parsed
    for attachments, or is large (or has a header block past ``HEAD_WINDOW``),
    goes to a worker thread. ``head`` is the header block lower-cased, if read
    already (``lowered_head``).
    """
    if len(raw) > INLINE_CHECK_MAX:
        return True
    if head is None:
        head = lowered_head(raw)
        if head is None:
            return True
    at = head.find(b"\ncontent-type:")
    if at == -1:
        return head.startswith(b"content-type:") and not _text_at(head, 13)
    return not _text_at(head, at + 14)


def _text_at(block: bytes, at: int) -> bool:
    return block[at : at + 64].lstrip(b" \t\r\n").startswith(b"text/")


INLINE_CHECK_MAX = 256 * 1024


_QUEUED = InboundStatus.QUEUED.value  # an enum member's value is a property, looked up each time


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
            "status": _QUEUED,
            "attempts": 0,
            "thread_id": r.route.thread_id if r.route is not None else None,
            # Shared records (serialised by the writer, never changed): no copy per row.
            "decisions": [d.shared_record() for d in (r.decision, *checked.decisions)],
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
    authentication: Decision | None = None,
) -> Accepted:
    """The checks, then the durable enqueue (the pipe ingress: one message per process)."""
    checked = check(
        settings, recipients=recipients, raw=raw, via=via, authentication=authentication
    )
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
