"""``threads list --user EMAIL [--unread|--pinned|--archived]``: one person's threads
as their inbox shows them (pinned first, archived left out), the filters, the
--json shape, and clear errors for a filter without a person or an unknown one."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner, Result
from sqlalchemy.orm import Session, sessionmaker

from replygate.cli import main
from replygate.config import Settings
from replygate.core import placement
from replygate.core.messaging import Messaging
from replygate.core.placement import Change
from replygate.store import directory
from replygate.store.db import transaction
from tests.helpers import cli_env
from tests.portal_support import People, file_email_reply, messaging, password_hash, people

__all__ = ["messaging", "password_hash", "people"]  # fixtures


@pytest.fixture
def env(settings: Settings) -> dict[str, str]:
    return cli_env(settings)


def run(env: dict[str, str], *args: str, code: int = 0) -> Result:
    result = CliRunner().invoke(main, list(args), env=env)
    assert result.exit_code == code, result.output
    return result


def _listed(env: dict[str, str], *flags: str) -> list[dict[str, object]]:
    rows = json.loads(run(env, "threads", "list", *flags, "--json").output)
    assert isinstance(rows, list)
    return rows


@pytest.fixture
def threads(
    people: People, messaging: Messaging, sessions: sessionmaker[Session]
) -> dict[str, int]:
    """Sam's four threads with Carol: one pinned, one archived, one answered by email."""
    ids = {
        name: messaging.send(sender=people.staff, to=[people.client1], subject=name, body="B")
        .threads[0]
        .id
        for name in ("pinned", "archived", "answered", "quiet")
    }
    file_email_reply(
        sessions, messaging, thread_id=ids["answered"], author=people.client1, body="R"
    )
    with transaction(sessions) as s:
        sam = directory.user(s, people.staff).id
        placement.change(s, ids["pinned"], sam, Change.PIN)
        placement.change(s, ids["archived"], sam, Change.ARCHIVE)
    return ids


def test_a_persons_inbox_and_its_filters(
    env: dict[str, str], people: People, threads: dict[str, int]
) -> None:
    inbox = _listed(env, "--user", people.staff)
    assert [r["subject"] for r in inbox] == ["pinned", "answered", "quiet"]
    assert inbox[0] == {
        "id": threads["pinned"],
        "subject": "pinned",
        "with_people": [people.client1],
        "unread": 0,
        "pinned": True,
        "archived": False,
        "last_activity_at": inbox[0]["last_activity_at"],
    }
    assert [r["subject"] for r in _listed(env, "--user", people.staff, "--unread")] == ["answered"]
    assert _listed(env, "--user", people.staff, "--unread")[0]["unread"] == 1
    assert [r["id"] for r in _listed(env, "--user", people.staff, "--pinned")] == [
        threads["pinned"]
    ]
    archived = _listed(env, "--user", people.staff, "--archived")
    assert [(r["id"], r["archived"]) for r in archived] == [(threads["archived"], True)]
    # Carol's view is her own: nothing pinned or archived, everything unread but her reply.
    carol = _listed(env, "--user", people.client1)
    assert len(carol) == 4 and not any(r["pinned"] or r["archived"] for r in carol)
    assert len(_listed(env, "--user", people.client1, "--unread")) == 3

    header, *text = run(env, "threads", "list", "--user", people.staff).output.splitlines()
    assert header.split()[:6] == ["ID", "LAST", "ACTIVITY", "UNREAD", "PINNED", "ARCHIVED"]
    assert len(text) == 3 and people.client1 in text[0]
    assert text[0].split()[2:6] == ["0", "yes", "no", "pinned"]
    assert text[1].split()[2:6] == ["1", "no", "no", "answered"]
    # Without --user, every thread, as before.
    assert len(_listed(env)) == 4


def test_filters_need_a_person_and_an_unknown_one_is_one_line(
    env: dict[str, str], threads: dict[str, int]
) -> None:
    result = run(env, "threads", "list", "--pinned", code=2)
    assert "--pinned needs --user EMAIL" in result.output
    assert "Traceback" not in result.output
    missing = run(env, "threads", "list", "--user", "nobody@example.test", code=1)
    assert missing.output.strip() == "Error: no user with email nobody@example.test"
