"""The acceptance policy's rules, one by one, on header blocks as senders write them."""

from __future__ import annotations

import pytest

from replygate.errors import DmarcFailed, MessageTooLarge
from replygate.mail.headers import read_headers
from replygate.mail.policy import Policy, check_dmarc, check_size, sender_mismatch

POLICY = Policy(
    max_message_size=1000,
    attachment_max_bytes=100,
    attachments_total_max_bytes=200,
    attachment_types=("application/pdf",),
    trusted_authserv=frozenset({"mx.practice.test"}),
)


def headers(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\nbody\r\n").encode()


def test_size_limit_is_inclusive() -> None:
    check_size(POLICY, 1000)
    with pytest.raises(MessageTooLarge, match="1001 bytes"):
        check_size(POLICY, 1001)


@pytest.mark.parametrize(
    ("lines", "why"),
    [
        ((), "no From header"),
        (("From: cleo@example.com", "From: cleo@example.com"), "several From headers"),
        (("From: cleo@example.com, eve@evil.test",), "is not one mailbox"),
        (("From: friends: cleo@example.com;",), "is not one mailbox"),
        (('From: "cleo@example.com" <eve@evil.test>',), "is not cleo@example.com"),
        (("From: =?utf-8?q?cleo=40example=2Ecom?= <eve@evil.test>",), "is not cleo@"),
        (("From: cleo+tag@example.com",), "is not cleo@example.com"),
    ],
)
def test_sender_mismatches_say_why(lines: tuple[str, ...], why: str) -> None:
    reason = sender_mismatch(POLICY, read_headers(headers(*lines)), ["cleo@example.com"])
    assert reason is not None and why in reason


@pytest.mark.parametrize(
    "line",
    ["From: Cleo <cleo@example.com>", "From: CLEO@EXAMPLE.COM", "From: cleo@example.com (me)"],
)
def test_the_issued_address_in_any_spelling_matches(line: str) -> None:
    assert sender_mismatch(POLICY, read_headers(headers(line)), ["cleo@example.com"]) is None


def test_plus_tags_only_when_allowed() -> None:
    tagged = read_headers(headers("From: cleo+phone@example.com"))
    lenient = Policy(**{**POLICY.__dict__, "allow_plus_tags": True})
    assert sender_mismatch(lenient, tagged, ["cleo@example.com"]) is None
    assert sender_mismatch(POLICY, tagged, ["cleo@example.com"]) is not None


def test_one_from_cannot_be_two_people() -> None:
    found = read_headers(headers("From: cleo@example.com"))
    assert sender_mismatch(POLICY, found, ["cleo@example.com", "bob@example.com"]) is not None


def test_dmarc_counts_only_trusted_results_for_the_from_domain() -> None:
    failed = "Authentication-Results: mx.practice.test; dmarc=fail header.from=example.com"
    with pytest.raises(DmarcFailed, match=r"example\.com"):
        check_dmarc(POLICY, read_headers(headers("From: Cleo <cleo@example.com>", failed)))
    forged = "Authentication-Results: mx.evil.test; dmarc=fail header.from=example.com"
    check_dmarc(POLICY, read_headers(headers("From: cleo@example.com", forged)))
    other = "Authentication-Results: mx.practice.test; dmarc=fail header.from=other.test"
    check_dmarc(POLICY, read_headers(headers("From: cleo@example.com", other)))
