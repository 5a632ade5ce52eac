"""Claim owners: which worker process holds a claim, and taking back the claims of
the dead.

Each claim records its worker process's id (``owner_id``); the process
marks itself alive while it lives (``hold_owner``: a file lock on SQLite, an
advisory lock on PostgreSQL, both dropped with the process). Any worker
puts back in the queue the claims of owners that are gone
(``take_back_dead``), and a living worker whose round failed on the
database gives back its own (``give_back``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Collection
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from replygate.store import dialect
from replygate.store.db import bound_engine, transaction
from replygate.store.inbound import note
from replygate.store.models import InboundMail, InboundStatus, utcnow


def hold_owner(factory: sessionmaker[Session], owner: str) -> Callable[[], None]:
    """Mark the worker process ``owner`` alive while it lives; call the result to let go."""
    bind = bound_engine(factory)
    if bind is None:
        raise ValueError("claims need a session maker bound to an engine")
    return dialect.hold_owner(bind, owner)


def owner_id() -> str:
    """A claiming process's id: host, pid and start time (a pid is reused)."""
    started = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%f")
    return f"{socket.gethostname()}:{os.getpid()}:{started}"


# This process's owner id for claims made outside a worker's run (an operator's
# release), marked alive until the process exits; made on first use. The one
# piece of global state here, beside dialect's write turns.
_PROCESS_OWNER: dict[str, tuple[str, Callable[[], None]]] = {}


def process_owner(factory: sessionmaker[Session], tag: str) -> str:
    """An owner id for this process on ``factory``'s database, held until the process
    exits (the OS or the server then drops the mark): a claim it records is taken
    back by a worker if the process dies before finishing."""
    bind = bound_engine(factory)
    key = bind.url.render_as_string(hide_password=True) if bind is not None else ""
    if key not in _PROCESS_OWNER:
        owner = f"{tag}:{owner_id()}"
        _PROCESS_OWNER[key] = (owner, hold_owner(factory, owner))
    return _PROCESS_OWNER[key][0]


def take_back_dead(factory: sessionmaker[Session], *, now: datetime | None = None) -> list[int]:
    """Put back in the queue every ``processing`` claim whose owner process is gone.

    A claim of a living owner (this process included) is left alone, and so
    is one with no owner, which its lease covers. Each mail taken back notes
    whose claim it was; it keeps its place, so the thread-order rule files it
    before the later replies of its thread.
    """
    now = now or utcnow()
    with transaction(factory) as session:
        owners = set(
            session.scalars(
                select(InboundMail.claimed_by)
                .where(
                    InboundMail.status == InboundStatus.PROCESSING,
                    InboundMail.claimed_by.is_not(None),
                )
                .distinct()
            )
        )
        dead = dialect.dead_owners(session, {o for o in owners if o is not None})
        return _put_back(session, dead, now, "taken_back") if dead else []


def give_back(factory: sessionmaker[Session], owner: str) -> list[int]:
    """Put back in the queue the ``processing`` claims of ``owner``, a living worker
    whose round failed because the database went away: it holds none between rounds,
    so they wait for nobody. They go back as they came, the claim not counted."""
    with transaction(factory) as session:
        return _put_back(session, {owner}, utcnow(), "given_back", uncount=True)


def _put_back(
    session: Session, owners: Collection[str], now: datetime, stage: str, *, uncount: bool = False
) -> list[int]:
    stmt = (
        select(InboundMail)
        .where(InboundMail.status == InboundStatus.PROCESSING, InboundMail.claimed_by.in_(owners))
        .order_by(InboundMail.id)
    )
    rows = list(session.scalars(dialect.locked(stmt, session, skip_locked=True)))
    for row in rows:
        owner = row.claimed_by
        row.status, row.claimed_at, row.claimed_by = InboundStatus.QUEUED, None, None
        if uncount:
            row.attempts = max(0, (row.attempts or 0) - 1)
        # The record of mail.decisions.TakenBack (the store does not import mail).
        note(row, {"stage": stage, "at": now.isoformat(), "owner": owner})
    return [row.id for row in rows]


def owner_alive(factory: sessionmaker[Session], owner: str) -> bool:
    """Whether ``owner``'s mark of being alive is still held (``hold_owner``); a
    PostgreSQL restart, or its backend terminated, drops it with the connection."""
    with factory() as session:
        return not dialect.dead_owners(session, {owner})
