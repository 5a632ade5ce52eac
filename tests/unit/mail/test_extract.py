"""Reply extraction on fixtures written as each mail client and language produces them."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from replygate.mail.extract.reply import ReplyParts, extract_from_parts, extract_reply
from replygate.mail.markers import REPLY_ABOVE_LINE
from replygate.mail.parse import parse_message

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures" / "replies"


def _cases(suffix: str) -> list[Path]:
    return sorted(p for p in FIXTURES.glob(f"*{suffix}") if not p.name.endswith(".expected.txt"))


def _expected(path: Path) -> str:
    return (FIXTURES / f"{path.name.split('.')[0]}.expected.txt").read_text("utf-8").strip("\n")


@pytest.mark.parametrize("path", _cases(".txt"), ids=lambda p: p.stem)
def test_plain_fixture(path: Path) -> None:
    """Each client's and language's plain reply yields exactly what was typed."""
    parts = extract_reply(path.read_text("utf-8"))
    assert parts.reply == _expected(path)
    assert not parts.degraded


@pytest.mark.parametrize("path", _cases(".html"), ids=lambda p: p.stem)
def test_html_fixture(path: Path) -> None:
    """HTML quotes are cut by the client's own markup before rendering."""
    parts = extract_reply(path.read_text("utf-8"), html=True)
    assert parts.reply == _expected(path)
    assert REPLY_ABOVE_LINE not in parts.unquoted


@pytest.mark.parametrize("path", _cases(".eml"), ids=lambda p: p.stem)
def test_message_fixture(path: Path) -> None:
    """Whole messages, read as the engine reads them (``parse_message``, then the better of
    the two renderings): the best part is chosen and decoded, our quoted notification dropped."""
    parsed = parse_message(path.read_bytes())
    parts = extract_from_parts(parsed.text_plain, parsed.text_html)
    assert parts.reply == _expected(path)
    assert REPLY_ABOVE_LINE in parts.quote


def test_marker_takes_header_above_it() -> None:
    """Our marker cuts the mail and the client's "On … wrote:" line just above it."""
    header = "On Fri, May 3, 2024 at 9:12 AM Dana <x@reply.test> wrote:"
    body = f"Fine.\n\n{header}\n\n{REPLY_ABOVE_LINE}\n"
    parts = extract_reply(body)
    assert parts.reply == "Fine."
    assert "marker" in parts.layers
    assert parts.quote.startswith("On Fri")


def test_signature_kept_in_unquoted() -> None:
    """``unquoted`` keeps the signature as written; ``reply`` and ``signature`` split it."""
    parts = extract_reply("All done.\n\n-- \nCleo Client\n+1 555 0100\n\n> old text\n")
    assert parts == ReplyParts(
        reply="All done.",
        signature="-- \nCleo Client\n+1 555 0100",
        quote="> old text",
        unquoted="All done.\n\n-- \nCleo Client\n+1 555 0100",
        layers=parts.layers,
    )


def test_plain_sign_off_stays() -> None:
    """A sign-off and a name are what the person typed, not a signature."""
    parts = extract_reply("See you Monday.\n\nThanks,\nCleo")
    assert parts.reply == "See you Monday.\n\nThanks,\nCleo"
    assert parts.signature == ""


def test_prose_mentioning_wrote_is_not_a_header() -> None:
    """ "… wrote:" without a date or an address is prose."""
    body = "Here is what my lawyer wrote:\nThe contract is fine."
    assert extract_reply(body).reply == body


def test_quote_only_mail_is_kept() -> None:
    """A mail that is nothing but a quote keeps it (the person forwarded by quoting)."""
    assert extract_reply("> Please keep this.").reply == "> Please keep this."


def test_wrapped_header_over_three_lines() -> None:
    body = "Yes.\n\nOn Fri, May 3, 2024 at 9:12 AM,\nDana Staff\n<dana@example.com> wrote:\n\n> Q?"
    assert extract_reply(body).reply == "Yes."


def test_budget_overrun_degrades_to_first_header() -> None:
    """With no time left, the text above the first quote header is filed and flagged."""
    body = "Short answer.\nOn Fri, May 3, 2024 at 9:12 AM Dana <d@example.com> wrote:\n> q\n"
    parts = extract_reply(body, budget_s=-1)
    assert parts.degraded
    assert parts.reply == "Short answer."


def test_pathological_body_is_bounded() -> None:
    """A 5 MB body with a 1 MB line and 10,000 quote levels finishes well within bounds."""
    body = (
        "Reply.\n"
        + "x" * 1_000_000
        + "\n"
        + "\n".join(">" * i + " On Mon wrote:" for i in range(1, 10_001))
        + "\n"
        + ("word " * 80 + "\n") * 8_000
    )
    # CPU time, not wall time: what the extraction costs, not how busy the machine is.
    start = time.process_time()
    parts = extract_reply(body, budget_s=0.5)
    assert time.process_time() - start < 2.0
    assert parts.reply.startswith("Reply.")


def test_pathological_html_is_bounded() -> None:
    markup = "<div>Reply</div>" + "<blockquote>" * 10_000 + "q" + "</blockquote>" * 10_000
    start = time.process_time()
    parts = extract_reply(markup, html=True)
    assert time.process_time() - start < 2.0
    assert parts.reply == "Reply"


def test_dash_name_above_footer_is_signature() -> None:
    """A "-Name" sign-off above a device footer, a blank line between, goes with the footer."""
    parts = extract_reply("Will do.\n\n-Ana\n\nSent from my Pixel")
    assert parts.reply == "Will do."
    assert parts.signature == "-Ana\n\nSent from my Pixel"


def test_stacked_footers_go_whole() -> None:
    """Footers stacked from several devices go from the first one, however long the stack."""
    footers = ["Envoyé depuis mon iPhone", "", "Von meinem iPad gesendet", ""]
    footers += [f"Sent from my phone number {i}" for i in range(25)]
    parts = extract_reply("Agreed.\n\n" + "\n".join(footers))
    assert parts.reply == "Agreed."
    assert parts.signature.startswith("Envoyé")


def test_dashed_list_keeps_last_item() -> None:
    """The last item of a dashed list is text, even with a signature and a quote below it."""
    body = (
        "Two points:\n\n - the invoice\n - the receipt\n\n"
        "On Fri, May 3, 2024 at 9:12 AM Dana <d@example.com> wrote:\n\n> Q?\n\n-- \nDana"
    )
    assert extract_reply(body).reply == "Two points:\n\n - the invoice\n - the receipt"


def test_header_inside_kept_text_leaves_spacing() -> None:
    """A header dropped above a quote answered inline leaves the blank lines around it."""
    body = (
        "First.\n\nOn Fri, May 3, 2024 at 9:12 AM Dana <d@example.com> wrote:\n\n"
        "> q1\n\nAnswer one.\nMore.\nAnd more.\n"
    )
    assert extract_reply(body).reply == "First.\n\n\n> q1\n\nAnswer one.\nMore.\nAnd more."


def test_own_message_id_cuts_forwarded_block() -> None:
    """A forwarded header block naming our Message-ID, bracketless, starts our notification."""
    body = (
        "Forwarding for the record.\n\n---------- Forwarded message ---------\n"
        "From: Portal <n@reply.test>\nMessage-ID: rg.n.42@reply.test\n\nYour document is ready."
    )
    parts = extract_reply(body)
    assert parts.reply == "Forwarding for the record."
    assert "own_message_id" in parts.layers
    assert parts.quote.startswith("---------- Forwarded message")


def test_someone_elses_message_id_does_not_cut() -> None:
    """Only our own ``rg.`` Message-IDs are layer 1; other ids and prose mentions are not."""
    body = (
        "The id they quoted:\n\nMessage-ID: <abc.rg.1@mail.example>\n\n"
        "I also wrote to rg.n.1@reply.test about it yesterday, and nobody answered."
    )
    parts = extract_reply(body)
    assert "own_message_id" not in parts.layers
    assert parts.reply == body


def test_own_message_id_in_html_data_attribute() -> None:
    """An element carrying our Message-ID in an attribute is cut with its attribution."""
    markup = (
        "<div>Done.</div><div>Le 6 mai 2024, Portal a écrit :</div>"
        '<blockquote data-mid="&lt;rg.n.7@reply.test&gt;"><div>Sign it</div></blockquote>'
    )
    parts = extract_reply(markup, html=True)
    assert parts.reply == "Done."
    assert "html:own_message_id" in parts.layers


def test_own_message_id_in_degraded_cut() -> None:
    """With no time left, a quoted line naming our Message-ID still ends what is filed."""
    body = "Short answer.\n> In-Reply-To: <rg.n.1@reply.test>\n> q\n"
    parts = extract_reply(body, budget_s=-1)
    assert parts.degraded
    assert parts.reply == "Short answer."


def test_supercite_quoted_header_is_not_split() -> None:
    """A header inside supercite quoting ("A> On … wrote:") is quote, not a shared line."""
    parts = extract_reply("Fine.\nA> On Mon, May 6, 2024 at 10:00 AM Dana <d@example.com> wrote:")
    assert parts.reply == "Fine."


def test_bare_quote_markers_at_the_edges_are_blank() -> None:
    """Empty quoted lines (a lone ">") before or after the reply are not filed."""
    assert extract_reply(">\nSee you at ten.\n>").reply == "See you at ten."


def test_trailing_rule_left_by_a_cut_quote_goes() -> None:
    """Outlook's line of dashes, left alone at the end once its quote is cut, is no reply text."""
    parts = extract_reply("This is a reply from Outlook!\n\n\n ------------------------------\n")
    assert parts.reply == "This is a reply from Outlook!"
    assert "signature:rule" in parts.layers


def test_rule_under_a_line_of_text_stays() -> None:
    """A rule directly under a line of text underlines it: the person typed both."""
    parts = extract_reply("Totals\n------")
    assert parts.reply == "Totals\n------"
