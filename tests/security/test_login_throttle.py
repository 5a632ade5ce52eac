"""Login throttling that cannot be turned on a victim, nor dodged with a header.

The attacker posts /login as a browser would. Failures count per account and
client address, and per address: a guesser slows only itself (each attempt
past five waits 1, 2, 4 … minutes), never the owner logging in from
elsewhere, the admin included. The client address is the peer's unless the
peer is a proxy the operator listed in ``trusted_proxies``; an
X-Forwarded-For from anyone else, loopback included, changes nothing. A
second address without a proxy is a second loopback address (127.0.0.2).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.core import accounts
from replygate.store.db import transaction
from replygate.store.models import LoginAttempt, utcnow
from tests.portal_support import PASSWORD, Client, People, serve_in_thread
from tests.portal_support import client_for as client_for  # a fixture
from tests.portal_support import live_portal as live_portal  # a fixture
from tests.portal_support import password_hash as password_hash  # a fixture
from tests.portal_support import people as people  # a fixture

WRONG = "not the password at all"
ATTACKER, OWNER = "203.0.113.66", "198.51.100.7"


def addresses(sessions: sessionmaker[Session]) -> set[str]:
    with transaction(sessions) as s:
        return set(s.scalars(select(LoginAttempt.address)))


def guess(client: Client, email: str, password: str = WRONG, **headers: str) -> int:
    token = client.csrf("/login")
    form = {"csrf": token, "email": email, "password": password, "next": ""}
    return client.post("/login", form, headers).status


@pytest.fixture
def behind_proxy(settings: Settings, sessions: sessionmaker[Session]) -> Iterator[str]:
    """A portal that trusts loopback as its reverse proxy."""
    trusting = dataclasses.replace(settings, trusted_proxies="127.0.0.1/32")
    yield from serve_in_thread(trusting, sessions)


def test_an_attackers_failures_do_not_lock_out_the_owner(live_portal: str, people: People) -> None:
    """Guessing the admin's password from one address leaves the admin free to log in."""
    attacker = Client(live_portal, source="127.0.0.2")
    for _ in range(accounts.MAX_FAILURES_PER_ACCOUNT):
        assert guess(attacker, people.admin) == 401
    assert guess(attacker, people.admin, PASSWORD) == 429  # even the right one, from there
    owner = Client(live_portal, source="127.0.0.1")
    assert owner.login(people.admin).status == 303
    assert owner.get("/settings").status == 200
    # The owner's success does not reset the attacker's wait.
    assert guess(Client(live_portal, source="127.0.0.2"), people.admin) == 429


def test_a_forged_x_forwarded_for_does_not_rotate_the_address(
    client_for: Callable[[], Client],
    people: People,
    sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Spraying many accounts with a new X-Forwarded-For each time still counts against
    the one real address, and the per-address limit holds."""
    # A smaller allowance keeps the attack short (every guess costs an argon2 hash);
    # the rule is the same for any allowance.
    monkeypatch.setattr(accounts, "MAX_FAILURES_PER_ADDRESS", 4)
    attacker = client_for()
    for n in range(accounts.MAX_FAILURES_PER_ADDRESS):
        forged = {"X-Forwarded-For": f"192.0.2.{n + 1}"}
        assert guess(attacker, f"user{n}@example.test", **forged) == 401
    forged = {"X-Forwarded-For": "192.0.2.250"}
    assert guess(attacker, people.client1, PASSWORD, **forged) == 429
    assert addresses(sessions) == {"127.0.0.1"}


def test_behind_a_trusted_proxy_the_forwarded_address_counts(
    behind_proxy: str, people: People, sessions: sessionmaker[Session]
) -> None:
    """With trusted_proxies set, each client is the address the proxy appended, and
    what a client wrote in front of it (the owner's address, say) is ignored."""
    attacker = Client(behind_proxy)
    from_attacker = {"X-Forwarded-For": f"{OWNER}, {ATTACKER}"}  # the proxy appended ATTACKER
    for _ in range(accounts.MAX_FAILURES_PER_ACCOUNT):
        assert guess(attacker, people.staff, **from_attacker) == 401
    assert guess(attacker, people.staff, PASSWORD, **from_attacker) == 429
    assert addresses(sessions) == {ATTACKER}
    owner = Client(behind_proxy)
    assert guess(owner, people.staff, PASSWORD, **{"X-Forwarded-For": OWNER}) == 303


def test_each_further_failure_doubles_the_wait(
    sessions: sessionmaker[Session], people: People
) -> None:
    """After the allowance: 1 minute, then 2, then 4; refused attempts do not count."""
    start = utcnow()
    with transaction(sessions) as s:
        for i in range(accounts.MAX_FAILURES_PER_ACCOUNT):
            at = start + timedelta(seconds=i)
            assert (
                accounts.authenticate(s, people.staff, WRONG, address=ATTACKER, now=at).user is None
            )
    last = start + timedelta(seconds=accounts.MAX_FAILURES_PER_ACCOUNT - 1)
    for minutes in (1, 2, 4):
        with transaction(sessions) as s:
            early = last + timedelta(minutes=minutes) - timedelta(seconds=1)
            held = accounts.authenticate(s, people.staff, PASSWORD, address=ATTACKER, now=early)
            assert held.throttled and 0 < held.retry_after <= 1
            last = last + timedelta(minutes=minutes)
            again = accounts.authenticate(s, people.staff, WRONG, address=ATTACKER, now=last)
            assert again.user is None and not again.throttled
    with transaction(sessions) as s:
        later = last + timedelta(minutes=8)
        assert accounts.authenticate(s, people.staff, PASSWORD, address=ATTACKER, now=later).user
