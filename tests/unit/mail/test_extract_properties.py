"""Properties of reply extraction that hold for every input, checked with generated mail."""

from __future__ import annotations

import re

from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from replygate.mail.extract.quote_headers import split_shared_line
from replygate.mail.extract.reply import extract_from_parts, extract_reply

# Generous budgets: a slow test machine must not turn a property run into a degraded cut.
BUDGET_S = 5.0
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Characters that drive the rules (quotes, headers, delimiters, footers, markup) mixed
# with ordinary text, so generated inputs reach the interesting branches.
_RULE_TEXT = st.sampled_from(
    [
        "> ",
        ">",
        "-- ",
        "--",
        "-----Original Message-----",
        "On Mon, May 6, 2024 at 10:00 AM Dana <d@example.com> wrote:",
        "Le 6 mai 2024 à 10:00, Dana a écrit :",
        "From: Dana <d@example.com>",
        "Sent: Monday",
        "Subject: Re: lease",
        "Message-ID: <rg.n.1@reply.test>",
        "##- Please type your reply above this line -##",
        "Sent from my iPhone",
        "---------- Forwarded message ---------",
        "-Lev",
        " - item",
        "Thanks,",
        "+1 555 0100",
        "www.example.com",
        "[image: logo.png]",
        "\u00a0",
        "\r\n",
        "\n",
        "\n\n",
        ":",
        "@",
    ]
)
ANY_TEXT = st.lists(st.one_of(st.text(max_size=40), _RULE_TEXT), max_size=40).map("".join)

_HTML_PIECES = st.sampled_from(
    [
        "<div>",
        "</div>",
        "<br>",
        "<p>",
        "</p>",
        "<blockquote>",
        "</blockquote>",
        '<blockquote type="cite" cite="mid:rg.n.1@reply.test">',
        '<div class="gmail_quote">',
        '<div class="gmail_attr">On Mon, Dana wrote:</div>',
        '<div id="divRplyFwdMsg">',
        '<div class="moz-cite-prefix">',
        '<div style="border:none;border-top:solid #E1E1E1 1.0pt;padding:3.0pt 0in 0in 0in">',
        "<hr>",
        "From: Dana",
        "<script>x</script>",
        "<!-- c -->",
        "&lt;rg.n.2@reply.test&gt;",
        "<?xml version='1.0' encoding='utf-8'?>",
        "<html><body>",
    ]
)
ANY_HTML = st.lists(st.one_of(st.text(max_size=30), _HTML_PIECES), max_size=40).map("".join)

# Words that open no rule: no sign-off, footer, header or contact word among them.
_PLAIN_WORDS = st.sampled_from(
    [
        "the",
        "lease",
        "is",
        "ready",
        "please",
        "review",
        "it",
        "and",
        "call",
        "me",
        "when",
        "you",
        "can",
        "we",
        "agreed",
        "on",
        "friday",
        "invoice",
        "receipt",
        "garden",
        "window",
        "keys",
        "tenant",
        "owner",
        "draft",
    ]
)
_PLAIN_LINE = st.lists(_PLAIN_WORDS, min_size=1, max_size=12).map(" ".join).map(str.capitalize)
_PLAIN_PARAGRAPH = st.lists(_PLAIN_LINE, min_size=1, max_size=4).map("\n".join)
# Text a person types with no quote, header or signature anywhere in it.
PLAIN_REPLY = st.lists(_PLAIN_PARAGRAPH, min_size=1, max_size=4).map(
    lambda paragraphs: "\n\n".join(p + "." for p in paragraphs)
)

_HEADERS = st.sampled_from(
    [
        "On Mon, May 6, 2024 at 10:00 AM Dana Staff <dana@example.com> wrote:",
        "Le lun. 6 mai 2024 à 10:00, Dana Staff <dana@example.com> a écrit :",
        "Am 06.05.2024 um 10:00 schrieb Dana Staff <dana@example.com>:",
        "El lun, 6 may 2024 a las 10:00, Dana Staff (<dana@example.com>) escribió:",
        "-----Original Message-----",
        "From: Dana Staff <dana@example.com>\nSent: Monday, May 6, 2024 10:00 AM\n"
        "To: Cleo <cleo@example.com>\nSubject: Lease",
        "> Message-ID: <rg.n.0a1b2c@reply.example>",
    ]
)
_SIGNATURES = st.sampled_from(
    ["", "-- \nCleo Client\n+1 555 0100", "Sent from my iPhone", "Von meinem iPhone gesendet"]
)
_QUOTE = st.lists(_PLAIN_LINE, min_size=1, max_size=6).map(
    lambda lines: "\n".join(f"> {line}" for line in lines)
)


# A quoted line: ">" or supercite's initials ("AB> ").
_RE_QUOTED = re.compile(r"^\s*(?:>|[A-Za-z]{1,3}>)")


def _lines(text: str) -> list[str]:
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _trimmed(text: str) -> str:
    lines = _lines(text)
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    return "\n".join(lines)


def _is_line_subsequence(part: list[str], whole: list[str]) -> bool:
    """Each line of ``part`` is a line of ``whole``, in order — where a line a client glued
    a quote header onto ("ok On … wrote:") counts as its two halves, the one split made."""
    halves: list[str] = []
    for line in whole:
        shared = split_shared_line(line)
        halves.extend(shared if shared else (line,))
    remaining = iter(halves)
    return all(any(line == candidate for candidate in remaining) for line in part)


@SETTINGS
@given(ANY_TEXT)
@example("ok\x85On Mon, May 6, 2024 at 10:00 AM Dana <d@example.com> wrote:")
def test_plain_text_never_raises_and_parts_agree(body: str) -> None:
    """Any text: no exception, the reply is in the unquoted body and is found in the input."""
    parts = extract_reply(body, budget_s=BUDGET_S)
    assert parts.reply in parts.unquoted
    assert not parts.reply or _is_line_subsequence(_lines(parts.reply), _lines(body))


@SETTINGS
@given(ANY_HTML)
@example("<HR><!")  # a comment after a rule
@example('<div class="gmail_quote"></div><!-- c -->')  # a comment after the quote
def test_html_never_raises(markup: str) -> None:
    """Any markup, however broken: no exception, and the reply is in the unquoted body."""
    parts = extract_reply(markup, html=True, budget_s=BUDGET_S)
    assert parts.reply in parts.unquoted


@SETTINGS
@given(st.one_of(st.none(), ANY_TEXT), st.one_of(st.none(), ANY_HTML))
def test_choosing_a_part_never_raises(plain: str | None, markup: str | None) -> None:
    """Any pair of renderings, either missing: a part is chosen and extracted."""
    parts = extract_from_parts(plain, markup, budget_s=BUDGET_S)
    assert parts.reply in parts.unquoted


@SETTINGS
@given(PLAIN_REPLY, st.sampled_from(["", "\n", "\n\n", "  \n"]))
def test_text_without_markers_is_unchanged(text: str, edge: str) -> None:
    """Text with no quote, header or signature in it is filed as typed, only trimmed."""
    body = edge + text + edge
    parts = extract_reply(body, budget_s=BUDGET_S)
    assert parts.reply == _trimmed(body)
    assert parts.unquoted == parts.reply
    assert parts.signature == parts.quote == ""


@SETTINGS
@given(PLAIN_REPLY, _SIGNATURES, _HEADERS, _QUOTE)
@example("On.", "", "On Mon, May 6, 2024 at 10:00 AM Dana <d@example.com> wrote:", "> q")
def test_composed_reply_is_found_and_stable(
    typed: str, signature: str, header: str, quote: str
) -> None:
    """Typed text, a signature, a header and a quote: the typed text comes back exactly,
    and extracting the reply again changes nothing."""
    body = "\n\n".join(x for x in (typed, signature, header, quote) if x)
    parts = extract_reply(body, budget_s=BUDGET_S)
    assert parts.reply == typed
    assert parts.signature == signature
    assert extract_reply(parts.reply, budget_s=BUDGET_S).reply == parts.reply


@SETTINGS
@given(ANY_TEXT)
@example("0\r>0\r==ORIGINAL MESSAGE")  # ends in a quote kept above a header: not stable
@example("0\r[image:]\rSENT FROM 0")  # an image placeholder above a mobile footer
@example("0\r-A\n\n0\r000 000")  # a "-Name" sign-off above a block of contact details
def test_extraction_is_idempotent(body: str) -> None:
    """Extracting a filed reply again files the same text.

    Except for a reply that ends in a quote the person kept above the quoted history:
    with the history gone, that quote ends the mail and is cut, as any trailing quote is.
    """
    reply = extract_reply(body, budget_s=BUDGET_S).reply
    lines = [line for line in _lines(reply) if line.strip()]
    assume(not (lines and _RE_QUOTED.match(lines[-1])))
    assert extract_reply(reply, budget_s=BUDGET_S).reply == reply
