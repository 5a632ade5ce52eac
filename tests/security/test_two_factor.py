"""Two-factor login, attacked: a stolen password alone opens nothing, a code works once,
guessing codes is throttled like guessing passwords, a half-done login reaches no page,
and a recovery code works once."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable

import pyotp
import pytest
from click.testing import CliRunner
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from replygate.cli import main
from replygate.config import Settings
from replygate.core import accounts
from replygate.store import directory
from replygate.store.db import transaction
from replygate.store.models import AuditEvent, MfaRequirement, User
from tests.helpers import cli_env
from tests.portal_support import PASSWORD, Client, People
from tests.portal_support import client_for as client_for  # a fixture
from tests.portal_support import live_portal as live_portal  # a fixture
from tests.portal_support import password_hash as password_hash  # a fixture
from tests.portal_support import people as people  # a fixture

SECRET_RE = re.compile(r'<code id="enrol-secret">([A-Z2-7]+)</code>')
CODES_RE = re.compile(r"<li><code>([a-z2-9]{4}-[a-z2-9]{4}-[a-z2-9]{4})</code></li>")


@pytest.fixture
def required(sessions: sessionmaker[Session], people: People) -> People:
    """The default: staff and admins must use a second factor."""
    with transaction(sessions) as s:
        directory.organisation(s).mfa_required = MfaRequirement.STAFF
    return people


def _code(secret: str, offset_steps: int = 0) -> str:
    return pyotp.TOTP(secret).at(time.time() + 30 * offset_steps)


def _enrol(c: Client, email: str, used: list[str] | None = None) -> tuple[str, list[str]]:
    """Log in with the password, enrol with a code made from the secret shown; (secret, codes).
    The code given is appended to ``used`` (a step may end between making it and another)."""
    assert c.login(email).location == "/login/enrol"
    page = c.get("/login/enrol")
    assert page.status == 200 and "<svg" in page.text  # the QR code, drawn here
    found = SECRET_RE.search(page.text)
    assert found, "no secret on the enrolment page"
    secret = found.group(1)
    code = _code(secret)
    if used is not None:
        used.append(code)
    done = c.post("/login/enrol", {"csrf": c.csrf("/login/enrol"), "code": code})
    assert done.status == 200, done.text
    codes = CODES_RE.findall(done.text)
    assert len(codes) == 10
    return secret, codes


def _code_step(c: Client, email: str, code: str, password: str = PASSWORD) -> int:
    assert c.login(email, password).location == "/login/code"
    return c.post("/login/code", {"csrf": c.csrf("/login/code"), "code": code}).status


def test_staff_must_enrol_and_then_log_in_with_a_code(
    client_for: Callable[[], Client], required: People
) -> None:
    first = client_for()
    secret, _ = _enrol(first, required.staff)
    assert first.get("/inbox").status == 200  # enrolment finished the login

    laptop = client_for()
    assert _code_step(laptop, required.staff, _code(secret, 1)) == 303
    assert laptop.get("/inbox").status == 200


def test_a_stolen_password_alone_reaches_no_page(
    client_for: Callable[[], Client], required: People
) -> None:
    owner = client_for()
    secret, _ = _enrol(owner, required.staff)
    thief = client_for()
    assert thief.login(required.staff).location == "/login/code"
    for path in ("/inbox", "/compose", "/settings", "/threads/1", "/password", "/login/enrol"):
        reply = thief.get(path)
        assert reply.status == 303 and (reply.location or "").startswith("/login"), path
    # Nor can the thief enrol a phone of their own in the owner's place.
    again = client_for()
    assert again.login(required.staff).location == "/login/code"
    token = again.csrf("/login/code")
    enrolled = again.post("/login/enrol", {"csrf": token, "code": "123456"})
    assert enrolled.status == 303 and (enrolled.location or "").startswith("/login")
    assert _code_step(client_for(), required.staff, _code(secret, 1)) == 303  # still theirs


def test_a_code_works_once(client_for: Callable[[], Client], required: People) -> None:
    secret, _ = _enrol(client_for(), required.staff)
    code = _code(secret, 1)  # the enrolment used this step's code already
    assert _code_step(client_for(), required.staff, code) == 303
    replayed = client_for()
    assert _code_step(replayed, required.staff, code) == 401  # seen over a shoulder
    assert replayed.get("/inbox").status == 303


def test_the_enrolment_code_cannot_be_replayed(
    client_for: Callable[[], Client], required: People
) -> None:
    used: list[str] = []
    _enrol(client_for(), required.staff, used)
    assert _code_step(client_for(), required.staff, used[0]) == 401


def test_a_recovery_code_works_once(client_for: Callable[[], Client], required: People) -> None:
    _, codes = _enrol(client_for(), required.staff)
    assert _code_step(client_for(), required.staff, codes[3].upper().replace("-", " ")) == 303
    assert _code_step(client_for(), required.staff, codes[3]) == 401


def test_guessing_codes_is_throttled_like_passwords(
    client_for: Callable[[], Client], required: People
) -> None:
    secret, _ = _enrol(client_for(), required.staff)
    guesser = client_for()
    assert guesser.login(required.staff).location == "/login/code"
    statuses = []
    for guess in range(accounts.MAX_FAILURES_PER_ACCOUNT + 1):
        reply = guesser.post(
            "/login/code", {"csrf": guesser.csrf("/login/code"), "code": f"{guess:06d}"}
        )
        statuses.append(reply.status)
    assert statuses[-1] == 429
    # The right code is refused too while the throttle lasts: guessing stays blind.
    reply = guesser.post(
        "/login/code", {"csrf": guesser.csrf("/login/code"), "code": _code(secret, 1)}
    )
    assert reply.status == 429


def test_a_half_done_login_expires(
    client_for: Callable[[], Client], required: People, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret, _ = _enrol(client_for(), required.staff)
    c = client_for()
    assert c.login(required.staff).location == "/login/code"
    token = c.csrf("/login/code")
    real = time.time
    monkeypatch.setattr("replygate.portal.account_pages.time.time", lambda: real() + 301)
    late = c.post("/login/code", {"csrf": token, "code": _code(secret, 1)})
    assert late.status == 303 and late.location.startswith("/login")
    assert c.get("/inbox").status == 303


def test_clients_log_in_with_a_password_under_the_default(
    client_for: Callable[[], Client], required: People
) -> None:
    assert client_for().login(required.client1).location == "/inbox"


def test_operators_enrol_reset_and_require(
    client_for: Callable[[], Client],
    required: People,
    sessions: sessionmaker[Session],
    settings: Settings,
) -> None:
    env = cli_env(settings)
    runner = CliRunner()
    done = runner.invoke(main, ["users", "mfa", "enroll", required.client1, "--json"], env=env)
    assert done.exit_code == 0, done.output
    shown = json.loads(done.output)
    secret = pyotp.parse_uri(shown["otpauth_uri"]).secret
    assert len(shown["recovery_codes"]) == 10
    assert _code_step(client_for(), required.client1, _code(secret)) == 303

    assert runner.invoke(main, ["users", "mfa", "reset", required.client1], env=env).exit_code == 0
    assert client_for().login(required.client1).location == "/inbox"  # clients need not enrol

    assert runner.invoke(main, ["settings", "mfa", "require", "all"], env=env).exit_code == 0
    assert client_for().login(required.client1).location == "/login/enrol"
    bad = runner.invoke(main, ["settings", "mfa", "require", "some"], env=env)
    assert bad.exit_code == 2
    with sessions() as s:
        actions = set(s.scalars(select(AuditEvent.action)))
        user = s.scalars(select(User).where(User.email == required.client1)).one()
    assert {"mfa_enrolled", "mfa_used", "mfa_reset", "setting_changed"} <= actions
    assert user.mfa_secret is None


def test_the_secret_is_sealed_at_rest_and_a_moved_one_fails_closed(
    client_for: Callable[[], Client], required: People, sessions: sessionmaker[Session]
) -> None:
    from sqlalchemy import text
    from structlog.testing import capture_logs

    secret, _ = _enrol(client_for(), required.staff)
    with sessions() as s:
        stored = s.execute(
            text("SELECT mfa_secret FROM users WHERE email = :e"), {"e": required.staff}
        ).scalar_one()
    assert secret.encode() not in bytes(stored)
    # Sam's sealed secret copied onto Ada's row, as a tamperer with SQL would.
    with transaction(sessions) as s:
        s.execute(
            text(
                "UPDATE users SET mfa_secret = (SELECT mfa_secret FROM users"
                " WHERE email = :a) WHERE email = :b"
            ),
            {"a": required.staff, "b": required.admin},
        )
    c = client_for()
    with capture_logs() as logged:
        status = _code_step(c, required.admin, _code(secret, 1))
    assert status == 500
    assert [e for e in logged if e["event"] == "store.seal_broken"]
    assert c.get("/inbox").status == 303  # no session: failed closed
