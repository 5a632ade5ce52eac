"""The chunked DATA reader stores what stock aiosmtpd 1.4.6 stores, and answers alike.

Two tiers: ``DataReader`` fed bytes in every possible split, no socket; then
the same byte streams sent to a stock aiosmtpd server and to ours side by
side on ephemeral ports, comparing the stored bytes and the basic reply
codes (ours adds enhanced status codes from the catalogue).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Sequence
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from replygate.config import Settings, load_settings
from replygate.gateway import replies
from replygate.gateway.data import DataReader, DataState
from replygate.gateway.replies import Condition
from replygate.gateway.server import protocol_factory
from tests.conftest import TEST_SECRET

LIMIT = 4000  # a small size limit so oversize cases stay small


def _read_all(pieces: Sequence[bytes], limit: int = LIMIT) -> tuple[DataState, bytes, bytes]:
    """Feed ``pieces``; the state, the message, and what was left for the next command."""
    reader = DataReader(limit)
    left = b""
    for piece in pieces:
        if reader.done:
            left += piece
            continue
        used = reader.feed(piece)
        left += piece[used:]
    assert reader.done
    raw = reader.content() if reader.state is DataState.NOMINAL else b""
    return reader.state, raw, left


CASES: dict[str, bytes] = {
    "plain": b"Subject: hi\r\n\r\nhello\r\n.\r\n",
    "empty": b".\r\n",
    "one empty line": b"\r\n.\r\n",
    "stuffed lone dot": b"a\r\n..\r\nb\r\n.\r\n",
    "leading dots": b".hidden\r\n..two\r\n...three\r\n.\r\n",
    "dot first line": b"..\r\n.\r\n",
    "bare LF is data": b"a\nb\n.\nc\r\n.\r\n",
    "bare CR is data": b"a\rb\r.\r\r\n.\r\n",
    "dot CR LF inside a line": b"x.\r\n.y\r\n.\r\n",
    "8-bit": bytes(range(256)).replace(b"\r", b"").replace(b"\n", b"") + b"\r\n.\r\n",
    "utf-8": "Grüße, 日本語\r\n".encode() + b".\r\n",
    "NUL": b"a\x00b\r\n.\r\n",
    "no final CRLF before dot": b"abc.\r\n.\r\n",
    "line of 999": b"x" * 999 + b"\r\n.\r\n",
    "line of 1000": b"x" * 1000 + b"\r\n.\r\n",
    "line of 1001": b"x" * 1001 + b"\r\n.\r\n",
    "line of 1002": b"x" * 1002 + b"\r\n.\r\n",
    "stuffed line of 999": b"." + b"x" * 998 + b"\r\n.\r\n",
    "stuffed line of 1000": b"." + b"x" * 999 + b"\r\n.\r\n",
    "long line": b"ok\r\n" + b"y" * 5000 + b"\r\nafter\r\n.\r\n",
    "long line ending in CR": b"y" * 1002 + b"\r\r\n.\r\n",
    "at the size limit": b"z" * 998
    + b"\r\n"
    + b"z" * 998
    + b"\r\n"
    + b"z" * 998
    + b"\r\n"
    + b"z" * 996
    + b"\r\n.\r\n",
    "one over the size limit": b"z" * 998
    + b"\r\n"
    + b"z" * 998
    + b"\r\n"
    + b"z" * 998
    + b"\r\n"
    + b"z" * 997
    + b"\r\n.\r\n",
    "oversize then long line": (b"w" * 900 + b"\r\n") * 6 + b"v" * 3000 + b"\r\n.\r\n",
    "long line then oversize": b"v" * 3000 + b"\r\n" + (b"w" * 900 + b"\r\n") * 6 + b".\r\n",
    "line of 1001 crossing the limit": (b"w" * 900 + b"\r\n") * 3 + b"u" * 1001 + b"\r\n.\r\n",
    "line of 1004 crossing the limit": (b"w" * 900 + b"\r\n") * 3 + b"u" * 1004 + b"\r\n.\r\n",
    "way over": (b"q" * 80 + b"\r\n") * 500 + b".\r\n",
}


@pytest.mark.parametrize("stream", list(CASES.values()), ids=list(CASES))
def test_every_split_reads_the_same(stream: bytes) -> None:
    """Where the reads happen to end (a dot, a CR, the terminator) changes nothing."""
    whole = _read_all([stream])
    for cut in range(1, len(stream)):
        assert _read_all([stream[:cut], stream[cut:]]) == whole, cut
    assert _read_all([bytes([b]) for b in stream]) == whole


def test_what_follows_the_end_of_data_is_left_for_the_next_command() -> None:
    state, raw, left = _read_all([b"a\r\n.\r\nQUIT\r\n"])
    assert (state, raw, left) == (DataState.NOMINAL, b"a\r\n", b"QUIT\r\n")
    state, raw, left = _read_all([b"a\r\n.\r", b"\nMAIL FROM:<x@y>\r\n"])
    assert (raw, left) == (b"a\r\n", b"MAIL FROM:<x@y>\r\n")


def test_memory_stays_bounded_after_a_refusal() -> None:
    reader = DataReader(1000)
    for _ in range(1000):
        reader.feed(b"x" * 10_000)
    assert reader.state is DataState.TOO_LONG
    assert len(reader._pending) < 8 and not reader._chunks


# -- side by side with stock aiosmtpd ------------------------------------------------------


class Recorder:
    """Keeps what DATA delivered; answers the protocol's refusals like GatewayHandler."""

    def __init__(self) -> None:
        self.stored: list[bytes] = []

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
