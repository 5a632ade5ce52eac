"""The few header fields acceptance needs, read from the header block alone.

Pure. The gateway reads them at DATA and the inbound worker reads them again
from the stored bytes, so both hand the acceptance policy the same values (a
25 MB body is never walked here).
"""

from __future__ import annotations

import re
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import NamedTuple

MAX_MESSAGE_ID = 998


class Headers(NamedTuple):
    """The few header values acceptance needs, read without parsing the body.

    A named tuple rather than a frozen dataclass: as immutable, and made at a
    third of the cost, once for every mail at DATA.
    """

    from_values: tuple[str, ...]
    message_id: str | None
    content_type: str = "text/plain"
    authentication_results: tuple[str, ...] = ()


def header_end(raw: bytes) -> int:
    """Where the header block ends (after its last field's line break, before the blank
    line), as ``read_headers`` reads it."""
    crlf = raw.find(b"\r\n\r\n")
    end = len(raw) if crlf == -1 else crlf + 2
    # Only a bare LF LF before that one ends the block sooner; searching past it
    # would walk the whole body of most mail.
    lf = raw.find(b"\n\n", 0, end)
    return end if lf == -1 else lf + 1


# How long a header block ``lowered_head`` lower-cases at most: a 25 MB message
# without a blank line is no header block to copy whole.
HEAD_WINDOW = 64 * 1024


def lowered_head(raw: bytes) -> bytes | None:
    """The header block up to ``header_end``, lower-cased; None when it is longer than
    ``HEAD_WINDOW``.

    Found once per message and handed to every check that looks for a field's
    name in the block (``auth_results.strip_claims``, ``nesting.too_deep``,
    ``mime_walk.only_body``, ``intake.needs_parsing``), instead of each finding
    the end and lower-casing the block again; given None, each reads the block
    itself. The first CRLF CRLF or LF LF is never before the blank line that
    really ends the block (a line of nothing but CRs is blank too), so no field
    of the block is missing from it; a body line after such a line may be in it.
    """
    end = header_end(raw)
    return raw[:end].lower() if end <= HEAD_WINDOW else None


def read_headers(raw: bytes) -> Headers:
    """Parse only the header block (a 25 MB body is never walked here)."""
    end = raw.find(b"\r\n\r\n")
    end = len(raw) if end == -1 else end + 4
    # A bare LF LF before that ends the block sooner; searching for it past
    # ``end`` would walk the whole body of most mail.
    bare = raw.find(b"\n\n", 0, end)
    if bare != -1:
        end = min(end, bare + 2)
    if raw.startswith((b"\r\n", b"\n")):
        end = 0
    block = raw[:end]
    fields = _plain_header_fields(block)
    if fields is None:
        msg = BytesHeaderParser(policy=compat32).parsebytes(block)
        message_id = msg.get("Message-ID")
        content_type = msg.get("Content-Type")
        auth_results = [str(v) for v in msg.get_all("Authentication-Results", [])]
        from_values = _from_fields(block)
    else:
        message_id = fields.get("message-id", [None])[0]
        content_type = fields.get("content-type", [None])[0]
        auth_results = fields.get("authentication-results", [])
        from_values = fields.get("from", [])
    message_id = str(message_id).strip()[:MAX_MESSAGE_ID] if message_id else None
    content_type = str(content_type or "text/plain").strip().lower()
    return Headers(
        from_values=tuple(from_values),
        message_id=message_id or None,
        content_type=content_type,
        authentication_results=tuple(auth_results),
    )


# A From field however spelled: any case, and RFC 5322's obsolete whitespace
# before the colon ("From :"), which the email package does not call From.
_FROM_COLON = re.compile(rb"[ \t]*:")
# A field's value: up to the first line break not followed by a space or tab.
_VALUE = re.compile(rb"(?:[^\r\n]|(?:\r\n|\r|\n)[ \t])*")
_FOLD = re.compile(rb"(?:\r\n|\r|\n)(?=[ \t])")


def _from_fields(block: bytes) -> list[str]:
    """Every From field of a header block, unfolded (RFC 5322 3.2.2), in order.

    Read here rather than through the email package so that no spelling of a
    second From escapes the count, and a legally folded From reads whole.
    Lines end at CR, LF or CRLF, as the email package's parser ends them.
    """
    values = []
    lowered = block.lower()
    at = lowered.find(b"from")
    while at != -1:
        colon = _FROM_COLON.match(block, at + 4)
        if colon is not None and (at == 0 or block[at - 1] in b"\r\n"):
            found = _VALUE.match(block, colon.end())
            value = found.group() if found is not None else b""
            text = _FOLD.sub(b"", value).decode("utf-8", errors="replace")
            values.append(text.strip(" \t\r\n"))
        at = lowered.find(b"from", at + 4)
    return values


# A plain header block as the email package's feed parser takes it: fields of a
# name of printable characters other than the colon and a colon, each line ended
# by CRLF, lines folded under a field starting with a space or a tab, the blank line.
_PLAIN_BLOCK = re.compile(rb"(?:[\x21-\x39\x3b-\x7e]+:[^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*)*\r\n")
# One of the fields acceptance reads, with the lines folded under it.
_WANTED_FIELD = re.compile(
    rb"^(from|message-id|content-type|authentication-results):([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)",
    re.IGNORECASE | re.MULTILINE,
)


def _plain_header_fields(block: bytes) -> dict[str, list[str]] | None:
    """The Message-ID, Content-Type and Authentication-Results values of a plain header
    block, and its From fields as ``_from_fields`` reads them (key ``from``), or None.

    Gives what ``BytesHeaderParser(policy=compat32)`` gives for a block of
    ASCII lines ended by CRLF only, each a ``name:`` field or a folded
    continuation (``tests/unit/gateway/test_read_headers.py`` compares both); for
    anything else (8-bit octets, bare CR or LF, a unix-from line, ``From :``,
    defects) None, and the caller asks the email package. Two expressions over
    the block, and Python only for the fields wanted: the parser costs more
    than the rest of a small reply's DATA checks.
    """
    if not block.endswith(b"\r\n\r\n") or not block.isascii() or not _PLAIN_BLOCK.fullmatch(block):
        return None
    fields: dict[str, list[str]] = {}
    for found in _WANTED_FIELD.finditer(block):
        name = found[1].lower().decode("ascii")
        if name == "from":
            # Unfolded (every line break of the value is a fold), as ``_from_fields`` reads it.
            value = found[2].replace(b"\r\n", b"").decode("ascii").strip(" \t\r\n")
        else:
            value = found[2].decode("ascii").lstrip(" \t").rstrip("\r\n")
        fields.setdefault(name, []).append(value)
    return fields
