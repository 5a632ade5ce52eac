"""Throttling hosts that keep naming unknown reply addresses: the pure rules on a
fake clock, then through a real gateway (450 4.7.1 at RCPT, 421 4.7.0 at connect)."""

from __future__ import annotations

import smtplib
from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.errors import ConfigError
from replygate.gateway.server import GatewayThread
from replygate.gateway.throttle import Throttle, parse_networks
from replygate.mail import reply_token
from tests.helpers import as_sent
from tests.integration.gateway.conftest import World, add_reply_address, queued, reply_message

Start = Callable[..., GatewayThread]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _throttle(clock: Clock, relays: str = "", **kw: int) -> Throttle:
    return Throttle(3, 60.0, 300.0, exempt=parse_networks(relays), clock=clock, **kw)


def test_the_nth_failure_in_the_window_starts_the_cool_down() -> None:
    clock = Clock()
    throttle = _throttle(clock)
    assert not throttle.failed("192.0.2.1")
    assert not throttle.failed("192.0.2.1")
    assert not throttle.blocked("192.0.2.1")
    assert throttle.failed("192.0.2.1")
    assert throttle.blocked("192.0.2.1") == 300.0
    assert not throttle.blocked("192.0.2.2")  # another host is not concerned


def test_the_cool_down_ends() -> None:
    clock = Clock()
    throttle = _throttle(clock)
    for _ in range(3):
        throttle.failed("192.0.2.1")
    clock.now += 299
    assert throttle.blocked("192.0.2.1") == pytest.approx(1.0)
    clock.now += 1
    assert not throttle.blocked("192.0.2.1")
    assert not throttle.failed("192.0.2.1")  # counting starts afresh


def test_failures_older_than_the_window_do_not_count() -> None:
    clock = Clock()
    throttle = _throttle(clock)
    throttle.failed("192.0.2.1")
    clock.now += 30
    throttle.failed("192.0.2.1")
    clock.now += 31  # the first failure is now out of the window
    assert not throttle.failed("192.0.2.1")
    clock.now += 1
    assert throttle.failed("192.0.2.1")  # three within 60 s: 1030, 1061, 1062


def test_trusted_relays_are_never_throttled() -> None:
    clock = Clock()
    throttle = _throttle(clock, relays="192.0.2.25, 10.0.0.0/8, 2001:db8::/32")
    for ip in ("192.0.2.25", "10.1.2.3", "2001:db8::7", "::ffff:10.9.9.9"):
        for _ in range(10):
            assert not throttle.failed(ip), ip
        assert not throttle.blocked(ip)
    for _ in range(3):
        throttle.failed("192.0.2.26")
    assert throttle.blocked("192.0.2.26")


def test_zero_failures_turns_throttling_off() -> None:
    throttle = Throttle(0, 60.0, 300.0, clock=Clock())
    for _ in range(100):
        assert not throttle.failed("192.0.2.1")
    assert not throttle.blocked("192.0.2.1")


def test_memory_is_bounded_whatever_the_number_of_hosts() -> None:
    clock = Clock()
    throttle = _throttle(clock, max_hosts=50)
    for i in range(10_000):
        throttle.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(throttle._failures) <= 50
    for i in range(200):  # and as many cool-downs
        for _ in range(3):
            throttle.failed(f"172.16.0.{i}")
    assert len(throttle._until) <= 50


def test_a_bad_relay_entry_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="smtp_trusted_relays"):
        parse_networks("10.0.0.1, mx.example.org")


# -- through the gateway -----------------------------------------------------------------


def _unknown(settings: Settings) -> str:
    return reply_token.reply_address(
        reply_token.new_token(settings.secret_key), settings.reply_domain
    )


def test_a_host_guessing_addresses_is_deferred_then_refused_at_connect(
    settings: Settings, sessions: sessionmaker[Session], world: World, start: Start
) -> None:
    """Unknown tokens count; once over the limit even a valid address is deferred
    (450 4.7.1, the MTA retries after the cool-down), and new connections hear 421 4.7.0."""
    gateway = start(settings, smtp_throttle_failures=3, smtp_trusted_relays="")
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=10) as client:
        client.ehlo("mx.guesser.test")
        client.mail("guesser@guesser.test")
        for _ in range(3):
            assert client.rcpt(_unknown(settings))[0] == 550
        code, text = client.rcpt(world.address)
        assert code == 450
        assert text.decode().startswith(f"4.7.1 <{world.address}>: too many unknown reply")
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        smtplib.SMTP("127.0.0.1", gateway.port, timeout=10)
    assert refused.value.smtp_code == 421
    assert refused.value.smtp_error.decode().startswith("4.7.0 too many unknown reply")
    assert queued(sessions) == []


def test_late_replies_to_expired_addresses_do_not_count(
    settings: Settings, sessions: sessionmaker[Session], world: World, start: Start
) -> None:
    """Only addresses we never issued count: a person replying late is not a guesser."""
    expired = add_reply_address(
        sessions,
        settings,
        thread_id=world.thread_id,
        user_id=world.client_id,
        expires_in=timedelta(seconds=-1),
    )
    gateway = start(settings, smtp_throttle_failures=2, smtp_trusted_relays="")
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=10) as client:
        client.ehlo("mx.client.test")
        client.mail(world.client_email)
        for _ in range(5):
            assert client.rcpt(expired)[0] == 550
        assert client.rcpt(world.address)[0] == 250


def test_a_trusted_relay_is_never_deferred(
    settings: Settings, sessions: sessionmaker[Session], world: World, start: Start
) -> None:
    """A front Postfix relays everyone's mail from one IP: its unknown recipients
    are refused one by one, its good mail still goes through."""
    assert "127.0.0.0/8" in settings.smtp_trusted_relays  # loopback, by default
    gateway = start(settings, smtp_throttle_failures=2)
    raw = reply_message(from_=world.client_email, to=world.address)
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=10) as client:
        client.ehlo("postfix.front.test")
        client.mail("guesser@guesser.test")
        for _ in range(5):
            assert client.rcpt(_unknown(settings))[0] == 550
        client.rset()
        client.sendmail(world.client_email, [world.address], raw)
    assert [as_sent(r.raw) for r in queued(sessions)] == [raw]
