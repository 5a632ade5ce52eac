"""The content people write is sealed at rest, and a sealed value that does not open
(moved from another row, here) fails loudly, never shown as empty text: the
portal answers with an error page that says so in a sentence (500, no
traceback), the command line with a one-line error, and the store logs
``store.seal_broken`` naming the table, the column and the row.

The stored columns are read with SQL, as a stolen backup would be read.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from click.testing import CliRunner
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker
from structlog.testing import capture_logs

from replygate.cli import main
from replygate.config import Settings
from replygate.core import canned
from replygate.core.messaging import Messaging
from replygate.store import directory
from replygate.store.db import transaction
from replygate.store.models import Thread
from tests.helpers import cli_env
from tests.portal_support import (
    Client,
    People,
    client_for,
    live_portal,
    messaging,
    password_hash,
    people,
)

__all__ = ["client_for", "live_portal", "messaging", "password_hash", "people"]  # fixtures

MARK = "Quollsealmark"


@pytest.fixture
def two_threads(
    people: People, messaging: Messaging, sessions: sessionmaker[Session]
) -> tuple[int, int]:
    """Sam wrote to Carol twice (two threads, a marker in each subject and body)."""
    for n in (1, 2):
        messaging.send(
            sender=people.staff,
            to=[people.client1],
            subject=f"Results {n} {MARK}",
            body=f"Your results {n}: {MARK}.",
        )
    with sessions() as s:
        first, second = s.scalars(select(Thread.id).order_by(Thread.id)).all()
    return first, second


def _stored(sessions: sessionmaker[Session], sql: str) -> list[bytes]:
    with sessions() as s:
        values = s.connection().exec_driver_sql(sql).scalars()
        return [v.encode() if isinstance(v, str) else bytes(v) for v in values if v is not None]


def _move(
    sessions: sessionmaker[Session], table: str, column: str, key: str, src: int, dst: int
) -> None:
    """Copy one row's stored (sealed) value over another's, as a tamperer with SQL would."""
    with transaction(sessions) as s:
        s.execute(
            text(
                f"UPDATE {table} SET {column} = (SELECT {column} FROM {table} WHERE {key} = :a) "
                f"WHERE {key} = :b"
            ).bindparams(a=src, b=dst)
        )


def test_subjects_bodies_and_canned_responses_are_stored_sealed(
    two_threads: tuple[int, int], people: People, sessions: sessionmaker[Session]
) -> None:
    with transaction(sessions) as s:
        author = directory.user(s, people.staff).id
        canned.save(
            s, canned_id=None, name="Results", subject=f"About {MARK}", body=f"{MARK} text",
            author_id=author,
        )  # fmt: skip
    with sessions() as s:
        assert [c.subject for c in canned.all_responses(s)] == [f"About {MARK}"]
    stored = _stored(sessions, "SELECT subject FROM threads")
    stored += _stored(sessions, "SELECT body FROM messages")
    stored += _stored(sessions, "SELECT subject FROM canned_responses")
    stored += _stored(sessions, "SELECT body FROM canned_responses")
    assert len(stored) == 6
    assert not [value for value in stored if MARK.encode() in value]
    assert _stored(sessions, "SELECT name FROM canned_responses") == [b"Results"]


@pytest.mark.parametrize(
    ("table", "column", "page"),
    [
        ("messages", "body", "thread"),
        ("threads", "subject", "thread"),
        ("threads", "subject", "inbox"),
    ],
)
def test_the_portal_shows_an_error_page_for_a_value_that_does_not_open(
    two_threads: tuple[int, int],
    client_for: Callable[[], Client],
    people: People,
    sessions: sessionmaker[Session],
    table: str,
    column: str,
    page: str,
) -> None:
    first, second = two_threads
    key = "thread_id" if table == "messages" else "id"
    _move(sessions, table, column, key, first, second)
    carol = client_for()
    carol.login(people.client1)
    assert MARK in carol.get(f"/threads/{first}").text  # the other thread still reads
    with capture_logs() as logged:
        shown = carol.get(f"/threads/{second}" if page == "thread" else "/inbox")
    assert shown.status == 500
    assert "could not be decrypted" in shown.text
    assert "Traceback" not in shown.text and "SealBroken" not in shown.text
    assert f"Your results 2: {MARK}" not in shown.text
    broken = [e for e in logged if e["event"] == "store.seal_broken"]
    assert broken and (broken[0]["table"], broken[0]["column"]) == (table, column)
    assert broken[0]["log_level"] == "error"


def test_the_command_line_says_in_one_line_that_a_value_does_not_open(
    two_threads: tuple[int, int], settings: Settings, sessions: sessionmaker[Session]
) -> None:
    first, second = two_threads
    _move(sessions, "messages", "body", "thread_id", first, second)
    env = cli_env(settings)
    shown = CliRunner().invoke(main, ["threads", "show", str(second)], env=env)
    assert shown.exit_code == 1
    assert _error_line(shown.output).startswith("Error: a sealed value does not open")
    assert MARK not in shown.output
    _move(sessions, "threads", "subject", "id", first, second)
    listed = CliRunner().invoke(main, ["threads", "list"], env=env)
    assert listed.exit_code == 1
    assert _error_line(listed.output).startswith("Error: a sealed value does not open")


def _error_line(output: str) -> str:
    """The one line of the error, once the log's ``store.seal_broken`` record is set aside."""
    lines = output.strip().splitlines()
    logged = [line for line in lines if "store.seal_broken" in line]
    assert len(logged) == 1, output
    (error,) = (line for line in lines if line not in logged)
    return error
