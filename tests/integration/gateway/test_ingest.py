"""The pipe ingress: the SMTP gateway's checks, answered with sysexits codes."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.gateway.ingest import ingest
from replygate.mail import reply_token
from replygate.mail.verp import bounce_address
from replygate.store import inbound
from replygate.store.db import make_engine, session_factory
from tests.helpers import BOUNCE_KEY, as_sent
from tests.integration.gateway.conftest import (
    World,
    add_reply_address,
    queued,
    reply_message,
    reply_with_attachment,
    set_convenience_mode,
)

EX_OK, EX_NOUSER, EX_TEMPFAIL, EX_NOPERM = 0, 67, 75, 77


def test_accepted_reply_exits_0_and_is_queued_byte_for_byte(
    settings: Settings, sessions: sessionmaker[Session], world: World
) -> None:
    raw = reply_message(from_=world.client_email, to=world.address)
    code, reason = ingest(
        settings, sessions, rcpt=world.address, sender=world.client_email, raw=raw
    )
    assert (code, reason) == (EX_OK, "")
    (row,) = queued(sessions)
    assert (
        as_sent(row.raw) == raw
        and row.rcpt == world.address
        and row.mail_from == world.client_email
    )
    assert row.peer == "pipe"
    assert row.decisions[-1]["via"] == "pipe"


def test_lf_only_mail_is_kept_as_given(
    settings: Settings, sessions: sessionmaker[Session], world: World
) -> None:
    """Postfix pipes LF line ends; the bytes are stored untouched and the From still read."""
    raw = reply_message(from_=world.client_email, to=world.address).replace(b"\r\n", b"\n")
    assert ingest(settings, sessions, rcpt=world.address, sender="", raw=raw).code == EX_OK
    assert as_sent(queued(sessions)[0].raw) == raw


def _unknown(s: Settings, w: World, sessions: sessionmaker[Session]) -> str:
    return reply_token.reply_address(reply_token.new_token(s.secret_key), s.reply_domain)


def _forged(s: Settings, w: World, sessions: sessionmaker[Session]) -> str:
    return reply_token.reply_address(reply_token.new_token("z" * 40), s.reply_domain)


def _expired(s: Settings, w: World, sessions: sessionmaker[Session]) -> str:
    return add_reply_address(
        sessions, s, thread_id=w.thread_id, user_id=w.client_id, expires_in=timedelta(days=-1)
    )


def _revoked(s: Settings, w: World, sessions: sessionmaker[Session]) -> str:
    return add_reply_address(sessions, s, thread_id=w.thread_id, user_id=w.client_id, revoked=True)


def _mode_off(s: Settings, w: World, sessions: sessionmaker[Session]) -> str:
    set_convenience_mode(sessions, False)
    return w.address


@pytest.mark.parametrize(
    ("make_address", "exit_code", "status"),
    [
        pytest.param(_unknown, EX_NOUSER, "5.1.1", id="unknown token"),
        pytest.param(_forged, EX_NOUSER, "5.1.1", id="forged token"),
        pytest.param(lambda s, w, _: f"info@{s.reply_domain}", EX_NOUSER, "5.1.1", id="no token"),
        pytest.param(_expired, EX_NOUSER, "5.1.1", id="expired"),
        pytest.param(_revoked, EX_NOPERM, "5.7.1", id="revoked"),
        pytest.param(_mode_off, EX_NOPERM, "5.7.1", id="convenience mode off"),
    ],
)
def test_refused_recipients(
    settings: Settings,
    sessions: sessionmaker[Session],
    world: World,
    make_address: Callable[[Settings, World, sessionmaker[Session]], str],
    exit_code: int,
    status: str,
) -> None:
    address = make_address(settings, world, sessions)
    raw = reply_message(from_=world.client_email, to=address)
    code, reason = ingest(settings, sessions, rcpt=address, sender=world.client_email, raw=raw)
    assert code == exit_code
    assert reason.startswith(f"{status} <{address}>: ")
    assert queued(sessions) == []


def test_forged_from_exits_77(
    settings: Settings, sessions: sessionmaker[Session], world: World
) -> None:
    raw = reply_message(from_="mallory@evil.test", to=world.address)
    code, reason = ingest(settings, sessions, rcpt=world.address, sender="", raw=raw)
    assert code == EX_NOPERM and "belongs to someone else" in reason
    assert queued(sessions) == []


def test_oversize_exits_77(
    settings: Settings, sessions: sessionmaker[Session], world: World
) -> None:
    small = dataclasses.replace(settings, max_message_size=100)
    raw = reply_message(from_=world.client_email, to=world.address)
    code, reason = ingest(small, sessions, rcpt=world.address, sender="", raw=raw)
    assert code == EX_NOPERM and reason.startswith("5.3.4 ") and "100 bytes" in reason
    assert queued(sessions) == []


def test_store_failure_exits_75(
    settings: Settings,
    sessions: sessionmaker[Session],
    world: World,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise OperationalError("INSERT", {}, Exception("disk full"))

    monkeypatch.setattr(inbound, "enqueue", broken)
    raw = reply_message(from_=world.client_email, to=world.address)
    code, reason = ingest(settings, sessions, rcpt=world.address, sender="", raw=raw)
    assert code == EX_TEMPFAIL and reason.startswith("4.3.0 ")


def test_unreachable_database_exits_75(settings: Settings, world: World) -> None:
    engine = make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    try:
        code, _ = ingest(
            settings, session_factory(engine), rcpt=world.address, sender="", raw=b"From: x\r\n"
        )
    finally:
        engine.dispose()
    assert code == EX_TEMPFAIL


def test_delivery_report_to_the_bounce_address_exits_0(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    raw = b"From: MAILER-DAEMON@mx.test\r\nSubject: failure\r\n\r\nno such user\r\n"
    rcpt = bounce_address("a1b2c3", "reply.test", BOUNCE_KEY)
    code, _ = ingest(settings, sessions, rcpt=rcpt, sender="", raw=raw)
    assert code == EX_OK
    assert queued(sessions)[0].mail_from == ""


def test_refused_attachment_type_exits_77(
    settings: Settings, sessions: sessionmaker[Session], world: World
) -> None:
    raw = reply_with_attachment(
        from_=world.client_email,
        to=world.address,
        filename="run.js",
        content_type="application/javascript",
        payload=b"alert(1)",
    )
    code, reason = ingest(settings, sessions, rcpt=world.address, sender="", raw=raw)
    assert code == EX_NOPERM and reason.startswith("5.6.1 ")
    assert queued(sessions) == []
