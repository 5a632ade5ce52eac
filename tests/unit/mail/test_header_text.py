"""Header text from people: decoded, cleaned, encoded by us, and read back the same."""

from __future__ import annotations

import re
from email import message_from_bytes, policy
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.utils import parseaddr

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from replygate.mail.header_text import MAX_ENCODED_WORD, MAX_LINE, clean, mailbox, unstructured

ENCODED_WORD = re.compile(r"=\?[^?]+\?[qQbB]\?[^?]*\?=")


def read_back(name: str, value: str) -> EmailMessage:
    """A header as written by ``value`` (CRLF on the wire), parsed as a mail client does."""
    wire = f"{name}: {value}".replace("\n", "\r\n") + "\r\n\r\n"
    for line in wire.split("\r\n"):
        assert len(line) <= MAX_LINE
    for word in ENCODED_WORD.findall(wire):
        assert len(word) <= MAX_ENCODED_WORD
    msg = message_from_bytes(wire.encode("ascii"), policy=policy.default)
    assert isinstance(msg, EmailMessage)
    assert list(msg.keys()) == [name]
    assert not msg.defects and not msg[name].defects
    return msg


@pytest.mark.parametrize(
    "text, read",
    [
        ("Your appointment", "Your appointment"),
        ("  spaced \t out  ", "spaced out"),
        ("one\r\nBcc: x@evil.test", "one Bcc: x@evil.test"),
        ("a\x00b\x0bc\x0cd\x1ce\x7ff\x85g\x9bh", "a b c d e f g h"),
        ("line\u2028para\u2029end", "line para end"),
        ("=?utf-8?q?=0D=0ABcc:_x@evil.test?=", "Bcc: x@evil.test"),
        ("=?UTF-8?B?DQpCY2M6IHhAZXZpbC50ZXN0?=", "Bcc: x@evil.test"),
        ("=?iso-8859-1?q?caf=E9?= =?utf-8?q?=C2=85?=ok", "café ok"),
        ("=?windows-1252?q?=93quoted=94?=", "“quoted”"),
        ("=?utf-8?q?a?= =?utf-8?q?b?=", "ab"),  # white space between encoded words goes
        ("x=?utf-8?q?=0A?=y", "x y"),  # the package decodes inside a word, so do we
        ("=?utf-8?q?=3D=3Futf-8=3Fq=3F=3D0A=3F=3D?=", "=?utf-8?q?=0A?="),  # decoded once only
        ("=?x-unknown?q?=0D=0A?= z", "z"),
        ("=\u200b?utf-8?q?=0A?=", ""),  # a dropped character hides no encoded word
        ("\u202eexe.txt\u202c \u2066iso\u2069 \u200fmark\u200e \ufeffbom", "exe.txt iso mark bom"),
        ("undecodable \udcff byte", "undecodable byte"),
        ("family 👩\u200d👧 ZWNJ ‌kept", "family 👩\u200d👧 ZWNJ ‌kept"),
        ("non\u00a0breaking\u3000spaces", "non breaking spaces"),
    ],
)
def test_clean(text: str, read: str) -> None:
    assert clean(text) == read


any_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=300)
hostile = st.builds(
    lambda before, inner, after: f"{before}=?utf-8?q?{inner}?={after}",
    st.text(max_size=20),
    st.text(alphabet="=0123456789ABCDEFabc_:@ \r\n", max_size=40),
    st.text(max_size=20),
)


@given(text=st.one_of(any_text, hostile))
@example(text="a" * 61 + " " + "b" * 60)
@example(text="é" * 200)
@example(text="x" * 5000)
def test_any_text_cleaned_is_written_and_read_back_unchanged(text: str) -> None:
    text = clean(text)
    msg = read_back("Subject", unstructured("Subject", text))
    assert str(msg["Subject"]) == text


words = st.text(alphabet=st.sampled_from("ab Z0.,'-()@<>\"\\:;#=?_é—"), max_size=70)


@given(name=st.one_of(words, any_text), address=st.sampled_from(["a@b.test", "o'brien@x.test"]))
@example(name="Smith, John", address="a@b.test")
@example(name='say "hi" \\ back', address="a@b.test")
@example(name='"' * 64, address="a@b.test")
@example(name="=?utf-8?q?x?= literally", address="a@b.test")
def test_any_display_name_names_one_mailbox(name: str, address: str) -> None:
    name = clean(name)
    value = mailbox("From", name, address)
    (only,) = read_back("From", value)["From"].addresses
    assert only.addr_spec == address
    # Python's parser keeps the space between two encoded words of a phrase, which
    # RFC 2047 (6.2) drops, as mail clients do; email.header reads them that way.
    phrase, _ = parseaddr(value.replace("\n", ""))
    assert str(make_header(decode_header(phrase))) == name


@pytest.mark.parametrize(
    "name, written",
    [
        ("Dr Ada", "Dr Ada <a@b.test>"),
        ("Smith, John", '"Smith, John" <a@b.test>'),
        ("José", "=?utf-8?q?Jos=C3=A9?= <a@b.test>"),
        ("", "a@b.test"),
    ],
)
def test_display_names_are_written_as_plainly_as_they_can_be(name: str, written: str) -> None:
    assert mailbox("To", name, "a@b.test") == written


def test_plain_ascii_words_stay_readable_and_other_runs_are_encoded_together() -> None:
    assert unstructured("Subject", "Re: Your appointment") == "Re: Your appointment"
    assert unstructured("Subject", "Termin für Montag") == "Termin =?utf-8?q?f=C3=BCr?= Montag"
    assert unstructured("Subject", "a =?b") == "a =?utf-8?q?=3D=3Fb?="


@pytest.mark.parametrize(
    "text", [" lead", "trail ", "two  spaces", "tab\there", "a\r\nb", "\u202e"]
)
def test_text_that_was_not_cleaned_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        unstructured("Subject", text)
    with pytest.raises(ValueError):
        mailbox("To", text, "a@b.test")


@pytest.mark.parametrize(
    "address", ["", "a b@c", "a@b@c", "<a@b>", "a,b@c", 'a"b@c', "a@b\r\nBcc: x@y", "jösé@x.test"]
)
def test_addresses_that_are_not_plain_are_refused(address: str) -> None:
    with pytest.raises(ValueError):
        mailbox("To", "Name", address)
