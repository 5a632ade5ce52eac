"""Sealed attributes: plain on the object, ciphertext in the row, refused in queries."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import LargeBinary, create_engine, insert, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from replygate.store import keyring
from replygate.store.keyring import Keyring, SealBroken
from replygate.store.sealed import JSON, REGISTRY, TEXT, Sealed, seal_row


class _Base(DeclarativeBase):
    pass


class Note(_Base):
    __tablename__ = "notes_for_sealing"

    id: Mapped[int] = mapped_column(primary_key=True)
    row_uid: Mapped[bytes | None] = mapped_column(LargeBinary(16))
    body_sealed: Mapped[bytes | None] = mapped_column("body", LargeBinary)
    tags_sealed: Mapped[bytes | None] = mapped_column("tags", LargeBinary)
    body = Sealed[str]("body", TEXT)
    tags = Sealed[list[str]]("tags", JSON)


@pytest.fixture
def session(tmp_path: Path) -> Session:
    keyring.install(Keyring.create(tmp_path / "keys"))
    engine = create_engine("sqlite://")
    _Base.metadata.create_all(engine)
    return Session(engine)


def test_the_row_holds_ciphertext_and_the_object_plain_text(session: Session) -> None:
    session.add(Note(body="glucose 7.9 mmol/L", tags=["lab"]))
    session.commit()
    stored = session.connection().exec_driver_sql("SELECT body, tags FROM notes_for_sealing").one()
    assert b"glucose" not in stored[0] and b"lab" not in stored[1]
    session.expunge_all()
    note = session.scalars(select(Note)).one()
    assert (note.body, note.tags) == ("glucose 7.9 mmol/L", ["lab"])


def test_a_value_copied_from_another_row_does_not_open_and_is_not_empty(session: Session) -> None:
    session.add_all([Note(body="first patient"), Note(body="second patient")])
    session.commit()
    connection = session.connection()
    connection.exec_driver_sql(
        "UPDATE notes_for_sealing SET body = (SELECT body FROM notes_for_sealing WHERE id = 1) "
        "WHERE id = 2"
    )
    session.commit()
    session.expunge_all()
    second = session.get(Note, 2)
    assert second is not None
    with pytest.raises(SealBroken):
        _ = second.body


@pytest.mark.parametrize(
    "query",
    [lambda: select(Note.body), lambda: select(Note).where(Note.body == "x")],
    ids=["select", "where"],
)
def test_a_query_on_a_sealed_attribute_is_refused_by_name(query: Callable[[], object]) -> None:
    with pytest.raises(TypeError, match="sealed at rest"):
        query()


def test_every_sealed_column_is_registered() -> None:
    assert set(REGISTRY["notes_for_sealing"]) == {"body", "tags"}


def test_a_row_for_a_core_insert_is_sealed_with_its_own_row_uid(session: Session) -> None:
    first = seal_row("notes_for_sealing", {"id": 1, "body": "glucose 7.9", "tags": None})
    second = seal_row("notes_for_sealing", {"id": 2, "body": "glucose 7.9", "tags": ["lab"]})
    assert first["row_uid"] != second["row_uid"] and b"glucose" not in first["body"]
    assert first["tags"] is None
    session.connection().execute(insert(Note), [first, second])  # Core: keys are columns
    session.commit()
    notes = session.scalars(select(Note).order_by(Note.id)).all()
    assert [(n.body, n.tags) for n in notes] == [("glucose 7.9", None), ("glucose 7.9", ["lab"])]
