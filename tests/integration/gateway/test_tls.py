"""STARTTLS with a configured certificate: smtplib upgrades against the real server."""

from __future__ import annotations

import dataclasses
import smtplib
import socket
import ssl
import time
from collections.abc import Callable

import pytest
from sqlalchemy.orm import Session, sessionmaker
from structlog.testing import capture_logs

from replygate.config import Settings
from replygate.errors import ConfigError
from replygate.gateway.server import GatewayThread, tls_context
from tests.helpers import as_sent
from tests.integration.gateway.conftest import TLSFiles, World, queued, reply_message

Start = Callable[..., GatewayThread]
DEADLINE_SECONDS = 10.0


def _with_tls(settings: Settings, tls_files: TLSFiles, **changes: object) -> Settings:
    return dataclasses.replace(
        settings, smtp_tls_cert=str(tls_files.cert), smtp_tls_key=str(tls_files.key), **changes
    )


def _client_context(tls_files: TLSFiles) -> ssl.SSLContext:
    """Verifies our self-signed certificate, host name included."""
    return ssl.create_default_context(cafile=str(tls_files.cert))


def test_starttls_is_offered_and_a_reply_goes_through_encrypted(
    settings: Settings,
    sessions: sessionmaker[Session],
    world: World,
    start: Start,
    tls_files: TLSFiles,
) -> None:
    gateway = start(_with_tls(settings, tls_files))
    raw = reply_message(from_=world.client_email, to=world.address)
    with capture_logs() as logs, smtplib.SMTP("127.0.0.1", gateway.port, timeout=10) as client:
        client.ehlo("mx.client.test")
        assert client.has_extn("starttls")
        code, text = client.starttls(context=_client_context(tls_files))
        assert (code, text) == (220, b"2.0.0 Ready to start TLS")
        client.ehlo("mx.client.test")
        assert not client.has_extn("starttls")  # once is enough
        assert not client.has_extn("auth")
        assert client.has_extn("enhancedstatuscodes")
        assert client.sock.version() in ("TLSv1.2", "TLSv1.3")  # type: ignore[union-attr]
        client.sendmail(world.client_email, [world.address], raw)
    assert [as_sent(r.raw) for r in queued(sessions)] == [raw]
    (line,) = [e for e in logs if e["event"] == "inbound.mail"]
    assert line["tls"] is True


def test_required_starttls_refuses_mail_in_plain_text_530_570(
    settings: Settings,
    sessions: sessionmaker[Session],
    world: World,
    start: Start,
    tls_files: TLSFiles,
) -> None:
    gateway = start(_with_tls(settings, tls_files, smtp_require_starttls=True))
    raw = reply_message(from_=world.client_email, to=world.address)
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=10) as client:
        client.ehlo("mx.client.test")
        code, text = client.mail(world.client_email)
        assert (code, text) == (530, b"5.7.0 Must issue a STARTTLS command first")
        client.starttls(context=_client_context(tls_files))
        client.ehlo("mx.client.test")
        client.sendmail(world.client_email, [world.address], raw)
    assert [as_sent(r.raw) for r in queued(sessions)] == [raw]


def _admitted(port: int) -> bool:
    """Whether a new connection is greeted (not told 421 for the session cap)."""
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_SECONDS) as sock:
        return sock.recv(4) == b"220 "


def _connect_admitted(port: int) -> socket.socket:
    """A greeted connection, polling until a closed session has been counted out
    (the server learns of the close a moment after the client closes)."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_SECONDS)
        if sock.recv(4) == b"220 ":
            return sock
        sock.close()
        assert time.monotonic() < deadline, "the closed session is still counted"


def test_a_tls_session_counts_once_against_the_session_cap(
    settings: Settings, start: Start, tls_files: TLSFiles
) -> None:
    """The protocol is told of the connection again when TLS starts; it is still one."""
    gateway = start(_with_tls(settings, tls_files, smtp_max_sessions=1))
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=10) as client:
        client.starttls(context=_client_context(tls_files))
        assert client.noop()[0] == 250
        assert not _admitted(gateway.port)  # over the cap while the TLS session is open
    with _connect_admitted(gateway.port):
        assert not _admitted(gateway.port)  # counted out once, not twice


def test_a_failed_handshake_closes_only_that_connection(
    settings: Settings, start: Start, tls_files: TLSFiles
) -> None:
    gateway = start(_with_tls(settings, tls_files, smtp_max_sessions=1))
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall(b"EHLO mx.client.test\r\n")
        while reader.readline()[3:4] == b"-":
            pass
        sock.sendall(b"STARTTLS\r\n")
        assert reader.readline().startswith(b"220 2.0.0 ")
        sock.sendall(b"this is not a TLS client hello\r\n" * 4)
        assert reader.read() == b""  # closed by the server
    with _connect_admitted(gateway.port) as sock:
        reader = sock.makefile("rb")
        reader.readline()  # the rest of the greeting
        sock.sendall(b"NOOP\r\n")
        assert reader.readline() == b"250 2.0.0 OK\r\n"


def test_certificate_without_key_is_a_configuration_error(
    settings: Settings, tls_files: TLSFiles
) -> None:
    with pytest.raises(ConfigError, match="together"):
        tls_context(dataclasses.replace(settings, smtp_tls_cert=str(tls_files.cert)))
    with pytest.raises(ConfigError, match="cannot load"):
        tls_context(
            dataclasses.replace(
                settings, smtp_tls_cert=str(tls_files.key), smtp_tls_key=str(tls_files.key)
            )
        )
    assert tls_context(settings) is None
