"""What the audit trail records of a day in the portal and at the command line: who,
what, from which address and browser, and refusals too; and never a message's text."""

from __future__ import annotations

import json
from collections.abc import Callable

from click.testing import CliRunner
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from replygate.cli import main
from replygate.config import Settings
from replygate.core import audit
from replygate.core.messaging import Messaging
from replygate.store.models import AuditEvent
from tests.helpers import cli_env
from tests.portal_support import Client, People, file_email_reply

BROWSER = {"User-Agent": "Mozilla/5.0 (audit test) Firefox/140.0"}


def _rows(sessions: sessionmaker[Session]) -> list[AuditEvent]:
    with sessions() as s:
        return list(s.scalars(select(AuditEvent).order_by(AuditEvent.seq)))


def _actions(sessions: sessionmaker[Session]) -> list[tuple[str, str, str]]:
    return [(r.actor, r.action, r.outcome) for r in _rows(sessions)]


def test_a_client_reading_their_thread_is_recorded_with_address_and_browser(
    client_for: Callable[[], Client],
    people: People,
    messaging: Messaging,
    sessions: sessionmaker[Session],
    settings: Settings,
) -> None:
    sent = messaging.send(
        sender=people.staff, to=[people.client1], subject="Results", body="SECRET-BODY-7731"
    )
    thread_id = sent.threads[0].id
    c = client_for()
    c.request("POST", "/login", headers=BROWSER)  # no CSRF: refused before any lookup
    assert c.login(people.client1, password="wrong password").status == 401
    assert c.login(people.client1).status == 303
    assert c.get(f"/threads/{thread_id}", headers=BROWSER).status == 200
    c.post("/logout", {"csrf": c.csrf("/inbox")})

    rows = _rows(sessions)
    by_action = {r.action: r for r in rows}
    # The staff member's message was sent from the test (no request): the system.
    assert by_action["message_sent"].thread_id == thread_id
    failed = by_action["login_failed"]
    assert (failed.actor, failed.outcome, failed.address) == (people.client1, "denied", "127.0.0.1")
    viewed = by_action["thread_viewed"]
    assert (viewed.actor, viewed.thread_id, viewed.outcome) == (people.client1, thread_id, "ok")
    assert viewed.user_agent == BROWSER["User-Agent"] and viewed.address == "127.0.0.1"
    assert by_action["login"].actor == people.client1
    assert by_action["logout"].actor == people.client1
    stored = json.dumps([audit.fields_of(r) for r in rows], default=str)
    assert "SECRET-BODY-7731" not in stored and "Results" not in stored
    assert audit.verify(sessions, settings).intact


def test_a_client_probing_another_thread_is_recorded_as_refused(
    client_for: Callable[[], Client],
    people: People,
    messaging: Messaging,
    sessions: sessionmaker[Session],
) -> None:
    theirs = messaging.send(sender=people.staff, to=[people.client2], subject="x", body="y")
    other = theirs.threads[0].id
    c = client_for()
    c.login(people.client1)
    assert c.get(f"/threads/{other}").status == 404
    refused = [r for r in _rows(sessions) if r.action == "thread_viewed"]
    assert [(r.actor, r.object_id, r.outcome) for r in refused] == [
        (people.client1, str(other), "denied")
    ]


def test_unknown_accounts_are_recorded_without_what_was_typed(
    client_for: Callable[[], Client], people: People, sessions: sessionmaker[Session]
) -> None:
    c = client_for()
    c.login("hunter2-typed-in-the-email-field@example.test", password="x")
    (row,) = [r for r in _rows(sessions) if r.action == "login_failed"]
    assert row.actor == "unknown" and row.object_id is None
    assert "hunter2" not in json.dumps(row.detail)


def test_attachment_downloads_and_email_replies_are_recorded(
    client_for: Callable[[], Client],
    people: People,
    messaging: Messaging,
    sessions: sessionmaker[Session],
) -> None:
    sent = messaging.send(sender=people.staff, to=[people.client1], subject="s", body="b")
    thread_id = sent.threads[0].id
    message_id = file_email_reply(
        sessions, messaging, thread_id=thread_id, author=people.client1, body="thanks"
    )
    filed = [r for r in _rows(sessions) if r.action == "reply_filed"]
    assert [(r.actor_kind, r.object_id, r.thread_id) for r in filed] == [
        ("system", str(message_id), thread_id)
    ]


def test_operator_commands_that_show_content_are_recorded(
    people: People, messaging: Messaging, sessions: sessionmaker[Session], settings: Settings
) -> None:
    sent = messaging.send(sender=people.staff, to=[people.client1], subject="s", body="b")
    thread_id = sent.threads[0].id
    env = cli_env(settings)
    runner = CliRunner()
    assert runner.invoke(main, ["threads", "show", str(thread_id)], env=env).exit_code == 0
    assert runner.invoke(main, ["users", "logout", people.client1], env=env).exit_code == 0
    done = runner.invoke(main, ["settings", "sender-policy", "hold"], env=env)
    assert done.exit_code == 0, done.output
    rows = _rows(sessions)
    shown = [r for r in rows if r.action == "phi_shown"]
    assert [(r.actor_kind, r.thread_id, r.detail["command"]) for r in shown] == [
        ("operator", thread_id, "threads show")
    ]
    assert any(r.action == "session_revoked" and r.actor_kind == "operator" for r in rows)
    (policy,) = [r for r in rows if r.action == "sender_policy_changed"]
    assert policy.detail == {"policy": "hold"}
    listed = runner.invoke(main, ["audit", "list", "--thread", str(thread_id), "--json"], env=env)
    assert {e["action"] for e in json.loads(listed.output)} == {"message_sent", "phi_shown"}


def test_admins_see_a_threads_access_history_and_nobody_else_does(
    client_for: Callable[[], Client],
    people: People,
    messaging: Messaging,
) -> None:
    sent = messaging.send(sender=people.staff, to=[people.client1], subject="s", body="b")
    thread_id = sent.threads[0].id
    reader = client_for()
    reader.login(people.client1)
    reader.get(f"/threads/{thread_id}", headers=BROWSER)
    for who in (people.client1, people.staff):
        c = client_for()
        c.login(who)
        assert c.get(f"/audit?thread={thread_id}").status == 403
    admin = client_for()
    admin.login(people.admin)
    page = admin.get(f"/audit?thread={thread_id}")
    assert page.status == 200
    assert page.text.count("data-audit-row") == 2  # sent, then viewed
    assert 'data-action="thread_viewed"' in page.text and people.client1 in page.text
    assert "Firefox/140.0" in page.text
    person = admin.get(f"/audit?user={people.client1}")
    assert 'data-action="login"' in person.text
    assert admin.get("/audit?user=nobody@example.test").status == 404
