"""``replygate keys``: a key file made, keys rotated and retired, and what each seals."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from replygate.cli import main
from replygate.config import Settings
from replygate.core.messaging import Messaging
from replygate.store import directory, keyring
from replygate.store.db import transaction
from replygate.store.models import AuditEvent, Message, OutboxMessage
from tests.helpers import cli_env


@pytest.fixture
def env(settings: Settings, sessions: sessionmaker[Session]) -> dict[str, str]:
    """Dana wrote to Cleo in Convenience Mode: the outbox holds sealed notifications."""
    with transaction(sessions) as s:
        directory.add_user(s, "dana@staff.test", "Dana Staff", "staff")
        directory.add_user(s, "cleo@example.com", "Cleo Client", "client")
    messaging = Messaging(sessions, settings)
    messaging.set_convenience_mode(on=True, acknowledge_hipaa=True)
    messaging.send(sender="dana@staff.test", to=["cleo@example.com"], subject="Hi", body="Hi?")
    return cli_env(settings)


def run(env: dict[str, str], *args: str, code: int = 0) -> Result:
    result = CliRunner().invoke(main, list(args), env=env)
    assert result.exit_code == code, result.output
    return result


def _per_version(env: dict[str, str]) -> tuple[int, dict[str, dict[str, int]]]:
    found = json.loads(run(env, "keys", "status", "--json").output)
    return found["active"], {
        f"{c['table']}.{c['column']}": c["rows"] for c in found["columns"] if c["rows"]
    }


def _notifications(sessions: sessionmaker[Session]) -> list[bytes]:
    with sessions() as s:
        return [row.raw for row in s.scalars(select(OutboxMessage))]


def test_status_counts_what_each_key_sealed(env: dict[str, str]) -> None:
    active, columns = _per_version(env)
    assert active == 1
    assert set(columns["outbox.raw"]) == {"1"} and columns["outbox.raw"]["1"] >= 1
    assert columns["threads.subject"] == {"1": 1} and columns["messages.body"] == {"1": 1}
    assert re.search(r"^outbox +raw +1 +\d+$", run(env, "keys", "status").output, re.M)


def test_rotate_reseals_every_value_with_the_new_key_and_the_text_still_opens(
    env: dict[str, str], sessions: sessionmaker[Session]
) -> None:
    before = _notifications(sessions)
    done = run(env, "keys", "rotate").output
    assert "key version 2 is active" in done
    active, columns = _per_version(env)
    assert active == 2
    assert all(set(rows) == {"2"} for rows in columns.values()), columns
    assert {"threads.subject", "messages.body", "outbox.raw"} <= set(columns)
    assert _notifications(sessions) == before
    with sessions() as s:
        message = s.scalars(select(Message)).one()
        assert (message.thread.subject, message.body) == ("Hi", "Hi?")
    with sessions() as s:
        rotated = s.scalars(select(AuditEvent).where(AuditEvent.action == "key_rotated")).all()
    assert [event.object_id for event in rotated] == ["2"]


def test_a_key_still_in_use_or_active_is_not_retired(
    env: dict[str, str], sessions: sessionmaker[Session]
) -> None:
    assert "active key" in run(env, "keys", "retire", "1", code=1).output
    keyring.current().rotate()  # a rotation interrupted before it re-sealed anything
    assert "still seals" in run(env, "keys", "retire", "1", code=1).output
    run(env, "keys", "rotate", "--resume")
    run(env, "keys", "retire", "1")
    found = json.loads(run(env, "keys", "status", "--json").output)
    assert (found["active"], found["versions"], found["missing"]) == (2, [2], [])
    assert _notifications(sessions)  # every one opens with the keys left


def test_init_writes_a_private_key_file_and_never_overwrites_one(
    env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "new-keys"
    run(env, "keys", "init", "--file", str(path))
    assert path.stat().st_mode & 0o777 == 0o600
    first = path.read_bytes()
    assert "never overwritten" in run(env, "keys", "init", "--file", str(path), code=1).output
    assert path.read_bytes() == first


def test_a_stored_value_too_short_to_name_a_key_is_shown_missing(
    env: dict[str, str], sessions: sessionmaker[Session]
) -> None:
    """A truncated value (a restore gone wrong) is counted, not a crash of the status."""
    with transaction(sessions) as s:
        s.execute(update(OutboxMessage).values(raw_sealed=b"\x00\x01"))
    found = json.loads(run(env, "keys", "status", "--json").output)
    assert found["missing"] == [0]
    outbox = next(c for c in found["columns"] if (c["table"], c["column"]) == ("outbox", "raw"))
    assert set(outbox["rows"]) == {"0"}
