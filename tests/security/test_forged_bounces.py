"""Forged bounces: nobody but a real mail server reporting a real failure may
silence a person's notifications.

Each attack is the SMTP dialogue as the attacker holds it with a running
gateway (null reverse-path, the report as a mailer writes it), followed by
the inbound worker. Notification ids are no secret (every notification's
Message-ID carries its own), so an id alone must name nothing: the bounce
address carries a MAC, only an RFC 3464 report of a permanent failure for
the notification's own recipient counts, and suppression needs such reports
on two different days.
"""

from __future__ import annotations

import json
import smtplib
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from replygate.cli import main
from replygate.config import Settings
from replygate.core.messaging import Messaging
from replygate.gateway.ingest import ingest
from replygate.gateway.replies import CATALOGUE, EX_NOUSER, Condition
from replygate.gateway.server import GatewayThread
from replygate.store import directory
from replygate.store.db import transaction
from replygate.store.models import InboundMail, OutboxMessage, ReplyToken, User
from replygate.workers.inbound import InboundWorker
from tests.helpers import cli_env
from tests.integration.gateway import conftest as gateway_tests
from tests.integration.gateway.conftest import queued
from tests.portal_support import Client, People, serve_in_thread
from tests.portal_support import password_hash as password_hash  # a fixture
from tests.portal_support import people as people  # a fixture

start = gateway_tests.start  # gateways on ephemeral ports, stopped at teardown


@pytest.fixture
def gateway(settings: Settings, start: Callable[..., GatewayThread]) -> GatewayThread:
    return start(settings)


@pytest.fixture
def notified(sessions: sessionmaker[Session], settings: Settings, people: People) -> Messaging:
    """Sam (staff) wrote to Carol and to Dan; each has one notification in the outbox."""
    messaging = Messaging(sessions, settings)
    for client in (people.client1, people.client2):
        messaging.send(sender=people.staff, to=[client], subject="Results", body="Log in, please.")
    return messaging


def notification_to(sessions: sessionmaker[Session], email: str) -> OutboxMessage:
    """The newest notification to ``email``: its signed envelope sender and Message-ID."""
    with sessions() as s:
        row = s.scalars(
            select(OutboxMessage)
            .where(OutboxMessage.recipient == email)
            .order_by(OutboxMessage.id.desc())
        ).first()
        assert row is not None
        s.expunge(row)
        return row


def notification_id(row: OutboxMessage) -> str:
    """The id anyone reads off a notification's Message-ID ``<rg.n.ID@reply.test>``."""
    return row.header_message_id.split(".")[2].split("@")[0]


def dsn(
    to: str,
    *,
    blocks: tuple[tuple[str, str, str], ...],
    original: str | None = None,
    returned_message_id: str = "<rg.n.0@reply.test>",
    sender: str = "MAILER-DAEMON@mx.client.test (Mail Delivery System)",
) -> bytes:
    """A Postfix-style RFC 3464 report: ``blocks`` are (Final-Recipient, Action, Status)."""
    per_recipient = "".join(
        f"\r\nFinal-Recipient: rfc822; {final}\r\n"
        + (f"Original-Recipient: rfc822;{original}\r\n" if original else "")
        + f"Action: {action}\r\nStatus: {status}\r\n"
        f"Diagnostic-Code: smtp; 550 {status} <{final}>: Recipient address rejected\r\n"
        for final, action, status in blocks
    )
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        "Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n"
        "Content-Type: multipart/report; report-type=delivery-status;\r\n"
        '\tboundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
        "I'm sorry to have to inform you that your message could not be delivered.\r\n\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.client.test\r\n" + per_recipient + "\r\n"
        "--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"From: Practice <notifications@reply.test>\r\nMessage-ID: {returned_message_id}\r\n"
        "Subject: You have a new secure message\r\n\r\n"
        "--B--\r\n"
    ).encode()


def hard(to: str, recipient: str) -> bytes:
    """A genuine-looking report that delivery to ``recipient`` failed for good."""
    return dsn(to, blocks=((recipient, "failed", "5.1.1"),))


def send_null(gateway: GatewayThread, rcpt: str, raw: bytes) -> tuple[int, str]:
    """Send ``raw`` from ``<>``: (250, "") when accepted, else the refusal's code and text."""
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=10) as smtp:
        smtp.ehlo("mx.client.test")
        try:
            smtp.sendmail("<>", [rcpt], raw)
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = exc.recipients[rcpt]
            return code, text.decode()
        except smtplib.SMTPDataError as exc:
            return exc.smtp_code, exc.smtp_error.decode()
    return 250, ""


def statuses(sessions: sessionmaker[Session]) -> dict[str, tuple[str, int]]:
    with sessions() as s:
        return {u.email: (u.address_status, u.bounce_count) for u in s.scalars(select(User))}


def drain(sessions: sessionmaker[Session], settings: Settings) -> None:
    InboundWorker(sessions, settings).drain()


def classified(sessions: sessionmaker[Session]) -> list[dict[str, object]]:
    """What the worker recorded about each bounce's effect on an address, in arrival order."""
    with sessions() as s:
        rows = s.scalars(select(InboundMail).order_by(InboundMail.id)).all()
        assert {r.status for r in rows} == {"ignored"}
        return [d["address"] for r in rows for d in r.decisions if d["stage"] == "classify"]


def on_day(sessions: sessionmaker[Session], days: int) -> None:
    """Date the reports still queued ``days`` after their arrival (the clock, not a sleep)."""
    with transaction(sessions) as s:
        for row in s.scalars(select(InboundMail).where(InboundMail.status == "queued")):
            row.received_at += timedelta(days=days)


# -- (1) an id alone, guessed or harvested, is refused at RCPT -----------------------------------

FORGERIES: dict[str, Callable[[OutboxMessage, OutboxMessage], str]] = {
    "the harvested id, unsigned (the old form)": lambda victim, _: (
        f"bounces+{notification_id(victim)}@reply.test"
    ),
    "a guessed id of the right shape": lambda *_: "bounces+9f2c41d0a7b35e6c8d12@reply.test",
    "LIKE wildcards of the id's length": lambda *_: f"bounces+{'_' * 20}@reply.test",
    "the harvested id with a made-up MAC": lambda victim, _: (
        f"bounces+{notification_id(victim)}-{'a' * 16}@reply.test"
    ),
    "the harvested id with the MAC of the attacker's own bounce address": lambda victim, own: (
        f"bounces+{notification_id(victim)}-"
        f"{own.envelope_from.split('@')[0].rpartition('-')[2]}@reply.test"
    ),
}


@pytest.mark.parametrize("forge", list(FORGERIES.values()), ids=list(FORGERIES))
def test_a_bounce_address_without_a_valid_mac_is_refused_at_rcpt(
    sessions: sessionmaker[Session],
    settings: Settings,
    gateway: GatewayThread,
    notified: Messaging,
    people: People,
    forge: Callable[[OutboxMessage, OutboxMessage], str],
) -> None:
    """Three hard reports to a forged bounce address: 550 5.1.1 at RCPT, nothing stored,
    nobody's address marked."""
    victim = notification_to(sessions, people.client1)
    own = notification_to(sessions, people.client2)  # Dan reads his own Return-Path
    address = forge(victim, own)
    before = statuses(sessions)
    for _ in range(3):
        code, text = send_null(gateway, address, hard(address, people.client1))
        assert (code, text.split(" ")[0]) == (550, "5.1.1")
        entry = CATALOGUE[Condition("unknown_bounce_address")]
        assert text == entry.describe(address)
    assert queued(sessions) == []
    drain(sessions, settings)
    assert statuses(sessions) == before


def test_a_forged_bounce_address_is_refused_through_the_pipe_too(
    sessions: sessionmaker[Session], settings: Settings, notified: Messaging, people: People
) -> None:
    """Postfix's pipe transport hears 67 (no such user) and bounces nothing back to ``<>``."""
    address = f"bounces+{notification_id(notification_to(sessions, people.client1))}@reply.test"
    code, line = ingest(
        settings, sessions, rcpt=address, sender="", raw=hard(address, people.client1)
    )
    assert code == EX_NOUSER and line.startswith("5.1.1 ")
    assert queued(sessions) == []


def test_a_report_to_the_attackers_own_reply_address_naming_a_victims_notification(
    sessions: sessionmaker[Session],
    settings: Settings,
    gateway: GatewayThread,
    notified: Messaging,
    people: People,
) -> None:
    """Carol holds a reply address of her own; she sends hard reports from ``<>`` to it
    whose returned headers name Sam's notification. The returned headers are hers to
    write: nothing counts against Sam."""
    notified.set_convenience_mode(on=True, acknowledge_hipaa=True)
    notified.send(sender=people.staff, to=[people.client1], subject="Hi", body="Reply by mail")
    notified.send(sender=people.client1, to=[people.staff], subject="Q", body="A question")
    sams = notification_to(sessions, people.staff)
    with sessions() as s:
        carol = directory.user(s, people.client1)
        token = s.scalars(select(ReplyToken.token).where(ReplyToken.user_id == carol.id)).one()
    own_address = f"reply+{token}@reply.test"
    before = statuses(sessions)
    for _ in range(3):
        raw = dsn(
            own_address,
            blocks=((people.staff, "failed", "5.1.1"),),
            returned_message_id=sams.header_message_id,
            sender=f"Carol Client <{people.client1}>",
        )
        assert send_null(gateway, own_address, raw) == (250, "")
    on_day(sessions, 1)  # even on another day
    drain(sessions, settings)
    assert statuses(sessions) == before


# -- (2) and (3): only a report of a permanent failure for the notification's recipient ---------


def test_a_plain_undeliverable_text_to_a_signed_bounce_address_is_ignored(
    sessions: sessionmaker[Session],
    settings: Settings,
    gateway: GatewayThread,
    notified: Messaging,
    people: People,
) -> None:
    """A null-sender mail that is no delivery report, to Carol's real bounce address:
    accepted, recorded, and counted nowhere."""
    address = notification_to(sessions, people.client1).envelope_from
    raw = (
        f"From: postmaster@mx.client.test\r\nTo: {address}\r\n"
        "Subject: Undeliverable: You have a new secure message\r\n\r\n"
        f"Your message to {people.client1} was undeliverable: 550 5.1.1 user unknown.\r\n"
    ).encode()
    before = statuses(sessions)
    for _ in range(3):
        assert send_null(gateway, address, raw) == (250, "")
    drain(sessions, settings)
    assert statuses(sessions) == before
    for record in classified(sessions):
        assert record["counted"] is False
        assert "not an RFC 3464 delivery report" in str(record["why"])
    explained = CliRunner().invoke(main, ["queue", "explain", "1"], env=env(settings))
    assert "Not counted as a bounce: not an RFC 3464 delivery report" in explained.output


REPORTS_ABOUT_OTHERS: dict[str, Callable[[str, str], bytes]] = {
    "a hard failure for another Final-Recipient": lambda to, _: hard(to, "someone@else.test"),
    "the notification's recipient delivered, another failed": lambda to, recipient: dsn(
        to,
        blocks=((recipient, "delivered", "2.0.0"), ("someone@else.test", "failed", "5.1.1")),
    ),
}


@pytest.mark.parametrize(
    "report", list(REPORTS_ABOUT_OTHERS.values()), ids=list(REPORTS_ABOUT_OTHERS)
)
def test_a_report_about_another_recipient_is_ignored(
    sessions: sessionmaker[Session],
    settings: Settings,
    gateway: GatewayThread,
    notified: Messaging,
    people: People,
    report: Callable[[str, str], bytes],
) -> None:
    address = notification_to(sessions, people.client1).envelope_from
    before = statuses(sessions)
    for _ in range(3):
        assert send_null(gateway, address, report(address, people.client1)) == (250, "")
    drain(sessions, settings)
    assert statuses(sessions) == before
    assert all(record["counted"] is False for record in classified(sessions))


def test_a_failure_reported_for_the_original_recipient_counts(
    sessions: sessionmaker[Session],
    settings: Settings,
    gateway: GatewayThread,
    notified: Messaging,
    people: People,
) -> None:
    """Carol's mail is forwarded and the forward fails: the report names her address as
    Original-Recipient, the forward target as Final-Recipient."""
    address = notification_to(sessions, people.client1).envelope_from
    raw = dsn(address, blocks=(("carol@forward.test", "failed", "5.1.1"),), original=people.client1)
    assert send_null(gateway, address, raw) == (250, "")
    drain(sessions, settings)
    assert statuses(sessions)[people.client1] == ("failing", 1)


# -- (4) and (5): a burst leaves the address failing; two days suppress ------------------------


def test_hard_reports_within_a_minute_leave_the_address_failing_and_another_day_suppresses(
    sessions: sessionmaker[Session],
    settings: Settings,
    gateway: GatewayThread,
    notified: Messaging,
    people: People,
) -> None:
    """Three genuine-looking hard reports at once: ``failing``, not ``suppressed``. One
    more the next day (the queue row's arrival date set, no sleeping): ``suppressed``.
    ``users reset-bounces`` clears the count and the days."""
    address = notification_to(sessions, people.client1).envelope_from
    for _ in range(3):
        assert send_null(gateway, address, hard(address, people.client1)) == (250, "")
    drain(sessions, settings)
    assert statuses(sessions)[people.client1] == ("failing", 3)

    assert send_null(gateway, address, hard(address, people.client1)) == (250, "")
    on_day(sessions, 1)
    drain(sessions, settings)
    assert statuses(sessions)[people.client1] == ("suppressed", 4)
    with sessions() as s:
        days = directory.user(s, people.client1).bounce_days
    assert len(days) == 2 and days == sorted(days)

    notified.send(sender=people.staff, to=[people.client1], subject="Again", body="Hello?")
    assert notification_to(sessions, people.client1).status == "suppressed"
    reset = CliRunner().invoke(main, ["users", "reset-bounces", people.client1], env=env(settings))
    assert reset.exit_code == 0, reset.output
    with sessions() as s:
        carol = directory.user(s, people.client1)
        assert (carol.address_status, carol.bounce_count, carol.bounce_days) == ("ok", 0, [])


# -- (6) a staff address silenced is shown to admins ---------------------------------------------


def env(settings: Settings) -> dict[str, str]:
    return cli_env(settings)


@pytest.fixture
def staff_suppressed(
    sessions: sessionmaker[Session],
    settings: Settings,
    gateway: GatewayThread,
    notified: Messaging,
    people: People,
) -> None:
    """Sam's address bounced for real, on two days: suppressed."""
    for day in range(3):
        notified.send(sender=people.client1, to=[people.staff], subject="Q", body=f"Day {day}")
        address = notification_to(sessions, people.staff).envelope_from
        assert send_null(gateway, address, hard(address, people.staff)) == (250, "")
        on_day(sessions, day)
        drain(sessions, settings)
    assert statuses(sessions)[people.staff] == ("suppressed", 3)


def test_a_suppressed_staff_address_stands_out_in_users_list(
    settings: Settings, staff_suppressed: None, people: People
) -> None:
    listed = CliRunner().invoke(main, ["users", "list"], env=env(settings))
    assert listed.exit_code == 0, listed.output
    warnings = [line for line in listed.output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1
    assert people.staff in warnings[0] and "suppressed" in warnings[0]
    assert f"users reset-bounces {people.staff}" in warnings[0]
    as_json = json.loads(
        CliRunner().invoke(main, ["users", "list", "--json"], env=env(settings)).output
    )
    flagged = {u["email"] for u in as_json if u["staff_suppressed"]}
    assert flagged == {people.staff}


@pytest.fixture
def live_portal(settings: Settings, sessions: sessionmaker[Session]) -> Iterator[str]:
    yield from serve_in_thread(settings, sessions)


def test_a_suppressed_staff_address_is_shown_on_the_admin_settings_page(
    live_portal: str, staff_suppressed: None, people: People
) -> None:
    admin = Client(live_portal)
    admin.login(people.admin)
    page = admin.get("/settings")
    assert page.status == 200
    assert 'id="suppressed-staff"' in page.text and people.staff in page.text
