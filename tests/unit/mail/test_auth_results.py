"""Our Authentication-Results: written so it reads back as meant, and outside claims removed."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from replygate.mail import sender
from replygate.mail.auth_results import (
    DkimOutcome,
    MailAuthentication,
    header_end,
    safe_value,
    stamp,
    strip_claims,
)

BODY = b"\r\nHello.\r\n"


def _found(**changes: object) -> MailAuthentication:
    values: dict[str, object] = {
        "spf": "pass",
        "dkim": (DkimOutcome("pass", "client.test", "s1"),),
        "arc": "none",
        "dmarc": "pass",
        "mail_from": "cleo@client.test",
        "from_domain": "client.test",
        "dmarc_policy": "reject",
    }
    values.update(changes)
    return MailAuthentication(**values)  # type: ignore[arg-type]


def test_the_header_reads_back_as_written() -> None:
    value = _found().header_value("reply.test").replace("\r\n", " ")
    authserv, results = sender.parse_authentication_result(value)
    assert authserv == "reply.test"
    assert [(m, r) for m, r, _ in results] == [
        ("spf", "pass"),
        ("dkim", "pass"),
        ("arc", "none"),
        ("dmarc", "pass"),
    ]
    assert results[3][2] == {"policy.dmarc": "reject", "header.from": "client.test"}
    assert sender.dmarc_result([value], {"reply.test"}, "client.test") == "pass"


@pytest.mark.parametrize(
    "domain",
    [
        "evil.test; dmarc=pass header.from=client.test",
        'evil.test"; dmarc=pass',
        "evil.test\r\nBcc: x@evil.test",
        "evil.test (dmarc=pass)",
    ],
)
def test_a_hostile_from_domain_cannot_add_a_result(domain: str) -> None:
    """Left out: no value of the mail's can end a result and start another, and a
    failure that names no domain counts as one for any From."""
    value = _found(dmarc="fail", from_domain=domain).header_value("reply.test")
    assert "\r\n" not in value.replace("\r\n\t", "")
    flat = value.replace("\r\n", " ")
    assert sender.dmarc_result([flat], {"reply.test"}, "client.test") == "fail"
    _, results = sender.parse_authentication_result(flat)
    assert [m for m, _, _ in results].count("dmarc") == 1
    assert "header.from" not in flat


def test_comments_cannot_close_early() -> None:
    value = _found(spf="fail", spf_reason="x) ; dmarc=pass (y").header_value("reply.test")
    flat = value.replace("\r\n", " ")
    _, results = sender.parse_authentication_result(flat)
    assert [m for m, _, _ in results] == ["spf", "dkim", "arc", "dmarc"]


def test_safe_values() -> None:
    assert safe_value("client.test") == "client.test"
    assert safe_value("cleo+x@client.test") == "cleo+x@client.test"
    assert safe_value("a..b") == "invalid"
    assert safe_value("") == "invalid"
    assert safe_value("[127.0.0.1]") == "invalid"


@pytest.mark.parametrize(
    "field",
    [
        b"Authentication-Results: reply.test; dmarc=pass",
        b"authentication-results: REPLY.TEST; dmarc=pass",
        b"Authentication-Results: (ours) reply.test 1;\r\n\tdmarc=pass\r\n\theader.from=c.test",
        b"Authentication-Results :reply.test;dmarc=pass",
    ],
)
def test_claims_to_our_authserv_id_are_removed(field: bytes) -> None:
    raw = b"Received: by mx\r\n" + field + b"\r\nFrom: a@c.test\r\nSubject: x\r\n" + BODY
    assert strip_claims(raw, "reply.test") == (
        b"Received: by mx\r\nFrom: a@c.test\r\nSubject: x\r\n" + BODY
    )


def test_the_last_field_of_the_block_can_go_without_touching_the_body() -> None:
    raw = b"From: a@c.test\r\nAuthentication-Results: reply.test; dmarc=pass\r\n" + BODY
    assert strip_claims(raw, "reply.test") == b"From: a@c.test\r\n" + BODY


def test_others_results_and_the_body_stay_byte_for_byte() -> None:
    raw = (
        b"Authentication-Results: mx.reply.test.evil; dmarc=pass\r\n"
        b"Authentication-Results: relay.example; dmarc=pass\r\nFrom: a@c.test\r\n\r\n"
        b"Authentication-Results: reply.test; dmarc=pass\r\n"
    )
    assert strip_claims(raw, "reply.test") is raw


def test_stamp_puts_ours_first() -> None:
    raw = b"From: a@c.test\r\n" + BODY
    assert stamp(raw, "reply.test; dmarc=none") == (
        b"Authentication-Results: reply.test; dmarc=none\r\n" + raw
    )


@given(st.lists(st.sampled_from([b"a", b":", b" ", b"\r", b"\n", b"\r\n"]), max_size=24))
def test_the_header_block_ends_at_the_first_blank_line_of_either_kind(pieces: list[bytes]) -> None:
    """After the first CRLF CRLF or bare LF LF, whichever comes first, as ``read_headers``
    ends it; the end of the mail when there is neither."""
    raw = b"".join(pieces)
    crlf, lf = raw.find(b"\r\n\r\n"), raw.find(b"\n\n")
    ends = [at + width for at, width in ((crlf, 2), (lf, 1)) if at != -1]
    assert header_end(raw) == min(ends, default=len(raw))
