"""Compose notification emails, one pure function per notification.

Two modes, decided by the organisation and passed in by the caller, and
three purposes: a new message, a reminder of one not yet opened in the
portal, and a read receipt telling its author that a recipient opened it.

- ``secure``: the mail says only that a message is waiting and where to log
  in. No subject, no body, no author, no attachment names: whatever the
  caller passes in those fields is ignored, so a mistake upstream cannot leak.
- ``content`` (Convenience Mode): subject, body and author, a tokenized
  ``Reply-To`` and the "reply above this line" marker the threading engine
  cuts replies at. A receipt names the reader, the subject and the time,
  and has no ``Reply-To``: nothing answers it.

Every header made from a person's text (the subject, display names) is
decoded, cleaned of control characters and encoded here (``header_text``),
then stored as it is: the email package never folds it. The result is parsed
back, and a mail whose headers are not exactly those intended (names, count,
order) is refused with ``HeaderMismatch``.

Both modes stamp headers that keep machines quiet and let us recognise our own
mail coming back: ``Auto-Submitted: auto-generated`` (RFC 3834),
``X-Auto-Response-Suppress: All`` (Exchange/Outlook), ``Precedence: bulk``
(RFC 3834 tells responders not to rely on it, but legacy vacation programs
still honour it and it costs nothing), and ``LOOP_HEADER`` naming the
notification. The body is UTF-8 text/plain in quoted-printable, which is
7-bit clean and so passes any relay without 8BITMIME or SMTPUTF8.

Stdlib only: no store, no settings, no clock except the ``Date`` header
(which the caller may fix with ``now``).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy, quoprimime
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.utils import format_datetime, getaddresses
from typing import Literal

from replygate.errors import HeaderMismatch
from replygate.mail import header_text
from replygate.mail.markers import (
    LOOP_HEADER,
    MESSAGE_ID_PREFIX,
    NOTIFICATION_ID,
    REPLY_ABOVE_LINE,
)
from replygate.mail.verp import bounce_address

SECURE_SUBJECT = "You have a new secure message"
SECURE_REMINDER_SUBJECT = "Reminder: you have an unread secure message"
SECURE_RECEIPT_SUBJECT = "Your secure message was read"

# C0 and C1 controls and Unicode line separators: all of them break a header line.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
# No "=?" in a Message-ID we pass on: the email package would decode it as an
# encoded word (even inside the angle brackets) and could write a CR/LF back.
_MSG_ID = re.compile(r"^<(?!.*=\?)[^<>\s]+@[^<>\s]+>$")
# A display name is a name: longer ones are cut.
MAX_DISPLAY_NAME = 64
# What ``_set`` may store without the email package's parse and refold: printable
# ASCII words separated by single spaces (an encoded word "=?" is refused apart),
# on a line no longer than policy.SMTP folds at.
_MAX_LINE = 78
# Off, every header and the body go through the email package: the tests compare.
_STORE_PLAIN_AS_IS = True
_PLAIN_VALUE = re.compile(r"^[!-~]+(?: [!-~]+)*$")
# Raw values are written as they are, never refolded (by default policy.SMTP
# reparses a raw value with a long line, decoding its encoded words).
_POLICY = policy.SMTP.clone(refold_source="none")
# How the email package's generator splits a body into lines.
_NEWLINE = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class Notification:
    """Everything one notification email needs, already decided by the caller."""

    mode: Literal["secure", "content"]
    notification_id: str  # unique, url-safe; goes into Message-ID and the VERP envelope sender
    to_address: str
    to_name: str
    from_address: str  # e.g. notifications@reply.localhost
    organisation: str  # shown as the From display name
    reply_domain: str
    portal_link: str  # link that opens the thread after login
    subject: str | None = None  # content mode only
    body: str | None = None  # content mode only
    author_name: str | None = None  # content mode only
    reply_address: str | None = None  # content mode only: reply+<token>@<domain>
    in_reply_to: str | None = None  # earlier Message-ID in this thread, for client threading
    references: tuple[str, ...] = ()
    purpose: Literal["message", "reminder", "receipt"] = "message"
    read_by: str | None = None  # receipt, content mode only: the reader's name
    read_at: str | None = None  # receipt, content mode only: when, as the reader's portal shows it
    # Signs the VERP envelope sender (``verp.bounce_key(secret)``); compose refuses without it.
    bounce_key: bytes = field(default=b"", repr=False)


@dataclass(frozen=True)
class ComposedMail:
    """The wire form of a notification plus the envelope to send it with."""

    raw: bytes
    message_id: str
    envelope_from: str
    recipient: str


def message_id_for(notification_id: str, reply_domain: str) -> str:
    """The Message-ID of a notification, recognisable in a reply's In-Reply-To."""
    _check_id(notification_id)
    return f"<{MESSAGE_ID_PREFIX}n.{notification_id}@{_clean_domain(reply_domain)}>"


def verp_sender(notification_id: str, reply_domain: str, key: bytes) -> str:
    """The envelope sender: a bounce to it names the notification that failed.

    Signed with ``key`` (``verp.bounce_key``), so nobody else can write a
    bounce address that the gateway accepts.
    """
    _check_id(notification_id)
    return bounce_address(notification_id, _clean_domain(reply_domain), key)


def compose(n: Notification, *, now: datetime | None = None) -> ComposedMail:
    """Render ``n`` as RFC 5322 bytes (CRLF line endings) with its envelope.

    Raises ``ValueError`` for a malformed id, address or mode; header text
    (names, subject) is decoded and cleaned of control characters instead, so
    a CR/LF in user-supplied text, raw or encoded, can never start a header of
    its own. Raises ``HeaderMismatch`` when the rendered headers are not the
    ones intended (a guard against bugs of the email package).
    """
    if n.mode not in ("secure", "content"):
        raise ValueError(f"unknown notification mode: {n.mode!r}")
    if n.purpose not in ("message", "reminder", "receipt"):
        raise ValueError(f"unknown notification purpose: {n.purpose!r}")
    receipt = n.purpose == "receipt"
    message_id = message_id_for(n.notification_id, n.reply_domain)
    envelope_from = verp_sender(n.notification_id, n.reply_domain, n.bounce_key)
    recipient = _check_address(n.to_address)

    msg = EmailMessage(policy=_POLICY)
    if n.mode == "secure":
        from_name = _person(n.organisation)
        subject = _SECURE_SUBJECTS[n.purpose]
        text = _secure_body(n)
    elif receipt:
        from_name = _person(n.organisation)
        subject = f"Read: {_person(n.subject or '') or 'your message'}"
        text = _receipt_body(n)
    else:
        author = _person(n.author_name or "")
        organisation = _person(n.organisation)
        from_name = (
            f"{author} via {organisation}" if author and organisation else (author or organisation)
        )
        subject = _content_subject(n)
        text = _content_body(n)

    from_address = _check_address(n.from_address)
    written = {
        "From": header_text.mailbox("From", _display_name(from_name), from_address),
        "To": header_text.mailbox("To", _display_name(_person(n.to_name)), recipient),
        "Subject": header_text.unstructured("Subject", subject),
    }
    for name, value in written.items():
        msg.set_raw(name, value)
    _set(msg, "Date", format_datetime((now or datetime.now(UTC)).astimezone(UTC)))
    _set(msg, "Message-ID", message_id)
    replies = n.mode == "content" and not receipt
    if replies:
        if not n.reply_address:
            raise ValueError("a content notification needs its reply address")
        written["Reply-To"] = header_text.mailbox("Reply-To", "", _check_address(n.reply_address))
        msg.set_raw("Reply-To", written["Reply-To"])
        in_reply_to, references = _threading_headers(n)
        if in_reply_to:
            _set(msg, "In-Reply-To", in_reply_to)
        if references:
            _set(msg, "References", " ".join(references))
    _set(msg, "Auto-Submitted", "auto-generated")
    _set(msg, "X-Auto-Response-Suppress", "All")
    _set(msg, "Precedence", "bulk")
    _set(msg, LOOP_HEADER, n.notification_id)
    _set_body(msg, text)
    raw = _as_bytes(msg)
    reply_to = n.reply_address if replies else None
    _verify(
        raw,
        msg.keys(),
        written,
        {"From": from_address, "To": recipient, "Reply-To": reply_to},
    )
    return ComposedMail(
        raw=raw,
        message_id=message_id,
        envelope_from=envelope_from,
        recipient=recipient,
    )


def _set(msg: EmailMessage, name: str, value: str) -> None:
    """Set a header; one the email package would render unchanged is stored as it is.

    Parsing a value into the package's header objects and folding it back is
    most of the cost of composing; for a short line of single-spaced ASCII
    words it gives back the very same line, so such values skip it
    (``_verify`` still checks the result, and a test compares both ways over
    generated input).
    """
    if _as_is(name, value):
        msg.set_raw(name, value)
    else:
        msg[name] = value


def _set_body(msg: EmailMessage, text: str) -> None:
    """UTF-8 text/plain in quoted-printable: the headers and encoding of ``set_content``.

    Written directly (``set_content`` parses the headers it adds once or twice
    each), with the encoder and the line handling it uses, in its order.
    """
    if not _STORE_PLAIN_AS_IS:
        msg.set_content(text, charset="utf-8", cte="quoted-printable")
        return
    msg.set_raw("Content-Type", 'text/plain; charset="utf-8"')
    msg.set_raw("Content-Transfer-Encoding", "quoted-printable")
    msg.set_raw("MIME-Version", "1.0")
    lines = text.encode("utf-8").splitlines()
    msg.set_payload(
        quoprimime.body_encode((b"\n".join(lines) + b"\n").decode("latin-1"), _MAX_LINE)
    )


def _as_bytes(msg: EmailMessage) -> bytes:
    """The wire form, as ``msg.as_bytes()`` writes a single text part: each header folded
    by ``_POLICY``, a blank line, the body's lines ended by CRLF.

    Written directly: the generator asks for the content type several times, each a
    scan and parse of the headers, which was most of what composing cost. The email
    package's own output is used when the fast path is off (the tests compare both).
    """
    if not _STORE_PLAIN_AS_IS:
        return msg.as_bytes()
    head = b"".join(_POLICY.fold_binary(name, value) for name, value in msg.raw_items())
    body = msg.get_payload()
    assert isinstance(body, str)  # one text part, set by ``_set_body``
    lines = "\r\n".join(_NEWLINE.split(body))
    return head + b"\r\n" + lines.encode("ascii", "surrogateescape")


def _as_is(name: str, value: str) -> bool:
    return (
        _STORE_PLAIN_AS_IS
        and len(name) + 2 + len(value) <= _MAX_LINE
        and _PLAIN_VALUE.match(value) is not None
        and "=?" not in value
    )


_SECURE_SUBJECTS = {
    "message": SECURE_SUBJECT,
    "reminder": SECURE_REMINDER_SUBJECT,
    "receipt": SECURE_RECEIPT_SUBJECT,
}


def _secure_body(n: Notification) -> str:
    """Only that something happened: never which message, whose, or who read it."""
    greeting = _person(n.to_name)
    organisation = _person(n.organisation) or "Your provider"
    if n.purpose == "receipt":
        said = (
            "A secure message you sent has been read.\n"
            "For your privacy this email does not say which one or by whom. Sign in to see:\n"
        )
    elif n.purpose == "reminder":
        said = (
            f"{organisation} sent you a secure message that you have not read yet.\n"
            "For your privacy it is not included in this email. Sign in to read it:\n"
        )
    else:
        said = (
            f"{organisation} has sent you a new secure message.\n"
            "For your privacy it is not included in this email. Sign in to read it:\n"
        )
    return (
        f"Hello{' ' + greeting if greeting else ''},\n"
        "\n"
        f"{said}"
        "\n"
        f"{_one_line(n.portal_link)}\n"
        "\n"
        "Replies to this email are not read.\n"
    )


def _receipt_body(n: Notification) -> str:
    reader = _person(n.read_by or "") or "The recipient"
    subject = _person(n.subject or "")
    when = _one_line(n.read_at or "")
    return (
        f"{reader} read your message{f' “{subject}”' if subject else ''} in the portal"
        f"{f' on {when}' if when else ''}.\n"
        "\n"
        "The conversation:\n"
        f"{_one_line(n.portal_link)}\n"
        "\n"
        "Replies to this email are not read.\n"
    )


def _content_body(n: Notification) -> str:
    body = (n.body or "").replace("\r\n", "\n").replace("\r", "\n").rstrip()
    author = _person(n.author_name or "") or "Someone"
    # The blank line above the marker is where the reply is typed; every mail
    # client's quoted copy then carries the marker, which is where the
    # threading engine cuts the reply.
    unread = (
        "A reminder: you have not opened this message in the portal yet.\n"
        if n.purpose == "reminder"
        else ""
    )
    return (
        "\n"
        f"{REPLY_ABOVE_LINE}\n"
        "\n"
        f"{author} wrote:\n"
        "\n"
        f"{body}\n"
        "\n"
        f"{unread}"
        "Reply to this email, or read the whole conversation in the portal:\n"
        f"{_one_line(n.portal_link)}\n"
    )


def _content_subject(n: Notification) -> str:
    subject = _person(n.subject or "") or "New message"
    if n.purpose == "reminder":
        return f"Reminder: {subject}"
    # A notification that continues a thread reads as a reply in mail clients.
    if n.in_reply_to and not re.match(r"(?i)^re\s*:", subject):
        subject = f"Re: {subject}"
    return subject


def _threading_headers(n: Notification) -> tuple[str | None, list[str]]:
    """Valid Message-IDs only: a malformed one is dropped, not passed on."""
    refs = [r.strip() for r in n.references if _MSG_ID.match(r.strip())]
    in_reply_to = n.in_reply_to.strip() if n.in_reply_to else None
    if in_reply_to and not _MSG_ID.match(in_reply_to):
        in_reply_to = None
    if in_reply_to and in_reply_to not in refs:
        refs.append(in_reply_to)
    return in_reply_to, refs


def _one_line(text: str) -> str:
    """Our own text on one line: control characters (CR, LF, NUL, TAB...) become one space."""
    return _CONTROL.sub(" ", text).strip()


def _person(text: str) -> str:
    """A person's text for a header (or a line of the body): decoded and cleaned."""
    return header_text.clean(text)


def _display_name(text: str) -> str:
    """A name already ``_person``-clean, cut to MAX_DISPLAY_NAME."""
    return text[:MAX_DISPLAY_NAME].rstrip()


def _verify(
    raw: bytes,
    intended: list[str],
    written: dict[str, str],
    mailboxes: dict[str, str | None],
) -> None:
    """Parse the result back: exactly the headers we meant, in order, as we wrote them.

    A guard against folding bugs in the email package: a notification must
    never carry a header nobody meant (a ``Bcc``, a ``Content-Type``), nor go
    to, or claim to be from, anyone else.
    """
    # Headers only, and the strict address parser of email.utils: a full re-parse of the
    # message with policy.default costs more than composing it.
    parsed = BytesHeaderParser(policy=policy.compat32).parsebytes(raw)
    # The messages name our headers and counts only: what else was found is a
    # person's text (a subject's words), which logs must not carry.
    found = [h.lower() for h in parsed]
    for position, name in enumerate(intended):
        if position >= len(found) or found[position] != name.lower():
            raise HeaderMismatch(f"{name} is not where it was meant to be ({position + 1})")
    if len(found) != len(intended):
        raise HeaderMismatch(f"{len(found)} headers rendered where {len(intended)} were meant")
    if parsed.defects:
        names = sorted({type(d).__name__ for d in parsed.defects})
        raise HeaderMismatch(f"the rendered headers have defects: {', '.join(names)}")
    for header, value in written.items():
        if parsed[header] != value.replace("\n", "\r\n"):
            raise HeaderMismatch(f"{header} was not rendered as written")
    for header, address in mailboxes.items():
        if address is None:
            continue
        if _addresses(tuple(parsed.get_all(header) or ())) != (address,):
            raise HeaderMismatch(f"{header} does not name the one mailbox meant")


@functools.lru_cache(maxsize=4096)
def _addresses(values: tuple[str, ...]) -> tuple[str, ...]:
    """The addr-specs the strict parser of email.utils reads in these header values.

    Memoised: a pure function of the values, and the same few From, To and
    Reply-To values come back notification after notification (the parse is a
    third of the check's cost)."""
    return tuple(a for _, a in getaddresses(values))


def _check_id(notification_id: str) -> None:
    if not NOTIFICATION_ID.fullmatch(notification_id):
        raise ValueError(f"notification id is not url-safe or too long: {notification_id!r}")


def _clean_domain(domain: str) -> str:
    if not re.match(r"^[A-Za-z0-9.-]+$", domain) or domain.startswith((".", "-")):
        raise ValueError(f"not a domain name: {domain!r}")
    return domain.lower()


def _check_address(address: str) -> str:
    """An addr-spec with no display name, no whitespace and no control characters."""
    if (
        not address
        or _CONTROL.search(address)
        or any(c in address for c in ' <>,;"')
        or address.count("@") != 1
    ):
        raise ValueError(f"not a plain email address: {address!r}")
    local, domain = address.split("@")
    if not local or not domain:
        raise ValueError(f"not a plain email address: {address!r}")
    return address
