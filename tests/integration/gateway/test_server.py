"""The gateway through a real socket on an ephemeral port, driven by smtplib."""

from __future__ import annotations

import asyncio
import smtplib
import time
from collections.abc import Callable
from datetime import timedelta

import aiosmtplib
import pytest
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.core import intake
from replygate.gateway.server import GatewayThread, start_gateway
from replygate.mail import reply_token
from replygate.mail.verp import bounce_address
from replygate.store import inbound_writer
from tests.helpers import BOUNCE_KEY, as_sent
from tests.integration.gateway.conftest import (
    World,
    add_reply_address,
    queued,
    reply_message,
    set_convenience_mode,
)

Start = Callable[..., GatewayThread]


def _refused_at_rcpt(client: smtplib.SMTP, mail_from: str, rcpt: str) -> tuple[int, str]:
    code, _ = client.mail(mail_from)
    assert code == 250
    code, text = client.rcpt(rcpt)
    client.rset()
    return code, text.decode()


def test_ehlo_advertises_size_and_our_hostname(settings: Settings, client: smtplib.SMTP) -> None:
    assert client.has_extn("size")
    assert int(client.esmtp_features["size"]) == settings.max_message_size
    assert client.ehlo_resp is not None
    assert client.ehlo_resp.decode().splitlines()[0] == settings.smtp_hostname


def test_valid_reply_is_queued_byte_for_byte(
    sessions: sessionmaker[Session], world: World, client: smtplib.SMTP
) -> None:
    """250 only after commit: the row is there the moment the client hears 250."""
    raw = reply_message(
        from_=f"Cleo Park <{world.client_email}>",
        to=world.address,
        message_id="<abc.123@client.test>",
        headers=(("X-Mailer", "iPhone Mail (20A362)"),),
    )
    client.mail("bounce-handler@client.test")
    client.rcpt(world.address)
    code, text = client.data(raw)
    assert (code, text.decode()) == (250, "2.0.0 Message accepted for delivery")
    (row,) = queued(sessions)
    assert as_sent(row.raw) == raw
    assert row.size == len(row.raw)
    assert row.rcpt == world.address
    assert row.mail_from == "bounce-handler@client.test"
    assert row.message_id == "<abc.123@client.test>"
    assert row.status == "queued"
    assert row.peer is not None and row.peer.startswith("127.0.0.1:")
    assert [d["stage"] for d in row.decisions] == [
        "rcpt",
        "data",
        "data",
        "authentication",
        "accept",
    ]


def test_dot_stuffed_lines_arrive_unstuffed(
    sessions: sessionmaker[Session], world: World, client: smtplib.SMTP
) -> None:
    raw = reply_message(from_=world.client_email, to=world.address, body=".\r\n..leading dots")
    client.sendmail(world.client_email, [world.address], raw)
    (row,) = queued(sessions)
    assert as_sent(row.raw) == raw


@pytest.mark.parametrize(
    "make_address",
    [
        pytest.param(
            lambda s: reply_token.reply_address(
                reply_token.new_token(s.secret_key), s.reply_domain
            ),
            id="unknown token",
        ),
        pytest.param(
            lambda s: reply_token.reply_address(
                reply_token.new_token("another-secret-" + "x" * 40), s.reply_domain
            ),
            id="forged token",
        ),
        pytest.param(lambda s: f"reply+nonsense@{s.reply_domain}", id="malformed token"),
        pytest.param(lambda s: f"postmaster@{s.reply_domain}", id="not a reply address"),
        pytest.param(lambda s: "reply+abc@elsewhere.test", id="another domain"),
    ],
)
def test_addresses_we_did_not_issue_are_refused_550_511(
    settings: Settings,
    sessions: sessionmaker[Session],
    world: World,
    client: smtplib.SMTP,
    make_address: Callable[[Settings], str],
) -> None:
    address = make_address(settings)
    code, text = _refused_at_rcpt(client, world.client_email, address)
    assert code == 550 and text.startswith(f"5.1.1 <{address}>:"), text
    assert queued(sessions) == []


def test_forged_token_says_the_address_does_not_exist(
    settings: Settings, world: World, client: smtplib.SMTP
) -> None:
    forged = reply_token.reply_address(
        reply_token.new_token("another-secret-" + "x" * 40), settings.reply_domain
    )
    _, text = _refused_at_rcpt(client, world.client_email, forged)
    assert "this reply address does not exist" in text


def test_expired_token_is_refused(
    settings: Settings, sessions: sessionmaker[Session], world: World, client: smtplib.SMTP
) -> None:
    address = add_reply_address(
        sessions,
        settings,
        thread_id=world.thread_id,
        user_id=world.client_id,
        expires_in=timedelta(seconds=-1),
    )
    code, text = _refused_at_rcpt(client, world.client_email, address)
    assert code == 550 and text.startswith("5.1.1 ") and "expired" in text


def test_revoked_token_is_refused(
    settings: Settings, sessions: sessionmaker[Session], world: World, client: smtplib.SMTP
) -> None:
    address = add_reply_address(
        sessions, settings, thread_id=world.thread_id, user_id=world.client_id, revoked=True
    )
    code, text = _refused_at_rcpt(client, world.client_email, address)
    assert code == 550 and text.startswith("5.7.1 "), text


def test_convenience_mode_off_is_refused_at_rcpt(
    sessions: sessionmaker[Session], world: World, client: smtplib.SMTP
) -> None:
    set_convenience_mode(sessions, False)
    code, text = _refused_at_rcpt(client, world.client_email, world.address)
    assert code == 550
    assert text.startswith(f"5.7.1 <{world.address}>: replies by email are not accepted")


def test_forged_from_is_refused_at_data_and_nothing_is_stored(
    sessions: sessionmaker[Session], world: World, client: smtplib.SMTP
) -> None:
    raw = reply_message(from_="Cleo Park <mallory@evil.test>", to=world.address)
    client.mail("mallory@evil.test")
    assert client.rcpt(world.address)[0] == 250  # the token itself is fine
    code, text = client.data(raw)
    assert code == 550 and text.decode().startswith("5.7.1 this reply address belongs to")
    assert queued(sessions) == []


@pytest.mark.parametrize("authserv", ["mx.ours.test", "mx.evil.test"])
def test_dmarc_fail_from_a_trusted_relay_is_refused_at_data(
    settings: Settings,
    sessions: sessionmaker[Session],
    world: World,
    start: Callable[..., GatewayThread],
    authserv: str,
) -> None:
    """A From that matches but fails DMARC per our own MTA is refused; the same header
    written by anyone else is ignored (it is only as good as who wrote it)."""
    gateway = start(settings, trusted_authserv_ids="mx.ours.test")
    result = f"{authserv}; dmarc=fail (p=reject) header.from=client.test"
    raw = reply_message(
        from_=f"Cleo Park <{world.client_email}>",
        to=world.address,
        headers=(("Authentication-Results", result),),
    )
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=10) as smtp:
        smtp.ehlo("mx.client.test")
        smtp.mail(world.client_email)
        assert smtp.rcpt(world.address)[0] == 250
        code, text = smtp.data(raw)
    if authserv == "mx.ours.test":
        assert code == 550 and text.decode().startswith("5.7.1 the sender's domain says")
        assert queued(sessions) == []
    else:
        assert code == 250
        assert len(queued(sessions)) == 1


def test_oversize_declared_at_mail_from_is_refused_552_534(
    settings: Settings, sessions: sessionmaker[Session], world: World, start: Start
) -> None:
    gateway = start(settings, max_message_size=2000)
    raw = reply_message(from_=world.client_email, to=world.address, body="xxxxxxxxxx\r\n" * 300)
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=10) as client:
        client.ehlo()
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            client.sendmail(world.client_email, [world.address], raw)  # sends SIZE=
    assert refused.value.smtp_code == 552
    assert refused.value.smtp_error.decode().startswith("5.3.4 ")
    assert queued(sessions) == []


def test_oversize_data_is_refused_552_534_and_nothing_is_stored(
    settings: Settings, sessions: sessionmaker[Session], world: World, start: Start
) -> None:
    """A client that does not declare SIZE is stopped while sending DATA."""
    gateway = start(settings, max_message_size=2000)
    raw = reply_message(from_=world.client_email, to=world.address, body="xxxxxxxxxx\r\n" * 300)
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=10) as client:
        client.ehlo()
        client.mail(world.client_email)  # no SIZE parameter
        assert client.rcpt(world.address)[0] == 250
        code, text = client.data(raw)
        assert code == 552 and text.decode().startswith("5.3.4 message too big")
        assert "2000 bytes" in text.decode()
        # The session goes on: a reply that fits is still accepted.
        small = reply_message(from_=world.client_email, to=world.address)
        client.sendmail(world.client_email, [world.address], small)
    assert [as_sent(r.raw) for r in queued(sessions)] == [small]


def test_store_unavailable_answers_451_430(
    sessions: sessionmaker[Session],
    world: World,
    client: smtplib.SMTP,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise OperationalError("INSERT INTO inbound_mail", {}, Exception("database is locked"))

    monkeypatch.setattr(inbound_writer, "insert_rows", broken)
    raw = reply_message(from_=world.client_email, to=world.address)
    client.mail(world.client_email)
    client.rcpt(world.address)
    code, text = client.data(raw)
    assert code == 451 and text.decode().startswith("4.3.0 ")
    monkeypatch.undo()
    # The MTA retries later and the same message is accepted.
    client.sendmail(world.client_email, [world.address], raw)
    assert [as_sent(r.raw) for r in queued(sessions)] == [raw]


def test_a_bug_answers_451_and_the_session_goes_on(
    sessions: sessionmaker[Session],
    world: World,
    client: smtplib.SMTP,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Never a 5xx for our own failure: the sender's MTA keeps the mail and retries."""

    def crash(raw: bytes) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(intake, "read_headers", crash)
    raw = reply_message(from_=world.client_email, to=world.address)
    client.mail(world.client_email)
    client.rcpt(world.address)
    code, text = client.data(raw)
    assert code == 451 and text.decode().startswith("4.3.0 ")
    monkeypatch.undo()
    client.sendmail(world.client_email, [world.address], raw)
    assert len(queued(sessions)) == 1


def test_delivery_report_to_the_bounce_address_is_accepted(
    sessions: sessionmaker[Session], client: smtplib.SMTP
) -> None:
    verp = bounce_address("17", "reply.test", BOUNCE_KEY)
    dsn = (
        b"From: MAILER-DAEMON@mx.client.test\r\nTo: " + verp.encode() + b"\r\n"
        b"Subject: Undelivered Mail Returned to Sender\r\n"
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n"
        b"--b\r\n\r\nno such user\r\n--b--\r\n"
    )
    client.sendmail("<>", [verp], dsn)
    (row,) = queued(sessions)
    assert row.mail_from == "" and row.rcpt == verp and as_sent(row.raw) == dsn


def test_one_transaction_mixing_good_and_bad_recipients(
    settings: Settings, sessions: sessionmaker[Session], world: World, client: smtplib.SMTP
) -> None:
    """Refused recipients are refused alone; the message is queued for the accepted one."""
    unknown = reply_token.reply_address(
        reply_token.new_token(settings.secret_key), settings.reply_domain
    )
    raw = reply_message(from_=world.client_email, to=world.address)
    refused = client.sendmail(world.client_email, [world.address, unknown], raw)
    assert refused[unknown][0] == 550
    assert [r.rcpt for r in queued(sessions)] == [world.address]


def test_start_and_stop_inside_a_running_loop(
    settings: Settings, sessions: sessionmaker[Session], world: World
) -> None:
    """``serve`` runs the gateway in its own loop: ephemeral port, clean stop with a
    client still connected."""

    async def run() -> tuple[int, float]:
        gateway = await start_gateway(settings, sessions, host="127.0.0.1", port=0)
        assert gateway.port != 0
        raw = reply_message(from_=world.client_email, to=world.address)
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=gateway.port) as smtp:
            errors, response = await smtp.sendmail(world.client_email, [world.address], raw)
            assert errors == {} and response.startswith("2.0.0")
            started = time.monotonic()
            await gateway.stop()  # the idle client is still connected
            stopped_in = time.monotonic() - started
            with pytest.raises(aiosmtplib.SMTPException):
                await smtp.noop()
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", gateway.port)
        return gateway.port, stopped_in

    _, stopped_in = asyncio.run(run())
    assert stopped_in < 2
    assert len(queued(sessions)) == 1
