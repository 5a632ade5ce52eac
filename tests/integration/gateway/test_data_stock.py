"""The chunked DATA reader stores what stock aiosmtpd 1.4.6 stores, and answers alike.

The byte streams of ``tests/unit/gateway/test_data.py``, sent to a stock
aiosmtpd server and to ours side by side on ephemeral ports, comparing the
stored bytes and the basic reply codes (ours adds enhanced status codes from
the catalogue).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Sequence
from typing import Any

from aiosmtpd.smtp import SMTP
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from replygate.config import Settings, load_settings
from replygate.gateway import replies
from replygate.gateway.replies import Condition
from replygate.gateway.server import protocol_factory
from tests.conftest import TEST_SECRET
from tests.unit.gateway.test_data import CASES, LIMIT

# -- side by side with stock aiosmtpd ------------------------------------------------------


class Recorder:
    """Keeps what DATA delivered; answers the protocol's refusals like GatewayHandler."""

    def __init__(self) -> None:
        self.stored: list[bytes] = []
        self.draining = False  # never stopped here

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.stored.append(envelope.original_content)
        return "250 OK"

    def refused_oversize(self, session: Any, envelope: Any) -> str:
        return replies.reply(Condition.MESSAGE_TOO_LARGE).render(limit=LIMIT)

    def refused_line_too_long(self, session: Any, envelope: Any) -> str:
        return replies.reply(Condition.LINE_TOO_LONG).render()

    def refused_no_room(self, session: Any, envelope: Any) -> str:
        return replies.reply(Condition.NO_ROOM).render()

    def refused_busy(self, session: Any) -> str:
        return replies.reply(Condition.TOO_MANY_CONNECTIONS).render()

    def refused_at_connect(self, session: Any) -> None:
        return None

    def timed_out(self, session: Any, envelope: Any, *, in_data: bool) -> str:
        return replies.reply(Condition.COMMAND_TIMEOUT).render()


def _settings(**changes: Any) -> Settings:
    base = load_settings(
        env={},
        overrides={"database_url": "sqlite:///unused.db", "secret_key": TEST_SECRET},
    )
    return dataclasses.replace(base, max_message_size=LIMIT, **changes)


async def _reply(reader: asyncio.StreamReader) -> bytes:
    """One (possibly multi-line) reply; its last line."""
    while True:
        line = await asyncio.wait_for(reader.readline(), 10)
        if not line or line[3:4] != b"-":
            return line


async def _send(port: int, pieces: Sequence[bytes]) -> tuple[int, int]:
    """One transaction whose DATA body goes in ``pieces``; the DATA and QUIT reply codes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await _reply(reader)
        for command in (b"EHLO client.test", b"MAIL FROM:<a@client.test>", b"RCPT TO:<b@x.test>"):
            writer.write(command + b"\r\n")
            assert (await _reply(reader))[:1] == b"2", command
        writer.write(b"DATA\r\n")
        assert (await _reply(reader))[:3] == b"354"
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
        writer.write(b"QUIT\r\n")  # pipelined after the data; must still be read as a command
        data_code = int((await _reply(reader))[:3])
        quit_code = int((await _reply(reader))[:3])
        return data_code, quit_code
    finally:
        writer.close()


async def _compare(streams: Sequence[Sequence[bytes]]) -> list[tuple[Any, Any]]:
    loop = asyncio.get_running_loop()
    stock_rec, ours_rec = Recorder(), Recorder()

    def stock() -> SMTP:
        return SMTP(
            stock_rec,
            data_size_limit=LIMIT,
            hostname="stock.test",
            enable_SMTPUTF8=True,
            decode_data=False,
            loop=loop,
        )

    stock_server = await loop.create_server(stock, "127.0.0.1", 0)
    ours_server = await loop.create_server(
        protocol_factory(_settings(), ours_rec),  # type: ignore[arg-type]
        "127.0.0.1",
        0,
    )
    results = []
    try:
        for pieces in streams:
            a = await _send(stock_server.sockets[0].getsockname()[1], pieces)
            b = await _send(ours_server.sockets[0].getsockname()[1], pieces)
            stored_a = stock_rec.stored.pop() if stock_rec.stored else None
            stored_b = ours_rec.stored.pop() if ours_rec.stored else None
            results.append(((a, stored_a), (b, stored_b)))
    finally:
        stock_server.close()
        ours_server.close()
    return results


def test_stored_bytes_and_reply_codes_match_stock_aiosmtpd() -> None:
    streams = []
    for stream in CASES.values():
        streams.append([stream])
        streams.append([stream[: len(stream) // 2], stream[len(stream) // 2 :]])
        streams.append([stream[:-3], stream[-3:]])  # the dot line split
    for (stock, stored_stock), (ours, stored_ours) in asyncio.run(_compare(streams)):
        assert ours == stock
        assert stored_ours == stored_stock


# Every branch of the command loop (``GatewaySMTP._serve``, our copy of aiosmtpd's),
# ending with the unknown commands that make both servers hang up.
COMMAND_SCRIPT = [
    b"",
    b"\xff\xfe",
    b"NOOP " + b"x" * 507,  # 512 octets: the command line limit (RFC 5321 4.5.3.1.4)
    b"NOOP " + b"x" * 508,  # one over
    b"NOOP " + b"x" * 1100,  # over the stream's line limit
    b"MAIL FROM:<a@client.test>",  # before HELO
    b"helo client.test",
    b"ehlo client.test",
    b"NOOP",
    b"noop now",
    b"RSET x",
    b"VRFY",
    b"VRFY a@client.test",
    b"EXPN list",
    b"HELP",
    b"HELP MAIL",
    b"STARTTLS",
    b"AUTH PLAIN",
    b"mail from:<a@client.test> SIZE=10",
    b"MAIL FROM:<a@client.test>",  # nested
    b"RCPT TO:<b@x.test>",
    b"DATA now",
    b"RSET",
    b"QUIT now",
    b"FROB",
    b"FROB",
    b"FROB",
    b"FROB",
    b"FROB",
    b"NOOP",  # after the hang-up: nobody answers
]


async def _codes(port: int) -> list[bytes]:
    """The reply code to each line of ``COMMAND_SCRIPT``, or b"" once the server closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    codes = []
    try:
        await _reply(reader)
        for line in COMMAND_SCRIPT:
            with contextlib.suppress(ConnectionError):
                writer.write(line + b"\r\n")
                await writer.drain()
            codes.append((await _reply(reader))[:3])
    finally:
        writer.close()
    return codes


def test_command_replies_match_stock_aiosmtpd() -> None:
    """Our command loop answers every command with stock aiosmtpd's code (the texts
    differ: ours carry enhanced status codes), and hangs up where it does."""

    async def run() -> tuple[list[bytes], list[bytes]]:
        loop = asyncio.get_running_loop()
        stock = await loop.create_server(
            lambda: SMTP(Recorder(), hostname="stock.test", enable_SMTPUTF8=True, loop=loop),
            "127.0.0.1",
            0,
        )
        ours = await loop.create_server(
            protocol_factory(_settings(), Recorder()),  # type: ignore[arg-type]
            "127.0.0.1",
            0,
        )
        try:
            return (
                await _codes(stock.sockets[0].getsockname()[1]),
                await _codes(ours.sockets[0].getsockname()[1]),
            )
        finally:
            stock.close()
            ours.close()

    stock, ours = asyncio.run(run())
    assert ours == stock
    assert stock[-6:] == [b"500"] * 4 + [b"502", b""]  # the script reaches the hang-up


def test_refusals_carry_enhanced_codes() -> None:
    async def run() -> list[bytes]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            protocol_factory(_settings(), Recorder()),  # type: ignore[arg-type]
            "127.0.0.1",
            0,
        )
        port = server.sockets[0].getsockname()[1]
        lines = []
        for stream in (CASES["long line"], CASES["way over"]):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await _reply(reader)
            for command in (b"EHLO c", b"MAIL FROM:<a@c>", b"RCPT TO:<b@x>", b"DATA"):
                writer.write(command + b"\r\n")
                await _reply(reader)
            writer.write(stream)
            lines.append(await _reply(reader))
            writer.close()
        server.close()
        return lines

    long_line, too_much = asyncio.run(run())
    assert long_line.startswith(b"500 5.5.2 ")
    assert too_much.startswith(b"552 5.3.4 ")


body_bytes = st.lists(
    st.sampled_from([b".", b"..", b"\r\n", b"\r", b"\n", b"a", b"\xff", b"x" * 700, b"\r\n."]),
    max_size=12,
).map(b"".join)


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=body_bytes, cut=st.integers(min_value=0, max_value=10_000))
def test_random_bodies_match_stock_aiosmtpd(body: bytes, cut: int) -> None:
    stream = body + b"\r\n.\r\n"
    cut %= len(stream)
    pieces = [p for p in (stream[:cut], stream[cut:]) if p]
    [((stock, stored_stock), (ours, stored_ours))] = asyncio.run(_compare([pieces]))
    assert ours == stock
    assert stored_ours == stored_stock


def test_our_protocol_sets_what_stock_aiosmtpd_sets() -> None:
    """The fast ``__init__`` must keep up with aiosmtpd: same attributes, same tables."""

    async def run() -> tuple[set[str], set[str], dict[str, Any], dict[str, Any]]:
        stock = SMTP(Recorder(), hostname="h", loop=asyncio.get_running_loop())
        ours = protocol_factory(_settings(), Recorder())()  # type: ignore[arg-type]
        return set(vars(stock)), set(vars(ours)), stock._smtp_methods, ours._smtp_methods

    stock_attrs, our_attrs, stock_methods, our_methods = asyncio.run(run())
    assert stock_attrs <= our_attrs
    assert set(stock_methods) == set(our_methods)
