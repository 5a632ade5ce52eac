"""Layers 2 and 3 of extraction: which quote headers and ``>``-quoted blocks go.

Works on runs of one line kind (``line_kinds``). Rules:

- a forward banner keeps the text above it, or the forwarded mail when
  nothing is above it;
- a mail that is nothing but quote keeps it (a forward by quoting), unless it
  is only headers;
- a quote header goes, and the quoted mail under it: ``>``-quoted, or
  unprefixed below the reply (Outlook, Gmail bottom);
- a quote ending the mail, or introduced by a header, is removed;
- a quote answered inline (text before it and real text after it) is kept
  with the answers, as Discourse does;
- a quote leading the mail with no header is the person quoting selectively
  and stays;
- a header and its quote leading the mail, with no answer after the last
  ``>`` block, is the history above a bottom-posted reply: it goes, and the
  ``>`` lines under the reply are the person's own and stay.
"""

from __future__ import annotations

from replygate.mail.extract import quote_headers as qh
from replygate.mail.extract.line_kinds import EMPTY, FORWARD, HEADER, QUOTED, TEXT

__all__ = ["INLINE_ANSWER_MIN_LINES", "remove_quotes"]

# A quote answered inline needs at least this many lines of answer after it to be kept.
INLINE_ANSWER_MIN_LINES = 3


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


def remove_quotes(
    lines: list[str], kinds: list[str], layers: list[str]
) -> tuple[list[str], list[str]]:
    """The lines kept and the lines removed as quote, by the rules in this module's docstring."""
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

    text_seen = own_quotes = False
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
                    if _ends_answered(after):
                        continue  # inline answers under a header at the top
                    own_quotes = True  # the history above a bottom-posted reply
                _drop_run(drop, nxt)
                continue
            if nxt[0] in (TEXT, FORWARD) and text_seen:
                # The quoted mail follows unprefixed (Outlook, Gmail bottom): all of it goes.
                for j in range(start, len(lines)):
                    drop[j] = True
                break
            continue
        if kind == QUOTED:
            if own_quotes:
                continue
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


def _ends_answered(runs: list[tuple[str, int, int]]) -> bool:
    """True when text follows the last ``>`` block of ``runs`` (up to the next header)."""
    last = ""
    for kind, _, _ in runs:
        if kind == HEADER:
            break
        last = kind
    return last != QUOTED


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
