"""The inbound queue: raw mail committed before 250, claimed by engine workers.

Claiming commits a ``processing`` mark with a lease and the claiming worker
process's id (``claimed_by``). A worker that dies leaves its claims to be
taken back (``take_back_dead``) as soon as another worker sees that their
owner is gone (``dialect.hold_owner``: a lock the process holds while it
lives); a claim with no owner is reclaimed when its lease runs out, or
replayed by an operator.
On PostgreSQL the claim uses ``FOR UPDATE SKIP LOCKED`` so any number of
workers on any number of hosts never take the same mail; SQLite serialises
writers itself (``BEGIN IMMEDIATE``, see ``db.py``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Select, and_, exists, func, or_, select, update
from sqlalchemy.orm import Session, aliased, sessionmaker

from replygate.errors import Invalid, NotFound
from replygate.store import dialect, sealed
from replygate.store.db import bound_engine, transaction, updated
from replygate.store.keyring import SealBroken
from replygate.store.models import InboundMail, InboundStatus, utcnow

# The PostgreSQL channel notified when mail is queued; engines LISTEN on it.
CHANNEL = "replygate_inbound"


def enqueue(
    session: Session,
    *,
    mail_from: str,
    rcpt: str,
    raw: bytes,
    message_id: str | None,
    peer: str | None = None,
    decisions: list[dict] | None = None,
) -> InboundMail:
    """Add one accepted mail for one recipient (the caller commits)."""
    row = InboundMail(
        mail_from=mail_from,
        rcpt=rcpt,
        raw=raw,
        size=len(raw),
        message_id=message_id,
        peer=peer,
        status=InboundStatus.QUEUED,
        attempts=0,
        decisions=decisions or [],
    )
    session.add(row)
    session.flush()
    return row


def notify_queued(session: Session) -> None:
    """On PostgreSQL, wake the engines listening on ``CHANNEL`` once this transaction commits.

    PostgreSQL delivers a notification only on commit, and one per channel
    and payload per transaction. Elsewhere nothing: engines poll.
    """
    dialect.notify(session, CHANNEL)


RETRY_DELAY = timedelta(seconds=30)
# Made once: an alias built per claim costs more CPU than the claim's query
# (workers poll every 50 ms when idle).
_EARLIER = aliased(InboundMail, name="earlier")


def _claimable(now: datetime, lease: timedelta) -> tuple[Select[InboundMail], Select[InboundMail]]:
    """Queued mail (a retry only once its delay has passed), and expired claims.

    Two selects, each read in id order from the status index so that a
    ``LIMIT`` stops it early (one select joined by OR would sort every
    candidate first); the caller takes the lowest ids of both.

    A reply waits while an earlier reply to the same thread is being
    processed or waits out its retry delay (two seeks in
    ``ix_inbound_mail_thread_status``); an earlier one that is claimable
    itself comes first in id order, so a claim takes a thread's replies as a
    run from its oldest (``claim_mail`` keeps only such runs) and one worker
    files them in arrival order (the gateway records the thread at enqueue).
    """
    earlier = _EARLIER
    same_thread_before = (
        earlier.thread_id == InboundMail.thread_id,
        earlier.id < InboundMail.id,
    )
    behind_processing = exists().where(
        earlier.status == InboundStatus.PROCESSING, *same_thread_before
    )
    behind_retry = exists().where(
        earlier.status == InboundStatus.QUEUED,
        *same_thread_before,
        earlier.claimed_at >= now - RETRY_DELAY,
    )
    in_order = (~behind_processing, ~behind_retry)
    queued = select(InboundMail).where(
        InboundMail.status == InboundStatus.QUEUED,
        or_(InboundMail.claimed_at.is_(None), InboundMail.claimed_at < now - RETRY_DELAY),
        *in_order,
    )
    expired = select(InboundMail).where(
        InboundMail.status == InboundStatus.PROCESSING,
        or_(
            InboundMail.claimed_at < now - lease,
            # Neither a lease nor an owner (an operator's release before
            # releases had an owner): no one will ever file it.
            and_(InboundMail.claimed_at.is_(None), InboundMail.claimed_by.is_(None)),
        ),
        *in_order,
    )
    return queued.order_by(InboundMail.id), expired.order_by(InboundMail.id)


@dataclass(frozen=True)
class ClaimedMail:
    """A claimed queue row's envelope and raw bytes: the engine needs no second read."""

    id: int
    mail_from: str
    rcpt: str
    raw: bytes
    thread_id: int | None = None


def claim_mail(
    factory: sessionmaker[Session],
    *,
    limit: int = 1,
    lease_seconds: float = 300,
    now: datetime | None = None,
    owner: str | None = None,
) -> list[ClaimedMail]:
    """Mark up to ``limit`` claimable mails ``processing``, oldest first, and return them.

    ``owner`` is the claiming worker process's id, recorded on each claim so
    that its claims are taken back once it is gone (``take_back_dead``).
    Several replies of one thread may be claimed together, as a run from the
    thread's oldest undecided reply, in id order: the worker files them in
    that order. Four statements whatever the batch size: the two selects of
    ``_claimable`` (``SKIP LOCKED`` on PostgreSQL), one read of the earlier
    replies of the claimed threads, and one update of all the claimed rows.
    """
    now = now or utcnow()
    with transaction(factory) as session:
        claimed: list[ClaimedMail] = []
        for candidates in _claimable(now, timedelta(seconds=lease_seconds)):
            stmt = candidates.with_only_columns(
                InboundMail.id,
                InboundMail.mail_from,
                InboundMail.rcpt,
                InboundMail.row_uid,
                InboundMail.raw_sealed,
                InboundMail.thread_id,
            ).limit(limit)
            stmt = dialect.locked(stmt, session, skip_locked=True)
            for row_id, mail_from, rcpt, row_uid, stored, thread_id in session.execute(stmt):
                try:
                    assert row_uid is not None and stored is not None  # never purged unfiled
                    raw = sealed.unseal("inbound_mail", "raw", row_uid, stored, row_id=row_id)
                except SealBroken as exc:
                    _hold_broken(session, row_id, now, exc)
                    continue
                claimed.append(ClaimedMail(row_id, mail_from, rcpt, raw, thread_id))
        claimed = _thread_runs(session, sorted(claimed, key=lambda m: m.id)[:limit])
        if claimed:
            session.execute(
                update(InboundMail)
                .where(InboundMail.id.in_([m.id for m in claimed]))
                .values(
                    status=InboundStatus.PROCESSING,
                    claimed_at=now,
                    claimed_by=owner,
                    attempts=InboundMail.attempts + 1,
                )
                .execution_options(synchronize_session=False)
            )
        return claimed


# Why a mail whose stored bytes do not open waits for an operator (never filed as empty).
SEAL_BROKEN_REASON = (
    "its stored mail does not open with the encryption keyring (wrong key, or the "
    "value was changed or moved from another row); restore the row or the key file"
)


def _hold_broken(session: Session, row_id: int, now: datetime, exc: SealBroken) -> None:
    """Hold a claimable mail whose raw bytes do not open (``unseal`` logged it)."""
    row = session.get(InboundMail, row_id)
    if row is None:
        return
    row.status, row.claimed_at, row.claimed_by = InboundStatus.HELD, None, None
    row.reason = SEAL_BROKEN_REASON
    row.processed_at = now
    note(row, {"stage": "store", "at": now.isoformat(), "error": str(exc)})


def _thread_runs(session: Session, claimed: list[ClaimedMail]) -> list[ClaimedMail]:
    """``claimed`` without the replies that an undecided earlier reply of their thread,
    not among them, must precede.

    The select's rule sees only committed rows: on PostgreSQL another
    worker's claim may hold a thread's oldest replies, locked but still
    ``queued``, which ``SKIP LOCKED`` passed over; the later ones are left
    for after them. One statement, over the claimed threads only.
    """
    threads: dict[int, int] = {}  # thread → its newest claimed reply
    for mail in claimed:
        if mail.thread_id is not None:
            threads[mail.thread_id] = max(threads.get(mail.thread_id, 0), mail.id)
    if not threads:
        return claimed
    taken = {mail.id for mail in claimed}
    first_missing: dict[int, int] = {}
    for row_id, thread_id in session.execute(
        select(InboundMail.id, InboundMail.thread_id).where(
            InboundMail.thread_id.in_(list(threads)),
            InboundMail.id < max(threads.values()),
            InboundMail.status.in_((InboundStatus.QUEUED, InboundStatus.PROCESSING)),
        )
    ):
        if thread_id is None or row_id in taken:
            continue
        if row_id < first_missing.get(thread_id, threads[thread_id] + 1):
            first_missing[thread_id] = row_id
    return [
        mail
        for mail in claimed
        if mail.thread_id is None or mail.id < first_missing.get(mail.thread_id, mail.id + 1)
    ]


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


def any_claimable(
    factory: sessionmaker[Session], *, lease_seconds: float = 300, now: datetime | None = None
) -> bool:
    """Whether ``claim_mail`` would find a mail, read without claiming anything.

    For SQLite's idle polls: with a factory of ``db.snapshot_reads`` the
    read takes no write lock, where an empty claim would queue for it behind
    the gateway's commits only to find nothing. The same rules as the claim,
    so a mail waiting out its retry delay does not keep the engine busy.
    """
    now = now or utcnow()
    with factory() as session:
        return any(
            session.execute(stmt.with_only_columns(InboundMail.id).limit(1)).first() is not None
            for stmt in _claimable(now, timedelta(seconds=lease_seconds))
        )


def claim(
    factory: sessionmaker[Session],
    *,
    limit: int = 1,
    lease_seconds: float = 300,
    now: datetime | None = None,
) -> list[int]:
    """Mark up to ``limit`` claimable mails ``processing`` and return their ids."""
    claimed = claim_mail(factory, limit=limit, lease_seconds=lease_seconds, now=now)
    return [m.id for m in claimed]


def claim_one(factory: sessionmaker[Session], inbound_id: int) -> bool:
    """Claim one queued mail by id (an operator's replay); False if another worker has it."""
    with transaction(factory) as session:
        result = updated(
            session,
            update(InboundMail)
            .where(InboundMail.id == inbound_id, InboundMail.status == InboundStatus.QUEUED)
            .values(
                status=InboundStatus.PROCESSING,
                claimed_at=utcnow(),
                attempts=InboundMail.attempts + 1,
            ),
        )
        return bool(result.rowcount)


def get(session: Session, inbound_id: int) -> InboundMail:
    row = session.get(InboundMail, inbound_id)
    if row is None:
        raise NotFound(f"no queued mail with id {inbound_id}")
    return row


def lock(session: Session, inbound_id: int) -> InboundMail:
    """The row, locked for this transaction on PostgreSQL (SQLite holds the write lock already)."""
    stmt = dialect.locked(select(InboundMail).where(InboundMail.id == inbound_id), session)
    row = session.scalars(stmt).first()
    if row is None:
        raise NotFound(f"no queued mail with id {inbound_id}")
    return row


def lock_many(session: Session, ids: Sequence[int]) -> dict[int, InboundMail]:
    """The rows by id, locked for this transaction on PostgreSQL, in one statement.

    Locked in id order, the order every worker takes them in, so two
    transactions never wait on each other in a cycle.
    """
    stmt = select(InboundMail).where(InboundMail.id.in_(list(ids))).order_by(InboundMail.id)
    stmt = dialect.locked(stmt, session)
    return {row.id: row for row in session.scalars(stmt)}


def record(row: InboundMail, status: str, reason: str | None, decision: dict | None = None) -> None:
    """Set the outcome and append to the decision history operators read."""
    if status not in set(InboundStatus):
        raise ValueError(status)
    row.status = status
    row.reason = reason
    row.processed_at = utcnow()
    if decision is not None:
        note(row, decision)


def put_back(row: InboundMail) -> None:
    """Return a claimed mail to the queue undecided, its claim not counted as an attempt
    (an earlier reply of its thread is to be retried first)."""
    row.status = InboundStatus.QUEUED
    row.claimed_at = row.claimed_by = None
    row.attempts = max(0, (row.attempts or 1) - 1)


def note(row: InboundMail, decision: dict) -> None:
    """Append a decision without changing the status (a new list: a sealed column is
    written when assigned). Records that do not open are replaced by one saying so."""
    try:
        earlier = row.decisions or []
    except SealBroken as exc:
        earlier = [{"stage": "store", "at": utcnow().isoformat(), "error": str(exc)}]
    row.decisions = [*earlier, decision]


def recent_filed(session: Session, *, rcpt: str, since: datetime) -> int:
    """How many mails to ``rcpt`` were filed since ``since`` (the flood brake).

    Counted per reply address, whatever the envelope sender: a reply address
    names one person, whose From every filed mail to it has matched, while
    anyone may write any MAIL FROM.
    """
    return int(
        session.scalar(
            select(func.count())
            .select_from(InboundMail)
            .where(
                InboundMail.rcpt == rcpt,
                InboundMail.status == InboundStatus.FILED,
                InboundMail.received_at >= since,
            )
        )
        or 0
    )


def recent_filed_many(session: Session, rcpts: Iterable[str], *, since: datetime) -> dict[str, int]:
    """``recent_filed`` for many reply addresses in one statement; absent means 0."""
    wanted = set(rcpts)
    if not wanted:
        return {}
    rows = session.execute(
        select(InboundMail.rcpt, func.count())
        .where(
            InboundMail.rcpt.in_(wanted),
            InboundMail.status == InboundStatus.FILED,
            InboundMail.received_at >= since,
        )
        .group_by(InboundMail.rcpt)
    )
    return {rcpt: int(n) for rcpt, n in rows}


def requeue(session: Session, ids: Sequence[int]) -> list[int]:
    """Put mails back in the queue for the engine to process again.

    Any state may be replayed: filing is idempotent (one message per Message-ID
    and token), and a worker still holding a ``processing`` row finds it no
    longer claimed when it writes, and leaves it to the worker that claims it next.
    """
    done = []
    for inbound_id in ids:
        row = get(session, inbound_id)
        if row.raw_sealed is None:
            raise Invalid(f"mail {inbound_id} was purged; its raw bytes are gone")
        # A decision of its own that keeps what the mail was (status, reason).
        was = {"previous": str(row.status)} | ({"reason": row.reason} if row.reason else {})
        row.status = InboundStatus.QUEUED
        row.claimed_at = row.claimed_by = None
        note(row, {"stage": "replay", "at": utcnow().isoformat(), **was})
        done.append(inbound_id)
    return done


def failed_ids(session: Session) -> list[int]:
    return list(
        session.scalars(select(InboundMail.id).where(InboundMail.status == InboundStatus.FAILED))
    )
