"""Sender checks: From against the token's recipient, and trusted DMARC results."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from replygate.mail.sender import (
    dmarc_failed,
    parse_authentication_result,
    parse_authentication_results,
    same_sender,
)

ISSUED = "client@example.org"


@pytest.mark.parametrize(
    "from_value",
    [
        "client@example.org",
        "Client@EXAMPLE.ORG",
        "Client Person <client@example.org>",
        '"Person, Client" <Client@Example.Org>',
        "=?utf-8?q?Cl=C3=A9ment?= <client@example.org>",
        "client@example.org (Client Person)",
        "<client@example.org>",
    ],
)
def test_same_mailbox_in_any_spelling_matches(from_value: str) -> None:
    assert same_sender(from_value, ISSUED)


@pytest.mark.parametrize(
    "from_value",
    [
        '"client@example.org" <attacker@example.net>',  # the display name is not the address
        "client@example.org.evil.example",
        "client@example.org, attacker@example.net",  # two mailboxes: ambiguous
        "undisclosed-recipients:;",
        "client+portal@example.org",  # tags only when allowed
        "client",
        "",
        "client@example.org\r\nBcc: x@example.net",
        "someone@example.org",
    ],
)
def test_other_or_ambiguous_senders_do_not_match(from_value: str) -> None:
    assert not same_sender(from_value, ISSUED)


def test_plus_tags_are_ignored_only_when_allowed() -> None:
    assert same_sender("Client <client+portal@example.org>", ISSUED, allow_plus_tags=True)
    assert same_sender("client@example.org", "client+x@example.org", allow_plus_tags=True)
    assert not same_sender("clientx+portal@example.org", ISSUED, allow_plus_tags=True)
    assert not same_sender("client+portal@example.org", ISSUED, allow_plus_tags=False)


def test_internationalised_domain_matches_its_a_label() -> None:
    assert same_sender("anna@bücher.example", "anna@xn--bcher-kva.example")


@given(st.text(max_size=200), st.text(max_size=200))
def test_same_sender_never_raises(a: str, b: str) -> None:
    assert same_sender(a, b) in (True, False)


# -- Authentication-Results ----------------------------------------------------------------------

MICROSOFT = (
    "spf=pass (sender IP is 192.0.2.1) smtp.mailfrom=example.com; dkim=none (message not "
    "signed) header.d=none;dmarc=fail action=none header.from=example.com;compauth=fail "
    "reason=001"
)
OURS = f"mx.reply.example.com; {MICROSOFT}"
FORGED_PASS = "mx.attacker.example; dmarc=pass header.from=example.com"


def test_flattened_result_of_a_trusted_header() -> None:
    result = parse_authentication_results([OURS], {"mx.reply.example.com"})
    assert result["dmarc"] == "fail"
    assert result["header.from"] == "example.com"
    assert result["spf"] == "pass"
    assert result["smtp.mailfrom"] == "example.com"
    assert result["dkim"] == "none"
    assert result["dmarc.header.from"] == "example.com"


def test_untrusted_headers_are_ignored() -> None:
    assert parse_authentication_results([FORGED_PASS], {"mx.reply.example.com"}) == {}
    assert parse_authentication_results([OURS], set()) == {}


def test_topmost_trusted_header_wins() -> None:
    values = [
        "MX.Reply.Example.com 1; dmarc=pass header.from=example.com",
        "mx.reply.example.com; dmarc=fail header.from=example.com",
    ]
    assert parse_authentication_results(values, {"mx.reply.example.com"})["dmarc"] == "pass"


def test_comments_quotes_versions_and_none() -> None:
    authserv, results = parse_authentication_result(
        "mx.example.org (a comment; with semicolon) 1; dkim/1=pass (good (nested)) "
        'header.d=example.com header.s="sel;1"; auth=none'
    )
    assert authserv == "mx.example.org"
    assert results[0] == ("dkim", "pass", {"header.d": "example.com", "header.s": "sel;1"})
    assert parse_authentication_result("mx.example.org; none") == ("mx.example.org", [])


def test_dmarc_failed_only_on_trusted_fail_for_the_from_domain() -> None:
    trusted = {"mx.reply.example.com"}
    assert dmarc_failed([OURS], trusted)
    assert dmarc_failed([OURS], trusted, from_domain="Example.COM")
    assert not dmarc_failed([OURS], trusted, from_domain="other.example")
    assert not dmarc_failed([OURS], {"mx.other.example"})
    forged_fail = "mx.attacker.example; dmarc=fail header.from=example.com"
    assert not dmarc_failed([forged_fail], trusted)
    assert not dmarc_failed(["mx.reply.example.com; dmarc=pass header.from=example.com"], trusted)


@given(st.lists(st.text(max_size=300), max_size=5))
def test_authentication_results_parsing_never_raises(values: list[str]) -> None:
    parse_authentication_results(values, {"mx.reply.example.com"})
    dmarc_failed(values, {"mx.reply.example.com"}, from_domain="example.com")
