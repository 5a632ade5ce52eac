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

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Select, and_, exists, func, or_, select, update
from sqlalchemy.orm import Session, aliased, defer, sessionmaker

from replygate.errors import Invalid, NotFound
from replygate.store import dialect, sealed
from replygate.store.db import transaction, updated
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
    threads: int | None = None,
    max_bytes: int | None = None,
) -> list[ClaimedMail]:
    """Mark up to ``limit`` claimable mails ``processing``, oldest first, and return them.

    ``owner`` is the claiming worker process's id, recorded on each claim so
    that its claims are taken back once it is gone (``take_back_dead``).
    Several replies of one thread may be claimed together, as a run from the
    thread's oldest undecided reply, in id order: the worker files them in
    that order. ``threads`` caps how many threads' runs one claim takes, so
    that another worker claiming beside it finds the next threads' replies
    rather than only later replies of threads already claimed; ``max_bytes``
    caps the raw bytes of a claim (at least one mail is taken), read only for
    the mails kept. Five statements whatever the batch size: the two selects
    of ``_claimable`` (``SKIP LOCKED`` on PostgreSQL), one read of the
    earlier replies of the claimed threads, one of the raw bytes, and one
    update of all the claimed rows.
    """
    now = now or utcnow()
    with transaction(factory) as session:
        found: list[_Candidate] = []
        for candidates in _claimable(now, timedelta(seconds=lease_seconds)):
            stmt = candidates.with_only_columns(
                InboundMail.id,
                InboundMail.mail_from,
                InboundMail.rcpt,
                InboundMail.thread_id,
                InboundMail.size,
            ).limit(limit)
            stmt = dialect.locked(stmt, session, skip_locked=True)
            found += [
                (r.id, r.mail_from, r.rcpt, r.thread_id, r.size) for r in session.execute(stmt)
            ]
        kept = _within(sorted(found)[:limit], threads=threads, max_bytes=max_bytes)
        envelopes = [ClaimedMail(i, mail_from, rcpt, b"", t) for i, mail_from, rcpt, t, _ in kept]
        claimed = _with_raw(session, _thread_runs(session, envelopes), now)
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


# A claimable mail's id, envelope sender and recipient, thread and size.
_Candidate = tuple[int, str, str, int | None, int]


def _within(
    found: list[_Candidate],
    *,
    threads: int | None,
    max_bytes: int | None,
) -> list[_Candidate]:
    """The candidates (in id order) of the first ``threads`` threads, and those of no
    thread (they wait for no other mail), up to ``max_bytes`` in all: what is cut past
    the budget is a suffix, so each thread keeps a run."""
    seen: set[int] = set()
    kept: list[_Candidate] = []
    total = 0
    for row in found:
        _, _, _, thread_id, size = row
        if thread_id is not None and thread_id not in seen:
            if threads is not None and len(seen) >= threads:
                continue
            seen.add(thread_id)
        total += size or 0
        if kept and max_bytes is not None and total > max_bytes:
            break
        kept.append(row)
    return kept


def _with_raw(session: Session, claimed: list[ClaimedMail], now: datetime) -> list[ClaimedMail]:
    """``claimed`` with each mail's raw bytes, opened; one whose bytes do not open is held
    and left out."""
    if not claimed:
        return []
    stored = {
        row_id: (row_uid, raw)
        for row_id, row_uid, raw in session.execute(
            select(InboundMail.id, InboundMail.row_uid, InboundMail.raw_sealed).where(
                InboundMail.id.in_([m.id for m in claimed])
            )
        )
    }
    out = []
    for mail in claimed:
        row_uid, raw = stored[mail.id]
        try:
            assert row_uid is not None and raw is not None  # never purged unfiled
            opened = sealed.unseal("inbound_mail", "raw", row_uid, raw, row_id=mail.id)
        except SealBroken as exc:
            _hold_broken(session, mail.id, now, exc)
            continue
        out.append(dataclasses.replace(mail, raw=opened))
    return out


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
    transactions never wait on each other in a cycle. The raw bytes are not
    read: the claim that handed out these ids read them already (up to a
    claim's ``max_bytes``), and deciding does not look at them again.
    """
    stmt = (
        select(InboundMail)
        .where(InboundMail.id.in_(list(ids)))
        .order_by(InboundMail.id)
        .options(defer(InboundMail.raw_sealed))
    )
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
