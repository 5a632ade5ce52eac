"""Portal sessions that end: a stolen or copied cookie is worth nothing once
its session is over.

Each attack replays a cookie as the attacker holds it (copied off a shared
computer, out of a proxy log, from a backup of the browser profile) against
a live portal. The cookie must name only a session kept on the server; that
session ends at logout, at a password change, when an operator logs the
person out, after ``session_idle_seconds`` without a request and
``session_max_seconds`` after it began. Time passes by moving the session's
timestamps back in the database, never by sleeping.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from datetime import timedelta

from click.testing import CliRunner
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from replygate.cli import main
from replygate.config import Settings
from replygate.store import directory, models
from replygate.store.db import transaction
from replygate.store.models import Thread, utcnow
from tests.helpers import cli_env
from tests.portal_support import PASSWORD, Client, People
from tests.portal_support import client_for as client_for  # a fixture
from tests.portal_support import live_portal as live_portal  # a fixture
from tests.portal_support import password_hash as password_hash  # a fixture
from tests.portal_support import people as people  # a fixture

NEW_PASSWORD = "a different long password"


def copy_of(browser: Client) -> Client:
    """The attacker's client, presenting the victim's cookie as it was at this moment."""
    thief = Client(f"http://{browser.host}:{browser.port}")
    thief.cookies = dict(browser.cookies)
    return thief


def cookie_payload(browser: Client) -> str:
    """What the session cookie says, decoded (starlette signs it but does not encrypt it)."""
    (value,) = browser.cookies.values()
    data = value.strip('"').split(".", 1)[0]
    return base64.b64decode(data + "=" * (-len(data) % 4)).decode()


def threads(sessions: sessionmaker[Session]) -> int:
    with transaction(sessions) as s:
        return s.scalar(select(func.count(Thread.id))) or 0


def reads_inbox(browser: Client) -> bool:
    page = browser.get("/inbox")
    assert page.status in (200, 303), page.status
    return page.status == 200


def test_a_cookie_copied_before_logout_is_dead_after_it(
    client_for: Callable[[], Client], people: People, sessions: sessionmaker[Session]
) -> None:
    """After logout the copy neither reads the inbox nor sends a message."""
    victim = client_for()
    assert victim.login(people.staff).status == 303
    token = victim.csrf("/compose")
    thief = copy_of(victim)
    assert reads_inbox(thief)  # the copy is as good as the original until logout

    assert victim.post("/logout", {"csrf": token}).location == "/login"

    assert not reads_inbox(thief)
    sent = thief.post(
        "/compose",
        {"csrf": token, "to": people.client1, "subject": "Hi", "body": "From the thief"},
    )
    assert sent.status == 303 and (sent.location or "").startswith("/login")
    assert threads(sessions) == 0


def test_a_password_change_ends_every_other_session(
    client_for: Callable[[], Client], people: People
) -> None:
    """The browser that changed the password goes on, in a new session; the others are dead."""
    laptop, phone = client_for(), client_for()
    assert laptop.login(people.client1).status == 303
    assert phone.login(people.client1).status == 303
    stolen = copy_of(laptop)
    before = dict(laptop.cookies)

    token = laptop.csrf("/password")
    changed = laptop.post(
        "/password",
        {"csrf": token, "current": PASSWORD, "new": NEW_PASSWORD, "confirm": NEW_PASSWORD},
    )
    assert changed.status == 303 and changed.location == "/inbox"

    assert reads_inbox(laptop)
    assert laptop.cookies != before  # a new session, not the old one kept alive
    assert not reads_inbox(phone)
    assert not reads_inbox(stolen)
    assert client_for().login(people.client1, NEW_PASSWORD).status == 303


def test_a_wrong_current_password_changes_nothing(
    client_for: Callable[[], Client], people: People
) -> None:
    """Someone at an unlocked screen cannot change the password without knowing it."""
    laptop, phone = client_for(), client_for()
    laptop.login(people.client1)
    phone.login(people.client1)
    token = laptop.csrf("/password")
    refused = laptop.post(
        "/password",
        {"csrf": token, "current": "a guess at it!", "new": NEW_PASSWORD, "confirm": NEW_PASSWORD},
    )
    assert refused.status == 401
    assert reads_inbox(laptop) and reads_inbox(phone)
    assert client_for().login(people.client1, PASSWORD).status == 303


def test_an_idle_session_is_refused_and_removed(
    client_for: Callable[[], Client],
    people: People,
    settings: Settings,
    sessions: sessionmaker[Session],
) -> None:
    """A session unused for longer than session_idle_seconds is over, and its row gone."""
    browser = client_for()
    browser.login(people.staff)
    assert reads_inbox(browser)
    idle = timedelta(seconds=settings.session_idle_seconds)
    with transaction(sessions) as s:
        s.execute(
            update(models.PortalSession).values(last_seen_at=utcnow() - idle - timedelta(seconds=1))
        )
    thief = copy_of(browser)
    assert not reads_inbox(browser)
    assert not reads_inbox(thief)
    with transaction(sessions) as s:
        assert s.scalar(select(func.count(models.PortalSession.id))) == 0


def test_a_session_in_use_still_ends_at_the_absolute_limit(
    client_for: Callable[[], Client],
    people: People,
    settings: Settings,
    sessions: sessionmaker[Session],
) -> None:
    """However busy, a session ends session_max_seconds after the login."""
    browser = client_for()
    browser.login(people.staff)
    limit = timedelta(seconds=settings.session_max_seconds)
    with transaction(sessions) as s:
        s.execute(
            update(models.PortalSession).values(
                created_at=utcnow() - limit - timedelta(seconds=1), last_seen_at=utcnow()
            )
        )
    assert not reads_inbox(browser)


def test_activity_keeps_a_session_alive_without_a_write_per_request(
    client_for: Callable[[], Client],
    people: People,
    settings: Settings,
    sessions: sessionmaker[Session],
) -> None:
    """Requests move last_seen_at forward (so the owner stays in), but not on every request."""
    browser = client_for()
    browser.login(people.staff)
    with transaction(sessions) as s:
        (row,) = s.scalars(select(models.PortalSession))
        first_seen = row.last_seen_at
    assert reads_inbox(browser)
    with transaction(sessions) as s:
        assert s.scalars(select(models.PortalSession)).one().last_seen_at == first_seen
    nearly = timedelta(seconds=settings.session_idle_seconds - 5)
    with transaction(sessions) as s:
        s.execute(update(models.PortalSession).values(last_seen_at=utcnow() - nearly))
    assert reads_inbox(browser)
    with transaction(sessions) as s:
        seen = s.scalars(select(models.PortalSession)).one().last_seen_at
    assert utcnow() - seen < timedelta(seconds=60)


def test_users_logout_ends_a_live_browser_session(
    client_for: Callable[[], Client], people: People, settings: Settings
) -> None:
    """The operator's ``users logout`` ends every session of the person at once."""
    browser, other = client_for(), client_for()
    browser.login(people.client1)
    other.login(people.client2)
    env = cli_env(settings)
    listed = CliRunner().invoke(main, ["users", "sessions", people.client1, "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    (row,) = json.loads(listed.output)
    assert row["address"] == "127.0.0.1" and len(row["fingerprint"]) == 12
    assert row["fingerprint"] not in str(browser.cookies)

    done = CliRunner().invoke(main, ["users", "logout", people.client1], env=env)
    assert done.exit_code == 0, done.output
    assert "1 session ended" in done.output
    assert not reads_inbox(browser)
    assert reads_inbox(other)  # nobody else is logged out


def test_the_cookie_names_no_user_and_the_store_keeps_no_session_id(
    client_for: Callable[[], Client], people: People, sessions: sessionmaker[Session]
) -> None:
    """The cookie holds a random session id only; the table holds its hash only.

    A planted cookie is no use either: logging in gives a new id.
    """
    browser = client_for()
    browser.get("/login")
    planted = dict(browser.cookies)
    browser.login(people.admin)
    assert browser.cookies != planted
    payload = cookie_payload(browser)
    with transaction(sessions) as s:
        admin = directory.user(s, people.admin)
        (row,) = s.scalars(select(models.PortalSession))
        stored = row.id_hash
    data = json.loads(payload)
    assert set(data) <= {"csrf", "sid", "flash"}, data
    assert people.admin not in payload and "Ada" not in payload
    assert admin.id not in data.values() and str(admin.id) not in data.values()
    assert data["sid"] not in stored
    assert stored == hashlib.sha256(data["sid"].encode()).hexdigest()


def test_a_role_change_ends_the_persons_sessions_and_is_audited(
    client_for: Callable[[], Client],
    people: People,
    settings: Settings,
    sessions: sessionmaker[Session],
) -> None:
    """A session begun under one role is not carried into another: a client made staff
    logs in again (and meets the second factor staff need); the last admin stays one."""
    browser = client_for()
    browser.login(people.client1)
    env = cli_env(settings)
    done = CliRunner().invoke(
        main, ["users", "set-role", people.client1, "--role", "staff"], env=env
    )
    assert done.exit_code == 0, done.output
    assert f"{people.client1} is staff" in done.output
    assert not reads_inbox(browser)

    refused = CliRunner().invoke(
        main, ["users", "set-role", people.admin, "--role", "staff"], env=env
    )
    assert refused.exit_code == 1
    assert "only admin" in refused.output
    with transaction(sessions) as s:
        assert directory.user(s, people.admin).role == "admin"
        (changed,) = s.scalars(
            select(models.AuditEvent).where(models.AuditEvent.action == "role_changed")
        ).all()
        assert changed.detail == {"from": "client", "to": "staff", "sessions": 1}
