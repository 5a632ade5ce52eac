"""Header injection: a person's text never becomes a header of a mail we send.

A client writes the subject of a thread, and staff and clients have display
names; in Convenience Mode they go into the notification's headers. Python
3.11's email folder decodes RFC 2047 encoded words and writes what they decode
to back raw (the CVE-2024-6923 class), so an encoded CR/LF in a subject turned
into real ``Cc``, ``Bcc``, ``Disposition-Notification-To`` and
``Content-Type: text/html`` headers of the staff's notification.

Each case is the text as the attacker types it; the safe outcome is a mail
whose headers are exactly those we meant, in order, with the text still
readable minus its control characters. The last tests go through the real
flow: a client posts in the portal, the outbound worker delivers the staff's
notification into the Maildir outbox, and the delivered file is read.
"""

from __future__ import annotations

import base64
import mailbox
import unicodedata
from collections.abc import Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.policy import EmailPolicy

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from structlog.testing import capture_logs

from replygate.config import Settings
from replygate.core.accounts import hash_password
from replygate.core.messaging import Messaging
from replygate.errors import HeaderMismatch
from replygate.mail import compose as compose_module
from replygate.mail.compose import compose
from replygate.mail.markers import REPLY_ABOVE_LINE
from replygate.store import directory
from replygate.store.db import transaction
from replygate.store.models import Message, OutboxMessage
from replygate.workers.drain import drain_once
from tests.helpers import notification
from tests.portal_support import PASSWORD, Client, serve_in_thread

# The headers of a content notification, in this order, and nothing else.
INTENDED = (
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "Auto-Submitted",
    "X-Auto-Response-Suppress",
    "Precedence",
    "X-Replygate-Loop",
    "Content-Type",
    "Content-Transfer-Encoding",
    "MIME-Version",
)
# A notification that continues a thread also names the one before it.
INTENDED_IN_THREAD = (*INTENDED[:6], "In-Reply-To", "References", *INTENDED[6:])

# What the attacker wants the staff's mail client to read as headers: copies to
# them, a read receipt, and the body shown as HTML.
PAYLOAD = (
    "\r\nCc: x@evil.test"
    "\r\nBcc: y@evil.test"
    "\r\nDisposition-Notification-To: z@evil.test"
    "\r\nContent-Type: text/html"
    "\r\n"
)
# The same text as a person reads it once the line breaks are gone.
PAYLOAD_READ = " ".join(PAYLOAD.split())


def q(text: str, charset: str = "utf-8", letter: str = "q", codec: str = "") -> str:
    """``text`` as one "Q" encoded word, every byte but ASCII letters and digits as =XX."""
    data = text.encode(codec or charset)
    body = "".join(chr(c) if chr(c).isascii() and chr(c).isalnum() else f"={c:02X}" for c in data)
    return f"=?{charset}?{letter}?{body}?="


def b(text: str, charset: str = "utf-8", letter: str = "b") -> str:
    """``text`` as one "B" (base64) encoded word."""
    data = base64.b64encode(text.encode(charset)).decode()
    return f"=?{charset}?{letter}?{data}?="


def long_subject(word: str) -> str:
    """The encoded word amid enough ordinary words that the subject must be folded."""
    return f"Lab results for this week {word} please read before our appointment on Monday"


LONG_READ = f"Lab results for this week {PAYLOAD_READ} please read before our appointment on Monday"

ENCODED_SUBJECTS = {
    "q, utf-8, as in the report": (
        "=?utf-8?q?=0D=0ACc:_x@evil.test=0D=0ABcc:_y@evil.test=0D=0A"
        "Disposition-Notification-To:_z@evil.test=0D=0AContent-Type:_text/html=0D=0A?="
    ),
    "q, utf-8, lowercase": q(PAYLOAD),
    "Q, UTF-8, uppercase": q(PAYLOAD, "UTF-8", "Q"),
    "b, utf-8": b(PAYLOAD),
    "B, UTF-8, uppercase": b(PAYLOAD, "UTF-8", "B"),
    "q, iso-8859-1": q(PAYLOAD, "iso-8859-1"),
    "B, ISO-8859-1": b(PAYLOAD, "ISO-8859-1", "B"),
    "q, windows-1252": q(PAYLOAD, "windows-1252"),
    "b, Windows-1252": b(PAYLOAD, "Windows-1252"),
    "Q, us-ascii": q(PAYLOAD, "us-ascii", "Q"),
    "a charset with a language (RFC 2231)": q(PAYLOAD, "utf-8*en", codec="utf-8"),
    "a charset nobody knows": q(PAYLOAD, "x-unknown", codec="latin-1"),
    "split across adjacent encoded words": " ".join(
        q(line) for line in PAYLOAD.splitlines(keepends=True)
    ),
    "q and b mixed, word by word": " ".join(
        (q if i % 2 else b)(line) for i, line in enumerate(PAYLOAD.splitlines(keepends=True))
    ),
}
# Each line-breaking character on its own; the subject reads as the words around it.
LINE_BREAKERS = {
    "LF only": "\n",
    "CR only": "\r",
    "NUL then CR LF": "\x00\r\n",
    "vertical tab": "\x0b",
    "form feed": "\x0c",
    "file separator": "\x1c",
    "next line (NEL)": "\x85",
    "line separator U+2028": "\u2028",
    "paragraph separator U+2029": "\u2029",
}


def headers_as_meant(raw: bytes, intended: tuple[str, ...] = INTENDED) -> EmailMessage:
    """The mail parsed as a mail client does, after checking it carries only ``intended``."""
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert head.isascii()
    assert all(len(line) <= 998 for line in head.split(b"\r\n"))
    msg = message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    assert [k.lower() for k in msg] == [k.lower() for k in intended]
    for injected in ("Cc", "Bcc", "Disposition-Notification-To"):
        assert msg[injected] is None
    assert msg.get_all("Content-Type") == ['text/plain; charset="utf-8"']
    assert msg.get_content_type() == "text/plain"
    assert REPLY_ABOVE_LINE in msg.get_content()
    assert not msg.defects
    for name in ("From", "To", "Subject", "Reply-To"):
        assert not msg[name].defects
    return msg


def readable(text: str) -> bool:
    """No control character, line or paragraph separator, bidi or format character."""
    return not any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp", "Cs") for c in text)


def subject_of(**changes: object) -> str:
    msg = headers_as_meant(compose(notification(**changes)).raw)
    subject = str(msg["Subject"])
    assert readable(subject)
    return subject


@pytest.mark.parametrize("word", ENCODED_SUBJECTS.values(), ids=ENCODED_SUBJECTS.keys())
def test_an_encoded_line_break_in_a_subject_adds_no_header(word: str) -> None:
    assert subject_of(subject=long_subject(word)) == LONG_READ


@pytest.mark.parametrize("word", ENCODED_SUBJECTS.values(), ids=ENCODED_SUBJECTS.keys())
def test_a_subject_of_nothing_but_the_encoded_word_adds_no_header(word: str) -> None:
    assert subject_of(subject=word) == PAYLOAD_READ


@pytest.mark.parametrize("padding", range(160))
def test_folding_at_every_position_adds_no_header(padding: int) -> None:
    """The encoded word starts at every column of the first three lines of the subject."""
    prefix = " ".join(["pad"] * (padding // 4) + ["y" * (padding % 4 + 1)])
    subject = f"{prefix} {q(PAYLOAD)} end"
    assert subject_of(subject=subject) == f"{prefix} {PAYLOAD_READ} end"


@pytest.mark.parametrize(
    "subject",
    [
        " ".join([q(PAYLOAD)] * 40),  # about 8 KB of encoded words
        "word " * 1000 + q(PAYLOAD),  # 5 KB of ordinary words before it
        "x" * 5000 + q(PAYLOAD),  # one 5 KB word glued to it
        q("Bcc: y@evil.test\r\n" * 300),  # one encoded word of 5 KB
    ],
    ids=["many encoded words", "many plain words", "one long word", "one long encoded word"],
)
def test_very_long_subjects_add_no_header(subject: str) -> None:
    read = subject_of(subject=subject)
    assert "Bcc: y@evil.test" in read


@pytest.mark.parametrize(
    "word, read",
    [
        ("Results" + q("\r\nBcc: y@evil.test"), "Results Bcc: y@evil.test"),
        (q("\r\n") + "Bcc: y@evil.test", "Bcc: y@evil.test"),
        (q("\x00\r\nBcc: y@evil.test"), "Bcc: y@evil.test"),
        (q("\u2028Bcc: y@evil.test"), "Bcc: y@evil.test"),
        (q("\x85Bcc: y@evil.test"), "Bcc: y@evil.test"),
        (q("\x0b\x0cBcc: y@evil.test"), "Bcc: y@evil.test"),
        (q("\x1cBcc: y@evil.test"), "Bcc: y@evil.test"),
        (
            q("\r\n\r\n<html><body>Sign in again</body></html>"),
            "<html><body>Sign in again</body></html>",
        ),
    ],
    ids=[
        "glued to a word",
        "only the line break encoded",
        "encoded NUL",
        "encoded U+2028",
        "encoded NEL",
        "encoded VT and FF",
        "encoded file separator",
        "a blank line to start the body early",
    ],
)
def test_other_encoded_breaks_add_no_header(word: str, read: str) -> None:
    assert subject_of(subject=f"Results for the week {word} thanks") == (
        f"Results for the week {read} thanks"
    )


def test_a_subject_encoded_twice_is_decoded_once_and_shown_as_text() -> None:
    """Decoding once gives an encoded word again: it is shown as it stands, never decoded."""
    inner = q("\r\nBcc: y@evil.test")
    read = subject_of(subject=f"Results {q(inner)} thanks")
    assert read == f"Results {inner} thanks"


@pytest.mark.parametrize("breaker", LINE_BREAKERS.values(), ids=LINE_BREAKERS.keys())
def test_a_raw_line_break_in_a_subject_adds_no_header(breaker: str) -> None:
    subject = long_subject(f"now{breaker}Bcc: y@evil.test{breaker}{breaker}<b>hi</b>")
    assert subject_of(subject=subject) == long_subject("now Bcc: y@evil.test <b>hi</b>")


def test_bidi_controls_are_taken_out_of_a_subject() -> None:
    """An override would show "txt.exe" as "exe.txt"; isolates and marks go too."""
    subject = "Invoice \u202eexe.txt\u202c \u2066a\u2069 \u200fb\u200e \u061cc \ufeffd"
    assert subject_of(subject=subject) == "Invoice exe.txt a b c d"


@pytest.mark.parametrize(
    "field",
    ["to_name", "author_name", "organisation"],
)
@pytest.mark.parametrize(
    "name",
    [
        "Carol " + q("\r\nBcc: y@evil.test"),
        "Carol " + b("\r\nBcc: y@evil.test", "windows-1252"),
        "Carol \r\nBcc: y@evil.test",
        "Carol \u2028Bcc: y@evil.test",
        q("Carol\r\nBcc: y@evil.test") + " <y@evil.test>",
    ],
    ids=["encoded q", "encoded b", "raw CR LF", "raw U+2028", "encoded with an address"],
)
def test_a_display_name_adds_no_header_and_no_mailbox(field: str, name: str) -> None:
    mail = compose(notification(**{field: name}))
    msg = headers_as_meant(mail.raw)
    assert [a.addr_spec for a in msg["To"].addresses] == ["client1@example.com"]
    assert [a.addr_spec for a in msg["From"].addresses] == ["notifications@reply.test"]
    shown = msg["To"] if field == "to_name" else msg["From"]
    assert "Carol" in shown.addresses[0].display_name
    assert readable(shown.addresses[0].display_name)


def test_an_encoded_word_in_a_threading_id_is_dropped() -> None:
    """The email package decodes encoded words even inside angle brackets."""
    raw = compose(
        notification(
            in_reply_to="<" + q("\r\nBcc: y@evil.test\r\n") + "@evil.test>",
            references=("<" + q("\r\nCc: x@evil.test\r\n") + "@evil.test>",),
        )
    ).raw
    headers_as_meant(raw)


class _FoldsInABcc(EmailPolicy):
    """An email package whose folder writes a Bcc after the subject: the bug class itself."""

    def fold_binary(self, name: str, value: str) -> bytes:
        folded = super().fold_binary(name, value)
        return folded + b"Bcc: y@evil.test\r\n" if name == "Subject" else folded


def test_a_header_the_email_package_adds_refuses_the_mail(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    faulty = _FoldsInABcc(linesep="\r\n", refold_source="none")
    monkeypatch.setattr(compose_module, "_POLICY", faulty)
    with pytest.raises(HeaderMismatch):
        compose(notification())


def test_a_refused_notification_keeps_the_message_and_is_logged(
    monkeypatch: pytest.MonkeyPatch, sessions: sessionmaker[Session], settings: Settings
) -> None:
    """The message is stored and readable in the portal; only its notification is not
    queued, and an error says so (without the text)."""
    with transaction(sessions) as s:
        directory.add_user(s, "sam@practice.test", "Sam Staff", "staff")
        directory.add_user(s, "carol@example.test", "Carol Client", "client")
    messaging = Messaging(sessions, settings)
    messaging.set_convenience_mode(on=True, acknowledge_hipaa=True)
    monkeypatch.setattr(
        compose_module, "_POLICY", _FoldsInABcc(linesep="\r\n", refold_source="none")
    )
    with capture_logs() as logs:
        sent = messaging.send(
            sender="carol@example.test", to=["sam@practice.test"], subject="Hi", body="Secret"
        )
    with sessions() as s:
        assert s.get(Message, sent.messages[0]) is not None
        assert s.scalar(select(func.count()).select_from(OutboxMessage)) == 0
    refused = [e for e in logs if e["event"] == "notification refused"]
    assert len(refused) == 1
    assert refused[0]["log_level"] == "error"
    assert refused[0]["thread_id"] == sent.threads[0].id
    assert "Secret" not in str(refused[0]) and "Hi" not in refused[0]["reason"]


# -- through the portal ----------------------------------------------------------------------

STAFF = "sam@practice.test"
CLIENT = "carol@example.test"
PORTAL_SUBJECT = long_subject(ENCODED_SUBJECTS["q, utf-8, as in the report"])


@pytest.fixture
def portal(settings: Settings, sessions: sessionmaker[Session]) -> Iterator[str]:
    """A live portal in Convenience Mode, with one staff member and one client."""
    with transaction(sessions) as s:
        digest = hash_password(PASSWORD)
        directory.add_user(s, STAFF, "Sam Staff", "staff").password_hash = digest
        directory.add_user(s, CLIENT, "Carol Client", "client").password_hash = digest
    Messaging(sessions, settings).set_convenience_mode(on=True, acknowledge_hipaa=True)
    yield from serve_in_thread(settings, sessions)


def delivered(settings: Settings) -> list[bytes]:
    """The files the outbound worker wrote into the Maildir outbox."""
    box = mailbox.Maildir(settings.outbox_maildir, create=False)
    return [box.get_bytes(key) for key in box.iterkeys()]


def test_a_client_in_the_portal_cannot_add_headers_to_the_staffs_notification(
    portal: str, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    client = Client(portal)
    assert client.login(CLIENT).status == 303
    token = client.csrf("/compose")
    started = client.post(
        "/compose",
        {"csrf": token, "to": STAFF, "subject": PORTAL_SUBJECT, "body": "See the results."},
    )
    assert started.status == 303 and started.location
    replied = client.post(f"{started.location}/reply", {"csrf": token, "body": "And one more."})
    assert replied.status == 303

    drain_once(settings, sessions)

    files = delivered(settings)
    assert len(files) == 2
    trace = ("Return-Path", "Delivered-To")
    # Delivered concurrently: the one that continues the thread names the first.
    second, first = sorted(
        (f.replace(b"\n", b"\r\n") for f in files), key=lambda f: b"In-Reply-To:" not in f
    )
    new_thread = headers_as_meant(first, (*trace, *INTENDED))
    in_thread = headers_as_meant(second, (*trace, *INTENDED_IN_THREAD))
    for msg in (new_thread, in_thread):
        assert [a.addr_spec for a in msg["To"].addresses] == [STAFF]
        assert msg["Delivered-To"] == STAFF
    assert str(new_thread["Subject"]) == LONG_READ
    assert str(in_thread["Subject"]) == f"Re: {LONG_READ}"
    assert "And one more." in in_thread.get_content()


def test_a_name_with_an_encoded_line_break_reaches_the_notification_harmless(
    portal: str, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    """A display name set by an administrator (or imported) is a person's text too."""
    with transaction(sessions) as s:
        directory.user(s, CLIENT).name = "Carol " + q("\r\nBcc: y@evil.test")
    client = Client(portal)
    assert client.login(CLIENT).status == 303
    token = client.csrf("/compose")
    message = {"csrf": token, "to": STAFF, "subject": "Hello", "body": "Hi."}
    assert client.post("/compose", message).status == 303

    drain_once(settings, sessions)

    (file,) = delivered(settings)
    msg = headers_as_meant(file.replace(b"\n", b"\r\n"), ("Return-Path", "Delivered-To", *INTENDED))
    assert msg["From"].addresses[0].display_name.startswith("Carol Bcc: y@evil.test via")


def test_intended_headers_are_those_of_a_harmless_notification() -> None:
    """The lists above are what compose writes for text with nothing to hide."""
    plain = message_from_bytes(compose(notification()).raw, policy=policy.default)
    assert tuple(plain.keys()) == INTENDED
    threaded = notification(in_reply_to="<rg.n.1@reply.test>", references=("<rg.n.1@reply.test>",))
    assert tuple(message_from_bytes(compose(threaded).raw).keys()) == INTENDED_IN_THREAD
