"""The SMTP dialogue itself over a real socket: enhanced status codes on every
reply, and the limits on a session (bogus commands, concurrent sessions,
command and data timeouts)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.gateway.server import GatewayThread
from replygate.mail import reply_token
from tests.integration.gateway.conftest import (
    DEADLINE_SECONDS,
    World,
    dialogue,
    queued,
    reply_message,
)

Start = Callable[..., GatewayThread]
ENHANCED = re.compile(rb"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}( |$)")


def test_every_reply_to_bad_commands_carries_an_enhanced_status_code(
    settings: Settings, world: World, gateway: GatewayThread
) -> None:
    """RFC 2034: once ENHANCEDSTATUSCODES is advertised, every reply but the greeting
    and the HELO/EHLO replies starts with one, including aiosmtpd's own grammar
    errors. 354 is exempt too: RFC 3463 has no class 3."""
    unknown = reply_token.reply_address(
        reply_token.new_token(settings.secret_key), settings.reply_domain
    )
    commands = [
        b"MAIL FROM:<a@client.test>",  # before EHLO
        b"RCPT TO:<b@client.test>",
        b"DATA",
        b"EHLO",  # no argument
        b"HELO",
        b"FROB",  # unknown
        b"",  # empty line
        b"\xff\xfe",  # not ASCII
        b"NOOP " + b"x" * 600,  # over the command line limit
        b"EHLO mx.client.test",
        b"MAIL TO:<a@client.test>",
        b"MAIL FROM:",
        b"MAIL FROM:<a@client.test> FROB=1",
        b"MAIL FROM:<a@client.test> SIZE=999999999999",
        b"MAIL FROM:<a@client.test> BODY=9BIT",
        b"MAIL FROM:<a@client.test> SMTPUTF8=yes",
        b"MAIL FROM:<a@b@c>",  # malformed
        b"RCPT TO:<b@client.test>",  # before MAIL
        b"DATA",  # before MAIL
        b"MAIL FROM:<a@client.test>",
        b"MAIL FROM:<a@client.test>",  # nested
        b"DATA",  # before RCPT
        b"RCPT FROM:<b@client.test>",
        b"RCPT TO:",
        b"RCPT TO:<b@client.test> NOTIFY=NEVER",
        b"RCPT TO:<b@c@d>",
        f"RCPT TO:<{unknown}>".encode(),
        b"RCPT TO:<postmaster@reply.test>",
        f"RCPT TO:<{world.address}>".encode(),
        b"DATA now",
        b"RSET now",
        b"RSET",
        b"VRFY",
        b"VRFY <\x01>",
        b"VRFY <b@client.test>",
        b"EXPN staff",
        b"HELP",
        b"HELP FROB",
        b"HELP MAIL",
        b"NOOP",
        b"AUTH",
        b"AUTH PLAIN",
        b"AUTH FROB",
        b"STARTTLS",  # no certificate configured
        b"QUIT now",
        b"QUIT",
    ]
    seen: list[bytes] = []
    with dialogue(gateway.port) as d:
        assert d.reply()[0].startswith(b"220 ")  # the greeting: exempt
        for command in commands:
            lines = d.send(command)
            if command.startswith((b"EHLO ", b"HELO ")) and lines[0][:1] == b"2":
                continue  # RFC 2034 exempts the successful HELO/EHLO replies
            seen.extend(lines)
        assert d.closed()
    assert len(seen) == len(commands) - 1
    for line in seen:
        assert ENHANCED.match(line), line
    codes = {line[:3] for line in seen}
    assert {b"500", b"501", b"502", b"503", b"550", b"552", b"553", b"555", b"221"} <= codes


def test_grammar_errors_get_the_status_their_code_stands_for(gateway: GatewayThread) -> None:
    with dialogue(gateway.port) as d:
        d.reply()
        assert d.send(b"MAIL FROM:<a@client.test>") == [b"503 5.5.1 Error: send HELO first"]
        assert d.send(b"FROB") == [b'500 5.5.2 Error: command "FROB" not recognized']
        d.send(b"EHLO mx.client.test")
        assert d.send(b"MAIL FROM") == [
            b"501 5.5.4 Syntax: MAIL FROM: <address> [SP <mail-parameters>]"
        ]
        assert d.send(b"RCPT TO:<b@client.test>") == [b"503 5.5.1 Error: need MAIL command"]
        assert d.send(b"MAIL FROM:<a@client.test>") == [b"250 2.1.0 sender ok"]
        assert d.send(b"DATA") == [b"503 5.5.1 Error: need RCPT command"]
        assert d.send(b"EXPN staff") == [b"502 5.5.1 EXPN not implemented"]
        assert d.send(b"STARTTLS") == [b"454 4.7.0 TLS not available"]
        assert d.send(b"RSET") == [b"250 2.0.0 OK"]
        assert d.send(b"QUIT") == [b"221 2.0.0 Bye"]


def test_ehlo_advertises_enhanced_status_codes_and_no_auth(
    settings: Settings, gateway: GatewayThread
) -> None:
    with dialogue(gateway.port) as d:
        d.reply()
        lines = d.send(b"EHLO mx.client.test")
    assert lines[0] == b"250-" + settings.smtp_hostname.encode()
    assert b"250-ENHANCEDSTATUSCODES" in lines
    assert lines[-1] == b"250 HELP"
    assert not any(b"AUTH" in line for line in lines)
    assert not any(b"STARTTLS" in line for line in lines)  # no certificate configured


def test_helo_reply_names_our_host_without_a_status_code(
    settings: Settings, gateway: GatewayThread
) -> None:
    with dialogue(gateway.port) as d:
        d.reply()
        assert d.send(b"HELO mx.client.test") == [b"250 " + settings.smtp_hostname.encode()]


def test_too_many_unrecognised_commands_end_the_session(gateway: GatewayThread) -> None:
    with dialogue(gateway.port) as d:
        d.reply()
        replies = [d.send(b"FROB")[0] for _ in range(5)]
        assert replies[-1].startswith(b"502 5.5.1 ")
        assert all(ENHANCED.match(line) for line in replies)
        assert d.closed()


def test_recipients_over_the_limit_are_deferred_452_453(
    settings: Settings, sessions: sessionmaker[Session], world: World, start: Start
) -> None:
    """The first recipients are kept; the sending MTA sends the rest in another message."""
    gateway = start(settings, smtp_max_recipients=1)
    with dialogue(gateway.port) as d:
        d.reply()
        d.send(b"EHLO mx.client.test")
        d.send(f"MAIL FROM:<{world.client_email}>".encode())
        assert d.send(f"RCPT TO:<{world.address}>".encode())[0].startswith(b"250 2.1.5 ")
        [line] = d.send(b"RCPT TO:<bounces+1@reply.test>")
        assert line.startswith(b"452 4.5.3 <bounces+1@reply.test>: too many recipients")


def test_sessions_over_the_cap_hear_421_432_and_are_closed(
    settings: Settings, start: Start
) -> None:
    gateway = start(settings, smtp_max_sessions=1)
    with dialogue(gateway.port) as first:
        assert first.reply()[0].startswith(b"220 ")
        with dialogue(gateway.port) as second:
            [line] = second.reply()
            assert line.startswith(b"421 4.3.2 too many connections")
            assert second.closed()


def test_idle_client_hears_421_442_and_is_closed(settings: Settings, start: Start) -> None:
    gateway = start(settings, smtp_command_timeout=0.2)
    with dialogue(gateway.port) as d:
        d.reply()
        assert d.send(b"EHLO mx.client.test")[-1] == b"250 HELP"
        started = time.monotonic()
        [line] = d.reply()  # nothing sent: the server speaks first
        assert line.startswith(b"421 4.4.2 timeout waiting for a command")
        assert d.closed()
        assert time.monotonic() - started < DEADLINE_SECONDS


def test_stalled_data_hears_421_442_and_nothing_is_stored(
    settings: Settings, sessions: sessionmaker[Session], world: World, start: Start
) -> None:
    """The data timeout is idle time between packets, separate from the command timeout."""
    gateway = start(settings, smtp_command_timeout=60, smtp_data_timeout=0.2)
    raw = reply_message(from_=world.client_email, to=world.address)
    with dialogue(gateway.port) as d:
        d.reply()
        d.send(b"EHLO mx.client.test")
        d.send(f"MAIL FROM:<{world.client_email}>".encode())
        d.send(f"RCPT TO:<{world.address}>".encode())
        assert d.send(b"DATA")[0].startswith(b"354 ")
        d.sock.sendall(raw[:40])  # then nothing more
        [line] = d.reply()
        assert line.startswith(b"421 4.4.2 timeout receiving the message")
        assert d.closed()
    assert queued(sessions) == []
