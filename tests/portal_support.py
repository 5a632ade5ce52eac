"""Portal fixtures: people with passwords, a real uvicorn on an ephemeral port,
and a small cookie-keeping HTTP client built on ``http.client``."""

from __future__ import annotations

import asyncio
import http.client
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import Message as HeaderMessage
from urllib.parse import urlencode, urlsplit

import pytest
from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.core.accounts import hash_password
from replygate.core.messaging import Messaging
from replygate.portal import create_app
from replygate.portal.server import PortalServer, portal_config
from replygate.store import directory
from replygate.store.db import transaction
from replygate.store.models import InboundMail, MfaRequirement

PASSWORD = "correct horse battery staple"
CIRCLE = "Tuesday group"
START_TIMEOUT = 15.0


@dataclass(frozen=True)
class People:
    admin: str = "ada@practice.test"
    staff: str = "sam@practice.test"
    client1: str = "carol@example.test"
    client2: str = "dan@example.test"


@pytest.fixture(scope="session")
def password_hash() -> str:
    """PASSWORD hashed once: argon2 is slow on purpose, and every test needs people."""
    return hash_password(PASSWORD)


@pytest.fixture
def people(sessions: sessionmaker[Session], password_hash: str) -> People:
    """An admin, a staff member and two clients in one Circle, all with PASSWORD."""
    p = People()
    with transaction(sessions) as s:
        for email, name, role in [
            (p.admin, "Ada Admin", "admin"),
            (p.staff, "Sam Staff", "staff"),
            (p.client1, "Carol Client", "client"),
            (p.client2, "Dan Client", "client"),
        ]:
            directory.add_user(s, email, name, role).password_hash = password_hash
        directory.add_circle(s, CIRCLE)
        directory.add_member(s, CIRCLE, p.client1)
        directory.add_member(s, CIRCLE, p.client2)
        # These people log in with a password alone; the two-factor tests turn it on.
        directory.organisation(s).mfa_required = MfaRequirement.OFF
    return p


@pytest.fixture
def messaging(settings: Settings, sessions: sessionmaker[Session]) -> Messaging:
    return Messaging(sessions, settings)


def serve_in_thread(settings: Settings, sessions: sessionmaker[Session]) -> Iterator[str]:
    """Run the portal with a real uvicorn in a background thread; yield its base URL."""
    ready = threading.Event()
    server = PortalServer(
        portal_config(create_app(settings, sessions), "127.0.0.1", 0), on_started=ready.set
    )
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    if not ready.wait(START_TIMEOUT):
        server.should_exit = True
        pytest.fail("the portal did not start listening")
    try:
        yield f"http://127.0.0.1:{server.bound_port}"
    finally:
        server.should_exit = True
        thread.join(START_TIMEOUT)


@pytest.fixture
def live_portal(settings: Settings, sessions: sessionmaker[Session]) -> Iterator[str]:
    yield from serve_in_thread(settings, sessions)


@dataclass
class Reply:
    status: int
    headers: HeaderMessage
    text: str

    @property
    def location(self) -> str | None:
        return self.headers.get("location")


CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')


class Client:
    """Just enough of a browser: cookies, forms, no redirects followed.

    ``source`` is the local address to connect from (any of 127.0.0.0/8
    works on loopback), for a second client address without a proxy.
    """

    def __init__(self, base: str, source: str | None = None) -> None:
        parts = urlsplit(base)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.source = (source, 0) if source else None
        self.cookies: dict[str, str] = {}
        self.set_cookie_headers: list[str] = []

    def request(
        self,
        method: str,
        path: str,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        conn = http.client.HTTPConnection(
            self.host, self.port, timeout=20, source_address=self.source
        )
        sent = dict(headers or {})
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if data is not None:
            body = urlencode(data, doseq=True)
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            conn.request(method, path, body, sent)
            resp = conn.getresponse()
            text = resp.read().decode("utf-8", "replace")
        finally:
            conn.close()
        for header in resp.headers.get_all("set-cookie") or []:
            self.set_cookie_headers.append(header)
            name, _, value = header.split(";", 1)[0].partition("=")
            if "expires=thu, 01 jan 1970" in header.lower():
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        return Reply(resp.status, resp.headers, text)

    def get(self, path: str, headers: dict[str, str] | None = None) -> Reply:
        return self.request("GET", path, headers=headers)

    def post(
        self, path: str, data: dict[str, object], headers: dict[str, str] | None = None
    ) -> Reply:
        return self.request("POST", path, data, headers)

    def csrf(self, path: str = "/login") -> str:
        page = self.get(path)
        found = CSRF_RE.search(page.text)
        assert found, f"no CSRF field on {path} ({page.status})"
        return found.group(1)

    def login(self, email: str, password: str = PASSWORD, next_url: str = "") -> Reply:
        token = self.csrf("/login")
        return self.post(
            "/login", {"csrf": token, "email": email, "password": password, "next": next_url}
        )


@pytest.fixture
def client_for(live_portal: str) -> Callable[[], Client]:
    return lambda: Client(live_portal)


def file_email_reply(
    sessions: sessionmaker[Session],
    messaging: Messaging,
    *,
    thread_id: int,
    author: str,
    body: str,
    quote: str | None = None,
    signature: str | None = None,
    body_html: str | None = None,
) -> int:
    """File a reply as the threading engine does after accepting a mail."""
    with transaction(sessions) as s:
        user = directory.user(s, author)
        inbound = InboundMail(
            mail_from=author, rcpt="reply+token@reply.test", size=len(body), status="filed"
        )
        s.add(inbound)
        s.flush()
        message = messaging.file_email_reply(
            s,
            thread_id=thread_id,
            author_id=user.id,
            body=body,
            quote=quote,
            signature=signature,
            inbound_id=inbound.id,
            email_message_id=f"<{inbound.id}@mail.example.test>",
            body_html=body_html,
        )
        assert message is not None
        return message.id
