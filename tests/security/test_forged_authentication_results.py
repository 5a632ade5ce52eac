"""Authentication-Results claiming our own authserv-id, written by the sender (RFC 8601 §5).

The gateway believes the results it stamps itself (``mail_auth = verify``),
so an attacker who writes a header in our name, saying DMARC passed, must
gain nothing: every such field is removed before the mail is checked and
stored, however it is spelled or folded, and the acceptance policy reads our
real results. The attacker sends over real SMTP, as the client, from an
address the client's domain does not authorise.
"""

from __future__ import annotations

import dataclasses
import smtplib
from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.core import operations
from replygate.gateway.server import GatewayThread
from tests.dns_server import Zone
from tests.integration.gateway.conftest import World, queued, reply_message
from tests.integration.gateway.conftest import world as world

FORGERIES = {
    "plain": "Authentication-Results: reply.test; spf=pass; dmarc=pass header.from=client.test",
    "upper case, a version and a comment": (
        "AUTHENTICATION-RESULTS: (trust me) REPLY.TEST 1; dmarc=pass header.from=client.test"
    ),
    "folded over lines": (
        "Authentication-Results: reply.test;\r\n\tdkim=pass header.d=client.test;\r\n"
        "\tdmarc=pass header.from=client.test"
    ),
    "space before the colon": (
        "Authentication-Results : reply.test; dmarc=pass header.from=client.test"
    ),
}


@pytest.fixture(params=sorted(FORGERIES))
def forged(request: pytest.FixtureRequest) -> str:
    return FORGERIES[request.param]


def _attack(gateway: GatewayThread, world: World, forged: str) -> tuple[int, str]:
    raw = (forged + "\r\n").encode() + reply_message(
        from_=f"Cleo Park <{world.client_email}>", to=world.address
    )
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=30) as smtp:
        smtp.ehlo("mx.evil.test")
        smtp.mail(world.client_email)
        smtp.rcpt(world.address)
        code, text = smtp.data(raw)
    return code, text.decode()


@pytest.fixture
def mx(
    settings: Settings, sessions: sessionmaker[Session], dns_zone: Zone
) -> Iterator[GatewayThread]:
    """The gateway as the MX (127.0.0.1 is no relay here), checking mail itself."""
    changed = dataclasses.replace(settings, smtp_trusted_relays="192.0.2.0/24")
    gateway = GatewayThread(changed, sessions, host="127.0.0.1", port=0)
    gateway.start()
    yield gateway
    gateway.stop()


def test_a_forged_pass_in_our_name_does_not_beat_dmarc_reject(
    mx: GatewayThread, dns_zone: Zone, world: World, sessions: sessionmaker[Session], forged: str
) -> None:
    dns_zone.txt("client.test", "v=spf1 ip4:192.0.2.1 -all")
    dns_zone.txt("_dmarc.client.test", "v=DMARC1; p=reject")
    code, text = _attack(mx, world, forged)
    assert code == 550 and "DMARC failed" in text
    assert queued(sessions) == []


def test_a_forged_pass_in_our_name_does_not_meet_require_pass(
    mx: GatewayThread,
    dns_zone: Zone,
    world: World,
    settings: Settings,
    sessions: sessionmaker[Session],
    forged: str,
) -> None:
    """The client's domain publishes no DMARC: only a forged header could say it passed."""
    operations.set_dmarc_policy(sessions, settings, "require-pass")
    code, text = _attack(mx, world, forged)
    assert code == 550 and "DMARC" in text
    assert queued(sessions) == []


def test_the_stored_mail_holds_only_our_own_results(
    mx: GatewayThread, dns_zone: Zone, world: World, sessions: sessionmaker[Session], forged: str
) -> None:
    """Accepted (no DMARC to apply), the forgery is gone and one header of ours is first;
    a relay's header under another authserv-id stays, as RFC 8601 asks."""
    other = "Authentication-Results: mx.client.test; dkim=pass header.d=client.test"
    code, _ = _attack(mx, world, forged + "\r\n" + other)
    assert code == 250
    (row,) = queued(sessions)
    fields = [line for line in row.raw.split(b"\r\n") if b"uthentication-results" in line.lower()]
    assert len(fields) == 2
    assert fields[0].startswith(b"Authentication-Results: reply.test;")
    assert fields[1] == other.encode()
    assert b"dmarc=pass" not in row.raw.split(b"\r\n\r\n", 1)[0]
