"""What operators list and inspect: people, Circles, one thread, the inbound queue,
the outbox and reply addresses, read in one session and returned as plain values
(the list of every thread is ``thread_list``'s, which loads no ORM).

Each row is a frozen dataclass of strings, numbers and lists, detached from
the ORM, so a caller prints or serialises it after the session has closed.
Field order is the order of the command line's ``--json`` output, which is a
contract. Statuses and roles are returned as their plain strings, whether the
model holds strings or string enums. Times are ISO 8601 UTC strings ending in
``Z`` (``mail.timestamps.iso_z``), the one form the command line shows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.core import routing
from replygate.errors import InboundRefused, NotFound
from replygate.mail import reply_token
from replygate.mail.decisions import explain
from replygate.mail.timestamps import iso_z
from replygate.store import directory, inbound, inbound_admin, outbox, tokens
from replygate.store.db import transaction
from replygate.store.models import (
    AddressStatus,
    InboundMail,
    OutboxMessage,
    Thread,
    User,
    UserRole,
    utcnow,
)

# The headers ``queue show`` prints: enough to see who sent what and how it
# was judged, never the whole header block.
SHOWN_HEADERS = (
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "in-reply-to",
    "auto-submitted",
    "precedence",
    "authentication-results",
    "content-type",
)


def plain(value: Any) -> Any:
    """The string a status or role is stored as, whether the model gives a str or a str enum."""
    return value.value if isinstance(value, Enum) else value


def days_ago(days: float | None) -> datetime | None:
    """The moment ``days`` days before now, or None for no bound."""
    return None if days is None else utcnow() - timedelta(days=days)


# -- people ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class UserRow:
    """A person and their address; ``bounce_days`` are the UTC days of counted hard bounces."""

    id: int
    email: str
    name: str
    role: str
    address_status: str
    bounce_count: int
    bounce_days: list[str]
    # A staff or admin address no longer notified: shown to admins, since forged
    # bounces once silenced staff without anyone noticing.
    staff_suppressed: bool


def user_row(user: User) -> UserRow:
    role, status = plain(user.role), plain(user.address_status)
    return UserRow(
        id=user.id,
        email=user.email,
        name=user.name,
        role=role,
        address_status=status,
        bounce_count=user.bounce_count,
        bounce_days=list(user.bounce_days or []),
        staff_suppressed=role in STAFF_ROLES and status == AddressStatus.SUPPRESSED,
    )


STAFF_ROLES = frozenset({UserRole.STAFF.value, UserRole.ADMIN.value})


def suppressed_staff(factory: sessionmaker[Session]) -> list[UserRow]:
    """Staff and admins whose address is suppressed: nobody notifies them any more."""
    return [u for u in users(factory) if u.staff_suppressed]


def users(factory: sessionmaker[Session]) -> list[UserRow]:
    """Every user with the state of their email address, oldest first."""
    with factory() as session:
        return [user_row(u) for u in directory.list_users(session)]


@dataclass(frozen=True)
class CircleRow:
    id: int
    name: str
    members: list[str]
    clients_may_write: bool


def circles(factory: sessionmaker[Session]) -> list[CircleRow]:
    """Every Circle by name, with its members' addresses."""
    with factory() as session:
        return [
            CircleRow(
                id=c.id,
                name=c.name,
                members=[m.email for m in c.members],
                clients_may_write=c.clients_may_write,
            )
            for c in directory.list_circles(session)
        ]


@dataclass(frozen=True)
class OrganisationSettings:
    name: str
    convenience_mode: bool
    hipaa_acknowledged_by: str | None
    hipaa_acknowledged_at: datetime | None
    sender_policy: str
    dmarc_policy: str
    read_receipts_default: bool
    reminder_delay_seconds: int
    mfa_required: str


def organisation_settings(
    factory: sessionmaker[Session], settings: Settings
) -> OrganisationSettings:
    """The organisation's settings (a write: the row is created on first use)."""
    with transaction(factory) as session:
        org = directory.organisation(session, default_name=settings.organisation_name)
        return OrganisationSettings(
            name=org.name,
            convenience_mode=org.convenience_mode,
            hipaa_acknowledged_by=org.hipaa_acknowledged_by,
            hipaa_acknowledged_at=org.hipaa_acknowledged_at,
            sender_policy=plain(org.sender_policy),
            dmarc_policy=plain(org.dmarc_policy),
            read_receipts_default=org.read_receipts_default,
            reminder_delay_seconds=org.reminder_delay_seconds,
            mfa_required=plain(org.mfa_required),
        )


# -- threads --------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttachmentRow:
    id: int
    filename: str
    content_type: str
    size: int


@dataclass(frozen=True)
class MessageRow:
    id: int
    author: str
    body: str
    source: str
    created_at: str
    attachments: list[AttachmentRow]
    # Who opened it in the portal, first reader first: [{"user": email, "at": ISO 8601}].
    read_by: list[dict[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class ThreadDetail:
    id: int
    subject: str
    participants: list[str]
    messages: list[MessageRow]


def thread(factory: sessionmaker[Session], thread_id: int) -> ThreadDetail:
    """One thread with every message and its attachments' names (an operator's read)."""
    # Imported here: receipts brings the notification composer and the logging set-up,
    # which every other listing (a start of the command line each) would pay for.
    from replygate.core import receipts

    with factory() as session:
        found = session.get(Thread, thread_id)
        if found is None:
            raise NotFound(f"no thread {thread_id}")
        reads = receipts.read_by(session, [m.id for m in found.messages])
        return ThreadDetail(
            id=found.id,
            subject=found.subject,
            participants=[p.user.email for p in found.participants],
            messages=[
                MessageRow(
                    id=m.id,
                    author=m.author.email,
                    body=m.body,
                    source=plain(m.source),
                    created_at=iso_z(m.created_at),
                    attachments=[
                        AttachmentRow(
                            id=a.id, filename=a.filename, content_type=a.content_type, size=a.size
                        )
                        for a in m.attachments
                    ],
                    read_by=[{"user": who, "at": at.isoformat()} for who, at in reads[m.id]],
                )
                for m in found.messages
            ],
        )


# -- the inbound queue ----------------------------------------------------------------------


@dataclass(frozen=True)
class QueueRow:
    id: int
    status: str
    reason: str | None
    mail_from: str
    rcpt: str
    message_id: str | None
    received_at: str
    attempts: int
    thread_id: int | None
    size: int


@dataclass(frozen=True)
class QueueDetail(QueueRow):
    """A queue row with its decision history, chosen headers and the reply extracted now."""

    decisions: list[dict[str, Any]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    reply: str | None = None


def _queue_row(row: InboundMail) -> QueueRow:
    return QueueRow(**_queue_fields(row))


def _queue_fields(row: InboundMail) -> dict[str, Any]:
    return {
        "id": row.id,
        "status": plain(row.status),
        "reason": row.reason,
        "mail_from": row.mail_from,
        "rcpt": row.rcpt,
        "message_id": row.message_id,
        "received_at": iso_z(row.received_at),
        "attempts": row.attempts,
        "thread_id": row.thread_id,
        "size": row.size,
    }


def queue(
    factory: sessionmaker[Session],
    *,
    status: str | None = None,
    limit: int = 100,
    older_than_days: float | None = None,
    newer_than_days: float | None = None,
    sender: str | None = None,
    thread_id: int | None = None,
) -> list[QueueRow]:
    """Inbound mail, newest first, filtered as ``queue list`` asks."""
    with factory() as session:
        rows = inbound_admin.list_mail(
            session,
            status=status,
            limit=limit,
            older_than=days_ago(older_than_days),
            newer_than=days_ago(newer_than_days),
            sender=sender,
            thread_id=thread_id,
        )
        return [_queue_row(r) for r in rows]


def queue_detail(factory: sessionmaker[Session], inbound_id: int) -> QueueDetail:
    """One mail: envelope, decisions, and (unless purged) headers and the reply as extracted now.

    The extraction runs on the stored bytes again, so an operator sees what
    the current code would file.
    """
    with factory() as session:
        row = inbound.get(session, inbound_id)
        fields = _queue_fields(row)
        decisions = list(row.decisions or [])
        raw = row.raw
    if raw is None:
        return QueueDetail(**fields, decisions=decisions)
    # Imported here: the extractor's patterns cost every start of the command
    # line (the Postfix pipe runs one per mail) that never shows a mail.
    from replygate.mail.extract.reply import extract_from_parts
    from replygate.mail.parse import parse_message

    parsed = parse_message(raw)
    return QueueDetail(
        **fields,
        decisions=decisions,
        headers={name: value for name, value in parsed.headers if name in SHOWN_HEADERS},
        reply=extract_from_parts(parsed.text_plain, parsed.text_html).reply,
    )


def raw_mail(factory: sessionmaker[Session], inbound_id: int) -> bytes:
    """The bytes a mail arrived as; NotFound once they are purged."""
    with factory() as session:
        raw = inbound.get(session, inbound_id).raw
    if raw is None:
        raise NotFound(f"mail {inbound_id} was purged; its raw bytes are gone")
    return raw


def explanation(row: QueueRow, decisions: list[dict[str, Any]]) -> list[str]:
    """What was decided about a mail and why, in plain sentences."""
    return explain(asdict(row), decisions)


@dataclass(frozen=True)
class QueueExplanation(QueueRow):
    """A queue row, its decisions as stored (oldest first, replays included), and in words."""

    decisions: list[dict[str, Any]] = field(default_factory=list)
    explanation: list[str] = field(default_factory=list)


def explain_mail(factory: sessionmaker[Session], inbound_id: int) -> QueueExplanation:
    """What was decided about one queued mail, read by id: the records and ``explanation``."""
    with factory() as session:
        row = inbound.get(session, inbound_id)
        fields, decisions = _queue_fields(row), list(row.decisions or [])
    return QueueExplanation(
        **fields,
        decisions=decisions,
        explanation=explanation(QueueRow(**fields), decisions),
    )


@dataclass(frozen=True)
class QueueCount:
    status: str
    reason: str | None
    count: int


def queue_stats(factory: sessionmaker[Session]) -> list[QueueCount]:
    """How much inbound mail has each (status, reason), largest first."""
    with factory() as session:
        return [QueueCount(plain(st), r, n) for st, r, n in inbound_admin.stats(session)]


# -- the outbox -----------------------------------------------------------------------------


@dataclass(frozen=True)
class OutboxRow:
    """A notification's delivery state: never its content."""

    id: int
    status: str
    kind: str
    recipient: str
    thread_id: int | None
    attempts: int
    last_error: str | None
    created_at: str
    sent_at: str | None


def _outbox_row(r: OutboxMessage) -> OutboxRow:
    return OutboxRow(
        id=r.id,
        status=plain(r.status),
        kind=plain(r.kind),
        recipient=r.recipient,
        thread_id=r.thread_id,
        attempts=r.attempts,
        last_error=r.last_error,
        created_at=iso_z(r.created_at),
        sent_at=iso_z(r.sent_at),
    )


def notifications(
    factory: sessionmaker[Session], *, status: str | None = None, limit: int = 100
) -> list[OutboxRow]:
    """Notifications, newest first, optionally of one status."""
    with factory() as session:
        return [_outbox_row(r) for r in outbox.list_outbox(session, status=status, limit=limit)]


# -- reply addresses ------------------------------------------------------------------------


def reply_address(
    factory: sessionmaker[Session], settings: Settings, address: str
) -> dict[str, Any]:
    """What a reply address names and whether the gateway would accept it now, and why not.

    A dict, not a dataclass: the thread and recipient keys appear only for a
    token we know, as ``tokens inspect --json`` has always shown them. The
    ``fingerprint`` is how log lines name the token (``reply+fp:<it>@…``).
    """
    token = reply_token.token_from_address(address, settings.reply_domain)
    fingerprint = reply_token.fingerprint(settings.secret_key, token) if token else None
    data: dict[str, Any] = {"address": address, "token": token, "fingerprint": fingerprint}
    # A write: routing asks for the organisation, which is created on first use.
    with transaction(factory) as session:
        row = tokens.find(session, token) if token else None
        if row is not None:
            data.update(
                thread=row.thread_id,
                recipient=row.user.email,
                created_at=iso_z(row.created_at),
                expires_at=iso_z(row.expires_at),
                revoked_at=iso_z(row.revoked_at),
            )
        try:
            routing.resolve(
                session,
                address,
                secret=settings.secret_key,
                reply_domain=settings.reply_domain,
                now=utcnow(),
            )
            data["accepted"], data["reason"] = True, None
        except InboundRefused as exc:
            data["accepted"], data["reason"] = False, str(exc)
    return data
