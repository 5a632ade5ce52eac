"""Decision records: what the gateway and the worker decided about one inbound mail.

Pure. Each stage has a record type; ``to_record`` gives the JSON object kept
on the queue row (``{"stage": ..., field: value}``, empty fields left out)
and ``from_record`` reads one back, so ``queue explain`` dispatches on types,
not on guessed keys. Rows written before the ``replay`` stage had a stage of
its own carry ``{"event": "replay"}``; ``from_record`` reads both. A record
of a stage this version does not know is kept whole as ``Unknown``, and
explained as its fields.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

from replygate.mail.timestamps import iso_z


class Stage(StrEnum):
    RCPT = "rcpt"
    DATA = "data"
    AUTHENTICATION = "authentication"
    ACCEPT = "accept"
    CLASSIFY = "classify"
    ROUTE = "route"
    SENDER = "sender"
    DMARC = "dmarc"
    BREAKER = "breaker"
    ATTACHMENTS = "attachments"
    EXTRACT = "extract"
    OPERATOR = "operator"
    REPLAY = "replay"
    TAKEN_BACK = "taken_back"
    ERROR = "error"


@dataclass(frozen=True)
class Decision:
    """One stage's record; subclasses name their stage and their fields."""

    stage: ClassVar[Stage]

    def to_record(self) -> dict[str, Any]:
        """The record as a new dict (``shared_record``'s copy)."""
        return dict(self.shared_record())

    def shared_record(self) -> Mapping[str, Any]:
        """The record, worked out once per decision (which is frozen) and the same dict
        each time, not to be changed: the gateway writes the same RCPT and DATA
        decisions on mail after mail, and serialises them as they are."""
        record: dict[str, Any] | None = self.__dict__.get("_record")
        if record is None:
            stage, names = _layout(type(self))
            record = {"stage": stage}
            for name in names:
                value = getattr(self, name)
                if value is not None:
                    record[name] = value
            object.__setattr__(self, "_record", record)
        return record


_LAYOUTS: dict[type[Decision], tuple[str, tuple[str, ...]]] = {}


def _layout(kind: type[Decision]) -> tuple[str, tuple[str, ...]]:
    """A record type's stage and field names, worked out once (every accepted mail writes four)."""
    layout = _LAYOUTS.get(kind)
    if layout is None:
        names = tuple(f.name for f in dataclasses.fields(kind))
        layout = _LAYOUTS[kind] = (kind.stage.value, names)
    return layout


@dataclass(frozen=True)
class RecipientAccepted(Decision):
    """RCPT: a live reply address (its token, thread, person) or our VERP bounce address."""

    stage = Stage.RCPT
    recipient: str
    kind: str
    token: str | None = None
    token_id: int | None = None
    thread_id: int | None = None
    user_id: int | None = None
    bounce_id: str | None = None


@dataclass(frozen=True)
class DataChecked(Decision):
    """DATA: one check of the acceptance policy (``check`` is ``sender`` or ``attachments``)."""

    stage = Stage.DATA
    check: str
    sender: str | None = None
    attachments: int | str | None = None
    policy: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Authenticated(Decision):
    """DATA: what the gateway's own SPF, DKIM, ARC and DMARC checks found (``mail_auth``
    is ``verify``); ``header`` is the Authentication-Results value stamped on the mail."""

    stage = Stage.AUTHENTICATION
    authserv_id: str
    spf: str
    dkim: str
    arc: str
    dmarc: str
    policy: str | None = None
    header: str | None = None


@dataclass(frozen=True)
class Stored(Decision):
    """Stored before the 250 reply (``via`` is ``smtp`` or ``pipe``)."""

    stage = Stage.ACCEPT
    via: str
    size: int

    def shared_record(self) -> Mapping[str, Any]:
        """The record, made directly: every accepted mail has a ``Stored`` of its own
        (its size), so there is nothing to share and no layout worth looking up."""
        return {"stage": _ACCEPT, "via": self.via, "size": self.size}


_ACCEPT = Stage.ACCEPT.value  # an enum member's value is a property, looked up each time


@dataclass(frozen=True)
class Classified(Decision):
    """Not a person's reply (auto-reply, bounce, loop); ``address`` is what a bounce did."""

    stage = Stage.CLASSIFY
    kind: str
    reasons: list[str] = field(default_factory=list)
    address: dict[str, Any] | None = None


@dataclass(frozen=True)
class Routed(Decision):
    """The reply address named ``thread`` and ``recipient``, or was ``refused``."""

    stage = Stage.ROUTE
    thread: int | None = None
    recipient: str | None = None
    refused: str | None = None


@dataclass(frozen=True)
class SenderRefused(Decision):
    stage = Stage.SENDER
    policy: str = "reject"


@dataclass(frozen=True)
class DmarcRefused(Decision):
    stage = Stage.DMARC
    result: str = "fail"


@dataclass(frozen=True)
class Braked(Decision):
    """The flood brake held it: ``count`` recent replies from this sender to this address."""

    stage = Stage.BREAKER
    count: int


@dataclass(frozen=True)
class AttachmentsRefused(Decision):
    stage = Stage.ATTACHMENTS


@dataclass(frozen=True)
class Extracted(Decision):
    """The reply was cut out (``layers`` are the rules used) and filed as ``message``.

    ``fallback`` says why the unquoted text (quote removed, signature kept) was filed
    instead of the reply: the reply came out empty, or as nothing but a sign-off, while
    the unquoted text held more.
    """

    stage = Stage.EXTRACT
    layers: list[str] = field(default_factory=list)
    degraded: bool = False
    message: int | None = None
    duplicate: bool | None = None
    fallback: str | None = None


@dataclass(frozen=True)
class OperatorAction(Decision):
    stage = Stage.OPERATOR
    action: str


@dataclass(frozen=True)
class Replayed(Decision):
    """An operator replayed the mail: what it was (``previous`` status and ``reason``) stays
    here, since the replay's own outcome is a decision after this one."""

    stage = Stage.REPLAY
    at: str
    previous: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class TakenBack(Decision):
    """A claim whose worker process was gone, put back in the queue."""

    stage = Stage.TAKEN_BACK
    at: str
    owner: str


@dataclass(frozen=True)
class Failed(Decision):
    stage = Stage.ERROR
    error: str


@dataclass(frozen=True)
class Unknown(Decision):
    """A record of a stage this version does not know, kept as it was."""

    stage = Stage.ERROR  # never written: ``to_record`` gives ``record`` back
    record: dict[str, Any] = field(default_factory=dict)

    def shared_record(self) -> Mapping[str, Any]:
        return self.record


_TYPES: dict[str, type[Decision]] = {
    t.stage.value: t
    for t in (
        RecipientAccepted,
        DataChecked,
        Authenticated,
        Stored,
        Classified,
        Routed,
        SenderRefused,
        DmarcRefused,
        Braked,
        AttachmentsRefused,
        Extracted,
        OperatorAction,
        Replayed,
        TakenBack,
        Failed,
    )
}


def from_record(record: Mapping[str, Any]) -> Decision:
    """The typed record of one stored decision (``Unknown`` when it fits no type)."""
    kind = _TYPES.get(str(record.get("stage") or record.get("event") or ""))
    if kind is None:
        return Unknown(record=dict(record))
    names = {f.name for f in dataclasses.fields(kind)}
    extra = set(record) - names - {"stage", "event"}
    try:
        if extra:
            raise TypeError(f"unexpected fields {sorted(extra)}")
        return kind(**{k: v for k, v in record.items() if k in names})
    except TypeError:
        return Unknown(record=dict(record))


def explain(row: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Plain-words account of what happened to one inbound mail (``queue explain``)."""
    lines = [
        f"Mail {row['id']} from {row['mail_from'] or '<> (a bounce)'} to {row['rcpt']}, "
        f"received {iso_z(row['received_at'])}, {row['size']} bytes.",
    ]
    lines.extend("- " + sentence(from_record(r)) for r in records)
    final = f"Now {row['status']}"
    lines.append(final + (f": {row['reason']}." if row["reason"] else "."))
    return lines


def sentence(d: Decision) -> str:
    """One decision in words."""
    match d:
        case RecipientAccepted():
            return f"The gateway accepted the recipient ({_fields(d)})."
        case Stored():
            return f"The gateway stored the message before answering 250 (via {d.via})."
        case Authenticated():
            text = (
                f"The gateway checked the sender's domain as {d.authserv_id}: SPF {d.spf}, "
                f"DKIM {d.dkim}, ARC {d.arc}, DMARC {d.dmarc}"
            )
            return text + (f" (the domain's policy: {d.policy})." if d.policy else ".")
        case DataChecked():
            return f"The gateway checked the {d.check} at DATA ({_fields(d, 'check')})."
        case AttachmentsRefused():
            return "The attachments were refused by the attachment policy."
        case Classified():
            text = f"Classified as {d.kind}: {'; '.join(d.reasons) or d.kind}."
            a = d.address
            if isinstance(a, dict) and a.get("counted") is False and a.get("why"):
                text += f" Not counted as a bounce: {a['why']}."
            elif isinstance(a, dict) and a.get("matched"):
                status, count = a["address_status"], a["bounce_count"]
                text += f" {a['user']} is now {status} ({count} hard bounces)."
            return text + " It is never filed nor notified on."
        case Routed(refused=str() as refused):
            return f"The reply address was refused: {refused}."
        case Routed():
            return f"The reply address names thread {d.thread} and {d.recipient}."
        case SenderRefused():
            return f"The From address did not match (sender policy: {d.policy})."
        case DmarcRefused():
            return (
                "A trusted Authentication-Results header (a trusted relay's or the gateway's "
                "own) says DMARC failed, or did not pass, for the From domain."
            )
        case Braked():
            return f"Flood brake: {d.count} recent replies from this sender to this address."
        case Extracted():
            text = f"Reply extracted (rules used: {', '.join(d.layers) or 'none needed'})"
            if d.degraded:
                text += "; the time budget ran out, so a cheaper cut was used"
            if d.fallback:
                text += (
                    f"; {d.fallback}, so the text with only the quote removed"
                    " (signature kept) was filed instead"
                )
            if d.duplicate and d.message:
                filed = f"this mail was filed already as message {d.message}"
                return text + f"; {filed}, so nothing new was filed."
            if d.duplicate:
                return text + "; the same mail had been filed already, so nothing new was filed."
            if d.message:
                return text + f"; filed as message {d.message}."
            return text + "."
        case OperatorAction():
            return f"An operator chose to {d.action} it."
        case Replayed(previous=str() as previous):
            was = f"{previous}: {d.reason}" if d.reason else previous
            return f"Replayed by an operator at {iso_z(d.at)} (it was {was})."
        case Replayed():
            return f"Replayed by an operator at {iso_z(d.at)}."
        case TakenBack():
            return f"Taken back at {iso_z(d.at)} from {d.owner}, a worker that was gone."
        case Failed():
            return f"Processing failed: {d.error}."
        case Unknown(record=record):
            stage = record.get("stage") or record.get("event")
            rest = ", ".join(f"{k}={v}" for k, v in record.items() if k not in ("stage", "event"))
            return f"{stage}: {rest}"
    raise AssertionError(f"no sentence for {d!r}")


def _fields(d: Decision, *left_out: str) -> str:
    shown = d.to_record().items()
    return ", ".join(f"{k}={v}" for k, v in shown if k != "stage" and k not in left_out)
