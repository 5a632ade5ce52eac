"""The thin domain service: send, reply, file an inbound reply, notify.

Used alike by the CLI, the portal and the threading engine. Every change and
the notifications it causes are written in one transaction; nothing is sent
from here (the outbound worker delivers the outbox).

Privacy rule: a message to several people (or a Circle) starts one private
thread per recipient with the sender, so recipients never see each other.

Whom one may write to (``people_open_to``, ``circles_open_to``; the compose
page lists by the same rule): staff write to anyone and any Circle; clients
write to staff, and to the staff of a Circle open to clients
(``clients_may_write``). A client addressing anything else gets one answer,
``NOT_OPEN``, whether it exists or not, after the same lookups.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, and_, or_, select, true
from sqlalchemy.orm import Session, make_transient_to_detached, selectinload, sessionmaker

from replygate.config import Settings
from replygate.core import audit, organisation, receipts
from replygate.core.notifying import Notifier
from replygate.core.placement import record_activity
from replygate.errors import Invalid, NotFound
from replygate.store import directory, new_messages, outbox, tokens
from replygate.store.db import transaction
from replygate.store.models import (
    Circle,
    CircleMember,
    Message,
    MessageAttachment,
    MessageSource,
    Thread,
    ThreadParticipant,
    User,
    UserRole,
    utcnow,
)

CIRCLE_PREFIX = "circle:"
STAFF_ROLES = (UserRole.ADMIN, UserRole.STAFF)
NOT_OPEN = "clients can write only to staff and to Circles open to clients"
MAX_SUBJECT = 500
# Per transaction (see ``directory.TRANSACTION_CACHE``): what ``prefetch_replies``
# learnt about mails filed already, and which queue rows and Message-IDs it covers.
_FILED = directory.TRANSACTION_CACHE + "messaging.filed"
_FILED_COVERED = directory.TRANSACTION_CACHE + "messaging.filed_covered"
_THREADS = directory.TRANSACTION_CACHE + "messaging.threads"


def people_open_to(role: str) -> ColumnElement[bool]:
    """The users someone of ``role`` may write to (directly or through a Circle)."""
    return true() if role in STAFF_ROLES else User.role.in_(STAFF_ROLES)


def circles_open_to(role: str) -> ColumnElement[bool]:
    """The Circles someone of ``role`` may write to."""
    return true() if role in STAFF_ROLES else Circle.clients_may_write.is_(True)


@dataclass(frozen=True)
class FileUpload:
    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class SentThread:
    id: int
    recipient: str


@dataclass(frozen=True)
class SendResult:
    threads: list[SentThread]
    messages: list[int]


class Messaging:
    """Domain operations over one store, configured by one ``Settings``."""

    def __init__(self, factory: sessionmaker[Session], settings: Settings) -> None:
        self.factory = factory
        self.settings = settings
        self.notifier = Notifier(settings)

    # -- sending --------------------------------------------------------------------------

    def send(
        self,
        *,
        sender: str,
        to: list[str],
        subject: str,
        body: str,
        read_receipt: bool | None = None,
    ) -> SendResult:
        """Start one private thread per recipient (Circles expanded) and notify each.

        ``read_receipt``: tell the sender when each recipient first opens it
        (None: as the organisation's default says).
        """
        subject = " ".join(subject.split())[:MAX_SUBJECT]
        if not subject:
            raise Invalid("a message needs a subject")
        if not body.strip():
            raise Invalid("a message needs a body")
        if not to:
            raise Invalid("a message needs at least one recipient")
        with transaction(self.factory) as session:
            author = directory.user(session, sender)
            recipients = self._expand(session, to, author)
            receipt = self._receipt_wanted(session, read_receipt)
            now = utcnow()
            threads: list[SentThread] = []
            messages: list[int] = []
            send_id: int | None = None
            for person in recipients:
                thread = Thread(
                    subject=subject, created_by_id=author.id, created_at=now, last_activity_at=now
                )
                session.add(thread)
                session.flush()
                session.add_all(
                    [
                        ThreadParticipant(
                            thread_id=thread.id, user_id=author.id, last_activity_at=now
                        ),
                        ThreadParticipant(
                            thread_id=thread.id, user_id=person.id, last_activity_at=now
                        ),
                    ]
                )
                message = self._add_message(
                    session,
                    thread,
                    author,
                    body,
                    source=MessageSource.PORTAL,
                    receipt_requested=receipt,
                )
                if len(recipients) > 1:  # the copies name the first, so its author sees them all
                    send_id = send_id or message.id
                    message.send_id = send_id
                self._notify(session, thread, message, author)
                self._audit_sent(session, author, message)
                threads.append(SentThread(id=thread.id, recipient=person.email))
                messages.append(message.id)
            return SendResult(threads=threads, messages=messages)

    def reply(
        self, *, thread_id: int, author: str, body: str, read_receipt: bool | None = None
    ) -> int:
        """Add a portal reply to a thread the author takes part in, and notify the others.

        ``read_receipt`` as for ``send``.
        """
        if not body.strip():
            raise Invalid("a reply needs a body")
        with transaction(self.factory) as session:
            user = directory.user(session, author)
            thread = self.thread_for(session, thread_id, user)
            message = self._add_message(
                session,
                thread,
                user,
                body,
                source=MessageSource.PORTAL,
                receipt_requested=self._receipt_wanted(session, read_receipt),
            )
            self._notify(session, thread, message, user)
            self._audit_sent(session, user, message)
            return message.id

    def _audit_sent(self, session: Session, author: User, message: Message) -> None:
        audit.record(
            session, self.settings, audit.who(author), audit.Action.MESSAGE_SENT,
            object_kind=audit.ObjectKind.MESSAGE, object_id=message.id,
            thread_id=message.thread_id,
        )  # fmt: skip

    def file_email_reply(
        self,
        session: Session,
        *,
        thread_id: int,
        author_id: int,
        body: str,
        quote: str | None,
        signature: str | None,
        inbound_id: int,
        email_message_id: str | None,
        body_html: str | None = None,
        attachments: Sequence[FileUpload] = (),
    ) -> Message | None:
        """File a reply that came by email, in the caller's transaction.

        Returns ``None`` when this mail was filed already (the same queue
        row replayed, or the same Message-ID delivered again to the same
        thread by the same author): a second delivery files nothing.
        """
        if self._filed_already(session, thread_id, author_id, inbound_id, email_message_id):
            return None
        thread = session.get(Thread, thread_id)
        author = session.get(User, author_id)
        if thread is None or author is None:
            raise NotFound("the thread or the person this reply address names no longer exists")
        now = utcnow()
        values = dict(
            thread_id=thread.id,
            author_id=author.id,
            body=body,
            source=MessageSource.EMAIL,
            quote=quote or None,
            signature=signature or None,
            inbound_id=inbound_id,
            email_message_id=email_message_id,
            body_html=body_html,
            created_at=now,
            receipt_requested=False,
            send_id=None,
        )
        # Nothing is written yet: the message row goes in with those of the other
        # replies filed in this transaction, in one INSERT ahead of its next flush
        # (``new_messages``), and the thread, participant and outbox rows below in
        # that flush, where the ORM batches them too. Every column is set, so
        # nothing reads the row back before it is there.
        message = Message(**values)  # sealed as it is built (``store.sealed``)
        new_id = new_messages.add(session, message)
        make_transient_to_detached(message)
        session.add(message)
        record_activity(session, thread, message, now)
        filed = session.info.get(_FILED)
        if filed is not None:
            filed.add(("inbound", inbound_id))
            if email_message_id:
                filed.add((thread_id, author_id, email_message_id))
        session.add_all(
            MessageAttachment(
                message_id=message.id,
                filename=f.filename,
                content_type=f.content_type,
                size=len(f.data),
                data=f.data,
            )
            for f in attachments
        )
        self._notify(session, thread, message, author, flush=False)
        audit.record(
            session, self.settings, audit.Actor.system(), audit.Action.REPLY_FILED,
            object_kind=audit.ObjectKind.MESSAGE, object_id=new_id, thread_id=thread.id,
            detail={"inbound_id": inbound_id, "author_id": author.id},
        )  # fmt: skip
        return message

    @staticmethod
    def prefetch_replies(
        session: Session,
        thread_ids: Iterable[int],
        inbound_ids: Iterable[int],
        email_message_ids: Iterable[str],
    ) -> None:
        """Load, in a few statements, what filing a batch of email replies reads.

        The threads with their participants and people, their reply tokens and
        latest notifications, and which of these mails were filed already: the
        engine files a whole batch in one transaction, and asks for these one
        reply at a time.
        """
        thread_ids, inbound_ids = set(thread_ids), set(inbound_ids)
        email_message_ids = {m for m in email_message_ids if m}
        new_messages.expect(session, len(inbound_ids))
        if thread_ids:
            # Held in the cache: the session's identity map keeps only weak references.
            session.info.setdefault(_THREADS, []).extend(
                session.scalars(
                    select(Thread)
                    .where(Thread.id.in_(thread_ids))
                    .options(selectinload(Thread.participants).joinedload(ThreadParticipant.user))
                )
            )
            tokens.prefetch_threads(session, thread_ids)
            outbox.prefetch_latest(session, thread_ids)
        same = [Message.inbound_id.in_(inbound_ids)] if inbound_ids else []
        if email_message_ids:
            same.append(Message.email_message_id.in_(email_message_ids))
        filed: set[tuple[object, ...]] = session.info.setdefault(_FILED, set())
        covered: set[tuple[object, ...]] = session.info.setdefault(_FILED_COVERED, set())
        if same:
            for inbound_id, thread_id, author_id, email_message_id in session.execute(
                select(
                    Message.inbound_id,
                    Message.thread_id,
                    Message.author_id,
                    Message.email_message_id,
                ).where(or_(*same))
            ):
                filed.add(("inbound", inbound_id))
                if email_message_id:
                    filed.add((thread_id, author_id, email_message_id))
        covered.update(("inbound", i) for i in inbound_ids)
        covered.update(("message-id", m) for m in email_message_ids)

    @staticmethod
    def _filed_already(
        session: Session,
        thread_id: int,
        author_id: int,
        inbound_id: int,
        email_message_id: str | None,
    ) -> bool:
        """Was this queue row, or this Message-ID from this author to this thread, filed?"""
        covered = session.info.get(_FILED_COVERED, ())
        if ("inbound", inbound_id) in covered and (
            not email_message_id or ("message-id", email_message_id) in covered
        ):
            filed = session.info[_FILED]
            return ("inbound", inbound_id) in filed or (
                email_message_id is not None and (thread_id, author_id, email_message_id) in filed
            )
        same_mail = Message.inbound_id == inbound_id
        if email_message_id:
            same_mail = or_(
                same_mail,
                and_(
                    Message.thread_id == thread_id,
                    Message.author_id == author_id,
                    Message.email_message_id == email_message_id,
                ),
            )
        return session.scalars(select(Message.id).where(same_mail)).first() is not None

    # -- settings ---------------------------------------------------------------------------

    def set_convenience_mode(
        self, *, on: bool, acknowledged_by: str | None = None, acknowledge_hipaa: bool = False
    ) -> int:
        """Switch Convenience Mode (``organisation.switch_convenience``); how many reply
        addresses were voided."""
        with transaction(self.factory) as session:
            return organisation.switch_convenience(
                session, self.settings, on=on, acknowledged_by=acknowledged_by,
                acknowledge_hipaa=acknowledge_hipaa,
            )  # fmt: skip

    # -- reading ----------------------------------------------------------------------------

    @staticmethod
    def thread_for(session: Session, thread_id: int, user: User) -> Thread:
        """The thread, if ``user`` takes part in it; otherwise it does not exist for them."""
        thread = session.get(Thread, thread_id)
        if thread is None or not any(p.user_id == user.id for p in thread.participants):
            raise NotFound(f"no thread {thread_id}")
        return thread

    # -- internals --------------------------------------------------------------------------

    def _receipt_wanted(self, session: Session, asked: bool | None) -> bool:
        if asked is not None:
            return asked
        org = directory.organisation(session, default_name=self.settings.organisation_name)
        return org.read_receipts_default

    def _expand(self, session: Session, to: list[str], author: User) -> list[User]:
        """Resolve addresses and ``circle:NAME`` entries to distinct users, in order.

        Staff hear what is wrong with an entry; a client hears ``NOT_OPEN`` for
        any entry they may not write to, once every entry was looked up.
        """
        staff = author.role in STAFF_ROLES
        seen: dict[int, User] = {}
        refused = False
        for entry in to:
            entry = entry.strip()
            members = self._open_recipients(session, entry, author.role)
            if not members:
                if not staff:
                    refused = True
                    continue
                self._say_why(session, entry)
            for member in members:
                if member.id != author.id:
                    seen.setdefault(member.id, member)
        if refused:
            raise Invalid(NOT_OPEN)
        if not seen:
            raise Invalid("a message needs at least one recipient other than its author")
        return list(seen.values())

    @staticmethod
    def _open_recipients(session: Session, entry: str, role: str) -> list[User]:
        """Whom one entry names, among those someone of ``role`` may write to.

        An address takes one query and a Circle one (and one for its members
        when it is open), whatever exists, so refusals all take alike.
        """
        if entry.lower().startswith(CIRCLE_PREFIX):
            name = entry[len(CIRCLE_PREFIX) :].strip()
            circle_id = session.scalars(
                select(Circle.id).where(Circle.name == name, circles_open_to(role))
            ).first()
            if circle_id is None:
                return []
            return list(
                session.scalars(
                    select(User)
                    .join(CircleMember, CircleMember.user_id == User.id)
                    .where(CircleMember.circle_id == circle_id, people_open_to(role))
                    .order_by(User.id)
                )
            )
        email = directory.normalise_email(entry)
        return list(session.scalars(select(User).where(User.email == email, people_open_to(role))))

    @staticmethod
    def _say_why(session: Session, entry: str) -> None:
        """For staff: raise what is wrong with an entry that named nobody."""
        if entry.lower().startswith(CIRCLE_PREFIX):
            name = entry[len(CIRCLE_PREFIX) :]
            directory.circle(session, name)  # NotFound when there is none
            raise Invalid(f"Circle {name!r} has no members")
        directory.user(session, entry)  # NotFound

    @staticmethod
    def _add_message(
        session: Session, thread: Thread, author: User, body: str, *, source: str, **extra: object
    ) -> Message:
        message = Message(
            thread_id=thread.id, author_id=author.id, body=body, source=source, **extra
        )
        session.add(message)
        session.flush()
        record_activity(session, thread, message, utcnow())
        return message

    def _notify(
        self,
        session: Session,
        thread: Thread,
        message: Message,
        author: User,
        *,
        flush: bool = True,
    ) -> None:
        """Write one outbox notification per other participant, in this transaction,
        and the rows that will say when each of them reads it."""
        org = directory.organisation(session, default_name=self.settings.organisation_name)
        now = utcnow()
        others = [p.user for p in thread.participants if p.user_id != author.id]
        receipts.expect_reads(session, message.id, others, org, now=now)
        for person in others:
            notification = self.notifier.about_message(
                session, org, thread, message, author, person, now=now, flush=flush
            )
            self.notifier.queue(
                session,
                notification,
                person,
                kind=notification.mode,
                thread_id=thread.id,
                message_id=message.id,
                flush=flush,
            )
