"""The reply catalogue: complete, and every code agrees with itself."""

from __future__ import annotations

import re

import pytest

from replygate.errors import InboundRefused
from replygate.gateway import replies
from replygate.gateway.replies import CATALOGUE, REFUSALS, Condition

LONGEST_REPLY_ADDRESS = "reply+" + "a" * 34 + "@" + "r" * 60 + ".example"


def _subclasses(cls: type) -> set[type]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= _subclasses(sub)
    return found


def test_every_refusal_of_the_core_has_its_own_entry() -> None:
    """A new InboundRefused subclass must be given wording before it can ship."""
    ours = {c for c in _subclasses(InboundRefused) if c.__module__.startswith("replygate.")}
    assert ours <= set(REFUSALS)
    assert set(REFUSALS.values()) <= set(CATALOGUE)


def test_every_condition_is_catalogued() -> None:
    assert set(Condition) == set(CATALOGUE)


@pytest.mark.parametrize("condition", list(Condition), ids=str)
def test_enhanced_code_agrees_with_basic_code(condition: Condition) -> None:
    """RFC 3463: the enhanced class (2/4/5) must equal the basic code's first digit."""
    reply = CATALOGUE[condition]
    assert re.fullmatch(r"[245]\.\d{1,3}\.\d{1,3}", reply.status), reply.status
    assert 200 <= reply.code < 600
    assert reply.status[0] == str(reply.code)[0]


@pytest.mark.parametrize("condition", list(Condition), ids=str)
def test_exit_code_agrees_with_basic_code(condition: Condition) -> None:
    """The pipe ingress tells the MTA the same thing: accepted, retry, or bounce."""
    reply = CATALOGUE[condition]
    expected = {
        2: {replies.EX_OK},
        4: {replies.EX_TEMPFAIL},
        5: {replies.EX_NOUSER, replies.EX_NOPERM},
    }[reply.code // 100]
    assert reply.exit_code in expected


@pytest.mark.parametrize("condition", list(Condition), ids=str)
def test_reply_is_one_short_ascii_line(condition: Condition) -> None:
    """Fits an SMTP reply line (RFC 5321: 512 octets) with the longest address we issue."""
    line = CATALOGUE[condition].render(LONGEST_REPLY_ADDRESS, limit=26_214_400)
    assert line.isascii() and "\n" not in line and "\r" not in line
    assert len(line) + 2 <= 512
    assert "{" not in line


def test_refusals_read_as_the_design_says() -> None:
    assert (
        CATALOGUE[Condition.UNKNOWN_TOKEN]
        .render("reply+x@r.test")
        .startswith("550 5.1.1 <reply+x@r.test>: this reply address does not exist")
    )
    assert (
        CATALOGUE[Condition.CONVENIENCE_MODE_OFF]
        .render()
        .startswith("550 5.7.1 replies by email are not accepted for this organisation")
    )
    assert CATALOGUE[Condition.MESSAGE_TOO_LARGE].render(limit=10).startswith("552 5.3.4 ")
    assert CATALOGUE[Condition.STORE_UNAVAILABLE].render().startswith("451 4.3.0 ")
    assert CATALOGUE[Condition.TOO_MANY_RECIPIENTS].render().startswith("452 4.5.3 ")
    assert CATALOGUE[Condition.ACCEPTED].render() == "250 2.0.0 Message accepted for delivery"


def test_an_uncatalogued_refusal_is_still_a_refusal() -> None:
    class SomethingNew(InboundRefused):
        pass

    assert replies.refusal(SomethingNew("x")).code == 550


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("500 Error: bad syntax", "500 5.5.2 Error: bad syntax"),
        (
            '500 Error: command "FROB" not recognized',
            '500 5.5.2 Error: command "FROB" not recognized',
        ),
        ("501 Syntax: MAIL FROM: <address>", "501 5.5.4 Syntax: MAIL FROM: <address>"),
        ("502 EXPN not implemented", "502 5.5.1 EXPN not implemented"),
        ("503 Error: need MAIL command", "503 5.5.1 Error: need MAIL command"),
        ("503 Error: need RCPT command", "503 5.5.1 Error: need RCPT command"),
        (
            "530 Must issue a STARTTLS command first",
            "530 5.7.0 Must issue a STARTTLS command first",
        ),
        (
            "554 Command refused due to lack of security",
            "554 5.7.0 Command refused due to lack of security",
        ),
        ("454 TLS not available", "454 4.7.0 TLS not available"),
        ("555 RCPT TO parameters not recognized", "555 5.5.4 RCPT TO parameters not recognized"),
        ("599 Something new", "599 5.0.0 Something new"),
        ("250 OK", "250 2.0.0 OK"),
        ("221 Bye", "221 2.0.0 Bye"),
        ("220 Ready to start TLS", "220 2.0.0 Ready to start TLS"),
        ("250 Supported commands: DATA EHLO", "250 2.0.0 Supported commands: DATA EHLO"),
        # Already carrying a status, or exempt (RFC 2034): unchanged.
        ("502 5.5.1 Too many unrecognized commands, goodbye.", None),
        ("550 5.1.1 <a@b>: no such address", None),
        ("220 reply.test replygate", None),
        ("250 reply.test", None),
        ("250-SIZE 1000", None),
        ("250 HELP", None),
        ("354 End data with <CR><LF>.<CR><LF>", None),
    ],
)
def test_protocol_replies_get_the_catalogues_status(line: str, expected: str | None) -> None:
    assert replies.with_status(line) == (expected or line)


@pytest.mark.parametrize("code", sorted(replies.PROTOCOL_BY_CODE))
def test_protocol_entries_share_their_basic_code(code: int) -> None:
    assert CATALOGUE[replies.PROTOCOL_BY_CODE[code]].code == code
