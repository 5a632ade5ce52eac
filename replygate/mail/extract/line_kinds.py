"""Each line of a reply's text named by what it is, before any of it is cut.

Kinds: empty, ``>``-quoted (supercite's "A>" too), quote header ("On … wrote:"
wrapped over up to three lines, an Outlook "From:/Sent:" block,
"-----Original Message-----"), forward banner, and text. A header wrapped
over several lines marks every line it spans, so the cut that follows works
on runs of one kind rather than on guesses line by line.

Rules beyond ``quote_headers``' one-line tests:

- a header sharing its line with the reply ("ok On … wrote:") and a rule
  glued to the field under it ("_____Von: X") are split first;
- "<Name> wrote:" with no date or address is a header only directly above a
  ``>``-quoted line, and only when what precedes the verb is a name
  (capitalised words, an address);
- a header wrapped over up to six lines (Polymail) must show a date or an
  address in its first line.
"""

from __future__ import annotations

import regex as re

from replygate.mail.extract import quote_headers as qh

__all__ = [
    "EMPTY",
    "FORWARD",
    "HEADER",
    "QUOTED",
    "TEXT",
    "classify_lines",
    "is_quoted",
    "split_shared_lines",
]

# Line kinds: e empty, q quoted, h quote header, f forward banner, t text.
EMPTY, QUOTED, HEADER, FORWARD, TEXT = "e", "q", "h", "f", "t"


def split_shared_lines(lines: list[str]) -> list[str]:
    """Put a quote header that shares a line with the reply ("ok On … wrote:") on its own."""
    out: list[str] = []
    for line in lines:
        glued = qh.RE_GLUED_RULE.match(line) if len(line) <= qh.MAX_HEADER_LINE else None
        if glued and qh.RE_FROM_FIELD.match(glued.group(2)):
            out.extend((glued.group(1), glued.group(2)))
            continue
        # A quoted line (">" or supercite's "A>") holding a header is quote, never split.
        shared = line.rstrip().endswith((":", "：")) and not is_quoted(line)
        split = qh.split_shared_line(line) if shared else None
        out.extend(split if split else (line,))
    return out


def is_quoted(line: str) -> bool:
    """``>`` quoting, including supercite's initials ("C> ...")."""
    stripped = line.lstrip()
    if stripped.startswith(">"):
        # ">>> banner <<<" is decoration framing a line, not a quote.
        return not stripped.rstrip().endswith("<<")
    return _is_supercite(stripped)


def _is_supercite(stripped: str) -> bool:
    head = stripped[:4]
    return ">" in head and head[: head.index(">")].isalpha() and head.index(">") <= 3


def classify_lines(lines: list[str], layers: list[str]) -> list[str]:
    """One kind per line; headers wrapped over two or three lines mark every line they span."""
    kinds = [TEXT] * len(lines)
    i, n = 0, len(lines)
    while i < n:
        line = lines[i]
        if not line.strip():
            kinds[i] = EMPTY
        elif is_quoted(line):
            kinds[i] = QUOTED
        elif len(line) > qh.MAX_HEADER_LINE:
            kinds[i] = TEXT
        elif qh.is_forward(line):
            kinds[i] = FORWARD
            layers.append("forward")
        elif qh.is_separator(line):
            kinds[i] = HEADER
            layers.append("quote_header:separator")
            # The Outlook block under "-----Original Message-----" belongs to it.
            j = i + 1
            while (j < n and lines[j].strip() and qh.RE_OTHER_FIELD.match(lines[j])) or (
                j < n and qh.RE_FROM_FIELD.match(lines[j])
            ):
                kinds[j] = HEADER
                j += 1
            i = j
            continue
        elif qh.header_block_at(lines, i):
            layers.append("quote_header:block")
            if i > 0 and kinds[i - 1] in (TEXT, EMPTY) and qh.RE_RULE.match(lines[i - 1]):
                kinds[i - 1] = HEADER
            j = i
            # The block runs to its first blank line (fields may wrap onto continuation lines).
            while j < n and lines[j].strip() and j - i < 12:
                kinds[j] = HEADER
                j += 1
            i = j
            continue
        else:
            span = _wrote_header_span(lines, i)
            if not span and i + 1 < n and is_quoted(lines[i + 1]) and _RE_NAME_WROTE.match(line):
                span = 1
            if span:
                for j in range(i, i + span):
                    kinds[j] = HEADER
                layers.append("quote_header:wrote")
                i += span
                continue
        i += 1
    _mark_wrapped_quote_lines(lines, kinds)
    return kinds


def _mark_wrapped_quote_lines(lines: list[str], kinds: list[str]) -> None:
    """A quoted link a client wrapped spills onto a line without ``>``: that line is quote too."""
    for i in range(1, len(lines)):
        if kinds[i] != TEXT or kinds[i - 1] != QUOTED:
            continue
        line, prev = lines[i].strip(), lines[i - 1]
        if ("http" in prev and prev.count("(") > prev.count(")")) or (
            "http" in line and line.endswith(">") and len(line.split()) <= 3
        ):
            kinds[i] = QUOTED


def _wrote_header_span(lines: list[str], i: int) -> int:
    """How many lines (1–3) starting at ``i`` form an "On … wrote:" header, or 0."""
    joined = ""
    for span in (1, 2, 3):
        if i + span > len(lines):
            break
        nxt = lines[i + span - 1]
        if not nxt.strip() or len(nxt) > qh.MAX_HEADER_LINE or (span > 1 and is_quoted(nxt)):
            break
        # A later line that opens a header itself starts the header; this line is reply.
        if span > 1 and qh.RE_OPENER.match(nxt.strip()):
            return 0
        joined = f"{joined} {nxt.strip()}" if joined else nxt.strip()
        if qh.is_wrote_header(joined):
            return span
        # A wrapped header's first line already shows it: an opener word, a date or an address.
        if span == 1 and not qh.could_open_header(joined):
            return 0
    first = lines[i].strip()
    if qh.RE_OPENER.match(first) and qh.RE_HEADER_EVIDENCE.search(first):
        # Polymail and some webmails break "On <date> <name> <mailto:…> wrote:" over
        # up to six lines, blank and ">"-led ones included.
        joined = ""
        for j in range(i, min(i + 6, len(lines))):
            if len(lines[j]) > qh.MAX_HEADER_LINE:
                break
            # Here too a later line opening a header itself is where the header starts.
            if j > i and qh.RE_OPENER.match(lines[j].strip()):
                return 0
            joined = f"{joined} {lines[j].strip()}"
            if j > i and qh.RE_WROTE_TAIL.search(joined.strip()) and qh.is_wrote_header(joined):
                return j - i + 1
    return 0


# "Dana Staff wrote:", "Dana <d@example.com> schrieb:": a name (capitalised words, an address
# in brackets) and a wrote-verb, nothing else.
_RE_NAME_WROTE = re.compile(
    rf"^\s*\"?(?:\p{{Lu}}[\w.'’-]*\s+){{0,3}}\p{{Lu}}[\w.'’-]*\"?(?:\s*<[^<>\s]+@[^<>\s]+>)?"
    rf"\s+(?:{qh.WROTE_VERBS})\s*[:：]\s*$"
)
