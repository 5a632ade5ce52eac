"""HTTP-level behaviour of the portal against a real uvicorn: log-in and its
throttle, CSRF refusal, privacy of threads, inert email HTML, headers."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import socket
from collections.abc import Callable
from urllib.parse import quote

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.core import accounts
from replygate.core.messaging import Messaging
from replygate.errors import Invalid, NotFound
from replygate.portal import run_portal, set_password
from replygate.store import directory
from replygate.store.db import transaction
from replygate.store.models import LoginAttempt, Thread, ThreadParticipant
from tests.portal_support import CIRCLE, PASSWORD, Client, People, file_email_reply, serve_in_thread


def _send_to_circle(messaging: Messaging, people: People) -> dict[str, int]:
    result = messaging.send(
        sender=people.staff, to=[f"circle:{CIRCLE}"], subject="Group update", body="Hello both"
    )
    return {t.recipient: t.id for t in result.threads}


def test_notification_link_opens_the_thread_after_login(
    client_for: Callable[[], Client], people: People, messaging: Messaging
) -> None:
    """The `{portal_url}/threads/{id}` link leads through the login page to that thread."""
    thread_id = _send_to_circle(messaging, people)[people.client1]
    c = client_for()
    first = c.get(f"/threads/{thread_id}")
    assert first.status == 303
    assert first.location == f"/login?next={quote(f'/threads/{thread_id}', safe='')}"
    logged_in = c.login(people.client1, next_url=f"/threads/{thread_id}")
    assert logged_in.status == 303
    assert logged_in.location == f"/threads/{thread_id}"
    page = c.get(f"/threads/{thread_id}")
    assert page.status == 200
    assert "Group update" in page.text and "Hello both" in page.text


def test_login_refuses_a_foreign_next(client_for: Callable[[], Client], people: People) -> None:
    """After login we only ever go to a path on this site (no open redirect)."""
    for target in ["https://evil.test/", "//evil.test/x", "/\\evil.test"]:
        c = client_for()
        assert c.login(people.staff, next_url=target).location == "/inbox"


def test_forms_without_the_sessions_csrf_token_are_refused(
    client_for: Callable[[], Client], people: People, sessions: sessionmaker[Session]
) -> None:
    """Every form needs the session's CSRF token (and no foreign Origin); else 403."""
    anonymous = client_for()
    no_token = anonymous.post("/login", {"email": people.staff, "password": PASSWORD})
    assert no_token.status == 403
    assert "uid" not in str(anonymous.cookies)

    c = client_for()
    assert c.login(people.staff).status == 303
    token = c.csrf("/compose")
    message = {"to": people.client1, "subject": "Hi", "body": "Text"}
    assert c.post("/compose", message).status == 403
    assert c.post("/compose", {**message, "csrf": "forged"}).status == 403
    foreign = c.post("/compose", {**message, "csrf": token}, {"Origin": "https://evil.test"})
    assert foreign.status == 403
    configured = c.post("/compose", {**message, "csrf": token}, {"Origin": "http://portal.test"})
    assert configured.status == 303  # the portal URL's own origin, as behind a proxy
    assert c.post("/logout", {}).status == 403
    assert c.post("/settings/convenience", {"mode": "off"}).status == 403
    with transaction(sessions) as s:
        assert s.scalar(select(func.count(Thread.id))) == 1  # only the accepted one

    sent = c.post("/compose", {**message, "csrf": token})
    assert sent.status == 303
    with transaction(sessions) as s:
        assert s.scalar(select(func.count(Thread.id))) == 2


def test_repeated_failed_logins_are_throttled(
    client_for: Callable[[], Client], people: People, sessions: sessionmaker[Session]
) -> None:
    """After five wrong passwords the account refuses even the right one for a while."""
    c = client_for()
    for _ in range(accounts.MAX_FAILURES_PER_ACCOUNT):
        assert c.login(people.client1, "wrong password!").status == 401
    throttled = c.login(people.client1, PASSWORD)
    assert throttled.status == 429
    assert int(throttled.headers["retry-after"]) > 0
    assert "Too many failed attempts" in throttled.text
    # Another account from the same address is not locked out by someone else's guessing.
    assert client_for().login(people.client2).status == 303
    with transaction(sessions) as s:
        failures = s.scalar(
            select(func.count(LoginAttempt.id)).where(LoginAttempt.email == people.client1)
        )
    assert failures == accounts.MAX_FAILURES_PER_ACCOUNT


def test_unknown_account_fails_like_a_wrong_password(
    client_for: Callable[[], Client], people: People
) -> None:
    """The answer does not reveal whether an account exists."""
    unknown = client_for().login("nobody@example.test", PASSWORD)
    wrong = client_for().login(people.client1, "not the password")
    assert unknown.status == wrong.status == 401
    assert "do not match an account" in unknown.text and "do not match an account" in wrong.text


def test_someone_elses_thread_is_not_found(
    client_for: Callable[[], Client], people: People, messaging: Messaging
) -> None:
    """A client in the same Circle, or staff not in the thread, gets 404, as for no thread."""
    threads = _send_to_circle(messaging, people)
    c = client_for()
    c.login(people.client1)
    own = c.get(f"/threads/{threads[people.client1]}")
    assert own.status == 200
    other = c.get(f"/threads/{threads[people.client2]}")
    assert other.status == 404
    assert "Hello both" not in other.text
    assert c.get("/threads/999999").status == 404
    token = c.csrf("/inbox")
    refused = c.post(f"/threads/{threads[people.client2]}/reply", {"csrf": token, "body": "x"})
    assert refused.status == 404
    inbox = c.get("/inbox")
    assert f"/threads/{threads[people.client2]}" not in inbox.text

    admin = client_for()
    admin.login(people.admin)
    assert admin.get(f"/threads/{threads[people.client1]}").status == 404


def test_html_email_reply_is_rendered_inert(
    client_for: Callable[[], Client],
    people: People,
    messaging: Messaging,
    sessions: sessionmaker[Session],
) -> None:
    """Script, event handlers and javascript: links in an email reply never reach the page."""
    thread_id = _send_to_circle(messaging, people)[people.client1]
    file_email_reply(
        sessions,
        messaging,
        thread_id=thread_id,
        author=people.client1,
        body="Thanks <script>alert('text')</script> see you",
        quote="> Hello both",
        signature="-- \nCarol",
        body_html=(
            "<p>Thanks <b>bold</b></p><script>alert('html')</script>"
            "<img src=x onerror=alert('img')>"
            '<a href="javascript:alert(1)" onclick="alert(2)">link</a>'
            '<div onmouseover="alert(3)" style="position:fixed">hover</div>'
            "<iframe src=https://evil.test></iframe><svg onload=alert(4)></svg>"
        ),
    )
    c = client_for()
    c.login(people.staff)
    page = c.get(f"/threads/{thread_id}")
    assert page.status == 200
    text = page.text.lower()
    assert text.count("<script") == 1  # only our own <script src="/static/app.js…">
    for dangerous in ["onerror", "onclick", "onmouseover", "onload", "javascript:", "<iframe"]:
        assert dangerous not in text, dangerous
    assert "<img" not in text and "<svg" not in text and "position:fixed" not in text
    assert "<b>bold</b>" in page.text
    assert "Thanks &lt;script&gt;alert(&#39;text&#39;)&lt;/script&gt; see you" in page.text
    assert "by email" in page.text
    assert "<summary>Quoted text</summary>" in page.text
    assert "<summary>Signature</summary>" in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp


def test_security_headers_and_session_cookie(
    client_for: Callable[[], Client], people: People
) -> None:
    """Framing is refused, referrers stay on site, the cookie is HttpOnly and SameSite."""
    c = client_for()
    page = c.get("/login")
    assert page.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["referrer-policy"] == "same-origin"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["cache-control"] == "no-store"
    c.login(people.staff)
    cookie = c.set_cookie_headers[-1].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie
    assert "secure" not in cookie  # plain HTTP here; see the HTTPS test below
    static = c.get("/static/app.js")
    assert static.status == 200 and "cache-control" not in static.headers


def test_session_cookie_is_secure_over_https(
    settings: Settings, sessions: sessionmaker[Session], people: People
) -> None:
    """When the portal URL is HTTPS the cookie is Secure and __Host- prefixed."""
    https = dataclasses.replace(settings, portal_url="https://portal.example.test")
    for base in serve_in_thread(https, sessions):
        c = Client(base)
        c.get("/login")
        cookie = c.set_cookie_headers[-1].lower()
        assert cookie.startswith("__host-replygate=") and "; secure" in cookie
        assert "strict-transport-security" in c.get("/login").headers


def test_reading_marks_the_thread_read(
    client_for: Callable[[], Client],
    people: People,
    messaging: Messaging,
    sessions: sessionmaker[Session],
) -> None:
    """The inbox marks and counts unread threads; opening one marks it read."""
    threads = _send_to_circle(messaging, people)
    c = client_for()
    c.login(people.client1)
    inbox = c.get("/inbox")
    assert 'class="thread-row unread"' in inbox.text
    assert "1 unread conversation" in inbox.text
    c.get(f"/threads/{threads[people.client1]}")
    inbox = c.get("/inbox")
    assert "Everything read" in inbox.text
    assert "thread-row unread" not in inbox.text
    assert 'class="tag new"' not in inbox.text
    with transaction(sessions) as s:
        mark = s.scalar(
            select(ThreadParticipant.last_read_message_id).where(
                ThreadParticipant.thread_id == threads[people.client1],
                ThreadParticipant.user_id == directory.user(s, people.client1).id,
            )
        )
    assert mark is not None


def test_canned_responses_are_for_staff(client_for: Callable[[], Client], people: People) -> None:
    """Staff create, edit and delete canned responses; clients are refused."""
    staff = client_for()
    staff.login(people.staff)
    token = staff.csrf("/canned/new")
    made = staff.post(
        "/canned/new",
        {"csrf": token, "name": "Welcome", "subject": "Welcome aboard", "body": "Hello there"},
    )
    assert made.status == 303
    listing = staff.get("/canned")
    assert "Welcome aboard" in listing.text
    duplicate = staff.post("/canned/new", {"csrf": token, "name": "Welcome", "body": "x"})
    assert duplicate.status == 400
    compose = staff.get("/compose?canned=1")
    assert 'value="Welcome aboard"' in compose.text and "Hello there</textarea>" in compose.text
    edited = staff.post("/canned/1", {"csrf": token, "name": "Welcome", "body": "Changed"})
    assert edited.status == 303
    assert "Changed" in staff.get("/canned").text
    assert staff.post("/canned/1/delete", {"csrf": token}).status == 303
    assert "Welcome" not in staff.get("/canned").text.split("<main", 1)[1]

    client = client_for()
    client.login(people.client1)
    assert client.get("/canned").status == 403
    assert client.get("/settings").status == 403


def test_convenience_mode_needs_the_acknowledgement(
    client_for: Callable[[], Client], people: People, sessions: sessionmaker[Session]
) -> None:
    """Admin only; on only with the ticked acknowledgement; off says tokens were voided."""
    staff = client_for()
    staff.login(people.staff)
    assert staff.get("/settings").status == 403

    admin = client_for()
    admin.login(people.admin)
    page = admin.get("/settings")
    assert "HIPAA" in page.text and "business associate agreement" in page.text
    token = admin.csrf("/settings")
    refused = admin.post("/settings/convenience", {"csrf": token, "mode": "on"})
    assert refused.status == 400
    assert "Off (Secure Mode)" in refused.text
    on = admin.post("/settings/convenience", {"csrf": token, "mode": "on", "acknowledge": "yes"})
    assert on.status == 303
    page = admin.get("/settings")
    assert 'id="convenience-status" class="on"' in page.text
    assert f"acknowledged by {people.admin}" in page.text
    off = admin.post("/settings/convenience", {"csrf": token, "mode": "off"})
    assert off.status == 303
    page = admin.get("/settings")
    assert "0 outstanding reply addresses were voided" in page.text
    with transaction(sessions) as s:
        assert directory.organisation(s).convenience_mode is False

    renamed = admin.post("/settings/organisation", {"csrf": token, "name": "Harbour Clinic"})
    assert renamed.status == 303
    assert "Harbour Clinic" in admin.get("/inbox").text


def test_one_name_for_the_organisation_before_and_after_login(
    client_for: Callable[[], Client], people: People, settings: Settings
) -> None:
    """The login page, error pages and the pages inside show the database's name; a
    staff user sent to the admins' settings page is told it is for admins."""
    admin = client_for()
    admin.login(people.admin)
    token = admin.csrf("/settings")
    admin.post("/settings/organisation", {"csrf": token, "name": "Harbour Clinic"})

    stranger = client_for()
    login = stranger.get("/login")
    assert "Messages from Harbour Clinic are waiting" in login.text
    assert settings.organisation_name not in login.text
    assert "· Harbour Clinic</title>" in stranger.get("/no-such-page").text
    wrong = stranger.post("/login", {"csrf": stranger.csrf("/login"), "email": "x@y.z"})
    assert wrong.status == 401 and "Harbour Clinic" in wrong.text

    staff = client_for()
    staff.login(people.staff)
    refused = staff.get("/settings")
    assert refused.status == 403
    assert "This page is for admins only." in refused.text
    client = client_for()
    client.login(people.client1)
    assert "This page is for staff only." in client.get("/canned").text


def test_set_password_rules_and_old_sessions(
    client_for: Callable[[], Client], people: People, sessions: sessionmaker[Session]
) -> None:
    """Weak passwords and unknown people are refused; a new password ends old sessions."""
    with transaction(sessions) as s:
        with pytest.raises(Invalid):
            set_password(s, people.client1, "short")
        with pytest.raises(NotFound):
            set_password(s, "nobody@example.test", PASSWORD)
    c = client_for()
    c.login(people.client1)
    assert c.get("/inbox").status == 200
    with transaction(sessions) as s:
        set_password(s, people.client1, "another long password")
    assert c.get("/inbox").status == 303
    assert client_for().login(people.client1, "another long password").status == 303


def test_logout_ends_the_session(client_for: Callable[[], Client], people: People) -> None:
    c = client_for()
    c.login(people.staff)
    token = c.csrf("/inbox")
    assert c.post("/logout", {"csrf": token}).location == "/login"
    assert c.get("/inbox").status == 303


def test_run_portal_shares_the_loop_and_leaves_signals_alone(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    """run_portal serves until its stop event, without touching signal handlers."""

    async def scenario() -> None:
        before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
        stop, started = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(run_portal(settings, sessions, stop, port=0, started=started))
        await asyncio.wait_for(started.wait(), 15)
        assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
        stop.set()
        await asyncio.wait_for(task, 15)

    asyncio.run(scenario())


def test_run_portal_reports_a_port_in_use(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]

        async def scenario() -> None:
            await run_portal(settings, sessions, asyncio.Event(), host="127.0.0.1", port=port)

        with pytest.raises(OSError):
            asyncio.run(scenario())


def test_attachments_are_listed_and_downloadable_by_participants_only(
    client_for: Callable[[], Client],
    people: People,
    messaging: Messaging,
    sessions: sessionmaker[Session],
) -> None:
    """A file that came by email downloads for the thread's people; anyone else gets 404."""
    from replygate.store.models import MessageAttachment

    thread_id = _send_to_circle(messaging, people)[people.client1]
    message_id = file_email_reply(
        sessions, messaging, thread_id=thread_id, author=people.client1, body="Form attached"
    )
    with transaction(sessions) as s:
        row = MessageAttachment(
            message_id=message_id,
            filename="intake <form>.html",
            content_type="text/html",
            size=31,
            data=b"<script>alert('stored')</script>",
        )
        s.add(row)
        s.flush()
        attachment_id = row.id
    staff = client_for()
    staff.login(people.staff)
    page = staff.get(f"/threads/{thread_id}")
    assert f'href="/attachments/{attachment_id}"' in page.text
    assert "intake &lt;form&gt;.html" in page.text
    got = staff.get(f"/attachments/{attachment_id}")
    assert got.status == 200
    assert got.headers["content-type"] == "application/octet-stream"  # never rendered as HTML
    assert got.headers["content-disposition"].startswith("attachment;")
    assert got.headers["x-content-type-options"] == "nosniff"
    other = client_for()
    other.login(people.client2)
    assert other.get(f"/attachments/{attachment_id}").status == 404
    assert other.get("/attachments/999999").status == 404


def test_a_bouncing_address_is_shown_on_the_thread(
    client_for: Callable[[], Client],
    people: People,
    messaging: Messaging,
    sessions: sessionmaker[Session],
) -> None:
    """Staff see that a client's email bounces, so they know notifications are not arriving."""
    thread_id = _send_to_circle(messaging, people)[people.client1]
    c = client_for()
    c.login(people.staff)
    assert "address-status" not in c.get(f"/threads/{thread_id}").text
    with transaction(sessions) as s:
        directory.user(s, people.client1).address_status = "suppressed"
    page = c.get(f"/threads/{thread_id}").text
    assert "email notifications stopped" in page
