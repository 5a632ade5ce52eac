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

from collections.abc import Callable

from replygate.mail.extract import quote_headers as qh
from replygate.mail.extract.line_kinds import EMPTY, FORWARD, HEADER, QUOTED, TEXT

__all__ = ["INLINE_ANSWER_MIN_LINES", "remove_quotes"]

# How many runs pass between two looks at the time budget.
_CHECK_EVERY = 512

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
    lines: list[str],
    kinds: list[str],
    layers: list[str],
    check: Callable[[], None] | None = None,
) -> tuple[list[str], list[str]]:
    """The lines kept and the lines removed as quote, by the rules in this module's docstring.

    Linear in the lines: what each rule asks about the runs after a given one
    is computed once, from the end (``_After``). ``check`` is called every few
    hundred runs and may raise to stop the work when the time budget is spent.
    """
    runs = _blocks(kinds)
    if not runs:
        return list(lines), []
    after = _After(lines, runs)
    drop = bytearray(len(lines))  # 1 where a line goes; a byte a line, not a list slot
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
        if check is not None and idx % _CHECK_EVERY == _CHECK_EVERY - 1:
            check()
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
                if text_seen and after.answered[idx + 2]:
                    elided.update(range(start, end))
                    continue  # interleaved: the quote stays with its answers
                if not text_seen and after.quoted[idx + 3]:
                    if after.ends_answered[idx + 2]:
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
            if after.header[idx + 1]:
                continue  # the header below starts the quoted history; this is the reply's
            if not after.text[idx + 1] and text_seen:
                _drop_run(drop, (kind, start, len(lines)))  # a quote ending the mail
                break
            if text_seen and not after.answered[idx + 1]:
                _drop_run(drop, (kind, start, end))  # a quote between text and a short footer
    return _apply(lines, drop, layers, elided)


class _After:
    """For each run index ``j``, facts about the runs from ``j`` on, computed from the end.

    Asked of the runs after each run in turn, these questions made the cut
    quadratic (alternating ``>`` and text lines, Supercite's ``AB>``: 250 KB in
    20 s); each array is filled in one backward pass instead. Index
    ``len(runs)`` (and one past it) is the empty tail.

    - ``header``, ``text``, ``quoted``: some run from ``j`` on is of that kind;
    - ``answered``: the runs from ``j`` hold a real answer to a quote: before
      the next header, text followed by another quote, or at least
      ``INLINE_ANSWER_MIN_LINES`` non-blank lines of text (not just a sign-off);
    - ``ends_answered``: text follows the last ``>`` block before the next header.
    """

    def __init__(self, lines: list[str], runs: list[tuple[str, int, int]]) -> None:
        n = len(runs)
        size = n + 2
        # A byte per run each (not a list slot of 8): runs can be as many as lines.
        self.header = bytearray(size)
        self.text = bytearray(size)
        self.quoted = bytearray(size)
        self.answered = bytearray(size)
        self.ends_answered = bytearray(b"\x01" * size)
        stop = "E"  # the first quote ("Q"), header ("H") or end ("E") after run j
        words = 0  # non-blank text lines after run j up to that stop
        for j in range(n - 1, -1, -1):
            kind, start, end = runs[j]
            self.header[j] = kind == HEADER or self.header[j + 1]
            self.text[j] = kind == TEXT or self.text[j + 1]
            self.quoted[j] = kind == QUOTED or self.quoted[j + 1]
            count = sum(1 for line in lines[start:end] if line.strip()) if kind == TEXT else 0
            if kind == HEADER:
                self.answered[j] = False
            elif count:
                self.answered[j] = stop == "Q" or count + words >= INLINE_ANSWER_MIN_LINES
            else:
                self.answered[j] = self.answered[j + 1]
            if kind == HEADER:
                self.ends_answered[j] = True
            elif j + 1 == n or runs[j + 1][0] == HEADER:
                self.ends_answered[j] = kind != QUOTED
            else:
                self.ends_answered[j] = self.ends_answered[j + 1]
            if kind in (HEADER, QUOTED):
                stop, words = ("H" if kind == HEADER else "Q"), 0
            else:
                words += count


def _drop_run(drop: bytearray, run: tuple[str, int, int]) -> None:
    for j in range(run[1], run[2]):
        drop[j] = True


def _apply(
    lines: list[str], drop: bytearray, layers: list[str], elided: set[int] | None = None
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
