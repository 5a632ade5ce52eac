"""The command line: one-line errors, masked secrets, the --json contracts,
the operator's queue tools (show, stats, purge, reject), and the names of
every command and option, which scripts and the operating guide rely on."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from replygate.cli import main
from replygate.config import Settings
from replygate.store import inbound
from replygate.store.db import transaction
from replygate.store.models import InboundMail, utcnow
from tests.helpers import cli_env


@pytest.fixture
def env(settings: Settings) -> dict[str, str]:
    return {
        **cli_env(settings),
        "REPLYGATE_SMARTHOST_PASSWORD": "hunter2-smarthost",
    }


def run(env: dict[str, str], *args: str, code: int = 0, stdin: str | None = None) -> Result:
    result = CliRunner().invoke(main, list(args), env=env, input=stdin)
    assert result.exit_code == code, result.output
    return result


def test_config_show_masks_secrets(env: dict[str, str], settings: Settings) -> None:
    out = run(env, "config", "show", "--json").output
    data = json.loads(out)
    assert data["secret_key"] == "********" and data["smarthost_password"] == "********"
    assert settings.secret_key not in out and "hunter2" not in out
    assert data["reply_domain"] == "reply.test"


def test_errors_are_one_line_and_non_zero(env: dict[str, str]) -> None:
    result = run(env, "threads", "show", "999", code=1)
    assert result.output.strip() == "Error: no thread 999"
    result = run(env, "users", "add", "not-an-address", "--name", "X", "--role", "staff", code=1)
    assert "Traceback" not in result.output and "is not an email address" in result.output
    bad = run(
        env,
        "send",
        "--from",
        "a@b.test",
        "--to",
        "c@d.test",
        "--subject",
        "s",
        "--body",
        "b",
        code=1,
    )
    assert bad.output.strip() == "Error: no user with email a@b.test"


def test_a_database_without_schema_says_to_upgrade(tmp_path: Path) -> None:
    env = {
        "REPLYGATE_VAR_DIR": str(tmp_path),
        "REPLYGATE_DATABASE_URL": f"sqlite:///{tmp_path}/x.db",
    }
    result = run(env, "users", "list", code=1)
    assert "replygate db upgrade" in result.output
    assert "revision" in run(env, "db", "upgrade").output
    assert json.loads(run(env, "users", "list", "--json").output) == []


def test_people_circles_and_send_json_contract(env: dict[str, str]) -> None:
    run(env, "users", "add", "dana@staff.test", "--name", "Dana", "--role", "staff")
    run(env, "users", "add", "Cleo@Example.com", "--name", "Cleo", "--role", "client")
    run(env, "users", "add", "carl@example.com", "--name", "Carl", "--role", "client")
    run(env, "circles", "add", "Group A")
    run(env, "circles", "add-member", "Group A", "cleo@example.com")
    run(env, "circles", "add-member", "Group A", "carl@example.com")
    sent = json.loads(
        run(
            env,
            "send",
            "--from",
            "dana@staff.test",
            "--to",
            "circle:Group A",
            "--subject",
            "Hi",
            "--body",
            "-",
            "--json",
            stdin="Body from stdin\n",
        ).output
    )
    assert [t["recipient"] for t in sent["threads"]] == ["cleo@example.com", "carl@example.com"]
    assert len(sent["messages"]) == 2 and all("id" in m for m in sent["messages"])
    shown = json.loads(run(env, "threads", "show", str(sent["threads"][0]["id"]), "--json").output)
    assert shown["subject"] == "Hi"
    (message,) = shown["messages"]
    assert message["author"] == "dana@staff.test" and message["source"] == "portal"
    assert message["body"] == "Body from stdin\n"
    users = json.loads(run(env, "users", "list", "--json").output)
    assert {u["email"]: u["address_status"] for u in users}["cleo@example.com"] == "ok"


def _seed_queue(sessions: sessionmaker[Session]) -> tuple[int, int]:
    raw = b"From: a@b.test\r\nSubject: old\r\nMessage-ID: <m@b>\r\n\r\nHello there\r\n"
    with transaction(sessions) as s:
        old = inbound.enqueue(
            s, mail_from="a@b.test", rcpt="reply+x@reply.test", raw=raw, message_id="<m@b>"
        )
        new = inbound.enqueue(
            s, mail_from="a@b.test", rcpt="reply+x@reply.test", raw=raw, message_id="<n@b>"
        )
        inbound.record(old, "ignored", "Auto-Submitted: auto-replied (RFC 3834)")
        inbound.record(new, "ignored", "Auto-Submitted: auto-replied (RFC 3834)")
        s.execute(
            update(InboundMail)
            .where(InboundMail.id == old.id)
            .values(received_at=utcnow() - timedelta(days=40))
        )
        return old.id, new.id


def test_queue_show_stats_and_purge(env: dict[str, str], sessions: sessionmaker[Session]) -> None:
    old, new = _seed_queue(sessions)
    shown = run(env, "queue", "show", str(old)).output
    assert "subject: old" in shown and "Hello there" in shown and "Now ignored" in shown
    assert run(env, "queue", "show", str(old), "--raw").output.startswith("From: a@b.test")
    stats = json.loads(run(env, "queue", "stats", "--json").output)
    assert stats == [
        {"status": "ignored", "reason": "Auto-Submitted: auto-replied (RFC 3834)", "count": 2}
    ]
    assert [
        r["id"]
        for r in json.loads(run(env, "queue", "list", "--older-than", "30", "--json").output)
    ] == [old]
    assert "of 1 mail received" in run(env, "queue", "purge").output
    with sessions() as s:
        assert s.get(InboundMail, old).raw is None
        assert s.get(InboundMail, new).raw is not None
    purged = run(env, "queue", "show", str(old), "--raw", code=1)
    assert "purged" in purged.output


def test_outbox_list_shows_no_content_and_retry_requeues_failed(
    env: dict[str, str], sessions: sessionmaker[Session]
) -> None:
    from replygate.store.models import OutboxMessage

    run(env, "users", "add", "dana@staff.test", "--name", "Dana", "--role", "staff")
    run(env, "users", "add", "cleo@example.com", "--name", "Cleo", "--role", "client")
    run(
        env,
        "send",
        "--from",
        "dana@staff.test",
        "--to",
        "cleo@example.com",
        "--subject",
        "Secret subject",
        "--body",
        "Secret body",
    )
    listed = run(env, "outbox", "list", "--json").output
    (row,) = json.loads(listed)
    assert (row["status"], row["kind"], row["recipient"]) == (
        "queued",
        "secure",
        "cleo@example.com",
    )
    assert "Secret" not in listed
    with transaction(sessions) as s:
        s.execute(
            update(OutboxMessage).values(status="failed", last_error="550 5.1.1 no such user")
        )
    assert "no such user" in run(env, "outbox", "list", "--status", "failed").output
    assert run(env, "outbox", "retry", "--failed").output == "1 notification queued again\n"
    assert json.loads(run(env, "outbox", "list", "--json").output)[0]["status"] == "queued"


# Every command and its arguments and options: renaming one breaks scripts,
# systemd units and the runbook in docs/operating.md.
COMMANDS = {
    "audit export": ["--format", "--since"],
    "audit list": ["--json", "--limit", "--since", "--thread", "--user"],
    "audit purge": [],
    "audit verify": ["--json"],
    "keys init": ["--file"],
    "keys retire": ["version"],
    "keys rotate": ["--batch", "--resume"],
    "keys status": ["--json"],
    "circles add": ["--clients-may-write", "name"],
    "circles add-member": ["email", "name"],
    "circles list": ["--json"],
    "circles set": ["--clients-may-write", "name"],
    "config show": ["--json"],
    "db upgrade": [],
    "demo": [],
    "dkim keygen": ["--bits", "--domain", "--key", "selector"],
    "ingest": ["--client-ip", "--helo", "--rcpt", "--sender"],
    "outbox list": ["--json", "--limit", "--status"],
    "outbox retry": ["--failed", "ids"],
    "queue explain": ["--json", "inbound_id"],
    "queue list": [
        "--json",
        "--limit",
        "--newer-than",
        "--older-than",
        "--sender",
        "--status",
        "--thread",
    ],
    "queue purge": ["--older-than"],
    "queue reject": ["--reason", "inbound_id"],
    "queue release": ["inbound_id"],
    "queue replay": ["--failed", "ids"],
    "queue show": ["--json", "--raw", "inbound_id"],
    "queue stats": ["--json"],
    "send": ["--body", "--from", "--json", "--read-receipt", "--subject", "--to"],
    "serve": [
        "--metrics",
        "--migrate",
        "--one-process",
        "--portal",
        "--reuse-port",
        "--role",
        "--smtp",
    ],
    "settings convenience": ["--acknowledge-hipaa", "--by", "state"],
    "settings dmarc-policy": ["policy"],
    "settings mfa require": ["who"],
    "settings organisation-name": ["name"],
    "settings read-receipts": ["state"],
    "settings reminder-delay": ["delay"],
    "settings sender-policy": ["policy"],
    "settings show": ["--json"],
    "threads list": ["--archived", "--json", "--pinned", "--unread", "--user"],
    "threads show": ["--json", "thread_id"],
    "tokens inspect": ["--json", "address"],
    "tokens revoke": ["address"],
    "users add": ["--json", "--name", "--role", "email"],
    "users list": ["--json"],
    "users logout": ["email"],
    "users mfa enroll": ["--json", "email"],
    "users mfa reset": ["email"],
    "users reset-bounces": ["email"],
    "users sessions": ["--json", "email"],
    "users set-password": ["email"],
    "users set-role": ["--json", "--role", "email"],
    "worker": ["--metrics", "--once"],
}


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, name
        path = (*prefix, name)
        if isinstance(command, click.Group):
            found.update(_commands(command, path))
            continue
        found[" ".join(path)] = sorted(
            [p.name or "" for p in command.params if isinstance(p, click.Argument)]
            + [flag for p in command.params if isinstance(p, click.Option) for flag in p.opts]
        )
    return found


def test_every_command_keeps_its_name_arguments_and_options() -> None:
    assert _commands(main) == COMMANDS


def test_python_dash_m_runs_the_same_command(env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "replygate", "tokens", "revoke", "cleo@example.com"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.strip() == "Error: cleo@example.com is not a reply address of reply.test"


def test_operator_commands_refuse_what_they_cannot_do(
    env: dict[str, str], sessions: sessionmaker[Session]
) -> None:
    """Usage mistakes exit 2; a request the queue refuses is one line and exit 1."""
    assert "give queue ids or --failed" in run(env, "queue", "replay", code=2).output
    assert "give notification ids or --failed" in run(env, "outbox", "retry", code=2).output
    old, _ = _seed_queue(sessions)
    refused = run(env, "queue", "reject", str(old), code=1)
    assert refused.output.strip() == f"Error: mail {old} is ignored, not held"
    with transaction(sessions) as s:
        s.execute(update(InboundMail).where(InboundMail.id == old).values(status="held"))
    assert run(env, "queue", "reject", str(old), "--reason", "spam").output == f"{old}: rejected\n"
    (row,) = json.loads(run(env, "queue", "list", "--status", "rejected", "--json").output)
    assert (row["id"], row["reason"]) == (old, "spam")
    assert run(env, "users", "reset-bounces", "nobody@x.test", code=1).output.strip() == (
        "Error: no user with email nobody@x.test"
    )


def test_the_organisation_is_renamed_in_the_database(env: dict[str, str]) -> None:
    """``settings organisation-name`` renames it (one line); a blank name is refused."""
    said = run(env, "settings", "organisation-name", "  Harbour \n Clinic ")
    assert said.output == "organisation name: Harbour Clinic\n"
    assert json.loads(run(env, "settings", "show", "--json").output)["name"] == "Harbour Clinic"
    refused = run(env, "settings", "organisation-name", "   ", code=1)
    assert refused.output.strip() == "Error: the organisation needs a name"
