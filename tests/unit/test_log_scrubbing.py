"""Fingerprints of reply tokens, and the redaction every log line goes through.

A token in a log is a password in a log: the fingerprint names it for an
operator (``tokens inspect`` shows the same one) and cannot be turned back
into it; ``redaction.redact`` rewrites every reply or bounce address and every
bare token of ours, and ``logs.configure`` runs it over each event after the
traceback is rendered and over stdlib logging.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import re
import sys
from collections.abc import Iterator

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from replygate import logs
from replygate.mail import reply_token
from replygate.mail.markers import TOKEN_LENGTH
from replygate.mail.redaction import redact

SECRET = "s" * 64
TOKEN = reply_token.new_token(SECRET, bytes(range(16)))
ADDRESS = reply_token.reply_address(TOKEN, "reply.test")
FP = reply_token.fingerprint(SECRET, TOKEN)
BOUNCE = "bounces+n0001abc-abcdefghijklmnop@reply.test"


def test_a_fingerprint_is_twelve_hex_characters_keyed_by_the_secret() -> None:
    assert re.fullmatch(r"[0-9a-f]{12}", FP)
    assert reply_token.fingerprint(SECRET, TOKEN) == FP
    assert reply_token.fingerprint(SECRET, TOKEN.upper()) == FP  # relays fold case
    assert reply_token.fingerprint("t" * 64, TOKEN) != FP
    assert FP not in TOKEN


@given(st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16))
def test_different_tokens_have_different_fingerprints(a: bytes, b: bytes) -> None:
    first, second = reply_token.new_token(SECRET, a), reply_token.new_token(SECRET, b)
    if first != second:
        assert reply_token.fingerprint(SECRET, first) != reply_token.fingerprint(SECRET, second)


def test_a_reply_address_becomes_its_fingerprint() -> None:
    text = f"recipient <{ADDRESS}> refused; also {ADDRESS.upper()}"
    assert redact(SECRET, text) == (
        f"recipient <reply+fp:{FP}@reply.test> refused; also REPLY+fp:{FP}@REPLY.TEST"
    )


def test_forged_tokens_and_other_domains_are_fingerprinted_too() -> None:
    forged = "reply+" + "a" * 34 + "@elsewhere.test"
    shown = redact(SECRET, f"{forged} is not a reply address of reply.test")
    assert "a" * 34 not in shown
    fingerprint = reply_token.fingerprint(SECRET, "a" * 34)
    assert shown == f"reply+fp:{fingerprint}@elsewhere.test is not a reply address of reply.test"


def test_a_bounce_address_becomes_its_fingerprint() -> None:
    fingerprint = reply_token.fingerprint(SECRET, "n0001abc-abcdefghijklmnop")
    assert redact(SECRET, f"sender refused: 550 <{BOUNCE}>") == (
        f"sender refused: 550 <bounces+fp:{fingerprint}@reply.test>"
    )


def test_a_token_of_ours_standing_alone_becomes_its_fingerprint() -> None:
    sql = f"[parameters: ('{TOKEN}', 3)]"
    assert redact(SECRET, sql) == f"[parameters: ('fp:{FP}', 3)]"
    assert redact(SECRET, TOKEN.upper()) == f"fp:{FP}"


def test_text_without_secrets_is_left_as_it_is() -> None:
    forged = "a" * 34  # base32 of the right length, but no tag of ours
    for text in ("cleo@example.com", f"id {forged}", "a+b@example.com", "reply+@x", ""):
        assert redact(SECRET, text) == text


def test_redacting_twice_changes_nothing_more() -> None:
    once = redact(SECRET, f"{ADDRESS} {BOUNCE} {TOKEN}")
    assert redact(SECRET, once) == once


def test_without_the_secret_addresses_are_hidden() -> None:
    assert redact(None, f"to {ADDRESS}") == "to reply+fp:hidden@reply.test"
    assert redact(None, f"to {BOUNCE}") == "to bounces+fp:hidden@reply.test"


@pytest.fixture
def json_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.BytesIO]:
    """structlog configured as a ``--log-json`` process configures it, writing to a buffer."""
    saved = structlog.get_config()
    out = io.BytesIO()
    stderr = io.TextIOWrapper(out, write_through=True)  # kept: closing it would close ``out``
    monkeypatch.setattr(sys, "stderr", stderr)
    logs.configure(json=True, redact=functools.partial(redact, SECRET), plain_below=TOKEN_LENGTH)
    yield out
    structlog.configure(**saved)
    stderr.detach()


def _lines(out: io.BytesIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_every_string_of_an_event_is_redacted_nested_ones_too(json_logs: io.BytesIO) -> None:
    logs.get_logger("t").info(
        f"event {ADDRESS}",
        rcpt=[ADDRESS, "cleo@example.com"],
        nested={"to": (ADDRESS,), "n": 3},
        error=ValueError(f"bad {ADDRESS}"),
    )
    (line,) = _lines(json_logs)
    assert TOKEN not in json_logs.getvalue().decode()
    shown = f"reply+fp:{FP}@reply.test"
    assert line["event"] == f"event {shown}"
    assert line["rcpt"] == [shown, "cleo@example.com"]
    assert line["nested"] == {"to": [shown], "n": 3}
    assert shown in str(line["error"])


def test_strings_the_processor_passes_uncalled_are_those_redact_keeps() -> None:
    """``plain_below``: the processor skips the call for strings without a "+" shorter
    than a token, which ``redact`` returns as they are; a bare token is not shorter."""
    assert len(TOKEN) == TOKEN_LENGTH
    assert redact(SECRET, TOKEN) == f"fp:{FP}"


@given(st.text(alphabet=st.characters(blacklist_characters="+"), max_size=TOKEN_LENGTH - 1))
def test_redact_keeps_every_short_string_without_a_plus(text: str) -> None:
    assert redact(SECRET, text) == text
    assert redact(None, text) == text


def test_bare_tokens_and_addresses_are_redacted_at_top_level_and_in_lists(
    json_logs: io.BytesIO,
) -> None:
    logs.get_logger("t").info("event", token=TOKEN, tokens=[TOKEN, "short"], to=ADDRESS)
    (line,) = _lines(json_logs)
    assert TOKEN not in json_logs.getvalue().decode()
    assert line["token"] == f"fp:{FP}"
    assert line["tokens"] == [f"fp:{FP}", "short"]
    assert line["to"] == f"reply+fp:{FP}@reply.test"


def test_a_rendered_traceback_is_redacted(json_logs: io.BytesIO) -> None:
    def lookup(address: str) -> None:
        raise LookupError(f"no route for {address}")

    try:
        lookup(ADDRESS)
    except LookupError as exc:
        logs.get_logger("t").error("inbound.error", exc_info=exc)
    (line,) = _lines(json_logs)
    assert "Traceback" in str(line["exception"])
    assert f"no route for reply+fp:{FP}@reply.test" in str(line["exception"])
    assert TOKEN not in json_logs.getvalue().decode()


def test_stdlib_records_and_their_tracebacks_are_redacted() -> None:
    formatter = logs.RedactingFormatter(functools.partial(redact, SECRET))
    try:
        raise OSError(f"cannot deliver to {ADDRESS}")
    except OSError:
        record = logging.LogRecord(
            "mail.log", logging.ERROR, __file__, 1, "session with %s", (ADDRESS,), sys.exc_info()
        )
    shown = formatter.format(record)
    assert TOKEN not in shown
    assert shown.startswith(f"mail.log: session with reply+fp:{FP}@reply.test")
    assert f"cannot deliver to reply+fp:{FP}@reply.test" in shown
