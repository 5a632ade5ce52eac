"""The PROXY protocol behind a load balancer: the header, written by hand on a
socket, names the client the gateway throttles, logs and records."""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Callable

import pytest
from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.gateway.server import GatewayThread
from replygate.mail import reply_token
from tests.integration.gateway.conftest import Dialogue, World, queued, reply_message

Start = Callable[..., GatewayThread]
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def _proxied(port: int, header: bytes) -> Dialogue:
    d = Dialogue(port)
    d.sock.sendall(header)
    return d


def _v1(client: str, client_port: int = 51234) -> bytes:
    family = "TCP6" if ":" in client else "TCP4"
    ours = "2001:db8::25" if ":" in client else "192.0.2.25"
    return f"PROXY {family} {client} {ours} {client_port} 25\r\n".encode()


def _v2(client: str, client_port: int) -> bytes:
    """A PROXY v2 header for a TCP over IPv4 connection (version 2, command PROXY)."""
    addresses = (
        ipaddress.IPv4Address(client).packed
        + ipaddress.IPv4Address("192.0.2.25").packed
        + struct.pack("!HH", client_port, 25)
    )
    return V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", len(addresses)) + addresses


def _send_reply(d: Dialogue, world: World, raw: bytes) -> bytes:
    assert d.reply()[0].startswith(b"220 ")
    d.send(b"EHLO mx.client.test")
    d.send(f"MAIL FROM:<{world.client_email}>".encode())
    assert d.send(f"RCPT TO:<{world.address}>".encode())[0].startswith(b"250 ")
    assert d.send(b"DATA")[0].startswith(b"354 ")
    d.sock.sendall(raw)
    return d.send(b".")[0]


def test_the_queue_row_records_the_client_the_header_names(
    settings: Settings, sessions: sessionmaker[Session], world: World, start: Start
) -> None:
    gateway = start(settings, smtp_proxy_protocol=True)
    raw = reply_message(from_=world.client_email, to=world.address)
    d = _proxied(gateway.port, _v1("203.0.113.9"))
    try:
        assert _send_reply(d, world, raw).startswith(b"250 2.0.0 ")
    finally:
        d.close()
    (row,) = queued(sessions)
    assert row.peer == "203.0.113.9:51234"


def test_proxy_v2_and_ipv6_clients(
    settings: Settings, sessions: sessionmaker[Session], world: World, start: Start
) -> None:
    gateway = start(settings, smtp_proxy_protocol=True)
    for header in (_v2("198.51.100.20", 40001), _v1("2001:db8::5", 40002)):
        raw = reply_message(from_=world.client_email, to=world.address)
        d = _proxied(gateway.port, header)
        try:
            assert _send_reply(d, world, raw).startswith(b"250 2.0.0 ")
        finally:
            d.close()
    assert [r.peer for r in queued(sessions)] == ["198.51.100.20:40001", "[2001:db8::5]:40002"]


@pytest.mark.parametrize(
    "header",
    [b"PROXY UNKNOWN\r\n", V2_SIGNATURE + bytes([0x20, 0x00, 0, 0])],
    ids=["v1 UNKNOWN", "v2 LOCAL"],
)
def test_a_health_check_without_a_client_uses_the_socket_peer(
    settings: Settings,
    sessions: sessionmaker[Session],
    world: World,
    start: Start,
    header: bytes,
) -> None:
    gateway = start(settings, smtp_proxy_protocol=True)
    raw = reply_message(from_=world.client_email, to=world.address)
    d = _proxied(gateway.port, header)
    try:
        assert _send_reply(d, world, raw).startswith(b"250 ")
    finally:
        d.close()
    (row,) = queued(sessions)
    assert row.peer is not None and row.peer.startswith("127.0.0.1:")


def test_a_connection_without_the_header_is_closed_unanswered(
    settings: Settings, start: Start
) -> None:
    gateway = start(settings, smtp_proxy_protocol=True)
    d = _proxied(gateway.port, b"EHLO mx.client.test\r\n")
    try:
        assert d.closed()
    finally:
        d.close()


def test_throttling_counts_the_proxied_client_not_the_balancer(
    settings: Settings, sessions: sessionmaker[Session], world: World, start: Start
) -> None:
    """Every connection comes from the balancer's address (loopback, a trusted relay by
    default); the guesser it names is deferred, another client is not."""
    gateway = start(settings, smtp_proxy_protocol=True, smtp_throttle_failures=2)
    unknown = [
        reply_token.reply_address(reply_token.new_token(settings.secret_key), "reply.test")
        for _ in range(2)
    ]
    d = _proxied(gateway.port, _v1("203.0.113.66"))
    try:
        d.reply()
        d.send(b"EHLO mx.guesser.test")
        d.send(b"MAIL FROM:<g@guesser.test>")
        for address in unknown:
            assert d.send(f"RCPT TO:<{address}>".encode())[0].startswith(b"550 5.1.1 ")
        assert d.send(f"RCPT TO:<{world.address}>".encode())[0].startswith(b"450 4.7.1 ")
    finally:
        d.close()
    d = _proxied(gateway.port, _v1("203.0.113.66"))
    try:
        [line] = d.reply()
        assert line.startswith(b"421 4.7.0 too many unknown reply addresses")
        assert d.closed()
    finally:
        d.close()
    raw = reply_message(from_=world.client_email, to=world.address)
    d = _proxied(gateway.port, _v1("198.51.100.4"))
    try:
        assert _send_reply(d, world, raw).startswith(b"250 2.0.0 ")
    finally:
        d.close()
    assert [r.peer for r in queued(sessions)] == ["198.51.100.4:51234"]


def test_a_half_sent_header_closes_quietly(settings: Settings, start: Start) -> None:
    """A client gone before its header is complete leaves the gateway serving others."""
    gateway = start(settings, smtp_proxy_protocol=True)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(b"PRO")
    d = _proxied(gateway.port, b"PROXY UNKNOWN\r\n")
    try:
        assert d.reply()[0].startswith(b"220 ")
    finally:
        d.close()
