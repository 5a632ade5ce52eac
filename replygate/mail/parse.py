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
- **This module** walks that tree itself for bodies, attachments and reports,
  because mail-parser falls short there for us:

  * it decodes a text part with its declared charset or else UTF-8 with
    replacement characters, so an undeclared windows-1252 body (Outlook,
    old webmails) or a "iso-8859-1" label on windows-1252 text loses its
    quotes, dashes and euro signs;
  * it folds the text of attached messages (a forwarded mail, the message
    returned inside a bounce) into the body;
  * it returns attachments re-encoded as base64 text, names Content-ID parts
    after their Content-ID, and has no notion of an inline signature logo;
  * it knows nothing of ``multipart/report``;
  * it drops undecodable bytes of 8-bit header values.

- **stdlib ``email`` with ``policy.default``** takes over when mail-parser
  gives up (it raises on a tree nested past its limit): we then read the
  headers alone and say so in ``defects``.
"""

from __future__ import annotations

import codecs
import email
import re
import unicodedata
from dataclasses import dataclass, field
from email import policy
from email.header import decode_header
from email.message import Message
from email.parser import BytesHeaderParser
from typing import Any
from urllib.parse import unquote

import mailparser

try:  # C implementation: ~100x faster than pure-Python chardet on the same bytes
    import cchardet as _chardet
except ImportError:  # pragma: no cover - both are declared dependencies
    import chardet as _chardet  # type: ignore[no-redef]


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


# Bounds on what one mail may cost us; past them we stop walking and say so.
MAX_PARTS = 500
MAX_DEPTH = 30

_MSG_ID = re.compile(r"<[^<>\s]+>")
_FOLD = re.compile(r"\r?\n[ \t]*|\r[ \t]*")
_NEWLINES = re.compile(r"\r\n?")
_CID_REF = re.compile(r"""cid:([^"'\s)>]+)""", re.IGNORECASE)

# Labels that mean "some Western single-byte charset": decoded as windows-1252,
# as browsers do (WHATWG Encoding), since mail labelled iso-8859-1 or us-ascii
# is in practice often windows-1252 with curly quotes, dashes and euro signs.
_WESTERN = frozenset(
    {"iso-8859-1", "iso8859-1", "latin1", "latin-1", "l1", "windows-1252", "cp1252",
     "x-cp1252", "us-ascii", "ascii", "ansi_x3.4-1968", "iso-8859-15", "latin-9"}
)  # fmt: skip
# Labels that are no charset at all: decode as if undeclared.
_UNDECLARED = frozenset({"", "unknown-8bit", "x-unknown", "unknown", "default", "8bit"})
# Labels mail clients write that Python's codec registry does not know.
_ALIASES = {
    "ks_c_5601-1987": "cp949",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "iso-8859-8-i": "iso-8859-8",
    "x-mac-roman": "mac_roman",
    "macintosh": "mac_roman",
    "windows-874": "cp874",
    "shift_jis": "cp932",
    "x-sjis": "cp932",
    "utf8": "utf-8",
}
# Detector answers trusted over the windows-1252 default for undeclared bytes:
# scripts a Western default would turn into nonsense.
_DETECTABLE = frozenset(
    {"windows-1251", "koi8-r", "iso-8859-5", "maccyrillic", "ibm866", "windows-1253",
     "iso-8859-7", "windows-1255", "iso-8859-8", "windows-1256", "iso-8859-6",
     "shift_jis", "euc-jp", "iso-2022-jp", "gb18030", "gb2312", "big5", "euc-kr",
     "euc-tw", "windows-874", "tis-620", "iso-8859-11"}
)  # fmt: skip
_DETECT_CONFIDENCE = 0.8
_DETECT_MIN_BYTES = 32
_DETECT_SAMPLE_BYTES = 16_384  # the detector's time grows with its input; a sample suffices

# windows-1252 leaves 0x81, 0x8D, 0x8F, 0x90, 0x9D undefined; WHATWG maps them to
# the C1 code points, which makes the decoder total. latin-1 + translate does that.
_CP1252_TABLE = {
    b: bytes([b]).decode("cp1252")
    for b in range(0x80, 0xA0)
    if b not in (0x81, 0x8D, 0x8F, 0x90, 0x9D)
}


def _windows_1252(data: bytes) -> str:
    """WHATWG windows-1252: the C codec when it can, the total table when it cannot."""
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:  # one of the five undefined bytes: rare, and slower
        return data.decode("latin-1").translate(_CP1252_TABLE)


def _is_ascii(data: bytes) -> bool:
    return data.isascii()


def _codec(label: str) -> str | None:
    """Python codec name for a charset label, or ``None`` when unknown."""
    label = _ALIASES.get(label, label)
    try:
        return codecs.lookup(label).name
    except LookupError:
        return None


def decode_text(data: bytes, declared: str | None) -> tuple[str, str | None]:
    """Decode body or header bytes to ``str``; never raises, never leaves mojibake behind.

    Returns the text and, when the label could not be trusted, a sentence saying
    what was done instead. Rules, in order:

    1. pure ASCII is ASCII whatever the label says;
    2. a known non-Western label (and UTF-8) is tried first, strictly;
    3. bytes that are valid UTF-8 are UTF-8 even under a Western label (a
       mislabelled UTF-8 body is common; a real latin-1 text that happens to be
       valid UTF-8 practically never is);
    4. a Western label, or none, decodes as windows-1252, unless a charset
       detector is sure of a script that windows-1252 would garble.
    """
    label = (declared or "").strip().strip("\"'").lower()
    if _is_ascii(data):
        return data.decode("ascii"), None
    note: str | None = None
    if label not in _UNDECLARED and label not in _WESTERN:
        codec = _codec(label)
        if codec is not None:
            try:
                return data.decode(codec), None
            except UnicodeDecodeError:
                note = f"charset {label} does not match the bytes"
        else:
            note = f"unknown charset {label}"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        if label in _WESTERN:
            return text, f"labelled {label} but the bytes are UTF-8; decoded as UTF-8"
        return text, (f"{note}; decoded as UTF-8" if note else None)
    if label in _WESTERN:
        return _windows_1252(data), None
    guess = _detect(data)
    if guess is not None:
        reason = f"{note}; " if note else "undeclared 8-bit text; "
        return data.decode(guess, errors="replace"), f"{reason}decoded as {guess} (detected)"
    if label in _UNDECLARED:
        return _windows_1252(data), None
    return _windows_1252(data), f"{note}; decoded as windows-1252"


def _detect(data: bytes) -> str | None:
    """A detector's guess, only when it is sure of a non-Western script.

    Short inputs are not guessed at: a detector is confidently wrong on a few bytes.
    """
    if len(data) < _DETECT_MIN_BYTES:
        return None
    try:
        found = _chardet.detect(data[:_DETECT_SAMPLE_BYTES])
    except Exception:  # a detector bug must not cost us the mail
        return None
    name = (found.get("encoding") or "").lower()
    if name in _DETECTABLE and (found.get("confidence") or 0) >= _DETECT_CONFIDENCE:
        return _codec(name)
    return None


def decode_header_value(value: Any) -> str:
    """Unfold and decode one raw header value (RFC 2047 encoded words, raw 8-bit bytes)."""
    text = str(value)
    if any("\udc80" <= ch <= "\udcff" for ch in text):
        # Raw 8-bit bytes reach us as surrogate escapes: recover and decode them.
        raw = text.encode("utf-8", "surrogateescape")
        text = decode_text(raw, None)[0]
    text = _FOLD.sub(" ", text).strip()
    if "=?" not in text:
        return text
    try:
        chunks = decode_header(text)
    except Exception:
        return text
    out: list[str] = []
    for chunk, charset in chunks:
        if isinstance(chunk, bytes):
            out.append(decode_text(chunk, charset)[0])
        else:
            out.append(chunk)
    return "".join(out).strip()


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


def _render_fields(part: Message) -> str:
    """A header block back as text, one ``Name: value`` a line."""
    return "\n".join(f"{name}: {decode_header_value(value)}" for name, value in part.raw_items())


def _delivery_status_text(part: Message) -> str:
    """The text of a ``message/delivery-status`` part.

    The stdlib parses its field blocks into one header-only message per block;
    we hand them back as the RFC 3464 text they were, blocks separated by a
    blank line.
    """
    payload = part.get_payload()
    if isinstance(payload, list):
        blocks = [_render_fields(block) for block in payload if isinstance(block, Message)]
        return "\n\n".join(b for b in blocks if b) + "\n"
    if isinstance(payload, Message):  # message/global-delivery-status
        head = _render_fields(payload)
        body = payload.get_payload()
        return head + ("\n" + body if isinstance(body, str) else "")
    raw = part.get_payload(decode=True) or b""
    return _NEWLINES.sub("\n", decode_text(raw, part.get_content_charset())[0])


def _filename(part: Message, index: int, defects: list[str]) -> str | None:
    try:
        name = part.get_filename()
    except Exception:
        defects.append(f"part {index}: unreadable filename")
        return None
    if not name:
        return None
    # Outlook and others put RFC 2047 words in the filename parameter, which
    # RFC 2231 does not allow but every client reads.
    # macOS writes names decomposed (NFD); compose them so names compare as typed.
    name = unicodedata.normalize("NFC", decode_header_value(name))
    return name.replace("/", "_").replace("\\", "_").strip() or None


def _content_id(part: Message) -> str | None:
    value = part.get("Content-ID")
    if not value:
        return None
    value = decode_header_value(value).strip()
    return value if value.startswith("<") else f"<{value}>"


@dataclass
class _Walk:
    """What the walk over one message collects before it becomes a ``ParsedMail``."""

    plain: list[str] = field(default_factory=list)
    html: list[str] = field(default_factory=list)
    attachments: list[dict[str, Any]] = field(default_factory=list)
    report_parts: list[str] = field(default_factory=list)
    returned_headers: str | None = None
    defects: list[str] = field(default_factory=list)


def _walk(message: Message) -> _Walk:
    """Collect bodies, attachments and report parts, depth-first, without recursion.

    Rules: a multipart is opened unless it is itself an attachment; text/plain
    and text/html with no filename and no ``attachment`` disposition are body;
    an attached message (``message/rfc822``) is an attachment and its text is
    never body; inside a ``multipart/report`` the ``message/delivery-status``
    part goes to ``report_parts`` and the returned message to
    ``returned_headers``; everything else is an attachment.
    """
    out = _Walk()
    stack: list[tuple[Message, int, bool]] = [(message, 0, False)]
    seen = 0
    while stack:
        part, depth, in_report = stack.pop()
        seen += 1
        if seen > MAX_PARTS:
            out.defects.append(f"more than {MAX_PARTS} MIME parts; the rest ignored")
            break
        ctype = part.get_content_type()
        disposition = (part.get_content_disposition() or "").lower()
        if part.is_multipart() and ctype.startswith("multipart/"):
            if depth >= MAX_DEPTH:
                out.defects.append(f"MIME nesting deeper than {MAX_DEPTH}; inner parts ignored")
                continue
            children = [c for c in part.get_payload() if isinstance(c, Message)]
            report = in_report or ctype == "multipart/report"
            stack.extend((child, depth + 1, report) for child in reversed(children))
            continue
        index = seen - 1
        if ctype in ("message/delivery-status", "message/global-delivery-status"):
            out.report_parts.append(_delivery_status_text(part))
            continue
        if in_report and ctype in ("text/rfc822-headers", "text/global-headers"):
            raw = part.get_payload(decode=True) or b""
            text = _NEWLINES.sub("\n", decode_text(raw, part.get_content_charset())[0])
            out.returned_headers = out.returned_headers or text
            continue
        if ctype in ("message/rfc822", "message/global"):
            inner = part.get_payload()
            inner_msg = inner[0] if isinstance(inner, list) and inner else inner
            if in_report and isinstance(inner_msg, Message):
                out.returned_headers = out.returned_headers or _render_fields(inner_msg)
                continue
            _attach_message(out, part, inner_msg, index)
            continue
        filename = _filename(part, index, out.defects)
        is_text_body = (
            ctype in ("text/plain", "text/html") and not filename and disposition != "attachment"
        )
        try:
            raw = part.get_payload(decode=True)
        except Exception as exc:  # a payload the stdlib cannot decode at all
            out.defects.append(f"part {index} ({ctype}): payload unreadable: {exc}")
            raw = None
        if raw is None:
            raw = b""
        if is_text_body:
            text, note = decode_text(raw, part.get_content_charset())
            if note:
                out.defects.append(f"part {index} ({ctype}): {note}")
            (out.plain if ctype == "text/plain" else out.html).append(_NEWLINES.sub("\n", text))
            continue
        out.attachments.append(
            {
                "filename": filename or _fallback_name(ctype, len(out.attachments) + 1),
                "content_type": ctype,
                "payload": raw,
                "content_id": _content_id(part),
                "disposition": disposition,
            }
        )
    return out


def _attach_message(out: _Walk, part: Message, inner: Any, index: int) -> None:
    """An attached (forwarded) message, kept whole as ``.eml``."""
    payload = b""
    if isinstance(inner, Message):
        try:
            payload = inner.as_bytes(policy=policy.compat32)
        except Exception as exc:
            out.defects.append(f"part {index} (message/rfc822): cannot be re-serialised: {exc}")
    filename = _filename(part, index, out.defects)
    if not filename and isinstance(inner, Message):
        subject = decode_header_value(inner.get("Subject", "") or "")
        filename = f"{subject[:80] or 'message'}.eml".replace("/", "_")
    out.attachments.append(
        {
            "filename": filename or "message.eml",
            "content_type": part.get_content_type(),
            "payload": payload,
            "content_id": _content_id(part),
            "disposition": (part.get_content_disposition() or "").lower(),
        }
    )


_EXTENSIONS = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/gif": ".gif",
    "application/pdf": ".pdf",
    "text/plain": ".txt",
    "text/html": ".html",
    "text/calendar": ".ics",
}


def _fallback_name(ctype: str, n: int) -> str:
    return f"attachment-{n}{_EXTENSIONS.get(ctype, '.bin')}"


def _referenced_cids(html_parts: list[str]) -> set[str]:
    found: set[str] = set()
    for html in html_parts:
        if "cid:" not in html.lower():
            continue
        for ref in _CID_REF.findall(html):
            found.add(unquote(ref).strip().lower())
    return found


_ADDR_SPEC = re.compile(r'^(?:"[^"\r\n]*"|[^\s<>()\[\],;:"@]+)@[^\s<>()\[\],;:"@]+$')


def _mailboxes(mp: Any, message: Message) -> list[tuple[str, str]]:
    """From's mailboxes: mail-parser's reading, else headerregistry's; valid addr-specs only."""
    found: list[tuple[str, str]] = []
    if mp is not None:
        try:
            found = [(n, a.strip()) for n, a in mp.from_ if a and _ADDR_SPEC.match(a.strip())]
        except Exception:
            found = []
    raw = message.get("From")
    if not found and raw:
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


def _from_mailbox(mp: Any, message: Message, defects: list[str]) -> tuple[str, str]:
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


def _library_defects(mp: Any) -> list[str]:
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


def _build(message: Message, mp: Any, defects: list[str]) -> ParsedMail:
    headers = tuple((n.lower(), decode_header_value(v)) for n, v in message.raw_items())

    def first(name: str) -> str | None:
        for key, value in headers:
            if key == name:
                return value
        return None

    from_address, from_name = _from_mailbox(mp, message, defects)
    walk = _walk(message)
    defects.extend(walk.defects)
    cids = _referenced_cids(walk.html)
    attachments = tuple(
        Attachment(
            filename=a["filename"],
            content_type=a["content_type"],
            size=len(a["payload"]),
            payload=a["payload"],
            content_id=a["content_id"],
            inline=bool(a["content_id"]) and a["content_id"][1:-1].strip().lower() in cids,
        )
        for a in walk.attachments
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
        text_plain="\n".join(walk.plain) if walk.plain else None,
        text_html="\n".join(walk.html) if walk.html else None,
        attachments=attachments,
        defects=tuple(dict.fromkeys(defects)),
        content_type=content_type,
        report_parts=tuple(walk.report_parts),
        report_type=report_type,
        returned_headers=walk.returned_headers,
    )


def parse_message(raw: bytes) -> ParsedMail:
    """Parse raw RFC 5322 bytes. Never raises on malformed mail: problems land in ``defects``."""
    defects: list[str] = []
    try:
        mp = mailparser.MailParser.from_bytes(raw)
        message = mp.message
        defects.extend(_library_defects(mp))
    except Exception as exc:
        defects.append(f"mail-parser gave up ({type(exc).__name__}); read with the stdlib")
        mp = None
        message = _stdlib(raw, defects)
    if message is None:
        message = email.message_from_bytes(b"", policy=policy.compat32)
    try:
        return _build(message, mp, defects)
    except Exception as exc:
        # Last line of defence: a message no rule above foresaw still yields a
        # record the engine can store a reason against.
        defects.append(f"parse failed ({type(exc).__name__}: {exc}); headers only")
        return _empty(_headers_only(raw, defects), defects)


def _stdlib(raw: bytes, defects: list[str]) -> Message:
    """The stdlib's reading of what mail-parser refused; headers alone if even that fails.

    mail-parser refuses trees nested past the stack, and the stdlib parser
    recurses just the same: the headers still tell the engine what the mail
    is (and whether it is a bounce).
    """
    try:
        return email.message_from_bytes(raw, policy=policy.default)
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
