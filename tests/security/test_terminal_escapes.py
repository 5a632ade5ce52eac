"""Terminal escapes: what mail brought is shown to an operator, never obeyed.

A reply's subject and body reach ``replygate threads show`` and ``replygate
queue show``. Printed raw, an OSC sequence retitles the operator's terminal
(or, in some terminals, writes to the clipboard or opens links), ``ESC [2J``
clears what they were reading, and the 8-bit C1 controls (CSI ``U+009B``) do
the same without an ESC. Every control character but newline and tab is
shown as an escape instead (ESC as ``\\x1b``); ``--json`` and ``--raw`` stay
exact.

The mail is written as an attacker holding a client's reply address sends
it, queued and filed by the real inbound worker, then read through click.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from replygate.cli import main
from replygate.config import Settings
from replygate.core.messaging import Messaging
from replygate.store import directory, inbound
from replygate.store.db import transaction
from replygate.store.models import InboundMail, Message, ReplyToken
from replygate.workers.inbound import InboundWorker
from tests.helpers import cli_env

# What a terminal acts on, one of each kind the attack uses.
RAW_CONTROLS = ("\x1b", "\x07", "\x9b", "\x9d", "\r", "\x08", "\u202e")
TITLE = "\x1b]0;pwned\x07"  # OSC 0: set the window title
CLEAR = "\x1b[2J"  # CSI 2 J: erase the screen
C1_RED = "\x9b31m"  # CSI as one C1 character: red text from here on
C1_TITLE = "\x9d0;owned\x9c"  # OSC and ST as C1 characters
SHOWN = ("\\x1b]0;pwned\\x07", "\\x1b[2J", "\\x9b31m", "\\x9d0;owned\\x9c")


def hostile_reply(to: str) -> bytes:
    """A reply with the escapes raw and encoded in its subject, and raw in its UTF-8 body."""
    subject = f"Re: Hello {TITLE} =?utf-8?q?=1B[2J=C2=9B31m?="
    body = (
        f"Fine, thanks {TITLE}\n"
        f"{CLEAR}cleared, then {C1_RED}red and {C1_TITLE} retitled\n"
        "\tindented\rback to column one\bover\u202eright-to-left\n"
    )
    return (
        "From: Cleo Client <cleo@example.com>\r\n"
        f"To: {to}\r\n"
        f"Subject: {subject}\r\n"
        "Message-ID: <esc1@mail.example.com>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        "\r\n" + body.replace("\n", "\r\n")
    ).encode("utf-8")


@pytest.fixture
def filed(sessions: sessionmaker[Session], settings: Settings) -> tuple[int, int, bytes]:
    """The thread, the queue id and the raw bytes of a hostile reply, filed."""
    with transaction(sessions) as s:
        directory.add_user(s, "dana@staff.test", "Dana Staff", "staff")
        directory.add_user(s, "cleo@example.com", "Cleo Client", "client")
    messaging = Messaging(sessions, settings)
    messaging.set_convenience_mode(on=True, acknowledge_hipaa=True)
    sent = messaging.send(
        sender="dana@staff.test", to=["cleo@example.com"], subject="Hello", body="How are you?"
    )
    with sessions() as s:
        token = s.scalars(select(ReplyToken.token)).one()
    address = f"reply+{token}@{settings.reply_domain}"
    raw = hostile_reply(address)
    with transaction(sessions) as s:
        queue_id = inbound.enqueue(
            s, mail_from="cleo@example.com", rcpt=address, raw=raw, message_id=None
        ).id
    assert InboundWorker(sessions, settings).drain() == 1
    with sessions() as s:
        assert s.get(InboundMail, queue_id).status == "filed"
    return sent.threads[0].id, queue_id, raw


def run(settings: Settings, *args: str) -> Result:
    env = cli_env(settings)
    result = CliRunner().invoke(main, list(args), env=env)
    assert result.exit_code == 0, result.output
    return result


def assert_shown_not_obeyed(output: str, shown: tuple[str, ...] = SHOWN) -> None:
    for control in RAW_CONTROLS:
        assert control not in output
    for escaped in shown:
        assert escaped in output


def test_threads_show_escapes_what_the_reply_brought(
    settings: Settings, filed: tuple[int, int, bytes]
) -> None:
    thread_id, _, _ = filed
    output = run(settings, "threads", "show", str(thread_id)).output
    assert_shown_not_obeyed(output)
    # Newlines and tabs stay as they are: the body reads as it was written (its
    # lone CR was a line break to the mail parser already).
    assert "red and \\x9d0;owned\\x9c retitled\n\tindented\nback" in output
    assert "column one\\x08over\\u202eright-to-left" in output


def test_queue_show_escapes_the_subject_and_the_extracted_reply(
    settings: Settings, filed: tuple[int, int, bytes]
) -> None:
    _, queue_id, _ = filed
    output = run(settings, "queue", "show", str(queue_id)).output
    assert_shown_not_obeyed(output)
    assert "subject: Re: Hello \\x1b]0;pwned\\x07 \\x1b[2J\\x9b31m" in output


def test_a_thread_subject_from_the_portal_is_escaped_in_listings(
    sessions: sessionmaker[Session], settings: Settings, filed: tuple[int, int, bytes]
) -> None:
    """A client names the thread it starts; operators list and read it."""
    sent = Messaging(sessions, settings).send(
        sender="cleo@example.com",
        to=["dana@staff.test"],
        subject=f"Question {TITLE}{C1_RED}",
        body=f"Body {CLEAR}",
    )
    shown = ("\\x1b]0;pwned\\x07\\x9b31m",)
    assert_shown_not_obeyed(run(settings, "threads", "list").output, shown)
    output = run(settings, "threads", "show", str(sent.threads[0].id)).output
    assert_shown_not_obeyed(output, (*shown, "Body \\x1b[2J"))


def test_json_and_raw_stay_exact(
    sessions: sessionmaker[Session], settings: Settings, filed: tuple[int, int, bytes]
) -> None:
    thread_id, queue_id, raw = filed
    with sessions() as s:
        body = s.scalars(select(Message).where(Message.source == "email")).one().body
    assert TITLE in body and C1_RED in body

    shown = json.loads(run(settings, "threads", "show", str(thread_id), "--json").output)
    assert [m["body"] for m in shown["messages"]][-1] == body

    detail = json.loads(run(settings, "queue", "show", str(queue_id), "--json").output)
    assert detail["headers"]["subject"] == f"Re: Hello {TITLE} {CLEAR}{C1_RED}"
    assert TITLE in detail["reply"]

    assert run(settings, "queue", "show", str(queue_id), "--raw").stdout_bytes == raw
