"""Composing notifications: pure, stdlib-parsed, nothing leaking in Secure Mode."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from replygate.errors import HeaderMismatch
from replygate.mail import compose as compose_module
from replygate.mail.compose import (
    SECURE_SUBJECT,
    ComposedMail,
    Notification,
    compose,
    message_id_for,
    verp_sender,
)
from replygate.mail.markers import LOOP_HEADER, REPLY_ABOVE_LINE
from replygate.mail.verp import bounce_address, verified_notification_id
from tests.helpers import BOUNCE_KEY, notification

NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
SECRET_SUBJECT = "Biopsy results for Quixotic Marmalade"
SECRET_BODY = (
    "Your ferritin level came back elevated.\n"
    "Please bring the xylophone paperwork.\n"
    "Caffè latte — ünïcödé line"
)
SECRET_AUTHOR = "Dr Wolfgang Pemberton"


def parse(mail: ComposedMail) -> EmailMessage:
    msg = message_from_bytes(mail.raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def secure(**changes: object):
    """A secure notification whose caller wrongly also passed content: it must be dropped."""
    return notification(
        mode="secure",
        subject=SECRET_SUBJECT,
        body=SECRET_BODY,
        author_name=SECRET_AUTHOR,
        reply_address="reply+abcdefabcdef@reply.test",
        **changes,
    )


def test_ids_and_verp_sender_have_the_agreed_shape() -> None:
    assert message_id_for("abc-123_x", "reply.test") == "<rg.n.abc-123_x@reply.test>"
    signed = verp_sender("abc-123_x", "reply.test", BOUNCE_KEY)
    assert signed == bounce_address("abc-123_x", "reply.test", BOUNCE_KEY)
    assert verified_notification_id(signed, "reply.test", BOUNCE_KEY) == "abc-123_x"


@pytest.mark.parametrize("bad", ["", "a b", "a@b", "a\r\nb", "é", "x" * 57, "a.b"])
def test_notification_ids_must_be_url_safe(bad: str) -> None:
    with pytest.raises(ValueError):
        message_id_for(bad, "reply.test")
    with pytest.raises(ValueError):
        verp_sender(bad, "reply.test", BOUNCE_KEY)


def test_secure_mode_leaks_neither_subject_nor_body_nor_author() -> None:
    """Secure Mode: the raw bytes and the decoded text hold no subject, no line
    of the body, no author name and no reply address; only the portal link."""
    mail = compose(secure(), now=NOW)
    msg = parse(mail)
    decoded = msg.get_content()
    everything = mail.raw.decode("ascii") + "\n" + decoded + "\n" + str(dict(msg.items()))
    for secret in [SECRET_SUBJECT, SECRET_AUTHOR, *SECRET_BODY.splitlines()]:
        assert secret not in everything
    for word in ["Quixotic", "Marmalade", "ferritin", "xylophone", "Caff", "Pemberton"]:
        assert word.lower() not in everything.lower()
    assert "reply+" not in everything
    assert REPLY_ABOVE_LINE not in everything
    assert msg["Subject"] == SECURE_SUBJECT
    assert msg["Reply-To"] is None
    assert "http://portal.test/threads/1" in decoded


def test_secure_mode_has_the_protective_headers() -> None:
    mail = compose(secure(), now=NOW)
    msg = parse(mail)
    assert msg["Message-ID"] == "<rg.n.n0001abc@reply.test>" == mail.message_id
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["X-Auto-Response-Suppress"] == "All"
    assert msg[LOOP_HEADER] == "n0001abc"
    assert msg["From"].addresses[0].addr_spec == "notifications@reply.test"
    assert msg["From"].addresses[0].display_name == "Acme Clinic"
    assert msg["To"].addresses[0].addr_spec == "client1@example.com"
    assert mail.envelope_from == bounce_address("n0001abc", "reply.test", BOUNCE_KEY)
    assert mail.recipient == "client1@example.com"


def test_content_mode_carries_every_header() -> None:
    n = notification(in_reply_to="<rg.n.earlier@reply.test>", references=("<first@x.test>",))
    mail = compose(n, now=NOW)
    msg = parse(mail)
    assert msg["Subject"] == "Re: Your appointment"
    assert msg["Reply-To"].addresses[0].addr_spec == "reply+abcdefabcdef@reply.test"
    assert msg["In-Reply-To"] == "<rg.n.earlier@reply.test>"
    assert msg["References"].split() == ["<first@x.test>", "<rg.n.earlier@reply.test>"]
    assert msg["Message-ID"] == message_id_for("n0001abc", "reply.test")
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["X-Auto-Response-Suppress"] == "All"
    assert msg["Precedence"] == "bulk"
    assert msg[LOOP_HEADER] == "n0001abc"
    assert msg["MIME-Version"] == "1.0"
    assert msg["Date"].datetime == NOW
    assert msg.get_content_type() == "text/plain"
    assert msg.get_content_charset() == "utf-8"
    assert msg["From"].addresses[0].display_name == "Dr Ada via Acme Clinic"


def test_content_mode_body_has_marker_on_top_then_content_then_link() -> None:
    mail = compose(notification(body=SECRET_BODY), now=NOW)
    text = parse(mail).get_content()
    lines = text.splitlines()
    # A blank line to type into, then the marker: a reply's quoted copy carries it.
    assert lines[0] == ""
    assert lines[1] == REPLY_ABOVE_LINE
    for line in SECRET_BODY.splitlines():
        assert line in lines
    assert "Dr Ada wrote:" in lines
    assert text.index(REPLY_ABOVE_LINE) < text.index(SECRET_BODY.splitlines()[0])
    assert lines[-1] == "http://portal.test/threads/1"


def test_first_notification_in_a_thread_keeps_its_subject() -> None:
    msg = parse(compose(notification(), now=NOW))
    assert msg["Subject"] == "Your appointment"
    assert msg["In-Reply-To"] is None
    assert msg["References"] is None
    again = parse(compose(notification(subject="RE: x", in_reply_to="<a@b>"), now=NOW))
    assert again["Subject"] == "RE: x"


def test_raw_is_seven_bit_with_crlf_line_endings() -> None:
    """Quoted-printable keeps non-ASCII content passable through any relay."""
    mail = compose(notification(body=SECRET_BODY, to_name="Zoë Ångström", subject="Ça va?"))
    assert all(b < 128 for b in mail.raw)
    assert b"\r\n" in mail.raw
    assert b"\n" not in mail.raw.replace(b"\r\n", b"")
    msg = parse(mail)
    assert "Caffè latte — ünïcödé line" in msg.get_content()
    assert msg["To"].addresses[0].display_name == "Zoë Ångström"
    assert msg["Subject"] == "Ça va?"


def test_content_mode_requires_a_reply_address() -> None:
    with pytest.raises(ValueError):
        compose(notification(reply_address=None))


@pytest.mark.parametrize(
    "field, value",
    [
        ("to_address", "victim@example.com\r\nBcc: spy@evil.test"),
        ("to_address", "Name <a@b.test>"),
        ("from_address", "x@y.test, z@evil.test"),
        ("reply_address", "reply+a@b.test\nBcc: spy@evil.test"),
        ("reply_domain", "reply.test\r\nBcc: x"),
        ("mode", "plain"),
    ],
)
def test_malformed_addresses_are_refused(field: str, value: str) -> None:
    with pytest.raises(ValueError):
        compose(dataclasses.replace(notification(), **{field: value}))


def test_malformed_threading_ids_are_dropped() -> None:
    msg = parse(
        compose(notification(in_reply_to="<a@b>\r\nBcc: x@y", references=("junk", "<c@d>")))
    )
    assert msg["In-Reply-To"] is None
    assert msg["References"] == "<c@d>"
    assert msg["Bcc"] is None


header_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=120
).map(lambda s: s + "\r\nBcc: spy@evil.test\nX-Injected: yes")


@given(subject=header_text, name=header_text, author=header_text, org=header_text)
def test_header_text_can_never_inject_a_header(
    subject: str, name: str, author: str, org: str
) -> None:
    """CR/LF (or any control character) in a subject or name never starts a header."""
    mail = compose(
        notification(subject=subject, to_name=name, author_name=author, organisation=org),
        now=NOW,
    )
    msg = parse(mail)
    assert msg["Bcc"] is None
    assert msg["X-Injected"] is None
    for header in ("Subject", "To", "From", "Reply-To", "Message-ID"):
        assert len(msg.get_all(header) or []) == 1
    assert msg["To"].addresses[0].addr_spec == "client1@example.com"
    assert msg["From"].addresses[0].addr_spec == "notifications@reply.test"
    assert not msg.defects


def _through_the_email_package(n: Notification) -> bytes:
    """The same notification with every header and the body made by the email package."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(compose_module, "_STORE_PLAIN_AS_IS", False)
        return compose(n, now=NOW).raw


# Mostly the words, names and punctuation of real headers, now and then anything at all.
words = st.text(alphabet=st.sampled_from("ab Z0 .,'-()@<>\"\\:;#=?_é —\t"), max_size=90)
anything = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=90)
header_value = st.one_of(words, words, anything)


@given(
    mode=st.sampled_from(["secure", "content"]),
    subject=header_value,
    name=header_value,
    author=header_value,
    org=header_value,
    to_local=st.sampled_from(["client1", "o'brien", "a.b+c", "x=y"]),
    in_reply_to=st.sampled_from([None, "<rg.n.earlier@reply.test>", "<" + "x" * 70 + "@y.test>"]),
    body=st.one_of(
        st.text(
            alphabet=st.sampled_from("ab =.\t\r\n\x0b\x0c\x85\u2028é—\U0001f600"), max_size=300
        ),
        st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=300),
    ),
)
@example(
    mode="content",
    subject="Re: x",
    name="Smith, John",
    author="Dr. Ada",
    org="O'Brien & Sons",
    to_local="client1",
    in_reply_to=None,
    body="x" * 200 + " \nFrom here.\n.\nend=\t",
)
@example(
    mode="content",
    subject="=?utf-8?q?hi?=",
    name="a  b",
    author="",
    org="x" * 64,
    to_local="client1",
    in_reply_to="<rg.n.earlier@reply.test>",
    body="",
)
def test_plain_headers_are_written_exactly_as_the_email_package_writes_them(
    mode: str,
    subject: str,
    name: str,
    author: str,
    org: str,
    to_local: str,
    in_reply_to: str | None,
    body: str,
) -> None:
    """Headers and body written directly (the fast path) give the very bytes
    that the email package gives when it parses, folds and encodes them all."""
    n = notification(
        mode=mode,
        subject=subject,
        to_name=name,
        author_name=author,
        organisation=org,
        to_address=f"{to_local}@example.com",
        in_reply_to=in_reply_to,
        references=("<first@x.test>",) if in_reply_to else (),
        body=body,
    )
    assert compose(n, now=NOW).raw == _through_the_email_package(n)


@pytest.mark.parametrize(
    "reply_to",
    [
        "<reply+eve@reply.test>",  # another mailbox than the one meant
        "<reply+abc@reply.test>, <eve@evil.test>",  # a second mailbox beside it
    ],
)
def test_the_check_refuses_a_mailbox_header_naming_another_mailbox_every_time(
    reply_to: str,
) -> None:
    """The mailbox check reads each header value once and remembers it: a value
    seen before is refused again just the same, and the right one passes."""
    meant = "reply+abc@reply.test"
    names = ["From", "Reply-To"]
    written = {"From": "Clinic <notifications@reply.test>"}
    mailboxes: dict[str, str | None] = {"From": "notifications@reply.test", "Reply-To": meant}
    head = "From: Clinic <notifications@reply.test>\r\n"
    for _ in range(2):
        raw = f"{head}Reply-To: {reply_to}\r\n\r\nbody\r\n".encode()
        with pytest.raises(HeaderMismatch, match="Reply-To does not name the one mailbox"):
            compose_module._verify(raw, names, written, mailboxes)
        compose_module._verify(
            f"{head}Reply-To: <{meant}>\r\n\r\nbody\r\n".encode(), names, written, mailboxes
        )
