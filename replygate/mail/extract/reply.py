"""What the person typed in a reply: quote, signature and our own notification removed.

Pure: strings and bytes in, a ``ReplyParts`` value out. Layers run cheapest and
surest first:

1. our notification's "reply above this line" marker (``replygate.mail.markers``), and a
   quoted or forwarded header block naming one of our Message-IDs;
2. quote headers: "On … wrote:" in many languages (wrapped over up to three
   lines), Outlook "From:/Sent:" blocks, "-----Original Message-----";
3. ``>``-quoted blocks: a quote ending the mail, or introduced by a header, is
   removed; a quote answered inline (text before it and real text after it) is
   kept with the answers, as Discourse does; a quote leading the mail with no
   header is the person quoting selectively and stays;
4. the signature (``signatures.find_signature``).

HTML is first cut by its structure (``html_quotes``) and then goes through the
same text layers. Every rule is linear in the body and the whole extraction
has a time budget: when it runs out, the text up to the first quote header
found cheaply is returned with ``degraded=True``.
"""

from __future__ import annotations

import email
import email.policy
import time
from dataclasses import dataclass
from email.message import EmailMessage

from replygate.mail.extract import quote_headers as qh
from replygate.mail.extract.html_quotes import html_to_text, split_html
from replygate.mail.extract.signatures import RE_DELIMITER, find_signature, is_dash_sign_off
from replygate.mail.markers import REPLY_ABOVE_LINE

__all__ = [
    "ReplyParts",
    "extract_from_message",
    "extract_from_parts",
    "extract_reply",
    "html_to_text",
]

# A quote answered inline needs at least this many lines of answer after it to be kept.
INLINE_ANSWER_MIN_LINES = 3

# Line kinds: e empty, q quoted, h quote header, f forward banner, t text.
EMPTY, QUOTED, HEADER, FORWARD, TEXT = "e", "q", "h", "f", "t"


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
    def __init__(self, budget_s: float) -> None:
        self.deadline = time.monotonic() + budget_s

    def check(self) -> None:
        if time.monotonic() > self.deadline:
            raise _Overrun


def extract_reply(body: str, *, html: bool = False, budget_s: float = 0.5) -> ReplyParts:
    """Split one body (plain text, or HTML when ``html``) into reply, signature and quote."""
    clock = _Clock(budget_s)
    layers: list[str] = []
    html_quote = ""
    try:
        if html:
            markup = body
            body, html_quote, rule = split_html(markup)
            if rule:
                layers.append(rule)
            clock.check()
            if rule == "html:quote_only":
                # Everything is one blockquote: that quote is all the person sent; keep it.
                text = body.strip("\n")
                return ReplyParts(text, "", html_quote, text, False, tuple(layers))
        parts = _extract_text(_normalise_newlines(body), clock, layers)
    except _Overrun:
        text = html_to_text(body) if html and "<" in body else body
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
    empty, or carries less than half the HTML's text (a client's poor rendering).
    """
    if text_html and text_html.strip():
        if not text_plain or not text_plain.strip():
            return extract_reply(text_html, html=True, budget_s=budget_s)
        plain_size = len("".join(text_plain.split()))
        if len(text_html) < 2_000_000:
            html_size = len("".join(html_to_text(text_html).split()))
            if plain_size * 2 < html_size:
                return extract_reply(text_html, html=True, budget_s=budget_s)
    return extract_reply(text_plain or "", budget_s=budget_s)


def extract_from_message(raw: bytes, *, budget_s: float = 0.5) -> ReplyParts:
    """Parse raw RFC 5322 bytes with the standard library and extract from the best part."""
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    plain = _body_text(msg, "plain")
    markup = _body_text(msg, "html")
    return extract_from_parts(plain, markup, budget_s=budget_s)


def _body_text(msg: email.message.Message, subtype: str) -> str | None:
    """The decoded ``text/<subtype>`` body, tolerating unknown charsets and bad encodings."""
    if not isinstance(msg, EmailMessage):
        return None
    part = msg.get_body(preferencelist=(subtype,))
    if part is None:
        return None
    try:
        return part.get_content()
    except (LookupError, ValueError, AssertionError):
        payload = part.get_payload(decode=True) or b""
        return payload.decode("utf-8", "replace")


def _normalise_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _degraded(text: str, quote: str) -> ReplyParts:
    """The cheap fallback: everything above the first quoted line, marker or header line."""
    lines = text.split("\n")
    cut = len(lines)
    for i, line in enumerate(lines):
        head = line[:200]
        if (
            head.lstrip().startswith(">")
            or REPLY_ABOVE_LINE in line
            or qh.carries_own_message_id(head)
            or qh.is_separator(head)
            or (len(line) <= qh.MAX_HEADER_LINE and qh.is_wrote_header(line))
        ):
            cut = i
            break
    reply = "\n".join(lines[:cut]).strip("\n")
    rest = "\n".join(lines[cut:]).strip("\n")
    quote = "\n".join(q for q in (rest, quote) if q)
    return ReplyParts(reply, "", quote, reply, True, ("degraded",))


def _extract_text(text: str, clock: _Clock, layers: list[str]) -> ReplyParts:
    lines = text.split("\n")
    quote_parts: list[str] = []

    # Layer 1: our own marker; everything from it (and the header just above it) is ours.
    marker = _find_marker(lines)
    if marker is not None:
        quote_parts.append("\n".join(lines[marker:]))
        lines = lines[:marker]
        layers.append("marker")
    clock.check()
    # Layer 1 too: a quoted header block naming one of our Message-IDs starts our notification.
    own = _find_own_message_id(lines)
    if own is not None:
        quote_parts.insert(0, "\n".join(lines[own:]))
        lines = lines[:own]
        layers.append("own_message_id")
    clock.check()

    lines = _split_shared_lines(lines)
    kinds = _classify(lines, layers)
    clock.check()

    # A signature ending the mail is set aside first, so a quote above it still counts as trailing.
    sig_at, sig_rule = _tail_signature(lines, kinds)
    body_lines, body_kinds = lines[:sig_at], kinds[:sig_at]
    kept, removed = _remove_quotes(body_lines, body_kinds, layers)
    clock.check()
    kept.extend(lines[sig_at:])
    kept = _trim(kept)

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
        signature="\n".join(_trim(sig_lines)),
        quote="\n".join(q.strip("\n") for q in quote_parts if q.strip()),
        unquoted="\n".join(kept),
        layers=tuple(dict.fromkeys(layers)),
    )


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


def _find_marker(lines: list[str]) -> int | None:
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


# A quoted header block is short: fields (some wrapped) and the attribution above them.
MAX_HEADER_BLOCK_LINES = 15


def _find_own_message_id(lines: list[str]) -> int | None:
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
            if j == cut - 1 and bare.rstrip().endswith((":", "：")) and _is_quoted(lines[cut]):
                cut = j
            break
        cut = wrote
    return cut


def _split_shared_lines(lines: list[str]) -> list[str]:
    """Put a quote header that shares a line with the reply ("ok On … wrote:") on its own."""
    out: list[str] = []
    for line in lines:
        # A quoted line (">" or supercite's "A>") holding a header is quote, never split.
        shared = line.rstrip().endswith((":", "：")) and not _is_quoted(line)
        split = qh.split_shared_line(line) if shared else None
        out.extend(split if split else (line,))
    return out


def _is_quoted(line: str) -> bool:
    """``>`` quoting, including supercite's initials ("C> ...")."""
    stripped = line.lstrip()
    if stripped.startswith(">"):
        # ">>> banner <<<" is decoration framing a line, not a quote.
        return not stripped.rstrip().endswith("<<")
    return _is_supercite(stripped)


def _is_supercite(stripped: str) -> bool:
    head = stripped[:4]
    return ">" in head and head[: head.index(">")].isalpha() and head.index(">") <= 3


def _classify(lines: list[str], layers: list[str]) -> list[str]:
    """One kind per line; headers wrapped over two or three lines mark every line they span."""
    kinds = [TEXT] * len(lines)
    i, n = 0, len(lines)
    while i < n:
        line = lines[i]
        if not line.strip():
            kinds[i] = EMPTY
        elif _is_quoted(line):
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
        if not nxt.strip() or len(nxt) > qh.MAX_HEADER_LINE or (span > 1 and _is_quoted(nxt)):
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
    if qh.could_open_header(lines[i].strip()) and qh.RE_OPENER.match(lines[i].strip()):
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
    if at is not None and rule == "signature:mobile" and any(k == QUOTED for k in kinds[:start]):
        return start + at, rule
    return n, ""


_RE_UNDERSCORES = qh.re.compile(r"^\s*_{5,}\s*$")


def _blocks(kinds: list[str]) -> list[tuple[str, int, int]]:
    """Runs of one kind, with empty lines folded into the run they sit in."""
    runs: list[tuple[str, int, int]] = []
    for i, kind in enumerate(kinds):
        if kind == EMPTY:
            continue
        if runs and runs[-1][0] == kind and all(k == EMPTY for k in kinds[runs[-1][2] : i]):
            runs[-1] = (kind, runs[-1][1], i + 1)
        else:
            runs.append((kind, i, i + 1))
    return runs


def _remove_quotes(
    lines: list[str], kinds: list[str], layers: list[str]
) -> tuple[list[str], list[str]]:
    """The lines kept and the lines removed as quote, by the rules in the module docstring."""
    runs = _blocks(kinds)
    if not runs:
        return list(lines), []
    drop = [False] * len(lines)
    # Headers removed from the middle of kept text: the spacing around them stays as written.
    elided: set[int] = set()
    has_text = any(kind == TEXT for kind, _, _ in runs)

    # Forward banner: keep the text above it, or the forwarded mail when nothing is above.
    for idx, (kind, start, _end) in enumerate(runs):
        if kind == HEADER:
            break
        if kind == FORWARD:
            if any(k == TEXT for k, _, _ in runs[:idx]):
                for j in range(start, len(lines)):
                    drop[j] = True
            return _apply(lines, drop, layers, elided)

    if not has_text:
        # Nothing but quote: keep it (a forward by quoting), unless it is only headers.
        only_headers = all(
            not qh.strip_quote_prefix(lines[i]).strip()
            or qh.is_wrote_header(qh.strip_quote_prefix(lines[i]))
            for i in range(len(lines))
            if kinds[i] != HEADER
        )
        if only_headers:
            return [], list(lines)
        return [lines[i] for i in range(len(lines)) if kinds[i] != HEADER], [
            lines[i] for i in range(len(lines)) if kinds[i] == HEADER
        ]

    text_seen = False
    for idx, (kind, start, end) in enumerate(runs):
        if kind == TEXT:
            text_seen = True
            continue
        if kind == HEADER:
            nxt = runs[idx + 1] if idx + 1 < len(runs) else None
            for j in range(start, end):
                drop[j] = True
            if nxt is None:
                break
            if nxt[0] == QUOTED:
                after = runs[idx + 2 :]
                if text_seen and _answered_inline(lines, after):
                    elided.update(range(start, end))
                    continue  # interleaved: the quote stays with its answers
                if not text_seen and any(k == QUOTED for k, _, _ in after[1:]):
                    continue  # inline answers under a header at the top
                _drop_run(drop, nxt)
                continue
            if nxt[0] in (TEXT, FORWARD) and text_seen:
                # The quoted mail follows unprefixed (Outlook, Gmail bottom): all of it goes.
                for j in range(start, len(lines)):
                    drop[j] = True
                break
            continue
        if kind == QUOTED:
            later = runs[idx + 1 :]
            if any(k == HEADER for k, _, _ in later):
                continue  # the header below starts the quoted history; this is the reply's
            if not any(k == TEXT for k, _, _ in later) and text_seen:
                _drop_run(drop, (kind, start, len(lines)))  # a quote ending the mail
                break
            if text_seen and not _answered_inline(lines, later):
                _drop_run(drop, (kind, start, end))  # a quote between text and a short footer
    return _apply(lines, drop, layers, elided)


def _answered_inline(lines: list[str], after: list[tuple[str, int, int]]) -> bool:
    """True when the runs after a quote hold a real answer (not just a sign-off)."""
    answer = 0
    for kind, start, end in after:
        if kind == HEADER:
            break
        if kind == QUOTED and answer:
            return True
        if kind == TEXT:
            answer += sum(1 for line in lines[start:end] if line.strip())
    return answer >= INLINE_ANSWER_MIN_LINES


def _drop_run(drop: list[bool], run: tuple[str, int, int]) -> None:
    for j in range(run[1], run[2]):
        drop[j] = True


def _apply(
    lines: list[str], drop: list[bool], layers: list[str], elided: set[int] | None = None
) -> tuple[list[str], list[str]]:
    # Blank lines right after a removed quote go with it, so the text keeps one separator.
    for i in range(1, len(lines)):
        if not drop[i] and drop[i - 1] and not lines[i].strip() and (i - 1) not in (elided or ()):
            drop[i] = True
    kept = [line for line, gone in zip(lines, drop, strict=True) if not gone]
    removed = [line for line, gone in zip(lines, drop, strict=True) if gone]
    if any(gone and line.lstrip().startswith(">") for line, gone in zip(lines, drop, strict=True)):
        layers.append("quote:angle")
    return kept, removed
