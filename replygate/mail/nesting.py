"""How deep a message nests its MIME parts, read from the raw bytes without recursion.

The standard library's parser (and mail-parser over it) recurses once per
level of ``multipart/*`` or ``message/*`` and checks every line against every
open boundary: a thousand levels raise ``RecursionError`` and cost time
quadratic in the depth. This scanner reads the same structure in one pass
with a stack, so the gateway can refuse such a mail at DATA
(``policy.check_nesting`` with ``too_deep``) and the parser can cut the levels past the limit
before the stdlib sees them (``prune``).

Rules, as the stdlib's feed parser reads a message:

- a header block ends at the first empty line; its ``Content-Type`` (folded
  lines joined) names the part's type and, for a multipart, its boundary;
- a part with no ``Content-Type`` is ``text/plain``, or ``message/rfc822``
  inside a ``multipart/digest``;
- ``multipart/*`` with a boundary opens a level: a line ``--boundary`` starts
  its next part, ``--boundary--`` closes it, trailing blanks allowed; a line
  naming an outer boundary also closes every level inside it;
- ``message/*`` (``delivery-status`` aside, which holds header blocks, not a
  message) opens a level whose body is a message, ending with its enclosing part;
- depth is the number of levels open around a part; the top message is at 0.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["MAX_NESTING", "prune", "too_deep"]

# No mail client nests near this: a forward of a forward of a forward is about ten.
MAX_NESTING = 50

_CONTENT_TYPE = re.compile(rb"^content-type[ \t]*:(.*)$", re.IGNORECASE)
_BOUNDARY = re.compile(rb"""boundary[ \t]*=[ \t]*(?:"([^"]*)"|([^\s;"]+))""", re.IGNORECASE)
_NOT_NESTING = (b"message/delivery-status", b"message/global-delivery-status")


@dataclass
class _Level:
    boundary: bytes | None  # None for a message/* level
    digest: bool = False


@dataclass(frozen=True)
class _Scan:
    depth: int
    cuts: tuple[tuple[int, int], ...]  # byte ranges of bodies nested past the limit


def too_deep(raw: bytes, *, limit: int = MAX_NESTING, head: bytes | None = None) -> bool:
    """Whether some part of ``raw`` lies more than ``limit`` levels deep.

    ``head``, when given, is the top header block lower-cased
    (``headers.lowered_head``): a block that names neither a multipart nor a
    message type anywhere declares a part that opens no level, whatever its
    Content-Type, so the body need not be read (nor lower-cased, as ``_shallow``
    does for a block with a Content-Type).
    """
    if head is not None and b"multipart/" not in head and b"message/" not in head:
        return False  # the top part opens no level: its body is never read as parts
    return not _shallow(raw, limit) and _scan(raw, limit).depth > limit


def prune(raw: bytes, *, limit: int = MAX_NESTING) -> tuple[bytes, bool]:
    """``raw`` without the bodies of parts nested deeper than ``limit``, and whether any went.

    The header block of the part that would open level ``limit + 1`` stays, so
    it still reads as the empty multipart or message it was declared.
    """
    if _shallow(raw, limit):
        return raw, False
    found = _scan(raw, limit)
    if not found.cuts:
        return raw, False
    pieces: list[bytes] = []
    at = 0
    for start, end in found.cuts:
        pieces.append(raw[at:start])
        at = end
    pieces.append(raw[at:])
    return b"".join(pieces), True


def _shallow(raw: bytes, limit: int) -> bool:
    """Nothing can lie deeper than ``limit``: the message is one part, or has too few
    Content-Type lines for so many levels (each needs one, two per one inside a digest)."""
    return _one_part(raw) or raw.lower().count(b"content-type") * 2 <= limit


# How much of a message ``_one_part`` lower-cases at most.
_ONE_PART_WINDOW = 64 * 1024


def _one_part(raw: bytes) -> bool:
    """Whether the top header block names no Content-Type, so the message is text/plain
    and opens no level: its body is never read as parts.

    Read up to the first CRLF CRLF or LF LF, which is never before the blank
    line that ends the block (a line of nothing but CRs is blank too), so no
    Content-Type of the block escapes; only that much is lower-cased, not the
    whole message.
    """
    crlf = raw.find(b"\r\n\r\n")
    end = len(raw) if crlf == -1 else crlf + 2
    lf = raw.find(b"\n\n", 0, end)
    end = end if lf == -1 else lf
    return end <= _ONE_PART_WINDOW and b"content-type" not in raw[:end].lower()


def _lines(raw: bytes) -> list[tuple[int, bytes]]:
    """Each line's offset and its text without the line break."""
    out: list[tuple[int, bytes]] = []
    at, n = 0, len(raw)
    while at < n:
        nl = raw.find(b"\n", at)
        end = n if nl == -1 else nl + 1
        out.append((at, raw[at:end].rstrip(b"\r\n")))
        at = end
    return out


def _header_type(block: list[bytes], in_digest: bool) -> tuple[bytes, bytes | None]:
    """The media type (lower case) and boundary a header block declares."""
    value: bytes | None = None
    for line in block:
        if value is not None and line[:1] in (b" ", b"\t"):
            value += line
            continue
        if value is not None:
            break
        found = _CONTENT_TYPE.match(line)
        if found:
            value = found.group(1)
    if value is None:
        return (b"message/rfc822" if in_digest else b"text/plain"), None
    media = value.split(b";", 1)[0].strip().lower()
    found = _BOUNDARY.search(value)
    boundary = (found.group(1) if found.group(1) is not None else found.group(2)) if found else None
    return media, boundary


def _scan(raw: bytes, limit: int) -> _Scan:
    lines = _lines(raw)
    stack: list[_Level] = []
    open_at: dict[bytes, list[int]] = {}  # boundary -> stack indexes where it is open
    deepest = 0
    cuts: list[tuple[int, int]] = []
    cut_from: int | None = None  # offset where the body past the limit began
    cut_level = 0  # stack size at the part whose body is being cut
    i, n = 0, len(lines)
    in_headers = True
    block: list[bytes] = []
    while i < n:
        offset, line = lines[i]
        if in_headers:
            i += 1
            if line:
                block.append(line)
                continue
            in_headers = False
            media, boundary = _header_type(block, bool(stack) and stack[-1].digest)
            block = []
            opens = (media.startswith(b"multipart/") and boundary) or (
                media.startswith(b"message/") and media not in _NOT_NESTING
            )
            if not opens:
                continue
            if len(stack) >= limit:
                deepest = max(deepest, len(stack) + 1)
                cut_from, cut_level = (lines[i][0] if i < n else len(raw)), len(stack)
                continue
            if media.startswith(b"multipart/") and boundary:
                open_at.setdefault(boundary, []).append(len(stack))
                stack.append(_Level(boundary, media == b"multipart/digest"))
            else:
                stack.append(_Level(None))
                in_headers = True  # a message's body starts with its own header block
            deepest = max(deepest, len(stack))
            continue
        i += 1
        if not line.startswith(b"--"):
            continue
        mark = line[2:].rstrip(b" \t")
        closing = mark.endswith(b"--") and mark[:-2] in open_at
        name = mark[:-2] if closing else mark
        if name not in open_at:
            continue
        level = open_at[name][-1]
        if cut_from is not None:
            if level >= cut_level:
                continue  # an inner boundary of the part being cut: a line like any other
            cuts.append((cut_from, offset))
            cut_from = None
        for gone in stack[level + 1 :]:
            if gone.boundary is not None:
                open_at[gone.boundary].pop()
                if not open_at[gone.boundary]:
                    del open_at[gone.boundary]
        del stack[level + 1 :]
        if closing:
            open_at[name].pop()
            if not open_at[name]:
                del open_at[name]
            stack.pop()
        else:
            in_headers = True
    if cut_from is not None:
        cuts.append((cut_from, len(raw)))
    return _Scan(deepest, tuple(cuts))
