"""The command line's read state and reminder settings: ``threads show --json``
gives each message's readers (``read_by``), ``settings`` switches the read-receipt
default and the reminder delay, and ``send`` takes the per-message option."""

from __future__ import annotations

import json

from click.testing import CliRunner
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from replygate.cli import main
from replygate.config import Settings
from replygate.core import inbox
from replygate.core.workspace import Workspace
from replygate.store import directory
from replygate.store.models import AuditEvent, Message
from tests.integration.test_cli import env

__all__ = ["env"]  # fixture


def run(env: dict[str, str], *args: str, code: int = 0) -> str:
    result = CliRunner().invoke(main, list(args), env=env)
    assert result.exit_code == code, result.output
    return result.output


def test_settings_send_and_threads_show_read_by(
    env: dict[str, str], settings: Settings, sessions: sessionmaker[Session]
) -> None:
    run(env, "users", "add", "dana@staff.test", "--name", "Dana", "--role", "staff")
    run(env, "users", "add", "cleo@example.com", "--name", "Cleo", "--role", "client")
    assert "read receipts by default: on" in run(env, "settings", "read-receipts", "on")
    assert "reminder delay: 1800 seconds" in run(env, "settings", "reminder-delay", "30m")
    assert "reminders: off" in run(env, "settings", "reminder-delay", "0")
    assert "not a delay" in run(env, "settings", "reminder-delay", "soon", code=1)
    run(env, "settings", "reminder-delay", "2d")
    shown = json.loads(run(env, "settings", "show", "--json"))
    assert shown["read_receipts_default"] is True and shown["reminder_delay_seconds"] == 172800
    with sessions() as s:
        trail = s.scalars(
            select(AuditEvent.detail)
            .where(AuditEvent.action == "setting_changed")
            .order_by(AuditEvent.id)
        ).all()
    assert trail == [
        {"setting": "read_receipts", "default": True},
        {"setting": "reminder_delay", "seconds": 1800},
        {"setting": "reminder_delay", "seconds": 0},
        {"setting": "reminder_delay", "seconds": 172800},
    ]

    sent = json.loads(
        run(
            env,
            *("send", "--from", "dana@staff.test", "--to", "cleo@example.com"),
            *("--subject", "Hi", "--body", "Hello", "--no-read-receipt", "--json"),
        )
    )
    thread_id = sent["threads"][0]["id"]
    with sessions() as s:
        assert s.scalar(select(Message.receipt_requested)) is False
        cleo = inbox.viewer(directory.user(s, "cleo@example.com"))
    before = json.loads(run(env, "threads", "show", str(thread_id), "--json"))
    assert before["messages"][0]["read_by"] == []
    Workspace(sessions, settings).read_thread(thread_id, cleo)
    after = json.loads(run(env, "threads", "show", str(thread_id), "--json"))
    (read,) = after["messages"][0]["read_by"]
    assert read["user"] == "cleo@example.com" and "T" in read["at"] and set(read) == {"user", "at"}
