"""Finding the signature at the end of a reply (quote already removed).

Rules, surest first; each returns the index of the first signature line:

1. the ``-- `` delimiter (or a bare ``--``/``---`` line) followed by a short block;
2. mobile and app footers ("Sent from my iPhone", "Envoyé de mon iPhone",
   "Get Outlook for Android", ...) in many languages
   (``sent_from``), with what follows them; a business card just above such a
   footer goes with it (``business_card``);
3. a business card ending the mail, scored as a whole (``business_card``);
4. a ``-Name`` line ending the mail (email_reply_parser's convention);
5. a trailing contact block: short lines after a blank line holding a phone
   number, an e-mail address or a web address;
6. a rule of dashes alone at the very end, under a blank line: what is left
   of a client's separator (Outlook's) once the quote under it was cut.

A plain sign-off with a name under it ("Thanks,\\nCleo") is never cut: it is
part of what the person wrote.

A rule of four dashes or more directly under a line of text underlines it
(a table's head, a title): it is never a delimiter. A sent-from footer
opening the mail, with the person's text under it, is found by
``leading_footer``.
"""

from __future__ import annotations

import regex as re

from replygate.mail.extract.business_card import (
    RE_DISCLAIMER,
    RE_NAME_LINE,
    find_card,
    is_sentence,
)
from replygate.mail.extract.business_card import RE_SIGN_OFF as RE_ANY_SIGN_OFF
from replygate.mail.extract.sent_from import RE_MOBILE, is_sent_from

# Signatures are short: the rules only look at the last lines of a reply.
MAX_SIGNATURE_LINES = 12
# People who stack footers from several devices: the block under the first one may run longer.
MAX_FOOTER_LINES = 20
# A line this long is prose, never part of a signature.
MAX_SIGNATURE_LINE = 120

# "-- " (RFC 3676), and the bare "--"/"---" most clients and people type instead.
RE_DELIMITER = re.compile(r"^-{2,3}\s*$")

# A rule of many dashes: a signature delimiter only when contact details follow it.
RE_LONG_RULE = re.compile(r"^\s*-{4,}\s*$")

# One to three capitalised words: a name signing a footer.
RE_NAME = re.compile(r"^\s*(?-i:[A-Z][\w.'’-]*)(?:\s+(?-i:[A-Z][\w.'’-]*)){0,2}\s*$")

# "-Lev." / "- roman": a dash and a name alone on the last line.
RE_DASH_NAME = re.compile(r"^\s*-\s?[A-Za-zÀ-ÿ][\w.'’ -]{0,30}$")

# Contact details that make a trailing block a signature rather than a sign-off.
RE_CONTACT = re.compile(
    r"(?:\+?\(?\d{1,4}\)?[\s.-]?\d{2,4}[\s.-]\d{3,4}(?:[\s.-]\d{2,4})?"
    r"|[\w.+-]+@[\w-]+\.[\w.-]+|https?://|www\.\w|\w\.(?:com|org|net)\b|skype\s*:)",
    re.I,
)

# A sign-off on its own ("Thanks,", "Best regards", "Cheers!"): what people type, so it stays.
RE_SIGN_OFF = re.compile(
    r"^\s*(?:thanks|thank\s+you|thx|regards|best(?:\s+regards|\s+wishes)?|kind\s+regards"
    r"|cheers|sincerely|yours|cordialement|merci|grüße|gruß|saludos|saluti|abraços|groeten"
    r"|hälsningar|pozdrawiam|с\s+уважением)\b.*$",
    re.I,
)


def _is_short_block(lines: list[str], limit: int = MAX_SIGNATURE_LINES) -> bool:
    content = [line for line in lines if line.strip()]
    return 0 < len(content) <= limit and all(len(line) <= MAX_SIGNATURE_LINE for line in content)


RE_IMAGE_PLACEHOLDER = re.compile(
    r"^\s*\[(?:image:[^\]]*|cid:[^\]]*|[^\]]{0,60}\b(?:logo|Logo|LOGO))\]\s*$"
)


def find_signature(lines: list[str]) -> tuple[int | None, str]:
    """Index of the first signature line in ``lines`` and the rule's name, or ``(None, '')``."""
    n = len(lines)
    start = max(0, n - 2 * MAX_FOOTER_LINES)
    first_text = next((i for i, line in enumerate(lines) if line.strip()), n)
    for i in range(start, n):
        if i > first_text and RE_DELIMITER.match(lines[i]) and _is_short_block(lines[i + 1 :]):
            return i, "signature:delimiter"
        # A long rule of dashes over a block of contact details (logo, name, numbers, links).
        if (
            i > first_text
            and RE_LONG_RULE.match(lines[i])
            and not lines[i - 1].strip()
            and _is_short_block(lines[i + 1 :])
            and sum(bool(RE_CONTACT.search(x)) for x in lines[i + 1 :]) >= 2
        ):
            return i, "signature:delimiter"
    for i in range(start, n):
        line = lines[i]
        if (
            i > first_text
            and len(line) <= MAX_SIGNATURE_LINE
            and RE_MOBILE.match(line)
            and _is_short_block(lines[i:], MAX_FOOTER_LINES)
        ):
            # Footers stacked above this one (one per device, blank lines between) go too.
            i = _footer_stack_start(lines, i, first_text)
            card = find_card(lines, i)
            if card is not None:
                return card, "signature:card"
            # A name alone on the line above a footer ("Stavros\nvia mobile") signs it.
            if i >= 2 and RE_NAME.match(lines[i - 1]) and not lines[i - 2].strip():
                return i - 1, "signature:mobile"
            # So does a "-Name" sign-off just above it, even with a blank line between.
            return _signed_above(lines, i, first_text), "signature:mobile"
    card = find_card(lines)
    if card is not None:
        return card, "signature:card"
    # Placeholders clients write into the text part for inline images ("[image: logo.png]",
    # "[cid:…]", Outlook's "[Company logo]") at the very end belong to the signature.
    tail = n
    while tail > first_text + 1 and (
        not lines[tail - 1].strip() or RE_IMAGE_PLACEHOLDER.match(lines[tail - 1])
    ):
        tail -= 1
    if tail < n and any(RE_IMAGE_PLACEHOLDER.match(x) for x in lines[tail:]):
        return tail, "signature:image"
    last = _last_content(lines)
    if last is not None and last > first_text and is_dash_sign_off(lines, last):
        return last, "signature:dash_name"
    contact = _contact_block(lines, first_text)
    if contact is not None:
        return _signed_above(lines, contact, first_text), "signature:contact"
    # A rule alone at the end, under a blank line: a separator whose quote was cut.
    if (
        last is not None
        and last > first_text + 1
        and RE_LONG_RULE.match(lines[last])
        and not lines[last - 1].strip()
    ):
        return last, "signature:rule"
    return None, ""


def _footer_stack_start(lines: list[str], i: int, first_text: int) -> int:
    """The first of the footers stacked directly above ``lines[i]`` (blank lines allowed),
    with the inline-image placeholders among them, which belong to the signature as
    they do at the very end."""
    start = i
    j = i - 1
    while j > first_text:
        line = lines[j]
        if line.strip():
            if len(line) > MAX_SIGNATURE_LINE or not (
                RE_MOBILE.match(line) or RE_IMAGE_PLACEHOLDER.match(line)
            ):
                break
            start = j
        j -= 1
    return start


def _signed_above(lines: list[str], i: int, first_text: int) -> int:
    """``i``, or the "-Name" sign-off just above ``lines[i]`` (blank lines allowed): left
    above a cut footer, it would be cut as the signature when the reply is read again."""
    above = _last_content(lines[:i])
    if above is not None and above > first_text and is_dash_sign_off(lines, above):
        return above
    return i


def is_dash_sign_off(lines: list[str], i: int) -> bool:
    """Whether ``lines[i]`` is a "-Name" sign-off rather than the last item of a dashed list."""
    if not RE_DASH_NAME.match(lines[i]):
        return False
    # The nearest line of text above it opening with a dash makes it one more list item.
    prev = _last_content(lines[:i])
    return not (prev is not None and lines[prev].lstrip().startswith("-"))


def _last_content(lines: list[str]) -> int | None:
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].strip():
            return i
    return None


def _contact_block(lines: list[str], first_text: int) -> int | None:
    """Start of a trailing block, after a blank line, of short lines with contact details."""
    last = _last_content(lines)
    if last is None:
        return None
    i = last
    while i > first_text and lines[i - 1].strip():
        i -= 1
    block = lines[i : last + 1]
    if i <= first_text or not _is_short_block(block) or len(block) < 2:
        return None
    contacts = sum(bool(RE_CONTACT.search(line)) for line in block)
    # A sign-off and a name stay with the text; a block of addresses and numbers does not.
    # Prose that happens to hold a link is not a card: most lines must be contact details.
    if (
        (contacts >= 2 or contacts * 2 >= len(block))
        and all(len(line) <= 60 for line in block)
        and not RE_SIGN_OFF.match(block[0])
        and len(block[0].split()) <= 4
    ):
        return i
    return None


def leading_footer(lines: list[str]) -> int:
    """How many lines a sent-from footer opening the mail takes (0 when none).

    "Sent from my iPhone" above the person's text: the client put its footer
    first and the person typed under it. The footer and the blank lines after
    it are counted only when text follows.
    """
    first = next((i for i, line in enumerate(lines) if line.strip()), len(lines))
    if first >= len(lines) or not is_sent_from(lines[first]):
        return 0
    rest = first + 1
    while rest < len(lines) and not lines[rest].strip():
        rest += 1
    return rest if rest < len(lines) else 0


def fallback_reason(reply: str, signature: str, unquoted: str) -> str | None:
    """Why the unquoted text should be filed instead of ``reply``, or None to trust it.

    Rules (the person's words are never lost to a cut that went too far):

    1. the reply is empty while the unquoted text holds something;
    2. the reply is nothing but a sign-off and a name ("Thanks,\\nCleo") while what was
       cut as signature holds prose: a sentence, not a card, footer or disclaimer.
    """
    if not reply.strip():
        return "nothing was left" if unquoted.strip() else None
    if is_sign_off_only(reply) and any(
        is_sentence(line) and not RE_DISCLAIMER.search(line) for line in signature.split("\n")
    ):
        return "only a sign-off was left"
    return None


def is_sign_off_only(text: str) -> bool:
    """True when ``text`` is nothing but a sign-off and a name ("Thanks,\\nCleo")."""
    content = [line for line in text.split("\n") if line.strip()]
    return 0 < len(content) <= 3 and all(
        RE_ANY_SIGN_OFF.match(line) or RE_NAME_LINE.match(line) for line in content
    )
