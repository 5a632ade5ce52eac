"""Attacks on the values sealed at rest, by someone who can write to the database
but holds no key: each sealed column's ciphertext moved to another row, to
another column of its row and to another table, then read through every reader
that shows it. None may show the moved text, nor an empty value in its place:
the portal answers an error page (500, one sentence, no traceback), the command
line one line and exit 1, the reminder sweep drops that one reminder, and
``keys rotate`` leaves the value on its old key and names it. Each logs
``store.seal_broken`` with the table, the column and the row, never the value.
(The engine and the outbound worker are attacked in test_mail_sealed_at_rest.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from structlog.testing import capture_logs

from replygate.cli import main
from replygate.config import Settings
from replygate.core import canned, reminders
from replygate.core.messaging import Messaging
from replygate.store import directory
from replygate.store.db import transaction
from replygate.store.models import (
    InboundMail,
    Message,
    MessageAttachment,
    MessageReceipt,
    OutboxMessage,
    Thread,
)
from replygate.store.utc import utcnow
from tests.helpers import cli_env
from tests.portal_support import (
    Client,
    People,
    client_for,
    file_email_reply,
    live_portal,
    messaging,
    password_hash,
    people,
)

__all__ = ["client_for", "live_portal", "messaging", "password_hash", "people"]  # fixtures

MARK = "Wombatattackmark"


@dataclass(frozen=True)
class Stored:
    """Two of everything sealed, the second of each the target of the attacks."""

    threads: tuple[int, int]
    replies: tuple[int, int]  # Carol's replies by email, one per thread
    attachments: tuple[int, int]
    canned: tuple[int, int]
    inbound: tuple[int, int]

    def ids(self, table: str) -> tuple[int, int]:
        return {
            "threads": self.threads,
            "messages": self.replies,
            "message_attachments": self.attachments,
            "canned_responses": self.canned,
            "inbound_mail": self.inbound,
        }[table]


@pytest.fixture
def stored(people: People, messaging: Messaging, sessions: sessionmaker[Session]) -> Stored:
    for n in (1, 2):
        messaging.send(
            sender=people.staff, to=[people.client1], subject=f"Results {n} {MARK}",
            body=f"Your results {n}: {MARK}.",
        )  # fmt: skip
    with sessions() as s:
        threads = tuple(s.scalars(select(Thread.id).order_by(Thread.id)))
    replies = tuple(
        file_email_reply(
            sessions,
            messaging,
            thread_id=t,
            author=people.client1,
            body=f"Reply {n} {MARK}",
            quote=f"> quoted {n} {MARK}",
            signature=f"-- \nCarol {n} {MARK}",
            body_html=f"<p>Reply {n} {MARK}</p>",
        )
        for n, t in enumerate(threads, 1)
    )
    with transaction(sessions) as s:
        attachments = []
        for n, reply in enumerate(replies, 1):
            data = f"scan {n} {MARK}".encode()
            a = MessageAttachment(
                message_id=reply, filename=f"scan-{n}-{MARK}.txt", content_type="text/plain",
                size=len(data), data=data,
            )  # fmt: skip
            s.add(a)
            s.flush()
            attachments.append(a.id)
        author = directory.user(s, people.staff).id
        for n in (1, 2):
            canned.save(
                s, canned_id=None, name=f"Canned {n}", subject=f"Canned {n} {MARK}",
                body=f"Canned body {n} {MARK}", author_id=author,
            )  # fmt: skip
        inbound = []
        for n in (1, 2):
            mail = InboundMail(
                mail_from=people.client1, rcpt="reply+x@reply.test", size=10, status="held",
                raw=f"Subject: {MARK}\r\n\r\nMail {n} {MARK}\r\n".encode(),
                reason=f"held {n} {MARK}", decisions=[{"stage": "extract", "note": MARK}],
            )  # fmt: skip
            s.add(mail)
            s.flush()
            inbound.append(mail.id)
    with sessions() as s:
        canned_ids = tuple(c.id for c in canned.all_responses(s))
    return Stored(threads, replies, tuple(attachments), canned_ids, tuple(inbound))  # type: ignore[arg-type]


def _copy(
    sessions: sessionmaker[Session],
    src: tuple[str, str, int],
    dst: tuple[str, str, int],
) -> None:
    """Copy one stored (sealed) value over another, as a tamperer with SQL would."""
    (src_table, src_column, src_id), (table, column, row) = src, dst
    with transaction(sessions) as s:
        s.execute(
            text(
                f"UPDATE {table} SET {column} = "
                f"(SELECT {src_column} FROM {src_table} WHERE id = :a) WHERE id = :b"
            ).bindparams(a=src_id, b=row)
        )


def _moves(table: str, column: str, other_column: str | None) -> list[tuple[str, str]]:
    """The kinds of move: from another row, another column, another table."""
    kinds = ["row"]
    if other_column:
        kinds.append("column")
    return [(k, f"{table}.{column}") for k in kinds] + [("table", f"{table}.{column}")]


# Every sealed column with a column of the same row it can be moved from (same kind).
COLUMNS: dict[tuple[str, str], str | None] = {
    ("threads", "subject"): None,
    ("messages", "body"): "quote",
    ("messages", "quote"): "body",
    ("messages", "signature"): "body",
    ("messages", "body_html"): "body",
    ("message_attachments", "filename"): "data",
    ("message_attachments", "data"): "filename",
    ("canned_responses", "subject"): "body",
    ("canned_responses", "body"): "subject",
    ("inbound_mail", "raw"): "reason",
    ("inbound_mail", "reason"): "raw",
    ("inbound_mail", "decisions"): "reason",
}
# A sealed value of another table, with an id every fixture has (1).
ELSEWHERE = {"threads": ("messages", "body"), "messages": ("threads", "subject")}


def _attack(
    sessions: sessionmaker[Session], stored: Stored, table: str, column: str, kind: str
) -> int:
    """Move a sealed value into ``table.column`` of the second row; returns that row's id."""
    first, second = stored.ids(table)
    if kind == "row":
        _copy(sessions, (table, column, first), (table, column, second))
    elif kind == "column":
        other = COLUMNS[(table, column)]
        assert other is not None
        _copy(sessions, (table, other, second), (table, column, second))
    else:
        src_table, src_column = ELSEWHERE.get(table, ("threads", "subject"))
        _copy(sessions, (src_table, src_column, stored.ids(src_table)[0]), (table, column, second))
    return second


def _broken_logged(logged: list[dict[str, object]], table: str, column: str, row: int) -> None:
    broken = [e for e in logged if e["event"] == "store.seal_broken"]
    assert broken, logged
    assert (broken[0]["table"], broken[0]["column"], broken[0]["row"]) == (table, column, row)
    assert broken[0]["log_level"] == "error"
    assert MARK not in repr(broken)


ATTACKS = [
    (table, column, kind)
    for (table, column), other in COLUMNS.items()
    for kind in ("row", "column", "table")
    if kind != "column" or other
]

# What shows each column in the portal: (who logs in, the page) for the second row.
PAGES: dict[tuple[str, str], list[tuple[str, Callable[[Stored], str]]]] = {
    ("threads", "subject"): [
        ("client1", lambda s: "/inbox"),
        ("staff", lambda s: "/sent"),
        ("client1", lambda s: f"/threads/{s.threads[1]}"),
    ],
    ("messages", "body"): [("client1", lambda s: f"/threads/{s.threads[1]}")],
    ("messages", "quote"): [("client1", lambda s: f"/threads/{s.threads[1]}")],
    ("messages", "signature"): [("client1", lambda s: f"/threads/{s.threads[1]}")],
    ("messages", "body_html"): [("client1", lambda s: f"/threads/{s.threads[1]}")],
    ("message_attachments", "filename"): [
        ("client1", lambda s: f"/threads/{s.threads[1]}"),
        ("client1", lambda s: f"/attachments/{s.attachments[1]}"),
    ],
    ("message_attachments", "data"): [("client1", lambda s: f"/attachments/{s.attachments[1]}")],
    ("canned_responses", "subject"): [
        ("staff", lambda s: "/canned"),
        ("staff", lambda s: f"/canned/{s.canned[1]}"),
        ("staff", lambda s: f"/compose?canned={s.canned[1]}"),
    ],
    ("canned_responses", "body"): [
        ("staff", lambda s: f"/canned/{s.canned[1]}"),
        ("staff", lambda s: f"/compose?canned={s.canned[1]}"),
    ],
}


@pytest.mark.parametrize(("table", "column", "kind"), [a for a in ATTACKS if (a[0], a[1]) in PAGES])
def test_a_moved_value_is_an_error_page_on_every_portal_page_that_shows_it(
    stored: Stored,
    client_for: Callable[[], Client],
    people: People,
    sessions: sessionmaker[Session],
    table: str,
    column: str,
    kind: str,
) -> None:
    row = _attack(sessions, stored, table, column, kind)
    for who, page in PAGES[(table, column)]:
        client = client_for()
        client.login(getattr(people, who))
        with capture_logs() as logged:
            shown = client.get(page(stored))
        assert shown.status == 500, (page(stored), shown.status)
        assert "could not be decrypted" in shown.text
        assert "Traceback" not in shown.text and "SealBroken" not in shown.text
        assert MARK not in shown.text
        _broken_logged(logged, table, column, row)


# What shows each column on the command line, for the second row.
COMMANDS: dict[tuple[str, str], list[Callable[[Stored], list[str]]]] = {
    ("threads", "subject"): [
        lambda s: ["threads", "list"],
        lambda s: ["threads", "show", str(s.threads[1])],
    ],
    ("messages", "body"): [lambda s: ["threads", "show", str(s.threads[1])]],
    ("inbound_mail", "raw"): [
        lambda s: ["queue", "show", str(s.inbound[1])],
        lambda s: ["queue", "show", "--raw", str(s.inbound[1])],
    ],
    ("inbound_mail", "reason"): [
        lambda s: ["queue", "list"],
        lambda s: ["queue", "show", str(s.inbound[1])],
    ],
    ("inbound_mail", "decisions"): [
        lambda s: ["queue", "show", str(s.inbound[1])],
        lambda s: ["queue", "explain", str(s.inbound[1])],
    ],
}


def _error_line(result: Result) -> str:
    """The one line of the error, once the log's ``store.seal_broken`` records are set aside."""
    lines = [ln for ln in result.output.strip().splitlines() if "store.seal_broken" not in ln]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.mark.parametrize(
    ("table", "column", "kind"), [a for a in ATTACKS if (a[0], a[1]) in COMMANDS]
)
def test_a_moved_value_is_one_line_and_exit_1_on_the_command_line(
    stored: Stored, settings: Settings, sessions: sessionmaker[Session], table: str, column: str,
    kind: str,
) -> None:  # fmt: skip
    row = _attack(sessions, stored, table, column, kind)
    for command in COMMANDS[(table, column)]:
        args = command(stored)
        result = CliRunner().invoke(main, args, env=cli_env(settings))
        assert result.exit_code == 1, (args, result.output)
        line = _error_line(result)
        assert line.startswith("Error: a sealed value does not open"), (args, line)
        assert line.endswith(f"({table}.{column} row {row})"), (args, line)
        assert MARK not in result.output


def test_the_audit_export_holds_no_content_whatever_is_broken(
    stored: Stored, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    for table, column, kind in ATTACKS:
        if kind == "row":
            _attack(sessions, stored, table, column, kind)
    env = cli_env(settings)
    for fmt in ("jsonl", "csv"):
        result = CliRunner().invoke(main, ["audit", "export", "--format", fmt], env=env)
        assert result.exit_code == 0, result.output
        assert "store.seal_broken" not in result.output
        assert MARK not in result.output and "Results" not in result.output


def test_a_rotation_leaves_a_value_that_does_not_open_on_its_old_key_and_names_it(
    stored: Stored, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    row = _attack(sessions, stored, "messages", "body", "row")
    with sessions() as s:
        before = s.get_one(Message, row).body_sealed
    env = cli_env(settings)
    result = CliRunner().invoke(main, ["keys", "rotate"], env=env)
    assert result.exit_code == 1, result.output
    line = [ln for ln in result.output.splitlines() if ln.startswith("Error:")]
    assert (
        len(line) == 1
        and f"1 do not open and keep their old key (messages.body row {row})" in line[0]
    )
    assert "key version 2 is active" in line[0]
    with sessions() as s:
        assert s.get_one(Message, row).body_sealed == before  # never re-sealed as garbage
        assert s.get_one(Message, stored.replies[0]).body == f"Reply 1 {MARK}"
        others = s.scalars(select(Message).where(Message.id != row)).all()
        assert {m.body_sealed[:4] for m in others} == {b"\x00\x00\x00\x02"}
    retired = CliRunner().invoke(main, ["keys", "retire", "1"], env=env)
    assert retired.exit_code == 1 and "still seals stored values" in retired.output
    # The operator restores the value (here: deletes the tampered row); the rotation finishes.
    with transaction(sessions) as s:
        s.execute(text("DELETE FROM messages WHERE id = :id").bindparams(id=row))
    resumed = CliRunner().invoke(main, ["keys", "rotate", "--resume"], env=env)
    assert resumed.exit_code == 0, resumed.output
    assert CliRunner().invoke(main, ["keys", "retire", "1"], env=env).exit_code == 0


def test_a_reminder_about_a_moved_body_is_dropped_and_the_others_are_sent(
    stored: Stored, settings: Settings, sessions: sessionmaker[Session], messaging: Messaging
) -> None:
    messaging.set_convenience_mode(on=True, acknowledge_hipaa=True)  # reminders carry the text
    now = utcnow()
    with transaction(sessions) as s:
        firsts = [
            s.scalars(select(Message.id).where(Message.thread_id == t).order_by(Message.id)).first()
            for t in stored.threads
        ]
        s.execute(text("UPDATE message_receipts SET remind_at = :at").bindparams(at=now))
        due = s.scalars(
            select(MessageReceipt.message_id).where(MessageReceipt.read_at.is_(None))
        ).all()
        queued_before = len(s.scalars(select(OutboxMessage.id)).all())
    assert set(firsts) <= set(due)
    broken = firsts[1]
    assert broken is not None
    _copy(sessions, ("messages", "body", firsts[0]), ("messages", "body", broken))  # type: ignore[arg-type]
    with capture_logs() as logged:
        claimed = reminders.send_due(sessions, settings, now=now + timedelta(seconds=1))
    assert claimed == len(due)
    _broken_logged(logged, "messages", "body", broken)
    with sessions() as s:
        reminded = s.scalars(
            select(OutboxMessage.message_id).where(OutboxMessage.kind == reminders.REMINDER_KIND)
        ).all()
        assert len(s.scalars(select(OutboxMessage.id)).all()) == queued_before + len(due) - 1
        assert broken not in reminded and firsts[0] in reminded
        left = select(MessageReceipt).where(MessageReceipt.remind_at.is_not(None))
        assert not s.scalars(left).all()
    # Nothing is left due: the next sweep finds no work, instead of failing on it again.
    assert reminders.send_due(sessions, settings, now=now + timedelta(seconds=2)) == 0


def test_a_required_value_cannot_be_erased_nor_emptied(
    stored: Stored, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    with pytest.raises(IntegrityError), transaction(sessions) as s:
        s.execute(
            text("UPDATE messages SET body = NULL WHERE id = :id").bindparams(id=stored.replies[1])
        )
    with transaction(sessions) as s:
        s.execute(
            text("UPDATE messages SET body = :empty WHERE id = :id").bindparams(
                empty=b"", id=stored.replies[1]
            )
        )
    result = CliRunner().invoke(
        main, ["threads", "show", str(stored.threads[1])], env=cli_env(settings)
    )
    assert result.exit_code == 1
    assert _error_line(result).startswith("Error: a sealed value is too short to be one")


def _swap(sessions: sessionmaker[Session], table: str, columns: list[str], a: int, b: int) -> None:
    """Exchange ``columns`` of rows ``a`` and ``b``, as a tamperer with SQL would."""
    with transaction(sessions) as s:
        rows = {
            row_id: row
            for row_id, *row in s.execute(
                text(f"SELECT id, {', '.join(columns)} FROM {table} WHERE id IN (:a, :b)"),
                {"a": a, "b": b},
            )
        }
        sets = ", ".join(f"{c} = :{c}" for c in columns)
        for mine, theirs in ((a, b), (b, a)):
            s.execute(
                text(f"UPDATE {table} SET {sets} WHERE id = :id"),
                {"id": mine, **dict(zip(columns, rows[theirs], strict=True))},
            )


def test_swapped_row_uids_open_nothing_of_either_row(
    stored: Stored, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    first, second = stored.replies
    _swap(sessions, "messages", ["row_uid"], first, second)
    env = cli_env(settings)
    for thread in stored.threads:
        result = CliRunner().invoke(main, ["threads", "show", str(thread)], env=env)
        assert result.exit_code == 1 and MARK not in result.output
        assert _error_line(result).startswith("Error: a sealed value does not open")


def test_a_row_s_whole_sealed_state_moved_with_its_row_uid_opens_elsewhere(
    stored: Stored, sessions: sessionmaker[Session]
) -> None:
    """The limit docs/operating.md states: a value is bound to its row's ``row_uid``,
    which is stored beside it, so the row_uid and every sealed value moved together
    (here, two replies exchanged between threads) still open. Sealing keeps the text
    from a reader of the database; it does not keep a writer from moving rows, any
    more than from changing ``messages.thread_id`` or adding a participant."""
    first, second = stored.replies
    _swap(
        sessions, "messages", ["row_uid", "body", "quote", "signature", "body_html"], first, second
    )
    with sessions() as s:
        assert s.get_one(Message, second).body == f"Reply 1 {MARK}"


def test_a_reply_in_a_thread_whose_subject_does_not_open_is_refused_and_not_queued(
    stored: Stored,
    client_for: Callable[[], Client],
    people: People,
    sessions: sessionmaker[Session],
    messaging: Messaging,
) -> None:
    """In Convenience Mode the notification carries the subject, so the reply needs it
    (in Secure Mode it reads no subject, shows none, and is filed)."""
    messaging.set_convenience_mode(on=True, acknowledge_hipaa=True)
    row = _attack(sessions, stored, "threads", "subject", "row")
    with sessions() as s:
        before = (
            len(s.scalars(select(Message.id)).all()),
            len(s.scalars(select(OutboxMessage.id)).all()),
        )
    sam = client_for()
    sam.login(people.staff)
    token = sam.csrf("/compose")
    with capture_logs() as logged:
        shown = sam.post(f"/threads/{row}/reply", {"csrf": token, "body": f"Answer {MARK}"})
    assert shown.status == 500 and "could not be decrypted" in shown.text
    assert MARK not in shown.text
    _broken_logged(logged, "threads", "subject", row)
    with sessions() as s:
        after = (
            len(s.scalars(select(Message.id)).all()),
            len(s.scalars(select(OutboxMessage.id)).all()),
        )
    assert after == before  # nothing half-written: no message without its notifications
