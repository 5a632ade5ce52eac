"""The gateway as the MX checks SPF, DKIM, ARC and DMARC itself (``mail_auth = verify``).

Every test publishes its records on the loopback DNS server, sends a reply
over real SMTP from 127.0.0.1 (not a relay here: ``smtp_trusted_relays`` is
another network), and reads the outcome: the SMTP reply, our
Authentication-Results first in the stored mail, the decision record, and,
where it matters, what the worker does with the stored bytes.
"""

from __future__ import annotations

import dataclasses
import smtplib
import threading
from collections.abc import Callable

import pytest
from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.gateway.server import GatewayThread
from replygate.mail.decisions import from_record, sentence
from replygate.mail.sender import parse_authentication_result
from replygate.store.models import InboundMail, Message
from replygate.workers.inbound import InboundWorker
from tests.dns_server import Zone
from tests.helpers import as_sent
from tests.integration.gateway.conftest import World, queued, reply_message
from tests.mail_auth_support import dkim_sign, forward_and_seal, publish_key

NOT_LOOPBACK = "192.0.2.0/24"


@pytest.fixture
def mx(
    settings: Settings, start: Callable[..., GatewayThread], dns_zone: Zone
) -> Callable[..., GatewayThread]:
    """A gateway that is the MX: it checks mail from 127.0.0.1 as from anywhere."""

    def started(**changes: object) -> GatewayThread:
        return start(settings, smtp_trusted_relays=NOT_LOOPBACK, **changes)

    return started


def send(gateway: GatewayThread, raw: bytes, mail_from: str, rcpt: str) -> tuple[int, str]:
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=30) as smtp:
        smtp.ehlo("mx.client.test")
        smtp.mail(mail_from)
        smtp.rcpt(rcpt)
        code, text = smtp.data(raw)
    return code, text.decode()


def ours(row: InboundMail) -> dict[str, str]:
    """Method -> result of the Authentication-Results the gateway put first."""
    assert row.raw.startswith(b"Authentication-Results: reply.test;")
    first = row.raw[: len(row.raw) - len(as_sent(row.raw))]
    value = first.split(b":", 1)[1].decode().replace("\r\n", " ")
    authserv, results = parse_authentication_result(value)
    assert authserv == "reply.test"
    return {method: result for method, result, _ in results}


def auth_record(row: InboundMail) -> dict[str, object]:
    (record,) = [d for d in row.decisions if d["stage"] == "authentication"]
    return record


def reply(world: World, **kw: object) -> bytes:
    return reply_message(from_=f"Cleo Park <{world.client_email}>", to=world.address, **kw)  # type: ignore[arg-type]


def test_spf_pass_aligned_passes_dmarc_and_the_worker_files_it(
    mx: Callable[..., GatewayThread],
    dns_zone: Zone,
    world: World,
    settings: Settings,
    sessions: sessionmaker[Session],
) -> None:
    dns_zone.txt("client.test", "v=spf1 ip4:127.0.0.1 -all")
    dns_zone.txt("_dmarc.client.test", "v=DMARC1; p=reject")
    raw = reply(world)
    assert send(mx(), raw, world.client_email, world.address)[0] == 250
    (row,) = queued(sessions)
    assert as_sent(row.raw) == raw
    assert ours(row) == {"spf": "pass", "dkim": "none", "arc": "none", "dmarc": "pass"}
    record = auth_record(row)
    assert (record["spf"], record["dmarc"], record["policy"]) == ("pass", "pass", "reject")
    explained = sentence(from_record(record))
    assert "SPF pass, DKIM none, ARC none, DMARC pass (the domain's policy: reject)" in explained
    assert InboundWorker(sessions, settings).drain() == 1
    with sessions() as s:
        assert s.get(InboundMail, row.id).status == "filed"
        assert s.query(Message).filter(Message.source == "email").count() == 1


def test_spf_fail_without_dmarc_is_recorded_and_accepted(
    mx: Callable[..., GatewayThread], dns_zone: Zone, world: World, sessions: sessionmaker[Session]
) -> None:
    """SPF alone decides nothing: the domain published no DMARC policy to apply."""
    dns_zone.txt("client.test", "v=spf1 ip4:192.0.2.1 -all")
    assert send(mx(), reply(world), world.client_email, world.address)[0] == 250
    (row,) = queued(sessions)
    assert ours(row)["spf"] == "fail" and ours(row)["dmarc"] == "none"


def test_spf_softfail_is_recorded(
    mx: Callable[..., GatewayThread], dns_zone: Zone, world: World, sessions: sessionmaker[Session]
) -> None:
    dns_zone.txt("client.test", "v=spf1 ip4:192.0.2.1 ~all")
    assert send(mx(), reply(world), world.client_email, world.address)[0] == 250
    (row,) = queued(sessions)
    assert ours(row)["spf"] == "softfail"
    assert auth_record(row)["spf"] == "softfail"


def test_spf_fail_under_dmarc_reject_is_refused_550(
    mx: Callable[..., GatewayThread], dns_zone: Zone, world: World, sessions: sessionmaker[Session]
) -> None:
    dns_zone.txt("client.test", "v=spf1 ip4:192.0.2.1 -all")
    dns_zone.txt("_dmarc.client.test", "v=DMARC1; p=reject")
    code, text = send(mx(), reply(world), world.client_email, world.address)
    assert code == 550 and text.startswith("5.7.1") and "DMARC failed" in text
    assert queued(sessions) == []


def test_dmarc_none_failing_is_refused_too(
    mx: Callable[..., GatewayThread], dns_zone: Zone, world: World, sessions: sessionmaker[Session]
) -> None:
    """The organisation's rule: any DMARC failure refuses, whatever the domain's policy."""
    dns_zone.txt("client.test", "v=spf1 ip4:192.0.2.1 -all")
    dns_zone.txt("_dmarc.client.test", "v=DMARC1; p=none")
    code, text = send(mx(), reply(world), world.client_email, world.address)
    assert code == 550 and "DMARC failed" in text
    assert queued(sessions) == []


def test_a_valid_dkim_signature_passes_dmarc_where_spf_fails(
    mx: Callable[..., GatewayThread], dns_zone: Zone, world: World, sessions: sessionmaker[Session]
) -> None:
    dns_zone.txt("client.test", "v=spf1 ip4:192.0.2.1 -all")
    dns_zone.txt("_dmarc.client.test", "v=DMARC1; p=reject")
    raw = dkim_sign(reply(world), "client.test", publish_key(dns_zone, "client.test"))
    assert send(mx(), raw, world.client_email, world.address)[0] == 250
    (row,) = queued(sessions)
    assert ours(row) == {"spf": "fail", "dkim": "pass", "arc": "none", "dmarc": "pass"}
    assert b"header.d=client.test header.s=s1" in row.raw


def test_a_broken_dkim_signature_fails_and_dmarc_refuses(
    mx: Callable[..., GatewayThread], dns_zone: Zone, world: World, sessions: sessionmaker[Session]
) -> None:
    dns_zone.txt("client.test", "v=spf1 ip4:192.0.2.1 -all")
    dns_zone.txt("_dmarc.client.test", "v=DMARC1; p=reject")
    signed = dkim_sign(reply(world), "client.test", publish_key(dns_zone, "client.test"))
    broken = signed.replace(b"Tuesday at 10", b"Tuesday at 11")
    code, text = send(mx(), broken, world.client_email, world.address)
    assert code == 550 and "DMARC failed" in text
    assert queued(sessions) == []


def test_a_broken_dkim_signature_is_recorded_when_the_domain_has_no_dmarc(
    mx: Callable[..., GatewayThread], dns_zone: Zone, world: World, sessions: sessionmaker[Session]
) -> None:
    signed = dkim_sign(reply(world), "client.test", publish_key(dns_zone, "client.test"))
    broken = signed.replace(b"Tuesday at 10", b"Tuesday at 11")
    assert send(mx(), broken, world.client_email, world.address)[0] == 250
    (row,) = queued(sessions)
    assert ours(row)["dkim"] == "fail" and auth_record(row)["dkim"] == "fail"


def _forwarded(world: World, zone: Zone) -> bytes:
    """Cleo's signed reply, through a mailing list that tags the subject and seals it."""
    zone.txt("_dmarc.client.test", "v=DMARC1; p=reject")
    zone.txt("lists.forward.test", "v=spf1 ip4:127.0.0.1 -all")
    signed = dkim_sign(reply(world), "client.test", publish_key(zone, "client.test"))
    seal_key = publish_key(zone, "lists.forward.test", selector="arc")
    saw = "dkim=pass header.d=client.test; dmarc=pass header.from=client.test"
    return forward_and_seal(signed, "lists.forward.test", seal_key, saw=saw)


def test_arc_from_a_trusted_forwarder_vouches_for_dmarc(
    mx: Callable[..., GatewayThread], dns_zone: Zone, world: World, sessions: sessionmaker[Session]
) -> None:
    raw = _forwarded(world, dns_zone)
    gateway = mx(arc_trusted_sealers="lists.forward.test")
    assert send(gateway, raw, "bounces@lists.forward.test", world.address)[0] == 250
    (row,) = queued(sessions)
    assert ours(row) == {"spf": "pass", "dkim": "fail", "arc": "pass", "dmarc": "pass"}
    assert b"lists.forward.test, a trusted forwarder, saw DMARC pass" in row.raw


def test_arc_from_a_forwarder_nobody_named_vouches_for_nothing(
    mx: Callable[..., GatewayThread], dns_zone: Zone, world: World, sessions: sessionmaker[Session]
) -> None:
    """Anyone can seal a forgery with a domain of their own: only named sealers count."""
    raw = _forwarded(world, dns_zone)
    code, text = send(mx(), raw, "bounces@lists.forward.test", world.address)
    assert code == 550 and "DMARC failed" in text
    assert queued(sessions) == []


def test_a_tampered_arc_chain_fails(
    mx: Callable[..., GatewayThread], dns_zone: Zone, world: World, sessions: sessionmaker[Session]
) -> None:
    raw = _forwarded(world, dns_zone).replace(b"Tuesday at 10", b"Tuesday at 11")
    gateway = mx(arc_trusted_sealers="lists.forward.test")
    code, _ = send(gateway, raw, "bounces@lists.forward.test", world.address)
    assert code == 550
    assert queued(sessions) == []


def test_require_pass_refuses_a_domain_without_dmarc(
    mx: Callable[..., GatewayThread],
    dns_zone: Zone,
    world: World,
    settings: Settings,
    sessions: sessionmaker[Session],
) -> None:
    from replygate.core import operations

    operations.set_dmarc_policy(sessions, settings, "require-pass")
    dns_zone.txt("client.test", "v=spf1 ip4:127.0.0.1 -all")
    code, text = send(mx(), reply(world), world.client_email, world.address)
    assert code == 550 and "DMARC" in text
    dns_zone.txt("_dmarc.client.test", "v=DMARC1; p=quarantine")
    assert send(mx(), reply(world), world.client_email, world.address)[0] == 250


def test_dns_that_does_not_answer_defers_451_443(
    mx: Callable[..., GatewayThread], dns_zone: Zone, world: World, sessions: sessionmaker[Session]
) -> None:
    """The sending MTA keeps the reply and tries again; nothing is stored half-checked."""
    held = threading.Event()
    dns_zone.delay["client.test"] = held
    try:
        gateway = mx(dns_timeout_seconds=2.0, mail_auth_timeout_seconds=0.5)
        code, text = send(gateway, reply(world), world.client_email, world.address)
    finally:
        held.set()
    assert code == 451 and text.startswith("4.4.3")
    assert queued(sessions) == []


def test_behind_a_relay_spf_is_not_checked_against_the_relay(
    start: Callable[..., GatewayThread],
    settings: Settings,
    dns_zone: Zone,
    world: World,
    sessions: sessionmaker[Session],
) -> None:
    """127.0.0.1 is a trusted relay by default: its address says nothing of the sender's.
    A failure only an aligned SPF pass could have avoided is ``none``, not ``fail``."""
    dns_zone.txt("client.test", "v=spf1 ip4:192.0.2.1 -all")
    dns_zone.txt("_dmarc.client.test", "v=DMARC1; p=reject")
    assert send(start(settings), reply(world), world.client_email, world.address)[0] == 250
    (row,) = queued(sessions)
    assert ours(row) == {"spf": "none", "dkim": "none", "arc": "none", "dmarc": "none"}


def test_mail_auth_off_stamps_nothing(
    start: Callable[..., GatewayThread],
    settings: Settings,
    dns_zone: Zone,
    world: World,
    sessions: sessionmaker[Session],
) -> None:
    raw = reply(world)
    gateway = start(settings, mail_auth="off", smtp_trusted_relays=NOT_LOOPBACK)
    assert send(gateway, raw, world.client_email, world.address)[0] == 250
    (row,) = queued(sessions)
    assert row.raw == raw
    assert dns_zone.queries == []


def test_the_pipe_checks_spf_for_the_client_the_mta_names(
    settings: Settings, dns_zone: Zone, world: World, sessions: sessionmaker[Session]
) -> None:
    """``replygate ingest --client-ip --helo``: Postfix's ${client_address}, ${client_helo}."""
    from replygate.gateway.ingest import ingest

    dns_zone.txt("client.test", "v=spf1 ip4:198.51.100.7 -all")
    dns_zone.txt("_dmarc.client.test", "v=DMARC1; p=reject")
    mx = dataclasses.replace(settings, smtp_trusted_relays=NOT_LOOPBACK)
    forged = ingest(
        mx, sessions, rcpt=world.address, sender=world.client_email, raw=reply(world),
        client_ip="203.0.113.9", helo="mx.evil.test",
    )  # fmt: skip
    assert forged.code == 77 and "DMARC failed" in forged.reason
    real = ingest(
        mx, sessions, rcpt=world.address, sender=world.client_email, raw=reply(world),
        client_ip="198.51.100.7", helo="mx.client.test",
    )  # fmt: skip
    assert real.code == 0
    (row,) = queued(sessions)
    assert ours(row)["spf"] == "pass" and ours(row)["dmarc"] == "pass"
