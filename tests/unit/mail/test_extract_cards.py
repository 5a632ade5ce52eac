"""Business cards, sent-from footers and quote headers the fixtures do not pin one by one:
what goes, and the person's own words that look like it but stay."""

from __future__ import annotations

import pytest

from replygate.mail.decisions import Extracted, from_record, sentence
from replygate.mail.extract.business_card import find_card
from replygate.mail.extract.line_kinds import split_shared_lines
from replygate.mail.extract.quote_headers import header_block_at, is_wrote_header
from replygate.mail.extract.reply import extract_reply
from replygate.mail.extract.sent_from import is_sent_from
from replygate.mail.extract.signatures import fallback_reason

CARD = "Maria Lopez\nOffice Manager\nLopez Dental Clinic\n(415) 555-0132\nwww.lopezdental.com"


def test_card_alone_and_above_a_footer_go_alike() -> None:
    """The same card goes whether it ends the mail or sits above "Sent from my iPhone"."""
    alone = extract_reply(f"See you Thursday.\n\n{CARD}")
    above = extract_reply(f"See you Thursday.\n\n{CARD}\n\nSent from my iPhone")
    assert alone.reply == above.reply == "See you Thursday."
    assert "signature:card" in alone.layers and "signature:card" in above.layers
    assert above.signature.endswith("Sent from my iPhone")


@pytest.mark.parametrize(
    "body",
    [
        "Yes.\n\nCall me on +1 415 555 0100\nor email me at maria@example.com",
        "Send it to:\n\nJohn Smith\n12 High Street\nLondon SW1A 1AA",
        "Fine by me.\n\nJohn Smith\nAcme Ltd",
        "Sure.\n\nMeeting room B\n2nd floor\n10:30 to 11:30",
        "See you Monday.\n\nThanks,\nCleo",
        "My new number is +1 415 555 0132.\nThe new address is 2200 Mission St, San Francisco.",
    ],
)
def test_the_persons_words_are_no_card(body: str) -> None:
    """Contact details the person gives, an introduced list, a sign-off with a name: kept."""
    assert extract_reply(body).reply == body


def test_card_needs_text_above_it() -> None:
    """A card is never the whole reply."""
    assert find_card(CARD.split("\n")) is None


@pytest.mark.parametrize(
    "line",
    [
        "Sent from Mail for Windows",
        "Get Outlook for iOS<https://aka.ms/o0ukef>",
        "Obter o Outlook para Android<https://aka.ms/ghei36>",
        "Verzonden vanuit Outlook voor iOS<https://aka.ms/o0ukef>",
        "Outlook für iOS<https://aka.ms/o0ukef> herunterladen",
        "Lähetetty iPhonesta",
        "أُرسلت من الـ iPhone",
        "Elküldve az iPhone-omról",
        "Trimis de pe iPhone-ul meu",
        "iPhone에서 보냄",
    ],
)
def test_sent_from_lines(line: str) -> None:
    assert is_sent_from(line)


@pytest.mark.parametrize(
    "line", ["Lähetetty eilen postissa.", "Trimis ieri prin poștă.", "Outlook for the week"]
)
def test_the_same_verbs_in_prose_are_no_footer(line: str) -> None:
    """Other languages' "sent" verbs make a footer only with a device or client named."""
    assert not is_sent_from(line)


def test_leading_footer_goes_and_the_text_under_it_stays() -> None:
    parts = extract_reply("Sent from my iPhone\n\nThursday works.\n")
    assert parts.reply == "Thursday works."
    assert parts.signature == "Sent from my iPhone"
    assert extract_reply("Sent from my iPhone").reply == "Sent from my iPhone"


@pytest.mark.parametrize(
    "text",
    [
        "On Thursday. Dana Staff wrote:",
        "On Monday I told you what my lawyer wrote:",
        "Am Montag schrieb ich ihm eine lange Antwort",
    ],
)
def test_prose_opening_like_a_header_is_not_one(text: str) -> None:
    assert not is_wrote_header(text)


def test_rule_glued_to_from_field_is_split() -> None:
    lines = split_shared_lines(["________________________________Von: Dana <d@example.com>"])
    assert lines == ["________________________________", "Von: Dana <d@example.com>"]


def test_lone_from_field_needs_a_blank_line_under_it() -> None:
    assert header_block_at(["Fine.", "From: dana@example.com", "", "Old text"], 1)
    assert not header_block_at(["From: dana@example.com", ""], 0)
    assert not header_block_at(["From: dana@example.com", "I forwarded her note."], 0)


def test_fallback_when_the_cut_went_too_far() -> None:
    """Nothing, or a sign-off over prose cut as signature, files the unquoted text."""
    parts = extract_reply("Thanks,\n\n--\nI can come on Thursday at two with the lease.\nCleo")
    assert parts.reply == "Thanks,"
    assert fallback_reason(parts.reply, parts.signature, parts.unquoted)
    assert fallback_reason("", "", "-- \nCleo") == "nothing was left"
    assert fallback_reason("", "", "") is None


def test_no_fallback_for_a_sign_off_over_a_card() -> None:
    parts = extract_reply("Thanks!\n\n-- \nCleo Client\n+1 555 0100\nwww.example.com")
    assert parts.reply == "Thanks!"
    assert fallback_reason(parts.reply, parts.signature, parts.unquoted) is None


def test_explain_says_the_fallback() -> None:
    record = Extracted(["signature:delimiter"], fallback="only a sign-off was left").to_record()
    assert record["fallback"] == "only a sign-off was left"
    text = sentence(from_record(record))
    assert "only a sign-off was left" in text and "was filed instead" in text
    assert "fallback" not in Extracted(["marker"]).to_record()
