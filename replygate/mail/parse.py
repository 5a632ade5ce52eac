"""MIME parsing into a plain record (``ParsedMail``), independent of any library type.

``parse_message`` runs on every inbound mail and must never raise: whatever is
wrong with a message is written into ``ParsedMail.defects`` instead, so the
engine can still classify it, refuse it or hold it with a reason.

Who does what:

- **mail-parser** builds the MIME tree (guarding against nesting deep enough
  to exhaust the stack), collects the defects of every part and of the
  address, date and Received headers, and reads the From mailbox with its
  structural recovery (a display name that looks like an address never
  becomes the address).
- **``mime_walk``** walks that tree itself for bodies, attachments and
  reports, and **``decoding``** turns their bytes (and header values) into
  text, because mail-parser falls short there for us: it decodes with the
  declared charset or else UTF-8 with replacement characters, folds attached
  messages into the body, re-encodes attachments as base64 text, knows
  nothing of ``multipart/report`` and drops undecodable bytes of 8-bit
  header values.
- **This module** reads the headers, the From mailbox and the Message-IDs,
  marks the files an HTML body shows inline, and assembles the record.
- **stdlib ``email`` with ``policy.default``** takes over when mail-parser
  gives up: we then read the headers alone and say so in ``defects``.

Before either library sees the bytes, two shapes that make them slow or
make them fail are defused, with a defect: parts nested past
``nesting.MAX_NESTING`` levels lose their bodies (``nesting.prune``: the
stdlib recurses once per level, and checks each line against every open
boundary), and a message of more than ``MAX_ENCODED_WORDS`` RFC 2047 words is
read without mail-parser (it decodes every header with the stdlib's
``decode_header``, quadratic in the words; ours is linear).
"""

from __future__ import annotations

import email
import re
from dataclasses import dataclass, field
from email import policy
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import Policy
from typing import Protocol
from urllib.parse import unquote

import mailparser

from replygate.mail import nesting
from replygate.mail.decoding import decode_header_value
from replygate.mail.mime_walk import walk

# More RFC 2047 words than any real mail carries (a header of 75-character words
# folded over hundreds of lines); past it, mail-parser's quadratic decoding is skipped.
MAX_ENCODED_WORDS = 1000
# The stdlib's structured From parser is not linear either; a From longer than
# any mailbox list a person writes is read by mail-parser alone.
_MAX_FROM_PARSED = 4096


class _Reader(mailparser.MailParser):  # type: ignore[misc]
    """mail-parser without the two things it makes that nothing here reads: its
    decoding of the body parts (``mime_walk`` and ``decoding`` do ours; the only
    defect it notes there, CharsetDecodeDefect, ``_library_defects`` leaves out)
    and its summary dicts of every header and part (built twice per mail). The
    tree, the defect inventory and the From reading are its own."""

    def _decode_body_payload(self, part: Message, charset: str, part_index: int) -> str:
        return ""

    def _make_mail(self, complete: bool = True) -> dict[str, object]:
        return {}


# What reads the mail (a test compares it with mail-parser's whole reading).
_READER = _Reader


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    size: int
    payload: bytes
    content_id: str | None = None
    inline: bool = False


@dataclass(frozen=True)
class ParsedMail:
    """What the engine needs of one message, decoded to ``str`` throughout.

    ``headers`` keeps every header (names lower-cased, values decoded, in order);
    ``text_plain``/``text_html`` are the decoded body parts joined, or ``None``.
    ``report_type`` is the ``report-type`` parameter of a ``multipart/report``;
    ``returned_headers`` the header block of the message a report returns
    (``text/rfc822-headers`` or the headers of its ``message/rfc822`` part), which
    is where a bounce names the notification of ours that failed.
    """

    headers: tuple[tuple[str, str], ...]
    from_address: str
    from_name: str
    subject: str
    message_id: str | None
    in_reply_to: str | None
    references: tuple[str, ...]
    text_plain: str | None
    text_html: str | None
    attachments: tuple[Attachment, ...] = ()
    defects: tuple[str, ...] = ()
    content_type: str = "text/plain"
    report_parts: tuple[str, ...] = field(default=())
    report_type: str | None = None
    returned_headers: str | None = None

    def header(self, name: str) -> str | None:
        """First value of ``name`` (case-insensitive), or ``None``."""
        lname = name.lower()
        for key, value in self.headers:
            if key == lname:
                return value
        return None

    def header_all(self, name: str) -> list[str]:
        lname = name.lower()
        return [value for key, value in self.headers if key == lname]


class _Reading(Protocol):
    """What this module reads of a ``mailparser.MailParser`` (the library ships no types)."""

    @property
    def message(self) -> Message | None: ...

    @property
    def from_(self) -> list[tuple[str, str]]: ...

    @property
    def defects(self) -> list[object]: ...


_MSG_ID = re.compile(r"<[^<>\s]+>")
_CID_REF = re.compile(r"""cid:([^"'\s)>]+)""", re.IGNORECASE)


def _msg_ids(value: str | None) -> list[str]:
    return _MSG_ID.findall(value or "")


def _first_msg_id(value: str | None, name: str, defects: list[str]) -> str | None:
    if not value:
        return None
    ids = _msg_ids(value)
    if ids:
        return ids[0]
    bare = value.strip().split()[0] if value.strip() else ""
    if "@" in bare:
        defects.append(f"{name} without angle brackets: {bare[:200]}")
        return f"<{bare}>"
    defects.append(f"{name} holds no message id")
    return None


def _referenced_cids(html_parts: list[str]) -> set[str]:
    found: set[str] = set()
    for html in html_parts:
        if "cid:" not in html.lower():
            continue
        for ref in _CID_REF.findall(html):
            found.add(unquote(ref).strip().lower())
    return found


def _shown_inline(content_id: str | None, cids: set[str]) -> bool:
    """Whether an HTML body shows the part in place (``cid:`` names its Content-ID)."""
    if not content_id:
        return False
    return content_id[1:-1].strip().lower() in cids


_ADDR_SPEC = re.compile(r'^(?:"[^"\r\n]*"|[^\s<>()\[\],;:"@]+)@[^\s<>()\[\],;:"@]+$')


def _mailboxes(mp: _Reading | None, message: Message) -> list[tuple[str, str]]:
    """From's mailboxes: mail-parser's reading, else headerregistry's; valid addr-specs only."""
    found: list[tuple[str, str]] = []
    if mp is not None:
        try:
            found = [(n, a.strip()) for n, a in mp.from_ if a and _ADDR_SPEC.match(a.strip())]
        except Exception:
            found = []
    raw = message.get("From")
    if not found and raw and len(str(raw)) <= _MAX_FROM_PARSED:
        try:
            header = policy.default.header_factory("from", str(raw))
            found = [
                (a.display_name, a.addr_spec)
                for a in header.addresses
                if _ADDR_SPEC.match(a.addr_spec or "")
            ]
        except Exception:
            found = []
    return found


def _from_mailbox(mp: _Reading | None, message: Message, defects: list[str]) -> tuple[str, str]:
    """(lower-cased addr-spec, decoded display name) of the first From mailbox."""
    mailboxes = _mailboxes(mp, message)
    if not mailboxes:
        if message.get("From") is not None:
            defects.append("From holds no readable address")
        return "", ""
    if len(mailboxes) > 1:
        defects.append(f"From names {len(mailboxes)} mailboxes; the first is used")
    name, address = mailboxes[0]
    return address.lower(), decode_header_value(name or "")


def _library_defects(mp: _Reading) -> list[str]:
    """mail-parser's defect inventory, flattened to sentences.

    Its CharsetDecodeDefect is left out: it is about mail-parser's own body
    decoding, which we replace (our notes on charsets come from ``decode_text``).
    """
    found: list[str] = []
    for entry in getattr(mp, "defects", None) or []:
        if not isinstance(entry, dict):
            found.append(str(entry))
            continue
        for where, items in entry.items():
            for item in items if isinstance(items, list) else [items]:
                if str(item).startswith("CharsetDecodeDefect"):
                    continue
                found.append(f"{where}: {str(item).splitlines()[0]}")
    return found


def _build(message: Message, mp: _Reading | None, defects: list[str]) -> ParsedMail:
    headers = tuple((n.lower(), decode_header_value(v)) for n, v in message.raw_items())

    def first(name: str) -> str | None:
        for key, value in headers:
            if key == name:
                return value
        return None

    from_address, from_name = _from_mailbox(mp, message, defects)
    found = walk(message)
    defects.extend(found.defects)
    cids = _referenced_cids(found.html)
    attachments = tuple(
        Attachment(
            filename=f.filename,
            content_type=f.content_type,
            size=len(f.payload),
            payload=f.payload,
            content_id=f.content_id,
            inline=_shown_inline(f.content_id, cids),
        )
        for f in found.files
    )
    content_type = message.get_content_type()
    report_type = None
    if content_type == "multipart/report":
        report_type = (str(message.get_param("report-type", "") or "")).strip().lower() or None
    references = tuple(_msg_ids(first("references")))
    return ParsedMail(
        headers=headers,
        from_address=from_address,
        from_name=from_name,
        subject=first("subject") or "",
        message_id=_first_msg_id(first("message-id"), "Message-ID", defects),
        in_reply_to=_first_msg_id(first("in-reply-to"), "In-Reply-To", defects),
        references=references,
        text_plain="\n".join(found.plain) if found.plain else None,
        text_html="\n".join(found.html) if found.html else None,
        attachments=attachments,
        defects=tuple(dict.fromkeys(defects)),
        content_type=content_type,
        report_parts=tuple(found.report_parts),
        report_type=report_type,
        returned_headers=found.returned_headers,
    )


def parse_message(raw: bytes) -> ParsedMail:
    """Parse raw RFC 5322 bytes. Never raises on malformed mail: problems land in ``defects``."""
    defects: list[str] = []
    mp: _Reading | None = None
    message: Message | None
    raw, pruned = nesting.prune(raw)
    if pruned:
        defects.append(
            f"MIME parts nested deeper than {nesting.MAX_NESTING} levels; their bodies dropped"
        )
    if raw.count(b"=?") > MAX_ENCODED_WORDS:
        defects.append(f"more than {MAX_ENCODED_WORDS} encoded words; read with the stdlib")
        message = _stdlib(raw, defects, policy.compat32)
    else:
        try:
            mp = _READER.from_bytes(raw)
            message = mp.message
            defects.extend(_library_defects(mp))
        except Exception as exc:
            defects.append(f"mail-parser gave up ({type(exc).__name__}); read with the stdlib")
            mp = None
            message = _stdlib(raw, defects, policy.default)
    if message is None:
        message = email.message_from_bytes(b"", policy=policy.compat32)
    try:
        return _build(message, mp, defects)
    except Exception as exc:
        # Last line of defence: a message no rule above foresaw still yields a
        # record the engine can store a reason against.
        defects.append(f"parse failed ({type(exc).__name__}: {exc}); headers only")
        return _empty(_headers_only(raw, defects), defects)


def _stdlib(raw: bytes, defects: list[str], how: Policy) -> Message:
    """The stdlib's reading of what mail-parser refused or was spared; headers alone if
    even that fails, since they still tell the engine what the mail is (a bounce?)."""
    try:
        return email.message_from_bytes(raw, policy=how)
    except Exception as exc:
        defects.append(f"MIME structure unreadable ({type(exc).__name__}); headers only")
        return _headers_only(raw, defects)


def _headers_only(raw: bytes, defects: list[str]) -> Message:
    try:
        return BytesHeaderParser(policy=policy.compat32).parsebytes(raw)
    except Exception as exc:
        defects.append(f"headers unreadable ({type(exc).__name__})")
        return email.message_from_bytes(b"", policy=policy.compat32)


def _empty(message: Message, defects: list[str]) -> ParsedMail:
    headers: list[tuple[str, str]] = []
    try:
        headers = [(n.lower(), decode_header_value(v)) for n, v in message.raw_items()]
    except Exception:
        headers = []
    subject = next((v for k, v in headers if k == "subject"), "")
    return ParsedMail(
        headers=tuple(headers),
        from_address="",
        from_name="",
        subject=subject,
        message_id=None,
        in_reply_to=None,
        references=(),
        text_plain=None,
        text_html=None,
        defects=tuple(dict.fromkeys(defects)),
    )
