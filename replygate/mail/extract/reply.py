"""What the person typed in a reply: quote, signature and our own notification removed.

Pure: strings in, a ``ReplyParts`` value out. Layers run cheapest and
surest first:

1. our notification's "reply above this line" marker (``replygate.mail.markers``), and a
   quoted or forwarded header block naming one of our Message-IDs (``own_notification``);
2. quote headers: "On … wrote:" in many languages (wrapped over up to three
   lines), Outlook "From:/Sent:" blocks, "-----Original Message-----"
   (``line_kinds`` names every line);
3. ``>``-quoted blocks: a quote ending the mail, or introduced by a header, is
   removed; a quote answered inline (text before it and real text after it) is
   kept with the answers, as Discourse does; a quote leading the mail with no
   header is the person quoting selectively and stays (``quote_cut``);
4. the signature (``signatures.find_signature``).

This module runs the layers in that order over one body, and chooses which of
a message's two renderings (plain text or HTML) to run them on.

HTML is first cut by its structure (``html_quotes``) and then goes through the
same text layers. Every rule is linear in the body and the whole extraction
has a time budget, checked between layers and inside the loops that walk the
body (the quote cut, the HTML rendering), in CPU time of the thread doing
it, so the same mail gives the same reply however busy the machine is: when
it runs out, the text up to the first quote header found cheaply is
returned with ``degraded=True``.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from replygate.mail.extract import quote_headers as qh
from replygate.mail.extract.html_quotes import html_to_text, split_html
from replygate.mail.extract.line_kinds import (
    EMPTY,
    QUOTED,
    TEXT,
    classify_lines,
    is_quoted,
    split_shared_lines,
)
from replygate.mail.extract.own_notification import find_marker, find_own_message_id
from replygate.mail.extract.quote_cut import remove_quotes
from replygate.mail.extract.signatures import (
    RE_DELIMITER,
    find_signature,
    is_dash_sign_off,
    leading_footer,
)
from replygate.mail.markers import REPLY_ABOVE_LINE

__all__ = [
    "ReplyParts",
    "extract_from_parts",
    "extract_reply",
    "html_to_text",
]


@dataclass(frozen=True)
class ReplyParts:
    reply: str  # what is filed: no quote, no signature
    signature: str  # '' when none
    quote: str  # '' when none
    unquoted: str  # body with quote removed, signature kept, exactly as written
    degraded: bool = False  # True when the time budget ran out and a cheap fallback was used
    layers: tuple[str, ...] = ()  # names of the rules that fired


class _Overrun(Exception):
    """The time budget ran out; the caller falls back to the cheap cut."""


class _Clock:
    """The budget in CPU time of this thread: what the extraction itself costs, so a
    busy machine (or other threads) never changes what is filed."""

    def __init__(self, budget_s: float) -> None:
        self.deadline = time.thread_time() + budget_s

    def check(self) -> None:
        if time.thread_time() > self.deadline:
            raise _Overrun


def extract_reply(body: str, *, html: bool = False, budget_s: float = 0.5) -> ReplyParts:
    """Split one body (plain text, or HTML when ``html``) into reply, signature and quote."""
    clock = _Clock(budget_s)
    layers: list[str] = []
    html_quote = ""
    rendered = not html
    try:
        if html:
            markup = body
            body, html_quote, rule = split_html(markup, clock.check)
            rendered = True
            if rule:
                layers.append(rule)
            clock.check()
            if rule == "html:quote_only":
                # Everything is one blockquote: that quote is all the person sent; keep it.
                text = body.strip("\n")
                return ReplyParts(text, "", html_quote, text, False, tuple(layers))
        parts = _extract_text(_normalise_newlines(body), clock, layers)
    except _Overrun:
        overrun = True
    else:
        overrun = False
    if overrun:
        # Out of the except block, so the layers' lists die with their frames first.
        # HTML cut short before its rendering is rendered once more, without a budget
        # (linear); a finished rendering keeps its "> " quote prefixes for the cheap cut.
        text = body if rendered else html_to_text(body)
        return _degraded(_normalise_newlines(text), html_quote)
    if html:
        # The "> " prefixes were drawn by our rendering of <blockquote>, not typed: kept
        # quotes lose them again.
        quote = "\n".join(q for q in (parts.quote, html_quote) if q.strip())
        parts = ReplyParts(
            _unprefix(parts.reply),
            parts.signature,
            quote,
            _unprefix(parts.unquoted),
            False,
            parts.layers,
        )
    return parts


def _unprefix(text: str) -> str:
    return "\n".join(
        line.lstrip("> ") if line.startswith(">") else line for line in text.split("\n")
    )


def extract_from_parts(
    text_plain: str | None, text_html: str | None, *, budget_s: float = 0.5
) -> ReplyParts:
    """Extract from the better of a message's two renderings.

    The plain part is used when it is real; HTML when the plain part is missing,
    empty, or carries less than half the HTML's text (a client's poor rendering)
    and the HTML decoded cleanly: text holding replacement characters or
    control characters was guessed at (a wrong charset, BOM-less UTF-16 read
    as ASCII) and never outweighs a plain part that is there.
    """
    if text_html and text_html.strip():
        if not text_plain or not text_plain.strip():
            return extract_reply(text_html, html=True, budget_s=budget_s)
        if _UNCLEAN.search(text_html):
            return extract_reply(text_plain, budget_s=budget_s)
        plain_size = len("".join(text_plain.split()))
        if len(text_html) < 2_000_000:
            html_size = len("".join(html_to_text(text_html).split()))
            if plain_size * 2 < html_size:
                return extract_reply(text_html, html=True, budget_s=budget_s)
    return extract_reply(text_plain or "", budget_s=budget_s)


# What a clean decoding never yields: U+FFFD (bytes a guess could not map) and the C0
# controls but tab, line feed, form feed and carriage return.
_UNCLEAN = re.compile("[\ufffd\x00-\x08\x0b\x0e-\x1f]")


def _normalise_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


# The cheap cut looks for quote headers (regular expressions) in this many lines at
# most, and for ">" and our marker (string tests) in all of them: it runs when the
# budget is already spent, so its own cost must stay small on any input.
DEGRADED_HEADER_LINES = 2_000


def _degraded(text: str, quote: str) -> ReplyParts:
    """The cheap fallback: everything above the first quoted line, marker or header line.

    Walks the text by offsets, one line alive at a time, and cuts it by slicing:
    it runs when the budget is spent, so it must not build a list of lines.
    """
    cut, at, i = len(text), 0, 0
    while True:
        nl = text.find("\n", at)
        line = text[at:] if nl == -1 else text[at:nl]
        head = line[:200]
        if (
            is_quoted(head)
            or REPLY_ABOVE_LINE in line
            or (
                i < DEGRADED_HEADER_LINES
                and (
                    qh.carries_own_message_id(head)
                    or qh.is_separator(head)
                    or (len(line) <= qh.MAX_HEADER_LINE and qh.is_wrote_header(line))
                )
            )
        ):
            cut = at
            break
        if nl == -1:
            break
        at, i = nl + 1, i + 1
    reply = text[:cut].strip("\n")
    rest = text[cut:].strip("\n")
    quote = "\n".join(q for q in (rest, quote) if q)
    return ReplyParts(reply, "", quote, reply, True, ("degraded",))


def _extract_text(text: str, clock: _Clock, layers: list[str]) -> ReplyParts:
    lines = text.split("\n")
    quote_parts: list[str] = []

    # Layer 1: our own marker; everything from it (and the header just above it) is ours.
    marker = find_marker(lines)
    if marker is not None:
        quote_parts.append("\n".join(lines[marker:]))
        lines = lines[:marker]
        layers.append("marker")
    clock.check()
    # Layer 1 too: a quoted header block naming one of our Message-IDs starts our notification.
    own = find_own_message_id(lines)
    if own is not None:
        quote_parts.insert(0, "\n".join(lines[own:]))
        lines = lines[:own]
        layers.append("own_message_id")
    clock.check()

    lines = split_shared_lines(lines)
    kinds = _classify(lines, layers, clock)
    clock.check()

    # A signature ending the mail is set aside first, so a quote above it still counts as trailing.
    sig_at, sig_rule = _tail_signature(lines, kinds)
    body_lines, body_kinds = lines[:sig_at], kinds[:sig_at]
    kept, removed = remove_quotes(body_lines, body_kinds, layers, clock.check)
    clock.check()
    kept.extend(lines[sig_at:])
    kept = _trim(kept)
    # A sent-from footer the client put above the person's text goes with the signature.
    unquoted, lead = kept, leading_footer(kept)
    lead_lines, kept = _trim(kept[:lead]), kept[lead:]

    signature_at, rule = find_signature(kept) if not sig_rule else (None, "")
    if sig_rule:
        signature_at = len(kept) - len(_trim(lines[sig_at:]))
        rule = sig_rule
        # A "-Name" sign-off just above a trailing footer belongs to the signature too
        # (not the last item of a dashed list).
        above = _trim(kept[:signature_at])
        if len(above) > 1 and is_dash_sign_off(above, len(above) - 1):
            signature_at = len(above) - 1
    if signature_at is not None:
        layers.append(rule)
        reply_lines, sig_lines = kept[:signature_at], kept[signature_at:]
    else:
        reply_lines, sig_lines = kept, []
    clock.check()

    if removed:
        quote_parts.insert(0, "\n".join(removed))
    return ReplyParts(
        reply="\n".join(_trim(reply_lines)),
        signature="\n".join(_trim(lead_lines + sig_lines)),
        quote="\n".join(q.strip("\n") for q in quote_parts if q.strip()),
        unquoted="\n".join(unquoted),
        layers=tuple(dict.fromkeys(layers)),
    )


# Lines classified between two looks at the clock, and the lines of context read on
# each side of a chunk: more than any header spans (a block of 12 fields and the rule
# above it, a "wrote:" wrapped over 6 lines), so one that crosses a boundary reads whole.
_CLASSIFY_CHUNK = 2_000
_CLASSIFY_CONTEXT = 16


def _classify(lines: list[str], layers: list[str], clock: _Clock) -> list[str]:
    """``classify_lines`` in chunks, with the time budget checked between them."""
    n = len(lines)
    if n <= _CLASSIFY_CHUNK:
        return classify_lines(lines, layers)
    kinds: list[str] = []
    for start in range(0, n, _CLASSIFY_CHUNK):
        clock.check()
        low = max(0, start - _CLASSIFY_CONTEXT)
        high = min(n, start + _CLASSIFY_CHUNK + _CLASSIFY_CONTEXT)
        chunk = classify_lines(lines[low:high], layers)
        kinds.extend(chunk[start - low : start - low + min(_CLASSIFY_CHUNK, n - start)])
    return kinds


# Whitespace plus the invisible marks trackers leave on a line of their own (Gmail's "ᐧ").
_INVISIBLE = " \t\u00a0\u200b\u200c\u200d\u2060\ufeff\u1427"


def _trim(lines: list[str]) -> list[str]:
    """Drop leading and trailing blank lines (a bare ">" is a blank line of a quote)."""
    start, end = 0, len(lines)
    while start < end and not lines[start].strip(_INVISIBLE + ">"):
        start += 1
    while end > start and not lines[end - 1].strip(_INVISIBLE + ">"):
        end -= 1
    return lines[start:end]


def _tail_signature(lines: list[str], kinds: list[str]) -> tuple[int, str]:
    """Start of a signature ending the mail (delimiter or footer, text lines only), else len."""
    n = len(lines)
    start = n
    # Walk up over the trailing block of plain lines; a quote or header ends the search.
    for i in range(n - 1, max(-1, n - 20), -1):
        if kinds[i] not in (TEXT, EMPTY):
            break
        start = i
    if start >= n:
        return n, ""
    for i in range(start, n):
        line = lines[i]
        if (
            i > 0
            and (RE_DELIMITER.match(line) or _RE_UNDERSCORES.match(line))
            and any(k in (TEXT, QUOTED) for k in kinds[:i])
            and any(rest.strip() for rest in lines[i + 1 :])
        ):
            return i, "signature:delimiter"
    at, rule = find_signature(lines[start:])
    if (
        at is not None
        and rule in ("signature:mobile", "signature:card")
        and any(k == QUOTED for k in kinds[:start])
    ):
        return start + at, rule
    return n, ""


_RE_UNDERSCORES = re.compile(r"^\s*_{5,}\s*$")
