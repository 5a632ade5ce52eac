"""Writes a transaction holds back and makes together as its next flush starts, or
as it commits, whichever comes first.

A module that defers rows registers its writer here under a name of ``ORDER``,
which says the order they run in: rows before what refers to them (a new
message before the notifications and the participants' marks that name it),
whatever order the modules happened to be imported in. They run before the
ORM's own writes of that flush, so a deferred row refers only to rows stored
already or deferred before it.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import event
from sqlalchemy.orm import ColumnProperty, Session

Writer = Callable[[Session], None]

ORDER = ("new_messages", "outbox", "participant_marks")
_WRITERS: dict[str, Writer] = {}


def stored_columns(model: type) -> list[tuple[str, str]]:
    """(attribute, column name) of every column of ``model``'s rows but its id: what a
    deferred writer reads off a row object to insert it with Core."""
    return [
        (prop.key, prop.columns[0].name)  # type: ignore[attr-defined]
        for prop in model.__mapper__.column_attrs  # type: ignore[attr-defined]
        if isinstance(prop, ColumnProperty) and prop.key != "id"
    ]


def register(name: str) -> Callable[[Writer], Writer]:
    if name not in ORDER:
        raise ValueError(f"{name!r} is not in deferred_writes.ORDER")

    def add(writer: Writer) -> Writer:
        _WRITERS[name] = writer
        return writer

    return add


def write_all(session: Session) -> None:
    for name in ORDER:
        writer = _WRITERS.get(name)
        if writer is not None:
            writer(session)


@event.listens_for(Session, "before_flush")
def _before_flush(session: Session, flush_context: object, instances: object) -> None:
    write_all(session)


@event.listens_for(Session, "before_commit")
def _before_commit(session: Session) -> None:
    write_all(session)
