"""Tables, as SQLAlchemy 2 typed ORM classes.

Every schema change goes through an Alembic migration in ``migrations/``; a
test compares these models with the migrated schema so the two cannot drift.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from replygate.store.access_models import (
    AuditEvent,
    LoginAttempt,
    PortalSession,
    RecoveryCode,
)
from replygate.store.base import NAMING, Base, UTCDateTime, utcnow
from replygate.store.sealed import BYTES, TEXT, Sealed, SealedRequired
from replygate.store.sealed import JSON as JSON_CODEC

# The states live apart so that reading them needs no SQLAlchemy; found here as before.
from replygate.store.states import (
    ActorKind,
    AddressStatus,
    AuditOutcome,
    DmarcPolicy,
    InboundStatus,
    MessageSource,
    MfaRequirement,
    OutboxStatus,
    SenderPolicy,
    UserRole,
)

# One day: how long a message may stay unread in the portal before its one reminder.
DEFAULT_REMINDER_DELAY_SECONDS = 86_400


class Organisation(Base):
    """The one organisation this deployment serves, and its settings."""

    __tablename__ = "organisation"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    convenience_mode: Mapped[bool] = mapped_column(Boolean, default=False)
    hipaa_acknowledged_by: Mapped[str | None] = mapped_column(String(320))
    hipaa_acknowledged_at: Mapped[datetime | None]
    sender_policy: Mapped[str] = mapped_column(String(20), default=SenderPolicy.REJECT)
    dmarc_policy: Mapped[str] = mapped_column(
        String(20), default=DmarcPolicy.REJECT_FAIL, server_default=DmarcPolicy.REJECT_FAIL.value
    )
    # Whether compose and reply start with "Tell me when it is read" ticked.
    read_receipts_default: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=false()
    )
    # A message unread in the portal this long after it was sent gets one reminder; 0: none.
    reminder_delay_seconds: Mapped[int] = mapped_column(
        Integer,
        default=DEFAULT_REMINDER_DELAY_SECONDS,
        server_default=str(DEFAULT_REMINDER_DELAY_SECONDS),
    )
    mfa_required: Mapped[str] = mapped_column(
        String(10), default=MfaRequirement.STAFF, server_default=MfaRequirement.STAFF.value
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(10))
    password_hash: Mapped[str | None] = mapped_column(String(200))
    address_status: Mapped[str] = mapped_column(String(20), default=AddressStatus.OK)
    bounce_count: Mapped[int] = mapped_column(Integer, default=0)
    # The UTC dates (ISO, oldest first) of the hard bounces counted since the last reset:
    # suppression needs two of them, so one burst of bounces cannot silence an address.
    bounce_days: Mapped[list[str]] = mapped_column(JSON, default=list)
    # The TOTP secret (base32) once enrolled; the one being enrolled until its first
    # code is given; the last 30-second step a code was accepted for (each code works once).
    # The secrets are sealed at rest: a stolen backup gives no working second factor.
    row_uid: Mapped[bytes | None] = mapped_column(LargeBinary(16))
    mfa_secret_sealed: Mapped[bytes | None] = mapped_column("mfa_secret", LargeBinary)
    mfa_secret = Sealed[str]("mfa_secret", TEXT)
    mfa_pending_secret_sealed: Mapped[bytes | None] = mapped_column(
        "mfa_pending_secret", LargeBinary
    )
    mfa_pending_secret = Sealed[str]("mfa_pending_secret", TEXT)
    mfa_enrolled_at: Mapped[datetime | None]
    mfa_last_step: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Circle(Base):
    """A named group of users; sending to it reaches each member privately."""

    __tablename__ = "circles"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    # Off: only staff may write to the Circle. On: clients may too (reaching its staff).
    clients_may_write: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    members: Mapped[list[User]] = relationship(secondary="circle_members", order_by="User.id")


class CircleMember(Base):
    __tablename__ = "circle_members"

    circle_id: Mapped[int] = mapped_column(
        ForeignKey("circles.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )


class Thread(Base):
    __tablename__ = "threads"

    id: Mapped[int] = mapped_column(primary_key=True)
    # Sealed at rest (``sealed``), as every text a person wrote is.
    row_uid: Mapped[bytes | None] = mapped_column(LargeBinary(16))
    subject_sealed: Mapped[bytes] = mapped_column("subject", LargeBinary)
    subject = SealedRequired[str]("subject", TEXT)
    created_by_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_activity_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)

    created_by: Mapped[User] = relationship()
    participants: Mapped[list[ThreadParticipant]] = relationship(
        back_populates="thread", order_by="ThreadParticipant.user_id"
    )
    messages: Mapped[list[Message]] = relationship(back_populates="thread", order_by="Message.id")


# One person's inbox order, pinned first (read backwards), after the user and archived flag.
INBOX_KEY = ("user_id", "archived", "pinned", "last_activity_at", "thread_id")
# A participant row whose thread holds a message by someone else past the read mark.
UNREAD_SQL = "last_incoming_message_id > coalesce(last_read_message_id, 0)"


class ThreadParticipant(Base):
    """One person in one thread, and where the thread stands for them.

    The activity and incoming marks repeat the messages (``placement.record_activity``)
    so an inbox page is a range of its index, whatever the number of threads.
    """

    __tablename__ = "thread_participants"
    __table_args__ = (
        Index("ix_thread_participants_inbox", *INBOX_KEY),
        Index(  # unread rows alone, with their marks: the unread count and filter
            "ix_thread_participants_unread",
            *INBOX_KEY,
            "last_incoming_message_id",
            "last_read_message_id",
            sqlite_where=text(UNREAD_SQL),
            postgresql_where=text(UNREAD_SQL),
        ),
    )

    thread_id: Mapped[int] = mapped_column(
        ForeignKey("threads.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    last_read_message_id: Mapped[int | None] = mapped_column(Integer)
    # The newest message by someone else: the thread is unread while it is past the read mark.
    last_incoming_message_id: Mapped[int | None] = mapped_column(Integer)
    # The thread's last activity, copied here for the inbox index.
    last_activity_at: Mapped[datetime] = mapped_column(default=utcnow)
    # At the top of this person's inbox; never also archived.
    pinned: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Out of this person's inbox until someone else writes in the thread.
    archived: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    thread: Mapped[Thread] = relationship(back_populates="participants")
    user: Mapped[User] = relationship()


class InboundMail(Base):
    """One accepted inbound mail for one envelope recipient: the raw bytes,
    committed before the gateway answers 250, then processed by the engine."""

    __tablename__ = "inbound_mail"
    __table_args__ = (
        Index("ix_inbound_mail_status_id", "status", "id"),
        # Listing one thread's mail.
        Index("ix_inbound_mail_thread_id_id", "thread_id", "id"),
        # The claim's "an earlier reply to this thread is processing or waits for a
        # retry" check: a seek per status, covering (migration 0012).
        Index("ix_inbound_mail_thread_status", "thread_id", "status", "id", "claimed_at"),
        # The flood brake's count of recent replies to one address.
        Index("ix_inbound_mail_rcpt_received", "rcpt", "received_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    mail_from: Mapped[str] = mapped_column(String(320))
    rcpt: Mapped[str] = mapped_column(String(320))
    peer: Mapped[str | None] = mapped_column(String(100))
    message_id: Mapped[str | None] = mapped_column(String(998))
    size: Mapped[int] = mapped_column(Integer)
    # Sealed at rest (``sealed``): the mail as it arrived, why it was decided, and the
    # decision records, which quote it (attachment names, headers).
    row_uid: Mapped[bytes | None] = mapped_column(LargeBinary(16))
    raw_sealed: Mapped[bytes | None] = mapped_column("raw", LargeBinary)
    raw = Sealed[bytes]("raw", BYTES)
    status: Mapped[str] = mapped_column(String(20), default=InboundStatus.QUEUED)
    reason_sealed: Mapped[bytes | None] = mapped_column("reason", LargeBinary)
    reason = Sealed[str]("reason", TEXT)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    claimed_at: Mapped[datetime | None]
    # The worker process holding a processing claim (host:pid:start); see dialect's owners.
    claimed_by: Mapped[str | None] = mapped_column(String(200))
    processed_at: Mapped[datetime | None]
    thread_id: Mapped[int | None] = mapped_column(ForeignKey("threads.id", ondelete="SET NULL"))
    # Replaced, never changed in place: a list appended to would not be sealed again.
    decisions_sealed: Mapped[bytes | None] = mapped_column("decisions", LargeBinary)
    decisions = Sealed[list]("decisions", JSON_CODEC)


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (
        # A reply delivered twice (same Message-ID, same token) is filed once.
        UniqueConstraint(
            "thread_id", "author_id", "email_message_id", name="uq_messages_email_dedup"
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    thread_id: Mapped[int] = mapped_column(ForeignKey("threads.id", ondelete="CASCADE"), index=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    # Sealed at rest (``sealed``): what was written, and what an emailed reply quoted,
    # signed and sent as HTML.
    row_uid: Mapped[bytes | None] = mapped_column(LargeBinary(16))
    body_sealed: Mapped[bytes] = mapped_column("body", LargeBinary)
    body = SealedRequired[str]("body", TEXT)
    quote_sealed: Mapped[bytes | None] = mapped_column("quote", LargeBinary)
    quote = Sealed[str]("quote", TEXT)
    signature_sealed: Mapped[bytes | None] = mapped_column("signature", LargeBinary)
    signature = Sealed[str]("signature", TEXT)
    body_html_sealed: Mapped[bytes | None] = mapped_column("body_html", LargeBinary)
    body_html = Sealed[str]("body_html", TEXT)
    source: Mapped[str] = mapped_column(String(10))
    inbound_id: Mapped[int | None] = mapped_column(
        ForeignKey("inbound_mail.id", ondelete="SET NULL"), unique=True
    )
    email_message_id: Mapped[str | None] = mapped_column(String(998))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # "Tell me when it is read": the author is notified when each recipient first opens it.
    receipt_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # One message sent to several people is one private copy per thread; each copy holds
    # the id of the first, so its author sees under any of them who of them read it.
    send_id: Mapped[int | None] = mapped_column(Integer, index=True)

    thread: Mapped[Thread] = relationship(back_populates="messages")
    author: Mapped[User] = relationship()
    attachments: Mapped[list[MessageAttachment]] = relationship(
        order_by="MessageAttachment.id", cascade="all, delete-orphan"
    )


class ReplyToken(Base):
    """The reply address of one recipient in one thread."""

    __tablename__ = "reply_tokens"
    __table_args__ = (Index("ix_reply_tokens_thread_user", "thread_id", "user_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    token: Mapped[str] = mapped_column(String(64), unique=True)
    thread_id: Mapped[int] = mapped_column(ForeignKey("threads.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]

    thread: Mapped[Thread] = relationship()
    user: Mapped[User] = relationship()


class OutboxMessage(Base):
    """A notification written in the same transaction as its cause and
    delivered later by the outbound worker."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_status_next", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    kind: Mapped[str] = mapped_column(String(20))
    recipient: Mapped[str] = mapped_column(String(320))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    thread_id: Mapped[int | None] = mapped_column(ForeignKey("threads.id", ondelete="SET NULL"))
    message_id: Mapped[int | None] = mapped_column(ForeignKey("messages.id", ondelete="SET NULL"))
    envelope_from: Mapped[str] = mapped_column(String(320))
    header_message_id: Mapped[str] = mapped_column(String(998), index=True)
    # Sealed at rest, whatever the kind: a content notification carries the message.
    row_uid: Mapped[bytes | None] = mapped_column(LargeBinary(16))
    raw_sealed: Mapped[bytes] = mapped_column("raw", LargeBinary)
    raw = Sealed[bytes]("raw", BYTES)
    status: Mapped[str] = mapped_column(String(20), default=OutboxStatus.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime | None]


__all__ = [
    "ActorKind",
    "AddressStatus",
    "AuditEvent",
    "AuditOutcome",
    "Base",
    "Circle",
    "CircleMember",
    "DmarcPolicy",
    "InboundMail",
    "InboundStatus",
    "LoginAttempt",
    "Message",
    "MessageSource",
    "Organisation",
    "OutboxMessage",
    "OutboxStatus",
    "PortalSession",
    "RecoveryCode",
    "ReplyToken",
    "SenderPolicy",
    "Thread",
    "ThreadParticipant",
    "User",
    "UserRole",
    "utcnow",
]


class CannedResponse(Base):
    """A reusable message that staff insert when composing (name, optional subject, body)."""

    __tablename__ = "canned_responses"

    id: Mapped[int] = mapped_column(primary_key=True)
    # Plain: a label staff give a template, looked up for uniqueness and listed in order.
    name: Mapped[str] = mapped_column(String(200), unique=True)
    # Sealed at rest (``sealed``): a template's text may name a condition or a treatment.
    row_uid: Mapped[bytes | None] = mapped_column(LargeBinary(16))
    subject_sealed: Mapped[bytes | None] = mapped_column("subject", LargeBinary)
    subject = Sealed[str]("subject", TEXT)
    body_sealed: Mapped[bytes] = mapped_column("body", LargeBinary)
    body = SealedRequired[str]("body", TEXT)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


__all__ += ["CannedResponse"]


class MessageAttachment(Base):
    """A file that came with a reply by email, readable by the thread's participants only."""

    __tablename__ = "message_attachments"

    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[int] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), index=True
    )
    # Sealed at rest (``sealed``): the file's name and its bytes; its type and size are not.
    row_uid: Mapped[bytes | None] = mapped_column(LargeBinary(16))
    filename_sealed: Mapped[bytes] = mapped_column("filename", LargeBinary)
    filename = SealedRequired[str]("filename", TEXT)
    content_type: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(Integer)
    data_sealed: Mapped[bytes] = mapped_column("data", LargeBinary)
    data = SealedRequired[bytes]("data", BYTES)


__all__ += ["MessageAttachment"]


class MessageReceipt(Base):
    """One recipient of one message: when they first opened it in the portal, and when
    its one reminder falls due (None once sent or read, or when none is).

    Written with the message, one row per other participant of its thread; a
    worker claims a due row and clears it in the transaction that queues the
    reminder, so each goes out once.
    """

    __tablename__ = "message_receipts"

    message_id: Mapped[int] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    read_at: Mapped[datetime | None]
    remind_at: Mapped[datetime | None] = mapped_column(index=True)
    reminded_at: Mapped[datetime | None]


__all__ += ["DEFAULT_REMINDER_DELAY_SECONDS", "NAMING", "MessageReceipt", "UTCDateTime"]

__all__ += ["MfaRequirement"]
