"""The chunked DATA reader, fed bytes in every possible split with no socket.

``tests/integration/gateway/test_data_stock.py`` sends the same byte streams
to a stock aiosmtpd server and to ours side by side.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from replygate.gateway.data import DataReader, DataState

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
