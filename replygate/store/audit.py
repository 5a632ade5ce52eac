"""The audit trail as a hash chain: rows are appended under one lock and checked in order.

Each row's ``mac`` is HMAC-SHA256, under a key the database never holds, of
the row's fields and ``prev_mac``, the ``mac`` of the row before it; ``seq``
counts from 1 without gaps. So whoever can write the database but not read
the key cannot change a row (its mac no longer matches), remove one (a gap
in ``seq``, or the next row no longer follows), insert one, or reorder them.
Removing the newest rows leaves a chain that still holds: ``verify`` gives
the head (seq and mac) so an operator can compare it with one kept elsewhere.

Rows older than the retention are removed by ``purge``, which first appends
a row naming the first row kept and its ``prev_mac``: that row is the only
start, besides ``seq`` 1 after ``GENESIS``, that ``verify`` accepts.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from replygate.store import dialect
from replygate.store.models import AuditEvent, utcnow

GENESIS = "0" * 64  # the prev_mac of the first row ever written
PURGED = "audit_purged"  # the action of the row that anchors a purged trail

# The fields the mac covers, in this order (everything but the row's id and its mac).
CHAINED = (
    "seq", "at", "actor_kind", "actor", "actor_user_id", "action", "object_kind",
    "object_id", "thread_id", "address", "user_agent", "outcome", "detail", "prev_mac",
)  # fmt: skip


def chain_mac(key: bytes, fields: Mapping[str, Any]) -> str:
    """The mac of a row with these ``CHAINED`` fields (its ``prev_mac`` among them)."""
    values = [_canonical(fields[name]) for name in CHAINED]
    encoded = json.dumps(values, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    return hmac.new(key, encoded.encode(), hashlib.sha256).hexdigest()


def _canonical(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    return value


def append(session: Session, key: bytes, **fields: Any) -> None:
    """Add a row after the newest one, in this transaction (which holds the trail's lock)."""
    append_many(session, key, [fields])


def append_many(session: Session, key: bytes, many: Sequence[Mapping[str, Any]]) -> None:
    """Add one row per ``many`` entry after the newest, in their order: the lock taken and
    the head read once, each row chained to the one before it in memory. Written at once
    by one Core INSERT of many rows: no ORM objects, and no ids read back (nothing asks
    for them), so PostgreSQL's driver sends the rows in one pipelined round trip."""
    if not many:
        return
    dialect.serialise(session, "audit")
    head = session.execute(
        select(AuditEvent.seq, AuditEvent.mac).order_by(AuditEvent.seq.desc()).limit(1)
    ).first()
    seq, prev_mac = (head.seq + 1, head.mac) if head is not None else (1, GENESIS)
    at = utcnow()
    rows = []
    for fields in many:
        values: dict[str, Any] = {name: None for name in CHAINED}
        values.update(detail={}, at=at)
        values.update(fields)
        values.update(seq=seq, prev_mac=prev_mac)
        values["mac"] = chain_mac(key, values)
        rows.append(values)
        seq, prev_mac = seq + 1, values["mac"]
    session.connection().execute(insert(AuditEvent), rows)


def fields_of(row: AuditEvent) -> dict[str, Any]:
    return {name: getattr(row, name) for name in CHAINED}


@dataclass(frozen=True)
class Verdict:
    """What ``verify`` found: how many rows it checked, the head, and the first problem."""

    checked: int
    head_seq: int | None
    head_mac: str | None
    bad_seq: int | None = None
    problem: str | None = None

    @property
    def intact(self) -> bool:
        return self.problem is None


def verify(session: Session, key: bytes, *, batch: int = 1000) -> Verdict:
    """Check every row in ``seq`` order; the first that does not hold is named."""
    anchors = {
        (row.detail.get("kept_from"), row.detail.get("prev_mac"))
        for row in session.scalars(select(AuditEvent).where(AuditEvent.action == PURGED))
    }
    checked = 0
    previous: AuditEvent | None = None
    for row in _in_order(session, batch):
        problem = _problem(key, row, previous, anchors)
        if problem is not None:
            return Verdict(checked, row.seq, row.mac, bad_seq=row.seq, problem=problem)
        checked += 1
        previous = row
    if previous is None:
        return Verdict(0, None, None)
    return Verdict(checked, previous.seq, previous.mac)


def _problem(
    key: bytes, row: AuditEvent, previous: AuditEvent | None, anchors: set[tuple[Any, Any]]
) -> str | None:
    if previous is None:
        started = (row.seq == 1 and row.prev_mac == GENESIS) or (row.seq, row.prev_mac) in anchors
        if not started:
            return f"row {row.seq} is the first, but the trail starts at 1 or where a purge left it"
    elif row.seq != previous.seq + 1:
        gone = (
            f"{previous.seq + 1}"
            if row.seq == previous.seq + 2
            else (f"{previous.seq + 1}–{row.seq - 1}")
        )
        return f"row {gone} is missing (between {previous.seq} and {row.seq})"
    elif row.prev_mac != previous.mac:
        return f"row {row.seq} does not follow row {previous.seq} (its prev_mac differs)"
    if not hmac.compare_digest(row.mac, chain_mac(key, fields_of(row))):
        return f"row {row.seq} was changed after it was written (its mac does not match)"
    return None


def _in_order(session: Session, batch: int) -> Iterator[AuditEvent]:
    after = 0
    while True:
        rows = session.scalars(
            select(AuditEvent).where(AuditEvent.seq > after).order_by(AuditEvent.seq).limit(batch)
        ).all()
        if not rows:
            return
        yield from rows
        after = rows[-1].seq
        session.expunge_all()


def purge(session: Session, key: bytes, before: datetime, **anchor_fields: Any) -> int:
    """Remove rows written before ``before``, leaving an anchor row; how many went."""
    dialect.serialise(session, "audit")
    first_kept = session.execute(
        select(AuditEvent.seq, AuditEvent.prev_mac)
        .where(AuditEvent.at >= before)
        .order_by(AuditEvent.seq)
        .limit(1)
    ).first()
    head = session.scalar(select(func.max(AuditEvent.seq)))
    if head is None:
        return 0
    if first_kept is None:  # everything is old: the anchor row itself is the new start
        kept_from, prev_mac = (
            head + 1,
            session.scalar(select(AuditEvent.mac).where(AuditEvent.seq == head)),
        )
    else:
        kept_from, prev_mac = first_kept.seq, first_kept.prev_mac
    removed = (
        session.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.seq < kept_from)
        )
        or 0
    )
    if removed == 0:
        return 0
    detail = {"kept_from": kept_from, "prev_mac": prev_mac, "removed": removed}
    append(session, key, action=PURGED, detail=detail, **anchor_fields)
    session.execute(delete(AuditEvent).where(AuditEvent.seq < kept_from))
    return removed
