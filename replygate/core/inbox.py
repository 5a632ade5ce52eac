"""What a person reads: their inbox, sent messages, one thread, its files, whom to write to.

Everything here returns plain dataclasses, so a page never touches a live
SQLAlchemy session and no lazy load happens while it renders. Callers own the
transaction: each function takes a ``Session`` (``core.workspace`` opens one
per call for the portal). Sending, replying and Convenience Mode go through
``Messaging``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, UnaryExpression, and_, case, func, literal, select, tuple_
from sqlalchemy.orm import Session, selectinload

from replygate.core.messaging import (
    CIRCLE_PREFIX,
    STAFF_ROLES,
    Messaging,
    circles_open_to,
    people_open_to,
)
from replygate.core.placement import InboxFilter, is_unread, shown_in
from replygate.core.receipts import ReadMark, read_marks
from replygate.errors import NotFound
from replygate.store import sealed
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
    UTCDateTime,
)

PAGE_SIZE = 50
PREVIEW_LENGTH = 140


@dataclass(frozen=True)
class Viewer:
    """The logged-in person, as pages need them."""

    id: int
    email: str
    name: str
    role: str

    @property
    def is_staff(self) -> bool:
        return self.role in STAFF_ROLES

    @property
    def is_admin(self) -> bool:
        return self.role == UserRole.ADMIN


@dataclass(frozen=True)
class ThreadRow:
    id: int
    subject: str
    with_names: str
    last_activity_at: datetime
    preview: str
    unread: int
    pinned: bool = False
    archived: bool = False


@dataclass(frozen=True)
class SentRow:
    thread_id: int
    message_id: int
    subject: str
    to_names: str
    created_at: datetime
    preview: str


@dataclass(frozen=True)
class MessageView:
    id: int
    author_name: str
    author_email: str
    author_is_viewer: bool
    created_at: datetime
    by_email: bool
    body: str
    quote: str | None
    signature: str | None
    body_html: str | None
    new: bool
    attachments: tuple[AttachmentView, ...] = ()
    # The viewer's own messages only: who it went to and when each first opened it.
    read_marks: tuple[ReadMark, ...] = ()


@dataclass(frozen=True)
class AttachmentView:
    id: int
    filename: str
    content_type: str
    size: int


@dataclass(frozen=True)
class AttachmentFile:
    """An attachment's name, type and content, ready to download."""

    filename: str
    content_type: str
    data: bytes
    thread_id: int | None = None


@dataclass(frozen=True)
class ThreadView:
    id: int
    subject: str
    participants: list[tuple[str, str, str, str]]  # name, email, role, address status
    messages: list[MessageView]
    previous_id: int | None
    next_id: int | None
    pinned: bool = False
    archived: bool = False
    # On, notifications carry the content, and what is read there is not counted as read.
    convenience_mode: bool = False
    # Whether the reply form's "Tell me when it is read" starts ticked.
    read_receipts_default: bool = False


@dataclass(frozen=True)
class Recipient:
    value: str
    label: str
    detail: str = ""  # a second line under the label: a person's address and role


def viewer(user: User) -> Viewer:
    return Viewer(id=user.id, email=user.email, name=user.name, role=user.role)


def _preview(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= PREVIEW_LENGTH else flat[: PREVIEW_LENGTH - 1] + "…"


def _inbox_order() -> tuple[UnaryExpression[bool], UnaryExpression[datetime], UnaryExpression[int]]:
    """Pinned first, then newest activity: ``ix_thread_participants_inbox`` read backwards."""
    return (
        ThreadParticipant.pinned.desc(),
        ThreadParticipant.last_activity_at.desc(),
        ThreadParticipant.thread_id.desc(),
    )


def page_statement(
    user_id: int, view: InboxFilter, *, offset: int, limit: int
) -> Select[int, bool, bool, bytes | None, bytes, datetime, int | None, int]:
    """One inbox page in one query: a range of the inbox index, read in order.

    Each row's thread, latest message and unread count are looked up for the
    rows of the page alone (the index gives them in order, so nothing is
    sorted and no other row is read); the count only for an unread row. The
    subject comes sealed, and the latest message as its id (``_previews``).
    """
    me = ThreadParticipant
    latest = (
        select(Message.id)
        .where(Message.thread_id == me.thread_id)
        .order_by(Message.id.desc())
        .limit(1)
        .correlate(me)
        .scalar_subquery()
    )
    count = (
        select(func.count(Message.id))
        .where(
            Message.thread_id == me.thread_id,
            Message.author_id != user_id,
            Message.id > func.coalesce(me.last_read_message_id, 0),
        )
        .correlate(me)
        .scalar_subquery()
    )
    return (
        select(
            me.thread_id,
            me.pinned,
            me.archived,
            Thread.row_uid,
            Thread.subject_sealed,
            Thread.last_activity_at,
            latest.label("latest_id"),
            case((is_unread(), count), else_=0).label("unread"),
        )
        .join(Thread, Thread.id == me.thread_id)
        .where(me.user_id == user_id, shown_in(view))
        .order_by(*_inbox_order())
        .offset(offset)
        .limit(limit)
    )


def inbox(
    session: Session,
    user_id: int,
    page: int = 0,
    view: InboxFilter = InboxFilter.ALL,
    size: int = PAGE_SIZE,
) -> tuple[list[ThreadRow], bool]:
    """One page of the user's threads in ``view``, pinned first, then newest activity;
    and whether more follow: three queries (the page, the names in it, its previews).
    """
    picked = session.execute(
        page_statement(user_id, view, offset=page * size, limit=size + 1)
    ).all()
    more = len(picked) > size
    picked = picked[:size]
    names = _other_names(session, user_id, [row.thread_id for row in picked])
    previews = _previews(session, [row.latest_id for row in picked if row.latest_id])
    return [
        ThreadRow(
            id=row.thread_id,
            subject=_opened("threads", "subject", row.row_uid, row.subject_sealed, row.thread_id),
            with_names=", ".join(names.get(row.thread_id, [])) or "only you",
            last_activity_at=row.last_activity_at,
            preview=previews.get(row.latest_id, ""),
            unread=row.unread or 0,
            pinned=row.pinned,
            archived=row.archived,
        )
        for row in picked
    ], more


def _previews(session: Session, message_ids: list[int]) -> dict[int, str]:
    """The start of each message's body, opened (only what a page shows is read)."""
    if not message_ids:
        return {}
    rows = session.execute(
        select(Message.id, Message.row_uid, Message.body_sealed).where(Message.id.in_(message_ids))
    )
    return {
        message_id: _preview(_opened("messages", "body", uid, stored, message_id))
        for message_id, uid, stored in rows
    }


def _opened(table: str, column: str, row_uid: bytes | None, stored: bytes, row_id: int) -> str:
    return sealed.unseal(table, column, row_uid or b"", stored, row_id=row_id).decode("utf-8")


def _other_names(session: Session, user_id: int, thread_ids: list[int]) -> dict[int, list[str]]:
    """The names of everyone but the user in each thread, in participant order."""
    names: dict[int, list[str]] = {}
    if not thread_ids:
        return names
    rows = session.execute(
        select(ThreadParticipant.thread_id, User.name)
        .join(User, User.id == ThreadParticipant.user_id)
        .where(ThreadParticipant.thread_id.in_(thread_ids), ThreadParticipant.user_id != user_id)
        .order_by(ThreadParticipant.thread_id, ThreadParticipant.user_id)
    )
    for thread_id, name in rows:
        names.setdefault(thread_id, []).append(name)
    return names


def unread_statement(user_id: int) -> Select[int]:
    """Count the user's unread threads in the inbox: the partial index's rows for them."""
    return (
        select(func.count())
        .select_from(ThreadParticipant)
        .where(ThreadParticipant.user_id == user_id, shown_in(InboxFilter.UNREAD))
    )


def unread_threads(session: Session, user_id: int) -> int:
    """How many threads in the user's inbox hold something they have not read."""
    return session.scalar(unread_statement(user_id)) or 0


def sent(session: Session, user_id: int, page: int = 0) -> tuple[list[SentRow], bool]:
    """Messages the user wrote (in the portal or by email), newest first."""
    rows = session.scalars(
        select(Message)
        .where(Message.author_id == user_id)
        .options(
            selectinload(Message.thread)
            .selectinload(Thread.participants)
            .selectinload(ThreadParticipant.user)
        )
        .order_by(Message.id.desc())
        .offset(page * PAGE_SIZE)
        .limit(PAGE_SIZE + 1)
    ).all()
    more = len(rows) > PAGE_SIZE
    return [
        SentRow(
            thread_id=m.thread_id,
            message_id=m.id,
            subject=m.thread.subject,
            to_names=_others(m.thread, user_id),
            created_at=m.created_at,
            preview=_preview(m.body),
        )
        for m in rows[:PAGE_SIZE]
    ], more


def read_thread(session: Session, thread_id: int, user: User) -> ThreadView:
    """The thread with every message, marking it read for ``user``.

    Raises ``NotFound`` unless the user takes part (the same answer as for a
    thread that does not exist).
    """
    thread = Messaging.thread_for(session, thread_id, user)
    me = next(p for p in thread.participants if p.user_id == user.id)
    read_up_to = me.last_read_message_id or 0
    messages = session.scalars(
        select(Message)
        .where(Message.thread_id == thread.id)
        .options(selectinload(Message.author), selectinload(Message.attachments))
        .order_by(Message.id)
    ).all()
    marks = read_marks(session, messages, user.id)
    views = [
        MessageView(
            id=m.id,
            author_name=m.author.name,
            author_email=m.author.email,
            author_is_viewer=m.author_id == user.id,
            created_at=m.created_at,
            by_email=m.source == MessageSource.EMAIL,
            body=m.body,
            quote=m.quote,
            signature=m.signature,
            body_html=m.body_html,
            new=m.id > read_up_to and m.author_id != user.id,
            attachments=tuple(
                AttachmentView(a.id, a.filename, a.content_type, a.size) for a in m.attachments
            ),
            read_marks=marks.get(m.id, ()),
        )
        for m in messages
    ]
    if messages and messages[-1].id > read_up_to:
        me.last_read_message_id = messages[-1].id
    previous_id, next_id = _neighbours(session, me)
    return ThreadView(
        id=thread.id,
        subject=thread.subject,
        participants=[
            (p.user.name, p.user.email, p.user.role, p.user.address_status)
            for p in thread.participants
        ],
        messages=views,
        previous_id=previous_id,
        next_id=next_id,
        pinned=me.pinned,
        archived=me.archived,
    )


def _neighbours(session: Session, me: ThreadParticipant) -> tuple[int | None, int | None]:
    """The threads just above and below this one in the user's list (inbox or archive)."""
    key = tuple_(
        ThreadParticipant.pinned, ThreadParticipant.last_activity_at, ThreadParticipant.thread_id
    )
    mine = tuple_(
        literal(me.pinned), literal(me.last_activity_at, UTCDateTime()), literal(me.thread_id)
    )
    same_list = and_(
        ThreadParticipant.user_id == me.user_id, ThreadParticipant.archived == me.archived
    )
    newer = session.scalars(
        select(ThreadParticipant.thread_id)
        .where(same_list, key > mine)
        .order_by(*(c.asc() for c in key.clauses))
        .limit(1)
    ).first()
    older = session.scalars(
        select(ThreadParticipant.thread_id)
        .where(same_list, key < mine)
        .order_by(*_inbox_order())
        .limit(1)
    ).first()
    return newer, older


def _others(thread: Thread, user_id: int) -> str:
    names = [p.user.name for p in thread.participants if p.user_id != user_id]
    return ", ".join(names) or "only you"


def attachment_for(session: Session, attachment_id: int, user: User) -> AttachmentFile:
    """An attachment, if ``user`` takes part in its thread; otherwise it does not exist for them."""
    found = session.get(MessageAttachment, attachment_id)
    if found is None:
        raise NotFound(f"no attachment {attachment_id}")
    message = session.get_one(Message, found.message_id)
    Messaging.thread_for(session, message.thread_id, user)  # NotFound unless a participant
    return AttachmentFile(found.filename, found.content_type, found.data, message.thread_id)


# -- compose ------------------------------------------------------------------------------


def recipients(session: Session, me: Viewer) -> tuple[list[Recipient], list[Recipient]]:
    """(Circles, people) the viewer may write to, by the rule ``Messaging.send`` applies.

    Staff see how many members a Circle has; clients only its name.
    """
    people = [
        Recipient(value=u.email, label=u.name, detail=f"{u.email} · {u.role}")
        for u in session.scalars(
            select(User)
            .where(User.id != me.id, people_open_to(me.role))
            .order_by(User.name, User.email)
        )
    ]
    open_circles = session.scalars(
        select(Circle).where(circles_open_to(me.role)).order_by(Circle.name)
    ).all()
    if not me.is_staff:
        return [Recipient(f"{CIRCLE_PREFIX}{c.name}", c.name) for c in open_circles], people
    counts = dict(
        session.execute(
            select(CircleMember.circle_id, func.count()).group_by(CircleMember.circle_id)
        ).all()
    )
    circles = [
        Recipient(
            value=f"{CIRCLE_PREFIX}{c.name}",
            label=f"{c.name} · Circle of {counts.get(c.id, 0)}",
        )
        for c in open_circles
    ]
    return circles, people
