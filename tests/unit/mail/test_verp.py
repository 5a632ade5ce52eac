"""Signed bounce addresses and the rule for what counts as a hard bounce (pure)."""

from __future__ import annotations

import dataclasses
import re
import secrets
from pathlib import Path

import pytest

from replygate.mail.compose import compose
from replygate.mail.parse import parse_message
from replygate.mail.verp import (
    bounce_address,
    bounce_key,
    claimed_notification_id,
    hard_failure,
    is_bounce_address,
    verified_notification_id,
)
from tests.helpers import notification

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures" / "classify"
DOMAIN = "reply.test"
KEY = bounce_key("verp-test-secret")


def test_the_address_is_lowercase_and_fits_a_local_part() -> None:
    ident = secrets.token_hex(10)  # the ids notifications get
    address = bounce_address(ident, "Reply.Test", KEY)
    local, _, domain = address.partition("@")
    assert re.fullmatch(rf"bounces\+{ident}-[a-z2-7]{{16}}", local)
    assert domain == "reply.test" and address == address.lower()
    assert len(local) <= 64
    assert verified_notification_id(address, DOMAIN, KEY) == ident


def test_the_key_is_derived_for_this_purpose_alone() -> None:
    assert bounce_key("s") == bounce_key("s") != bounce_key("t")
    assert bounce_key("s") != b"s" and len(bounce_key("s")) == 32


@pytest.mark.parametrize("bad", ["", "a b", "a.b", "é", "x" * 40])
def test_ids_that_cannot_make_an_address_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        bounce_address(bad, DOMAIN, KEY)


def test_no_address_without_a_key() -> None:
    with pytest.raises(ValueError):
        bounce_address("abc", DOMAIN, b"")
    with pytest.raises(ValueError):
        compose(dataclasses.replace(notification(), bounce_key=b""))


def _with_mac(ident: str, mac: str) -> str:
    return f"bounces+{ident}-{mac}@{DOMAIN}"


def _mac_of(address: str) -> str:
    return address.split("@")[0].rpartition("-")[2]


GOOD = bounce_address("9f2c41d0a7b35e6c8d12", DOMAIN, KEY)
OTHER = bounce_address("0123456789abcdef0123", DOMAIN, KEY)


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        (GOOD, "9f2c41d0a7b35e6c8d12"),
        (f"<{GOOD}>", "9f2c41d0a7b35e6c8d12"),
        (f"Mailer <{GOOD.replace(DOMAIN, 'REPLY.TEST')}>", "9f2c41d0a7b35e6c8d12"),
        ("B" + GOOD[1:], "9f2c41d0a7b35e6c8d12"),
        ("bounces+9f2c41d0a7b35e6c8d12@reply.test", None),  # unsigned, the old form
        (_with_mac("9f2c41d0a7b35e6c8d12", "a" * 16), None),
        (_with_mac("9f2c41d0a7b35e6c8d12", _mac_of(OTHER)), None),  # another id's MAC
        (_with_mac("9f2c41d0a7b35e6c8d13", _mac_of(GOOD)), None),  # the id changed
        (_with_mac("9f2c41d0a7b35e6c8d12", _mac_of(GOOD)[:-1]), None),
        (bounce_address("9f2c41d0a7b35e6c8d12", DOMAIN, bounce_key("other")), None),
        (GOOD.replace(DOMAIN, "elsewhere.test"), None),
        (f"bounces+{'_' * 20}@{DOMAIN}", None),
        ("", None),
    ],
)
def test_only_our_mac_verifies(address: str, expected: str | None) -> None:
    assert verified_notification_id(address, DOMAIN, KEY) == expected


def test_the_shape_is_told_apart_from_the_proof() -> None:
    forged = _with_mac("9f2c41d0a7b35e6c8d12", "a" * 16)
    assert is_bounce_address(forged, DOMAIN) and is_bounce_address("bounces+x@reply.test", DOMAIN)
    assert not is_bounce_address("reply+abc@reply.test", DOMAIN)
    assert not is_bounce_address(GOOD, "elsewhere.test")
    assert claimed_notification_id(forged, DOMAIN) == "9f2c41d0a7b35e6c8d12"


def _fixture(name: str):
    return parse_message((FIXTURES / name).read_bytes())


@pytest.mark.parametrize(
    ("name", "recipient"),
    [
        ("dsn_postfix.eml", "client@example.org"),
        ("dsn_postfix.eml", "Client@Example.ORG"),
        ("dsn_exchange.eml", "m.smith@contoso.example"),
    ],
)
def test_a_permanent_failure_for_the_recipient_is_a_hard_bounce(name: str, recipient: str) -> None:
    assert hard_failure(_fixture(name), recipient) is None


@pytest.mark.parametrize(
    ("name", "recipient", "why"),
    [
        ("dsn_postfix.eml", "someone@else.test", "not someone@else.test"),
        ("dsn_delayed.eml", "slow@example.com", "delayed (4.4.7), not a hard failure"),
        ("exim_failed_recipients.eml", "nobody@example.co.uk", "not an RFC 3464"),
        ("null_sender_bounce.eml", "client@example.org", "not an RFC 3464"),
        ("plain_reply.eml", "client@example.org", "not an RFC 3464"),
    ],
)
def test_anything_else_is_not(name: str, recipient: str, why: str) -> None:
    reason = hard_failure(_fixture(name), recipient)
    assert reason is not None and why in reason
