"""Reading one SMTP DATA body in large chunks, byte for byte as aiosmtpd 1.4.6 reads it.

aiosmtpd reads DATA one line at a time (``readuntil(b"\\r\\n")`` through a
1,001-octet buffer), which costs most of the time of a large message. This
reader takes whatever the socket delivered, finds the end of data and
undoes dot-stuffing with ``bytes.find``/``bytes.replace``, and applies the
same limits with the same precedence, so the stored bytes and the replies
are those of the stock reader (``tests/integration/gateway/test_data_stock.py`` compares both):

- the data ends at the first line that is exactly ``.`` (``\\r\\n.\\r\\n``,
  or ``.\\r\\n`` as the very first line); lines end at CRLF only, a bare LF
  or CR is data;
- a line whose first octet is a dot loses that dot (RFC 5321 4.5.2);
- a line longer than aiosmtpd's ``line_length_limit`` (1,001 octets on the
  wire with its CRLF: 998 + CRLF + one transparency dot, RFC 5321
  4.5.3.1.6) makes the message ``TOO_LONG``;
- more wire octets than ``size_limit`` (counted per line, before
  unstuffing, without the final dot line) make it ``TOO_MUCH``;
- the first of the two that happens wins; a line with more than 1,001
  octets before its CRLF is ``TOO_LONG`` before it is counted (aiosmtpd's
  stream limit raises before the line is read);
- once refused, nothing more is kept: memory stays bounded whatever is sent,
  and reading goes on to the end of data so the session stays in step.

Sans I/O: ``feed`` takes bytes and says how many it used; the protocol
(``protocol.GatewaySMTP``) does the reading.
"""

from __future__ import annotations

import enum

TERMINATOR = b"\r\n.\r\n"
CRLF = b"\r\n"
DOT_LINE = b"\r\n."  # a line that starts with a dot: stuffed, or the end of data
# aiosmtpd's SMTP.line_length_limit: a whole line on the wire, CRLF included.
LINE_LENGTH_LIMIT = 1001
# aiosmtpd's StreamReader limit: octets before the CRLF that readuntil accepts.
STREAM_LIMIT = 1001


class DataState(enum.Enum):
    """How the message stands; anything but ``NOMINAL`` is refused at the end of data."""

    NOMINAL = "nominal"
    TOO_LONG = "too_long"  # a line over the RFC 5321 limit
    TOO_MUCH = "too_much"  # over the size limit
    NO_ROOM = "no_room"  # the gateway's memory budget ran out (a temporary refusal)


class DataReader:
    """Collects one DATA body from chunks of any size."""

    def __init__(self, size_limit: int | None) -> None:
        self.size_limit = size_limit or 0
        self.state = DataState.NOMINAL
        self.done = False
        self.size = 0  # wire octets of the complete lines kept so far
        self._chunks: list[bytes | memoryview] = []
        # Unread bytes, always preceded by the CRLF that ended the previous
        # line (a virtual one at the start), so ``\r\n.\r\n`` finds the end
        # of data even when it is the first line.
        self._pending = bytearray(CRLF)

    def feed(self, data: bytes) -> int:
        """Take ``data``; return how many of its bytes belong to the message.

        Fewer than ``len(data)`` once the end of data is found: the rest is
        the client's next command (PIPELINING) and goes back to the reader.
        """
        if self.done:
            return 0
        pending = self._pending
        # A dot line not yet judged starts at or after ``start``: earlier ones were
        # judged by the previous call (a carried one can only be at 0, see below).
        start = max(0, len(pending) - len(TERMINATOR) + 1)
        carried_dot = start > 0 and pending.startswith(DOT_LINE)
        pending += data
        end, dotted = _find_end(pending, start)
        if end != -1:
            if self.state is DataState.NOMINAL:
                self._keep_lines(end, carried_dot or dotted != -1)
            self.done = True
            leftover = len(pending) - (end + len(TERMINATOR))
            self._pending = bytearray()
            return len(data) - leftover
        if self.state is DataState.NOMINAL:
            cut = pending.rfind(CRLF)
            if cut > 0:
                self._keep_lines(cut, carried_dot or -1 < dotted < cut)
                del pending[:cut]
            if self.state is DataState.NOMINAL and len(pending) - len(CRLF) > STREAM_LIMIT + 1:
                # An unfinished line already longer than aiosmtpd's stream limit.
                self.refuse(DataState.TOO_LONG)
        if self.state is not DataState.NOMINAL:
            del pending[: -(len(TERMINATOR) - 1)]  # only a split terminator matters now
        return len(data)

    def refuse(self, state: DataState) -> None:
        """Stop keeping data (the first refusal wins); reading goes on to the end."""
        if self.state is DataState.NOMINAL:
            self.state = state
            self._chunks.clear()

    def content(self) -> bytes:
        """The unstuffed message once ``done`` and ``NOMINAL``."""
        raw = b"".join(self._chunks)
        self._chunks.clear()
        return raw

    def _keep_lines(self, cut: int, stuffed: bool) -> None:
        """Keep the complete lines of ``pending[2:cut + 2]`` (each ends with CRLF);
        ``stuffed`` says whether one of them starts with a dot."""
        block = cut
        if block == 0:
            return
        pending = self._pending
        limit = self.size_limit
        fits = not limit or self.size + block <= limit
        if fits and _lines_fit(pending, cut + len(CRLF)):
            with memoryview(pending) as view:
                if not stuffed:  # most blocks: no line starts with a dot, one copy
                    self._chunks.append(bytes(view[len(CRLF) : cut + len(CRLF)]))
                else:
                    # The leading CRLF lets one replace unstuff the first line
                    # too; the view skips it without copying the block again.
                    marked = bytes(view[: cut + len(CRLF)])
                    self._chunks.append(memoryview(marked.replace(b"\r\n.", CRLF))[len(CRLF) :])
            self.size += block
            return
        self._keep_one_by_one(bytes(pending[len(CRLF) : cut + len(CRLF)]))

    def _keep_one_by_one(self, block: bytes) -> None:
        """The slow path, line by line in aiosmtpd's order, when a limit is crossed."""
        limit = self.size_limit
        for line in block.split(CRLF)[:-1]:
            wire = len(line) + len(CRLF)
            if len(line) > STREAM_LIMIT:
                self.refuse(DataState.TOO_LONG)
                return
            self.size += wire
            if limit and self.size > limit:
                self.refuse(DataState.TOO_MUCH)
                return
            if wire > LINE_LENGTH_LIMIT:
                self.refuse(DataState.TOO_LONG)
                return
            self._chunks.append((line[1:] if line.startswith(b".") else line) + CRLF)


def _lines_fit(marked: bytes | bytearray, end: int) -> bool:
    """Whether every line of ``marked[:end]`` (which starts and ends with CRLF) is
    within ``LINE_LENGTH_LIMIT`` with its CRLF.

    A line of n octets puts its CRLF n + 2 octets after the previous one; each
    step jumps to the furthest CRLF within reach, a few hundred ``rfind`` calls
    for 200 KB instead of splitting the block into thousands of lines.
    """
    at, last = 0, end - len(CRLF)
    while at < last:
        at_next = marked.rfind(CRLF, at + 1, min(end, at + LINE_LENGTH_LIMIT + len(CRLF)))
        if at_next == -1:
            return False
        at = at_next
    return True


def _find_end(marked: bytearray, start: int) -> tuple[int, int]:
    """Where the end of data starts in ``marked[start:]`` (-1 if not there yet), and
    the first line before it that starts with a dot (-1 if none).

    One search for dot lines serves both: most messages have none, and then
    the terminator search and the unstuffing check are a single pass. A dot
    line whose next two octets have not arrived is left for the next call.
    """
    at = marked.find(DOT_LINE, start)
    if at == -1:
        return -1, -1
    after = marked[at + len(DOT_LINE) : at + len(TERMINATOR)]
    if after == CRLF:
        return at, -1
    if len(after) < len(CRLF) and CRLF.startswith(after):
        return -1, -1  # undecided; its CRLF is the last one, so nothing after it is kept
    return marked.find(TERMINATOR, at + 1), at
