"""The token codec: unguessable, lowercase, fits a local part, refuses forgeries."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from replygate.mail import reply_token as rt

SECRET = "s" * 64


@given(st.binary(min_size=16, max_size=16))
def test_token_round_trips_through_an_address(raw: bytes) -> None:
    token = rt.new_token(SECRET, raw)
    address = rt.reply_address(token, "Reply.Example.org")
    assert len(address.split("@")[0]) <= 64
    assert token == token.lower() and len(token) == rt.TOKEN_LENGTH
    assert rt.token_from_address(address.upper(), "reply.example.org") == token
    assert rt.is_authentic(SECRET, token)


@given(st.binary(min_size=16, max_size=16), st.integers(min_value=0, max_value=33), st.data())
def test_any_changed_character_is_refused(raw: bytes, pos: int, data: st.DataObject) -> None:
    token = rt.new_token(SECRET, raw)
    other = data.draw(st.sampled_from(sorted(rt._ALPHABET - {token[pos]})))
    forged = token[:pos] + other + token[pos + 1 :]
    assert not rt.is_authentic(SECRET, forged)


def test_token_from_another_secret_is_refused() -> None:
    assert not rt.is_authentic(SECRET, rt.new_token("t" * 64))


def test_tokens_are_distinct() -> None:
    assert len({rt.new_token(SECRET) for _ in range(1000)}) == 1000


@given(st.text(max_size=80))
def test_garbage_is_never_authentic(text: str) -> None:
    assert not rt.is_authentic(SECRET, text) or len(text) == rt.TOKEN_LENGTH


def test_foreign_domain_and_plain_addresses_are_not_reply_addresses() -> None:
    token = rt.new_token(SECRET)
    assert rt.token_from_address(f"reply+{token}@evil.example", "reply.localhost") is None
    assert rt.token_from_address("postmaster@reply.localhost", "reply.localhost") is None
    assert rt.token_from_address("reply+@reply.localhost", "reply.localhost") is None
    assert rt.token_from_address(f"<reply+{token}@reply.localhost>", "reply.localhost") == token
