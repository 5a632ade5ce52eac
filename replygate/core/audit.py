"""Who read or changed what: the access audit trail (45 CFR 164.312(b)).

Every access to a thread's content and every change to who may reach it is
recorded as one row through ``record``, in the transaction of what it
records: the row is appended when that transaction commits (so the trail's
lock is held only through the commit) and dropped if it rolls back. Who
acted comes from the edge: the portal marks each request with the client's
address and browser (``portal_request``), the CLI marks its process as an
operator's (``operator_at_work``); anything else, such as the engine filing
a reply, acts as the system. Rows name their object by kind and id and
never carry message text. The trail is a hash chain
(``store/audit.py``) keyed by a key derived from the deployment's secret
key, so ``verify`` finds a row that was edited or removed; ``queue purge``
never touches it, and only ``purge`` (after ``audit_retention_days``)
removes rows, leaving an anchor.
"""

from __future__ import annotations

import csv
import getpass
import hashlib
import hmac
import io
import itertools
import json
import operator
import socket
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import event, or_, select
from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.store import audit, directory
from replygate.store.db import transaction
from replygate.store.models import ActorKind, AuditEvent, AuditOutcome, User, utcnow

MAX_AGENT_CHARS = 200
MAX_ADDRESS_CHARS = 64


class Action(StrEnum):
    """What an audit row records; the stored strings."""

    LOGIN = "login"
    LOGIN_FAILED = "login_failed"
    LOGOUT = "logout"
    SESSION_REVOKED = "session_revoked"
    MFA_ENROLLED = "mfa_enrolled"
    MFA_USED = "mfa_used"
    MFA_RESET = "mfa_reset"
    THREAD_VIEWED = "thread_viewed"
    ATTACHMENT_DOWNLOADED = "attachment_downloaded"
    MESSAGE_SENT = "message_sent"
    REPLY_FILED = "reply_filed"
    CANNED_CREATED = "canned_created"
    CANNED_CHANGED = "canned_changed"
    CANNED_DELETED = "canned_deleted"
    USER_ADDED = "user_added"
    ROLE_CHANGED = "role_changed"
    PASSWORD_SET = "password_set"
    CONVENIENCE_ON = "convenience_on"
    CONVENIENCE_OFF = "convenience_off"
    SENDER_POLICY_CHANGED = "sender_policy_changed"
    DMARC_POLICY_CHANGED = "dmarc_policy_changed"
    SETTING_CHANGED = "setting_changed"
    KEY_ROTATED = "key_rotated"
    PHI_SHOWN = "phi_shown"  # a CLI command printed mail or message content
    EXPORTED = "exported"
    AUDIT_PURGED = audit.PURGED


class ObjectKind(StrEnum):
    THREAD = "thread"
    MESSAGE = "message"
    ATTACHMENT = "attachment"
    USER = "user"
    SETTING = "setting"
    INBOUND = "inbound"
    CANNED = "canned"
    KEY = "key"
    AUDIT = "audit"


# What a row says besides its object: names and numbers, never mail text.
Detail = dict[str, str | int | bool | None]


@dataclass(frozen=True)
class Actor:
    """Who acts: a portal user (with their address and browser), an operator, or the system."""

    kind: ActorKind
    name: str
    user_id: int | None = None
    address: str | None = None
    user_agent: str | None = None

    @classmethod
    def user(
        cls, user: User, *, address: str | None = None, user_agent: str | None = None
    ) -> Actor:
        return cls(
            ActorKind.USER,
            user.email,
            user.id,
            _clip(address, MAX_ADDRESS_CHARS),
            _clip(user_agent, MAX_AGENT_CHARS),
        )

    @classmethod
    def operator(cls) -> Actor:
        """Whoever runs the CLI: their login name on this host."""
        try:
            who = getpass.getuser()
        except (KeyError, OSError):  # no name for this uid (a bare container)
            who = "unknown"
        return cls(ActorKind.OPERATOR, f"{who}@{socket.gethostname()}")

    @classmethod
    def system(cls) -> Actor:
        return cls(ActorKind.SYSTEM, "replygate")


@dataclass(frozen=True)
class _Origin:
    kind: ActorKind
    address: str | None = None
    user_agent: str | None = None


_origin: ContextVar[_Origin | None] = ContextVar("replygate_audit_origin", default=None)


def portal_request(address: str | None, user_agent: str | None) -> None:
    """Mark this request's context: what happens in it is done by the signed-in user from here."""
    _origin.set(_Origin(ActorKind.USER, address, user_agent))


def operator_at_work() -> None:
    """Mark this process's context as an operator's at the command line."""
    _origin.set(_Origin(ActorKind.OPERATOR))


def who(user: User | None = None) -> Actor:
    """Who acts now: ``user`` in a portal request, the operator at the CLI, else the system."""
    origin = _origin.get()
    if origin is None:
        return Actor.system()
    if origin.kind is ActorKind.USER and user is not None:
        return Actor.user(user, address=origin.address, user_agent=origin.user_agent)
    if origin.kind is ActorKind.OPERATOR:
        return Actor.operator()
    return Actor(ActorKind.USER, "unknown", address=origin.address, user_agent=origin.user_agent)


def _clip(text: str | None, limit: int) -> str | None:
    if text is None:
        return None
    return "".join(c for c in text if c.isprintable())[:limit]


def chain_key(settings: Settings) -> bytes:
    """The trail's MAC key, derived from the secret key (never stored in the database)."""
    return hmac.new(settings.secret_key.encode(), b"audit-chain", hashlib.sha256).digest()


def record(
    session: Session,
    settings: Settings,
    actor: Actor,
    action: Action,
    *,
    object_kind: ObjectKind | None = None,
    object_id: int | str | None = None,
    thread_id: int | None = None,
    outcome: AuditOutcome = AuditOutcome.OK,
    detail: Detail | None = None,
) -> None:
    """Add one row to the caller's transaction: appended as it commits, gone if it rolls back."""
    fields = dict(
        actor_kind=actor.kind.value,
        actor=actor.name,
        actor_user_id=actor.user_id,
        address=actor.address,
        user_agent=actor.user_agent,
        action=action.value,
        object_kind=object_kind.value if object_kind is not None else None,
        object_id=str(object_id) if object_id is not None else None,
        thread_id=thread_id,
        outcome=outcome.value,
        detail=dict(detail or {}),
    )
    session.info.setdefault(_PENDING, []).append((chain_key(settings), fields))


_PENDING = "replygate_audit_pending"


@event.listens_for(Session, "before_commit")
def _append_pending(session: Session) -> None:
    """The transaction's rows in one append (one lock, one read of the head), in the
    order they were recorded; the commit's flush writes them."""
    pending = session.info.pop(_PENDING, ())
    for key, run in itertools.groupby(pending, key=operator.itemgetter(0)):
        audit.append_many(session, key, [fields for _, fields in run])


@event.listens_for(Session, "after_rollback")
def _drop_pending(session: Session) -> None:
    session.info.pop(_PENDING, None)


def record_now(
    factory: sessionmaker[Session], settings: Settings, actor: Actor, action: Action, **what: Any
) -> None:
    """``record`` in a transaction of its own (an access that changes nothing else)."""
    with transaction(factory) as session:
        record(session, settings, actor, action, **what)


fields_of = audit.fields_of


def verify(factory: sessionmaker[Session], settings: Settings) -> audit.Verdict:
    with factory() as session:
        return audit.verify(session, chain_key(settings))


@dataclass(frozen=True)
class EventRow:
    """One audit row as listings and exports show it."""

    seq: int
    at: datetime
    actor_kind: str
    actor: str
    action: str
    object_kind: str | None
    object_id: str | None
    thread_id: int | None
    address: str | None
    user_agent: str | None
    outcome: str
    detail: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": self.at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "actor_kind": self.actor_kind,
            "actor": self.actor,
            "action": self.action,
            "object_kind": self.object_kind,
            "object_id": self.object_id,
            "thread_id": self.thread_id,
            "address": self.address,
            "user_agent": self.user_agent,
            "outcome": self.outcome,
            "detail": self.detail,
        }


EXPORT_FIELDS = tuple(EventRow.__dataclass_fields__)


class UnknownUser(LookupError):
    """``events(user=…)`` names nobody."""


def events(
    factory: sessionmaker[Session],
    *,
    user: str | None = None,
    thread_id: int | None = None,
    since: datetime | None = None,
    limit: int | None = None,
    newest_first: bool = False,
) -> list[EventRow]:
    """Rows done by or to ``user``, touching ``thread_id``, written since ``since``."""
    return list(
        iter_events(
            factory,
            user=user,
            thread_id=thread_id,
            since=since,
            limit=limit,
            newest_first=newest_first,
        )
    )


def iter_events(
    factory: sessionmaker[Session],
    *,
    user: str | None = None,
    thread_id: int | None = None,
    since: datetime | None = None,
    limit: int | None = None,
    newest_first: bool = False,
    batch: int = 1000,
) -> Iterator[EventRow]:
    """``events``, read in batches (an export of six years never sits in memory at once)."""
    with factory() as session:
        stmt = select(AuditEvent)
        if user is not None:
            found = directory.find_user(session, user)
            if found is None:
                raise UnknownUser(user)
            stmt = stmt.where(
                or_(
                    AuditEvent.actor_user_id == found.id,
                    (AuditEvent.object_kind == ObjectKind.USER.value)
                    & (AuditEvent.object_id == str(found.id)),
                )
            )
        if thread_id is not None:
            stmt = stmt.where(AuditEvent.thread_id == thread_id)
        if since is not None:
            stmt = stmt.where(AuditEvent.at >= since)
        order = AuditEvent.seq.desc() if newest_first else AuditEvent.seq
        stmt = stmt.order_by(order)
        if limit is not None:
            stmt = stmt.limit(limit)
        for row in session.scalars(stmt.execution_options(yield_per=batch)):
            yield EventRow(
                seq=row.seq,
                at=row.at,
                actor_kind=row.actor_kind,
                actor=row.actor,
                action=row.action,
                object_kind=row.object_kind,
                object_id=row.object_id,
                thread_id=row.thread_id,
                address=row.address,
                user_agent=row.user_agent,
                outcome=row.outcome,
                detail=dict(row.detail or {}),
            )


def export_lines(rows: Iterator[EventRow], fmt: str) -> Iterator[str]:
    """Each row as a JSON line, or a CSV with a header row (``detail`` as JSON)."""
    if fmt == "jsonl":
        for row in rows:
            yield json.dumps(row.to_json(), ensure_ascii=False) + "\n"
        return
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(EXPORT_FIELDS)
    for row in rows:
        values = row.to_json()
        values["detail"] = json.dumps(values["detail"], sort_keys=True)
        writer.writerow(["" if values[k] is None else values[k] for k in EXPORT_FIELDS])
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    yield buffer.getvalue()


def purge(factory: sessionmaker[Session], settings: Settings, actor: Actor) -> int:
    """Remove rows older than ``audit_retention_days``, leaving the anchor row; how many."""
    before = utcnow() - timedelta(days=settings.audit_retention_days)
    with transaction(factory) as session:
        return audit.purge(
            session,
            chain_key(settings),
            before,
            actor_kind=actor.kind.value,
            actor=actor.name,
            object_kind=ObjectKind.AUDIT.value,
            outcome=AuditOutcome.OK.value,
        )
