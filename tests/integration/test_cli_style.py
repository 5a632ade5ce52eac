"""The command line speaks one style over a real reply: every listing has a header
row, times are ISO 8601 UTC with ``Z`` in text and JSON, a wrong status is a usage
error (exit 2) for every listing, counts agree with their nouns, booleans and
empties are words, ``queue explain --json`` exists, and replaying filed mail adds
a decision to its history instead of rewriting why it was filed."""

from __future__ import annotations

import json
import re
from email.message import EmailMessage

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from replygate.cli import main
from replygate.config import Settings
from replygate.store.models import Message, ReplyToken
from tests.helpers import cli_env

Z_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
Z_IN_TEXT = re.compile(r"\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\b")


@pytest.fixture
def env(settings: Settings) -> dict[str, str]:
    return cli_env(settings)


def run(env: dict[str, str], *args: str, code: int = 0, stdin: str | None = None) -> Result:
    result = CliRunner().invoke(main, list(args), env=env, input=stdin)
    assert result.exit_code == code, result.output
    return result


@pytest.fixture
def filed(env: dict[str, str], sessions: sessionmaker[Session]) -> tuple[int, str]:
    """Dana wrote to Cleo; Cleo's reply came in through the Postfix pipe and was filed.
    Returns the reply's queue id and Cleo's reply address."""
    run(env, "users", "add", "dana@staff.test", "--name", "Dana", "--role", "staff")
    run(env, "users", "add", "cleo@example.com", "--name", "Cleo", "--role", "client")
    run(env, "settings", "convenience", "on", "--acknowledge-hipaa", "--by", "dana@staff.test")
    run(env, "send", "--from", "dana@staff.test", "--to", "cleo@example.com", "--subject",
        "Hello", "--body", "How are you?")  # fmt: skip
    with sessions() as s:
        address = f"reply+{s.scalars(select(ReplyToken.token)).one()}@reply.test"
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = "cleo@example.com", address, "Re: Hello"
    mail["Message-ID"] = "<r1@mail.example.com>"
    mail.set_content("I am well, thank you!\n\nOn Mon, Dana wrote:\n> How are you?\n")
    run(env, "ingest", "--rcpt", address, "--sender", "cleo@example.com",
        stdin=mail.as_string())  # fmt: skip
    run(env, "worker", "--once")
    (row,) = json.loads(run(env, "queue", "list", "--json").output)
    assert row["status"] == "filed"
    return row["id"], address


def test_a_bogus_status_is_a_usage_error_for_every_listing(env: dict[str, str]) -> None:
    for listing in ("queue", "outbox"):
        refused = run(env, listing, "list", "--status", "bogus", code=2)
        assert "Invalid value for '--status'" in refused.output
        assert "'bogus' is not one of" in refused.output


def test_every_listing_has_a_header_row_and_z_times(
    env: dict[str, str], filed: tuple[int, str]
) -> None:
    headers = {
        ("threads", "list"): "ID  LAST ACTIVITY",
        ("queue", "list"): "ID  STATUS",
        ("queue", "stats"): "COUNT  STATUS",
        ("outbox", "list"): "ID  STATUS",
        ("users", "list"): "ID  ROLE",
        ("circles", "list"): "NAME  WHO MAY WRITE",
        ("users", "sessions", "cleo@example.com"): "FINGERPRINT  STARTED",
    }
    for args, header in headers.items():
        out = run(env, *args).output.splitlines()
        assert out[0].split()[: len(header.split())] == header.split(), (args, out)
        assert out[0] == out[0].upper(), (args, out)
    threads = run(env, "threads", "list").output.splitlines()
    assert len(threads) == 2 and Z_IN_TEXT.search(threads[1]), threads
    assert "messages)" not in threads[1]
    queue = run(env, "queue", "list").output.splitlines()
    assert Z_IN_TEXT.search(queue[1]) and "+00:00" not in queue[1], queue
    for args, key in [
        (("threads", "list"), "last_activity_at"),
        (("queue", "list"), "received_at"),
        (("outbox", "list"), "created_at"),
        (("outbox", "list"), "sent_at"),
    ]:
        for row in json.loads(run(env, *args, "--json").output):
            assert Z_TIME.match(row[key]), (args, key, row[key])
    shown = json.loads(run(env, "threads", "show", "1", "--json").output)
    assert all(Z_TIME.match(m["created_at"]) for m in shown["messages"])


def test_counts_agree_with_their_nouns(env: dict[str, str], filed: tuple[int, str]) -> None:
    assert "\n2 messages\n" in run(env, "threads", "show", "1").output
    assert run(env, "outbox", "retry", "--failed").output == "0 notifications queued again\n"
    assert run(env, "users", "logout", "cleo@example.com").output == (
        "cleo@example.com: 0 sessions ended\n"
    )


def test_tokens_inspect_prints_words_not_python(
    env: dict[str, str], filed: tuple[int, str]
) -> None:
    _, address = filed
    out = run(env, "tokens", "inspect", address).output
    assert "accepted: yes" in out and "reason: none" in out and "revoked_at: none" in out
    assert not re.search(r"\b(None|True|False)\b", out), out
    assert Z_IN_TEXT.search(out) and "+00:00" not in out
    data = json.loads(run(env, "tokens", "inspect", address, "--json").output)
    assert data["accepted"] is True and data["revoked_at"] is None
    assert Z_TIME.match(data["expires_at"])


def test_queue_explain_json_and_the_stored_sentence_once(
    env: dict[str, str], filed: tuple[int, str]
) -> None:
    queue_id, _ = filed
    text = run(env, "queue", "explain", str(queue_id)).output
    assert text.count("stored the message before answering 250") == 1
    data = json.loads(run(env, "queue", "explain", str(queue_id), "--json").output)
    assert (data["id"], data["status"], data["reason"]) == (queue_id, "filed", None)
    assert Z_TIME.match(data["received_at"])
    stages = [d["stage"] for d in data["decisions"]]
    assert (stages[0], stages.count("accept"), stages[-1]) == ("rcpt", 1, "extract")
    assert data["explanation"] == text.splitlines()


def test_replaying_filed_mail_records_a_new_decision_and_keeps_the_old(
    env: dict[str, str], filed: tuple[int, str], sessions: sessionmaker[Session]
) -> None:
    """Replay of mail filed already files nothing new and does not rewrite its reason."""
    queue_id, _ = filed
    before = json.loads(run(env, "queue", "explain", str(queue_id), "--json").output)
    assert run(env, "queue", "replay", str(queue_id)).stdout == f"{queue_id}: filed -> filed\n"
    after = json.loads(run(env, "queue", "explain", str(queue_id), "--json").output)
    assert (after["status"], after["reason"]) == ("filed", None)
    assert after["decisions"][: len(before["decisions"])] == before["decisions"]
    replay, route, again = after["decisions"][len(before["decisions"]) :]
    assert route["stage"] == "route"
    (message_id,) = [d["message"] for d in before["decisions"] if d["stage"] == "extract"]
    assert (replay["stage"], replay["previous"]) == ("replay", "filed")
    assert (again["stage"], again["duplicate"], again["message"]) == ("extract", True, message_id)
    said = after["explanation"]
    assert any(
        re.fullmatch(r"- Replayed by an operator at \S+Z \(it was filed\)\.", line) for line in said
    ), said
    assert f"this mail was filed already as message {message_id}" in said[-2]
    assert said[-1] == "Now filed."
    with sessions() as s:
        assert len(s.scalars(select(Message.id).where(Message.inbound_id == queue_id)).all()) == 1
