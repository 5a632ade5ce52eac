"""Pinned and archived threads, per person, on both backends: pins come first,
archiving takes a thread out of the inbox until someone else writes (in the
portal or by email), the filters list what they say, and nobody changes or
learns anything about a thread they are not in."""

from __future__ import annotations

import pytest
from alembic import command
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.core import inbox
from replygate.core.messaging import Messaging
from replygate.core.placement import Change, InboxFilter
from replygate.core.workspace import Workspace
from replygate.errors import NotFound
from replygate.store import directory
from replygate.store.db import alembic_config, transaction
from replygate.store.models import ThreadParticipant
from tests.portal_support import People, file_email_reply, messaging, password_hash, people

__all__ = ["messaging", "password_hash", "people"]  # fixtures


@pytest.fixture
def workspace(settings: Settings, sessions: sessionmaker[Session]) -> Workspace:
    return Workspace(sessions, settings)


def _user_id(sessions: sessionmaker[Session], email: str) -> int:
    with transaction(sessions) as s:
        return directory.user(s, email).id


def _three_threads(messaging: Messaging, people: People) -> list[int]:
    """Sam writes to Carol three times: ids oldest first (the newest is on top)."""
    return [
        messaging.send(sender=people.staff, to=[people.client1], subject=f"S{n}", body="B")
        .threads[0]
        .id
        for n in range(3)
    ]


def _ids(
    sessions: sessionmaker[Session], user_id: int, view: InboxFilter = InboxFilter.ALL
) -> list[int]:
    with transaction(sessions) as s:
        rows, _ = inbox.inbox(s, user_id, 0, view)
    return [r.id for r in rows]


def _change(workspace: Workspace, thread_id: int, email: str, what: Change) -> None:
    with transaction(workspace.factory) as s:
        viewer = inbox.viewer(directory.user(s, email))
    workspace.change_placement(thread_id, viewer, what)


def test_a_pinned_thread_stays_on_top_for_its_pinner_alone(
    workspace: Workspace, messaging: Messaging, people: People, sessions: sessionmaker[Session]
) -> None:
    old, middle, new = _three_threads(messaging, people)
    sam, carol = _user_id(sessions, people.staff), _user_id(sessions, people.client1)
    _change(workspace, old, people.staff, Change.PIN)
    assert _ids(sessions, sam) == [old, new, middle]
    assert _ids(sessions, sam, InboxFilter.PINNED) == [old]
    assert _ids(sessions, carol) == [new, middle, old]  # Carol's inbox is her own

    # New activity elsewhere does not move a thread above the pin.
    messaging.reply(thread_id=middle, author=people.client1, body="news")
    assert _ids(sessions, sam) == [old, middle, new]
    _change(workspace, old, people.staff, Change.UNPIN)
    assert _ids(sessions, sam) == [middle, new, old]
    assert _ids(sessions, sam, InboxFilter.PINNED) == []


def test_archiving_takes_a_thread_out_until_someone_else_writes_in_the_portal(
    workspace: Workspace, messaging: Messaging, people: People, sessions: sessionmaker[Session]
) -> None:
    old, middle, new = _three_threads(messaging, people)
    sam = _user_id(sessions, people.staff)
    _change(workspace, middle, people.staff, Change.ARCHIVE)
    assert _ids(sessions, sam) == [new, old]
    assert _ids(sessions, sam, InboxFilter.ARCHIVED) == [middle]

    # Sam's own last word does not bring it back to his inbox...
    messaging.reply(thread_id=middle, author=people.staff, body="closing this")
    assert _ids(sessions, sam, InboxFilter.ARCHIVED) == [middle]
    # ...Carol's answer does, on top, and unread.
    messaging.reply(thread_id=middle, author=people.client1, body="one more question")
    assert _ids(sessions, sam) == [middle, new, old]
    assert _ids(sessions, sam, InboxFilter.ARCHIVED) == []
    assert _ids(sessions, sam, InboxFilter.UNREAD) == [middle]


def test_a_reply_by_email_brings_an_archived_thread_back(
    workspace: Workspace, messaging: Messaging, people: People, sessions: sessionmaker[Session]
) -> None:
    old, _middle, _new = _three_threads(messaging, people)
    sam = _user_id(sessions, people.staff)
    _change(workspace, old, people.staff, Change.ARCHIVE)
    _change(workspace, old, people.client1, Change.ARCHIVE)
    file_email_reply(sessions, messaging, thread_id=old, author=people.client1, body="by mail")
    assert _ids(sessions, sam)[0] == old
    assert _ids(sessions, sam, InboxFilter.ARCHIVED) == []
    # Carol wrote it herself: her archive stands.
    assert _ids(sessions, _user_id(sessions, people.client1), InboxFilter.ARCHIVED) == [old]


def test_archiving_after_the_last_message_holds(
    workspace: Workspace, messaging: Messaging, people: People, sessions: sessionmaker[Session]
) -> None:
    """Only a message newer than the archiving brings a thread back."""
    thread = _three_threads(messaging, people)[0]
    file_email_reply(sessions, messaging, thread_id=thread, author=people.client1, body="r")
    _change(workspace, thread, people.staff, Change.ARCHIVE)
    sam = _user_id(sessions, people.staff)
    assert _ids(sessions, sam, InboxFilter.ARCHIVED) == [thread]
    assert thread not in _ids(sessions, sam)


def test_pin_and_archive_exclude_each_other(
    workspace: Workspace, messaging: Messaging, people: People, sessions: sessionmaker[Session]
) -> None:
    old, _middle, _new = _three_threads(messaging, people)
    sam = _user_id(sessions, people.staff)
    _change(workspace, old, people.staff, Change.PIN)
    _change(workspace, old, people.staff, Change.ARCHIVE)
    assert _ids(sessions, sam, InboxFilter.PINNED) == []
    assert _ids(sessions, sam, InboxFilter.ARCHIVED) == [old]
    _change(workspace, old, people.staff, Change.PIN)
    assert _ids(sessions, sam, InboxFilter.ARCHIVED) == []
    assert _ids(sessions, sam)[0] == old
    _change(workspace, old, people.staff, Change.PIN)  # twice is once
    assert _ids(sessions, sam, InboxFilter.PINNED) == [old]
    _change(workspace, old, people.staff, Change.UNARCHIVE)  # not archived: nothing changes
    assert _ids(sessions, sam, InboxFilter.PINNED) == [old]


def test_unread_lists_and_counts_the_inbox_only(
    workspace: Workspace, messaging: Messaging, people: People, sessions: sessionmaker[Session]
) -> None:
    old, middle, new = _three_threads(messaging, people)
    carol = _user_id(sessions, people.client1)
    assert _ids(sessions, carol, InboxFilter.UNREAD) == [new, middle, old]
    with transaction(sessions) as s:
        inbox.read_thread(s, middle, directory.user(s, people.client1))
    assert _ids(sessions, carol, InboxFilter.UNREAD) == [new, old]
    _change(workspace, old, people.client1, Change.ARCHIVE)
    assert _ids(sessions, carol, InboxFilter.UNREAD) == [new]
    with transaction(sessions) as s:
        assert inbox.unread_threads(s, carol) == 1
        rows, _ = inbox.inbox(s, carol, 0, InboxFilter.ARCHIVED)
    assert [(r.id, r.unread, r.archived) for r in rows] == [(old, 1, True)]


def test_nobody_pins_or_archives_a_thread_they_are_not_in(
    workspace: Workspace, messaging: Messaging, people: People, sessions: sessionmaker[Session]
) -> None:
    """Dan names Carol's thread: the same NotFound as for no thread, and nothing changes."""
    carols = messaging.send(sender=people.staff, to=[people.client1], subject="S", body="B")
    thread = carols.threads[0].id
    for what in Change:
        with pytest.raises(NotFound) as exc:
            _change(workspace, thread, people.client2, what)
        with pytest.raises(NotFound) as missing:
            _change(workspace, thread + 1000, people.client2, what)
        assert str(exc.value).replace(str(thread), "N") == str(missing.value).replace(
            str(thread + 1000), "N"
        )
    with transaction(sessions) as s:
        states = s.execute(
            select(ThreadParticipant.pinned, ThreadParticipant.archived).where(
                ThreadParticipant.thread_id == thread
            )
        ).all()
    assert states == [(False, False), (False, False)]


def test_j_and_k_follow_the_pinned_first_order(
    workspace: Workspace, messaging: Messaging, people: People, sessions: sessionmaker[Session]
) -> None:
    old, middle, new = _three_threads(messaging, people)
    _change(workspace, old, people.staff, Change.PIN)  # inbox: old, new, middle
    with transaction(sessions) as s:
        sam = directory.user(s, people.staff)
        on_top = inbox.read_thread(s, old, sam)
        in_between = inbox.read_thread(s, new, sam)
        last = inbox.read_thread(s, middle, sam)
    assert (on_top.previous_id, on_top.next_id) == (None, new)
    assert (in_between.previous_id, in_between.next_id) == (old, middle)
    assert (last.previous_id, last.next_id) == (new, None)
    assert on_top.pinned and not in_between.pinned


@pytest.mark.parametrize(
    ("name", "index"),
    [
        ("inbox page", "ix_thread_participants_inbox"),
        ("unread page", "ix_thread_participants_unread"),
        ("unread count", "ix_thread_participants_unread"),
    ],
)
def test_inbox_reads_are_ranges_of_their_index(
    messaging: Messaging,
    people: People,
    sessions: sessionmaker[Session],
    engine: Engine,
    name: str,
    index: str,
) -> None:
    """Each inbox read is a range of its index, never a sort or a scan of all rows.

    Planned with bound parameters, as the application runs it: a parameter
    where the partial index's predicate has a constant would hide the index.
    """
    _three_threads(messaging, people)
    sam = _user_id(sessions, people.staff)
    statement = {
        "inbox page": inbox.page_statement(sam, InboxFilter.ALL, offset=0, limit=51),
        "unread page": inbox.page_statement(sam, InboxFilter.UNREAD, offset=0, limit=51),
        "unread count": inbox.unread_statement(sam),
    }[name]
    with engine.connect() as conn:
        compiled = statement.compile(dialect=engine.dialect)
        if engine.dialect.name == "sqlite":
            params: object = tuple(compiled.params[p] for p in compiled.positiontup or ())
            explain = "EXPLAIN QUERY PLAN "
        else:
            # On tables this small a sort is cheapest: ask whether an ordered path exists.
            for setting in ("enable_seqscan", "enable_bitmapscan", "enable_sort"):
                conn.execute(text(f"SET {setting} = off"))
            params = compiled.params
            explain = "EXPLAIN "
        rows = conn.exec_driver_sql(explain + str(compiled), params).all()  # type: ignore[arg-type]
    plan = "\n".join(" ".join(str(v) for v in row) for row in rows)
    assert index in plan, plan
    assert "TEMP B-TREE" not in plan and "Sort" not in plan, plan


def test_the_migration_fills_the_inbox_columns_from_existing_messages(
    messaging: Messaging,
    people: People,
    sessions: sessionmaker[Session],
    database_url: str,
) -> None:
    """Threads written before 0010 keep their order and unread marks after it."""
    old, middle, new = _three_threads(messaging, people)
    file_email_reply(sessions, messaging, thread_id=old, author=people.client1, body="r")
    carol, sam = _user_id(sessions, people.client1), _user_id(sessions, people.staff)
    before = {who: [(r.id, r.unread) for r in _rows(sessions, who)] for who in (carol, sam)}
    command.downgrade(alembic_config(database_url), "0009")
    command.upgrade(alembic_config(database_url), "head")
    after = {who: [(r.id, r.unread) for r in _rows(sessions, who)] for who in (carol, sam)}
    assert after == before
    assert [t for t, _ in after[sam]] == [old, new, middle]
    assert dict(after[sam])[old] == 1


def _rows(sessions: sessionmaker[Session], user_id: int) -> list[inbox.ThreadRow]:
    with transaction(sessions) as s:
        return inbox.inbox(s, user_id)[0]
