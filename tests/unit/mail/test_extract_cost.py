"""Extraction stays linear in time and bounded in memory on the shapes fuzzing found.

Each test writes the hostile body as the attacker would and pins the outcome:
the reply is found, in time that grows with the body and not its square, and
the time budget is honoured inside the loops, not only between layers.
"""

from __future__ import annotations

import time
import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st

from replygate.mail.extract import quote_cut
from replygate.mail.extract.html_quotes import MAX_DRAWN_DEPTH, split_html
from replygate.mail.extract.line_kinds import EMPTY, FORWARD, HEADER, QUOTED, TEXT
from replygate.mail.extract.reply import extract_reply

REPLY = "Yes, Thursday at ten works for me."


def supercite(pairs: int) -> str:
    return f"{REPLY}\n\n" + "AB> a quoted line of the earlier mail\nan answer in between\n" * pairs


def test_alternating_supercite_quotes_cost_linear_time() -> None:
    """250 KB of ``AB>`` lines alternating with answers took 20.7 s; now well under a second
    on a quiet machine (the bound leaves room for a loaded one)."""
    body = supercite(4_300)
    started = time.monotonic()
    parts = extract_reply(body, budget_s=60)
    assert time.monotonic() - started < 10
    assert not parts.degraded
    assert parts.reply.startswith(REPLY) and parts.reply.endswith("an answer in between")


def test_the_budget_is_checked_inside_the_long_loops() -> None:
    """A budget spent in the middle of a layer stops it there: the cheap cut answers."""
    started = time.monotonic()
    parts = extract_reply(supercite(40_000), budget_s=0.01)
    assert time.monotonic() - started < 10
    assert parts.degraded
    assert parts.reply == REPLY


def _blockquoted(line: str, size: int) -> str:
    quote = line * (size // len(line))
    return f"<p>{REPLY}</p>" + "<blockquote>" * 200 + quote + "</blockquote>" * 200


def _extraction_peak(html: str) -> int:
    tracemalloc.start()
    parts = extract_reply(html, html=True, budget_s=60)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert parts.reply == REPLY
    return peak


def test_deep_blockquotes_draw_a_bounded_prefix_and_memory() -> None:
    """Two hundred nested <blockquote>s: each line gets at most ``MAX_DRAWN_DEPTH``
    prefixes (drawing all of them took memory 450 times the mail), extraction holds
    less than ten times the input, and memory grows with the input, not faster.

    Lines of one word cost Python's few dozen bytes per line object on top, so
    for them only the growth is pinned.
    """
    text, _, _ = split_html(_blockquoted("a<br>\n", 20_000))
    assert max(line.count("> ") for line in text.split("\n")) == MAX_DRAWN_DEPTH
    ordinary = _blockquoted("a quoted line of some ordinary length, as people write<br>\n", 200_000)
    assert _extraction_peak(ordinary) < 10 * len(ordinary)
    small, large = _blockquoted("a<br>\n", 30_000), _blockquoted("a<br>\n", 120_000)
    assert _extraction_peak(large) < 5 * _extraction_peak(small)


KINDS = st.lists(st.sampled_from([EMPTY, FORWARD, HEADER, QUOTED, TEXT, TEXT, QUOTED]), max_size=30)


def _answered_naively(lines: list[str], after: list[tuple[str, int, int]]) -> bool:
    answer = 0
    for kind, start, end in after:
        if kind == HEADER:
            break
        if kind == QUOTED and answer:
            return True
        if kind == TEXT:
            answer += sum(1 for line in lines[start:end] if line.strip())
    return answer >= quote_cut.INLINE_ANSWER_MIN_LINES


def _ends_answered_naively(runs: list[tuple[str, int, int]]) -> bool:
    last = ""
    for kind, _, _ in runs:
        if kind == HEADER:
            break
        last = kind
    return last != QUOTED


@settings(max_examples=300, deadline=None)
@given(KINDS, st.data())
def test_the_facts_computed_from_the_end_are_the_ones_asked_run_by_run(
    kinds: list[str], data: st.DataObject
) -> None:
    """``_After`` answers, for every run, what the quadratic loop asked of the runs after it."""
    lines = [
        "" if k == EMPTY else data.draw(st.sampled_from(["x", "  ", "> y", "ok"])) for k in kinds
    ]
    runs = quote_cut._blocks(kinds)
    after = quote_cut._After(lines, runs)
    for j in range(len(runs) + 1):
        tail = runs[j:]
        assert after.answered[j] == _answered_naively(lines, tail)
        assert after.ends_answered[j] == _ends_answered_naively(tail)
        assert after.header[j] == any(k == HEADER for k, _, _ in tail)
        assert after.text[j] == any(k == TEXT for k, _, _ in tail)
        assert after.quoted[j] == any(k == QUOTED for k, _, _ in tail)
