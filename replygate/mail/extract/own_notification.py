"""Layer 1 of extraction: where our own quoted notification starts in a reply.

Surest of all the cuts, because we wrote what it looks for: the "reply above
this line" marker of our notifications (``replygate.mail.markers``), with the
client's attribution just above it, and a quoted or forwarded header block
naming one of our Message-IDs.
"""

from __future__ import annotations

from replygate.mail.extract import quote_headers as qh
from replygate.mail.extract.line_kinds import is_quoted
from replygate.mail.markers import REPLY_ABOVE_LINE

__all__ = ["find_marker", "find_own_message_id"]

# A quoted header block is short: fields (some wrapped) and the attribution above them.
MAX_HEADER_BLOCK_LINES = 15


def find_marker(lines: list[str]) -> int | None:
    """Index where our quoted notification starts: the marker line, or the header above it."""
    for i, line in enumerate(lines):
        if REPLY_ABOVE_LINE in line:
            cut = i
            j = i - 1
            # Skip blank (or bare ">") lines between the client's header and our marker.
            while j >= 0 and not qh.strip_quote_prefix(lines[j]).strip():
                j -= 1
            found = None
            for span in (1, 2, 3):
                start = j - span + 1
                if start < 0:
                    break
                joined = " ".join(qh.strip_quote_prefix(x).strip() for x in lines[start : j + 1])
                if qh.is_wrote_header(joined) or qh.header_block_at(lines, start):
                    # A wrapped header ("On …, Name\n<addr> wrote:") is cut whole: take the
                    # shortest span that starts like a header opening ("On", "Le", "Am"…).
                    found = start if found is None else found
                    if qh.RE_OPENER.match(qh.strip_quote_prefix(lines[start]).strip()):
                        found = start
                        break
            if found is not None:
                cut = found
            else:
                # An Outlook block ends with Subject:; find where it starts.
                k = j
                while k >= 0 and k > j - 8 and lines[k].strip():
                    if qh.header_block_at(lines, k):
                        cut = k
                        break
                    k -= 1
            if cut > 0 and qh.RE_RULE.match(lines[cut - 1]):
                cut -= 1
            return cut
    return None


def find_own_message_id(lines: list[str]) -> int | None:
    """Index where a quoted or forwarded header block naming one of our Message-IDs starts.

    The block runs up from the Message-ID line over its other fields (values that wrap
    stay inside it); a forward banner, separator, rule or "On … wrote:" just above it
    (blank lines between allowed) is part of it too.
    """
    found = next(
        (
            i
            for i, line in enumerate(lines)
            if "rg." in line[: qh.MAX_ID_LINE].lower()
            and qh.carries_own_message_id(line, lines[i - 1] if i else "")
        ),
        None,
    )
    if found is None:
        return None
    cut = found
    j = found - 1
    while j >= 0 and found - j <= MAX_HEADER_BLOCK_LINES:
        if not qh.strip_quote_prefix(lines[j]).strip():
            break
        if qh.is_header_field(lines[j]):
            cut = j
        j -= 1
    for _ in range(3):
        j = cut - 1
        while j >= 0 and cut - j <= 3 and not qh.strip_quote_prefix(lines[j]).strip():
            j -= 1
        if j < 0 or cut - j > 3:
            break
        above = lines[j]
        if len(above) > qh.MAX_HEADER_LINE:
            break
        bare = qh.strip_quote_prefix(above)
        if qh.is_forward(bare) or qh.is_separator(bare) or qh.RE_RULE.match(bare):
            cut = j
            continue
        wrote = next(
            (
                start
                for start in (j, j - 1, j - 2)
                if start >= 0
                and qh.is_wrote_header(
                    " ".join(qh.strip_quote_prefix(x).strip() for x in lines[start : j + 1])
                )
            ),
            None,
        )
        if wrote is None:
            # In any language, a client's attribution is the line ending in a colon
            # directly above the quoted block it introduces.
            if j == cut - 1 and bare.rstrip().endswith((":", "：")) and is_quoted(lines[cut]):
                cut = j
            break
        cut = wrote
    return cut
