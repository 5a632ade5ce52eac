"""Decoding that never gives up: the shapes fuzzing found, each with the text it must give.

Every mail here is the attacker's (or a broken client's) bytes, and the
assertion is the outcome a person needs: the reply's words, with a defect
saying what was guessed.
"""

from __future__ import annotations

import base64

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from replygate.mail import nesting
from replygate.mail.decoding import (
    decode_base64,
    decode_header_value,
    decode_text,
    transfer_encoding,
)
from replygate.mail.extract.reply import extract_from_parts
from replygate.mail.parse import MAX_ENCODED_WORDS, parse_message

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
HEAD = b"From: Ann <ann@example.org>\r\nTo: reply+t@reply.example.org\r\nSubject: re\r\n"
LABELS = [
    "rot13",
    "base64",
    "undefined",
    "utf-16",
    "utf-8",
    "iso-2022-jp",
    "utf-7",
    "idna",
    "punycode",
    "unicode_escape",
]
NON_TEXT_CODECS = ["rot13", "base64", "hex", "quoted-printable", "zip", "uu", "bz2", "undefined"]


@pytest.mark.parametrize("label", NON_TEXT_CODECS)
def test_non_text_codec_label_on_a_body_falls_back_with_a_defect(label: str) -> None:
    """A codec that is no charset (rot13, base64, ...) is read as undeclared, not raised."""
    raw = (
        HEAD
        + f"Content-Type: text/plain; charset={label}\r\n\r\n".encode()
        + "Oui, à jeudi".encode()
    )
    parsed = parse_message(raw)
    assert parsed.from_address == "ann@example.org"
    assert parsed.text_plain == "Oui, à jeudi"
    assert any(label in d and "decoded as UTF-8" in d for d in parsed.defects)


@pytest.mark.parametrize("label", NON_TEXT_CODECS)
def test_non_text_codec_label_in_an_encoded_word(label: str) -> None:
    raw = (
        b"From: =?" + label.encode() + b"?q?Ren=E9?= <rene@example.org>\r\n"
        b"Subject: =?" + label.encode() + b"?q?caf=E9?=\r\n\r\nYes\r\n"
    )
    parsed = parse_message(raw)
    assert parsed.subject == "café"
    assert parsed.from_address == "rene@example.org"
    assert parsed.text_plain == "Yes\n"


@pytest.mark.parametrize("label", [*NON_TEXT_CODECS, "x-no-such", "utf-8\x00"])
def test_decode_text_never_raises_on_a_bad_label(label: str) -> None:
    text, note = decode_text(b"caf\xe9 cr\xe8me", label)
    assert text == "café crème"
    assert note is not None


def test_utf16_without_bom_is_recognised_under_any_label() -> None:
    for label in (None, "us-ascii", "utf-8", "utf-16"):
        assert decode_text("Yes, see you".encode("utf-16-le"), label)[0] == "Yes, see you"
        assert decode_text("Yes, see you".encode("utf-16-be"), label)[0] == "Yes, see you"


def test_utf16_html_part_does_not_beat_a_good_plain_part() -> None:
    """A UTF-16 HTML part without a BOM decodes as text, and never as NUL-laden 'bigger' text."""
    html = "<p>Yes, Thursday works.</p>".encode("utf-16-le")
    raw = (
        HEAD + b'Content-Type: multipart/alternative; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nYes, Thursday works.\r\n"
        b"--b\r\nContent-Type: text/html\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(html)
        + b"--b--\r\n"
    )
    parsed = parse_message(raw)
    assert parsed.text_html is not None and "\x00" not in parsed.text_html
    assert extract_from_parts(parsed.text_plain, parsed.text_html).reply == "Yes, Thursday works."


def test_html_that_did_not_decode_cleanly_never_replaces_plain() -> None:
    plain = "Yes."
    html = "<p>" + "\ufffd" * 40 + " mostly garbage after a bad guess</p>"
    assert extract_from_parts(plain, html).reply == "Yes."
    assert extract_from_parts(None, html).reply.startswith("\ufffd")


@pytest.mark.parametrize("cte", ["base64 ", " BASE64", '"base64"', "Base64 (sloppy)"])
def test_transfer_encoding_names_are_normalised(cte: str) -> None:
    body = base64.encodebytes(b"Yes, see you then.")
    raw = HEAD + f"Content-Transfer-Encoding: {cte}\r\n\r\n".encode() + body
    assert parse_message(raw).text_plain == "Yes, see you then."
    assert transfer_encoding(cte) == "base64"


def test_quoted_printable_with_trailing_space_is_decoded() -> None:
    raw = HEAD + b"Content-Transfer-Encoding: Quoted-Printable \r\n\r\nOui =C3=A0 jeudi=\r\n.\r\n"
    assert parse_message(raw).text_plain == "Oui à jeudi.\n"


def test_base64_one_character_past_a_group_is_decoded_with_a_defect() -> None:
    coded = base64.b64encode(b"Yes, Thursday at ten.").decode() + "Q"
    raw = HEAD + b"Content-Transfer-Encoding: base64\r\n\r\n" + coded.encode() + b"\r\n"
    parsed = parse_message(raw)
    assert parsed.text_plain == "Yes, Thursday at ten."
    assert any("base64" in d for d in parsed.defects)


def test_concatenated_base64_chunks_are_all_decoded() -> None:
    text = base64.b64encode(b"Yes") + base64.b64encode(b", fine.") + b"\r\n"
    assert decode_base64(text.decode())[0] == b"Yes, fine."


def test_encoded_words_split_inside_a_character_are_joined() -> None:
    value = "Re: =?utf-8?q?caf=C3?= =?utf-8?q?=A9?= et =?iso-8859-1?b?6Q==?="
    assert decode_header_value(value) == "Re: café et é"


def test_a_subject_of_many_encoded_words_is_decoded_in_linear_time() -> None:
    words = MAX_ENCODED_WORDS * 20
    raw = HEAD.replace(b"Subject: re", b"Subject:" + b" =?utf-8?q?a?=" * words) + b"\r\nYes\r\n"
    parsed = parse_message(raw)
    assert parsed.subject == "a" * words
    assert parsed.text_plain == "Yes\n"
    assert any("encoded words" in d for d in parsed.defects)


def _nested(depth: int, *, rfc822: bool = False) -> bytes:
    if rfc822:
        inner = b"Content-Type: message/rfc822\r\n\r\n" * depth + b"Subject: x\r\n\r\nx\r\n"
        return (
            HEAD + b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
            b"--b\r\nContent-Type: text/plain\r\n\r\nYes, fine.\r\n--b\r\n" + inner + b"--b--\r\n"
        )
    parts = [b"--b0\r\nContent-Type: text/plain\r\n\r\nYes, fine.\r\n"]
    for i in range(1, depth + 1):
        parts.append(b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i - 1, i))
    parts.append(b"--b%d\r\nContent-Type: text/plain\r\n\r\ndeep\r\n" % depth)
    parts.extend(b"--b%d--\r\n" % i for i in range(depth, -1, -1))
    return HEAD + b'Content-Type: multipart/mixed; boundary="b0"\r\n\r\n' + b"".join(parts)


@pytest.mark.parametrize("rfc822", [False, True])
def test_a_thousand_levels_keep_the_reply(rfc822: bool) -> None:
    parsed = parse_message(_nested(1000, rfc822=rfc822))
    assert parsed.text_plain == "Yes, fine."
    assert any("nested deeper" in d for d in parsed.defects)


def test_nesting_is_measured_without_recursion() -> None:
    """Four levels: the top multipart and the three inside it."""
    assert nesting.too_deep(_nested(3), limit=3)
    assert not nesting.too_deep(_nested(3), limit=4)
    assert nesting.too_deep(_nested(1000))
    assert nesting.too_deep(_nested(1000, rfc822=True))
    assert not nesting.too_deep(_nested(nesting.MAX_NESTING - 1))
    assert not nesting.too_deep(HEAD + b"\r\nplain\r\n")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.sampled_from(
            [
                b"Content-Type: multipart/mixed; boundary=b\r\n",
                b"content-type: message/rfc822\r\n",
                b"Content-Type: text/plain\r\n",
                b"Subject: x\r\n",
                b"--b\r\n",
                b"--b--\r\n",
                b"\r\n",
                b"\n",
                b"\r\r\n",
                b"body\r\n",
            ]
        ),
        max_size=16,
    )
)
def test_the_quick_answers_agree_with_the_scan(pieces: list[bytes]) -> None:
    """Whatever the shortcuts decide, the full scan would have decided too."""
    raw = b"".join(pieces)
    for limit in (0, 1, 2):
        found = nesting._scan(raw, limit)
        assert nesting.too_deep(raw, limit=limit) == (found.depth > limit)
        assert nesting.prune(raw, limit=limit)[1] == bool(found.cuts)


@pytest.mark.parametrize("spelling", [b"content-type", b"CONTENT-TYPE", b"cONTENT-tYPE"])
def test_nesting_is_measured_however_content_type_is_spelled(spelling: bytes) -> None:
    """The count that spares most mail the full scan sees every spelling."""
    raw = _nested(nesting.MAX_NESTING + 5).replace(b"Content-Type", spelling)
    assert nesting.too_deep(raw)
    assert not nesting.too_deep(_nested(3).replace(b"Content-Type", spelling), limit=4)


def test_pruning_keeps_what_follows_the_deep_part() -> None:
    """Only the bodies past the limit go; a part after the deep attachment stays."""
    deep = _nested(200)
    tail = b"--b0\r\nContent-Type: text/plain\r\n\r\nP.S. see you\r\n--b0--\r\n"
    raw = deep[: deep.rindex(b"--b0--")] + tail
    pruned, cut = nesting.prune(raw)
    assert cut and len(pruned) < len(raw)
    assert parse_message(raw).text_plain == "Yes, fine.\nP.S. see you"


_HOSTILE = st.sampled_from(
    [
        b"Content-Type: text/plain; charset=rot13\r\n",
        b"Content-Type: text/plain; charset=undefined\r\n",
        b"Content-Type: multipart/mixed; boundary=b\r\n",
        b"Content-Type: message/rfc822\r\n",
        b"Content-Transfer-Encoding: base64 \r\n",
        b"Content-Transfer-Encoding: quoted-printable\r\n",
        b"Subject: =?hex?q?=E9?= =?utf-8?b?w6k?= =?x?q?=?=\r\n",
        b"--b\r\n",
        b"--b--\r\n",
        b"\r\n",
        b"=?utf-8?q?",
        b"Y\x00e\x00s\x00",
        b"\xff\xfe",
        b"AB> quoted\r\n",
        b"<blockquote>",
        b"caf\xe9\r\n",
        b"WWVzQ\r\n",
    ]
)


@SETTINGS
@given(st.lists(st.one_of(_HOSTILE, st.binary(max_size=20)), max_size=40))
@example([b"Content-Type: message/rfc822\r\n", b"\r\n"] * 40)
def test_parse_and_extract_never_raise_on_hostile_shapes(chunks: list[bytes]) -> None:
    parsed = parse_message(HEAD + b"".join(chunks))
    extract_from_parts(parsed.text_plain, parsed.text_html, budget_s=5.0)


@SETTINGS
@given(
    st.binary(max_size=300),
    st.one_of(st.none(), st.text(max_size=20), st.sampled_from(NON_TEXT_CODECS)),
)
@example(b"\xff\xfeY", "utf-16")
@example(b"caf\xe9", "rot13")
def test_decode_text_never_raises(data: bytes, label: str | None) -> None:
    text, _ = decode_text(data, label)
    assert isinstance(text, str)


@SETTINGS
@given(st.text(max_size=300))
@example("=?utf-8?q?=?= =?rot13?b?QQ?= =?utf-16?b?WQBlAHMA?=")
def test_decode_header_value_never_raises(value: str) -> None:
    assert isinstance(decode_header_value(value), str)


@SETTINGS
@given(st.text(max_size=300))
def test_decode_base64_never_raises(value: str) -> None:
    assert isinstance(decode_base64(value)[0], bytes)
