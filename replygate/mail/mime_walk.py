"""One walk over a parsed MIME tree: body text, attached files and report parts.

The parser walks the tree itself rather than take mail-parser's reading,
because mail-parser folds the text of attached messages (a forwarded mail,
the message returned inside a bounce) into the body, returns attachments
re-encoded as base64 text, names Content-ID parts after their Content-ID,
and knows nothing of ``multipart/report``. The walk is iterative and bounded
(``MAX_PARTS``, ``MAX_DEPTH``), so no message can exhaust the stack or our time.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from email import policy
from email.message import Message
from email.parser import BytesHeaderParser

from replygate.mail.decoding import (
    decode_base64,
    decode_header_value,
    decode_text,
    transfer_encoding,
)

__all__ = ["MAX_DEPTH", "MAX_PARTS", "FoundFile", "Walk", "is_text_body", "only_body", "walk"]

# Bounds on what one mail may cost us; past them we stop walking and say so.
MAX_PARTS = 500
MAX_DEPTH = 30

_NEWLINES = re.compile(r"\r\n?")

_EXTENSIONS = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/gif": ".gif",
    "application/pdf": ".pdf",
    "text/plain": ".txt",
    "text/html": ".html",
    "text/calendar": ".ics",
}


@dataclass(frozen=True)
class FoundFile:
    """A part the walk set aside as a file; whether it is inline is decided later,
    once every HTML body (which may reference its Content-ID) has been read."""

    filename: str
    content_type: str
    payload: bytes
    content_id: str | None


@dataclass
class Walk:
    """What the walk over one message collects before it becomes a ``ParsedMail``."""

    plain: list[str] = field(default_factory=list)
    html: list[str] = field(default_factory=list)
    files: list[FoundFile] = field(default_factory=list)
    report_parts: list[str] = field(default_factory=list)
    returned_headers: str | None = None
    defects: list[str] = field(default_factory=list)


def walk(message: Message) -> Walk:
    """Collect bodies, attachments and report parts, depth-first, without recursion.

    Rules: a multipart is opened unless it is itself an attachment; text/plain
    and text/html with no filename and no ``attachment`` disposition are body;
    an attached message (``message/rfc822``) is an attachment and its text is
    never body; inside a ``multipart/report`` the ``message/delivery-status``
    part goes to ``report_parts`` and the returned message to
    ``returned_headers``; everything else is an attachment.
    """
    out = Walk()
    stack: list[tuple[Message, int, bool]] = [(message, 0, False)]
    seen = 0
    while stack:
        part, depth, in_report = stack.pop()
        seen += 1
        if seen > MAX_PARTS:
            out.defects.append(f"more than {MAX_PARTS} MIME parts; the rest ignored")
            break
        ctype = part.get_content_type()
        if part.is_multipart() and ctype.startswith("multipart/"):
            if depth >= MAX_DEPTH:
                out.defects.append(f"MIME nesting deeper than {MAX_DEPTH}; inner parts ignored")
                continue
            children = [c for c in _children(part) if isinstance(c, Message)]
            report = in_report or ctype == "multipart/report"
            stack.extend((child, depth + 1, report) for child in reversed(children))
            continue
        index = seen - 1
        if ctype in ("message/delivery-status", "message/global-delivery-status"):
            out.report_parts.append(_delivery_status_text(part))
            continue
        if in_report and ctype in ("text/rfc822-headers", "text/global-headers"):
            raw = _decoded_payload(part)
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
        notes: list[str] = []
        try:
            raw = _decoded_payload(part, notes)
        except Exception as exc:  # a payload the stdlib cannot decode at all
            out.defects.append(f"part {index} ({ctype}): payload unreadable: {exc}")
            raw = b""
        out.defects.extend(f"part {index} ({ctype}): {note}" for note in notes)
        if is_text_body(part, filename):
            text, note = decode_text(raw, part.get_content_charset())
            if note:
                out.defects.append(f"part {index} ({ctype}): {note}")
            (out.plain if ctype == "text/plain" else out.html).append(_NEWLINES.sub("\n", text))
            continue
        out.files.append(
            FoundFile(
                filename=filename or _fallback_name(ctype, len(out.files) + 1),
                content_type=ctype,
                payload=raw,
                content_id=_content_id(part),
            )
        )
    return out


def is_text_body(part: Message, filename: str | None) -> bool:
    """Whether a leaf is body text: text/plain or text/html, unnamed, not an attachment."""
    disposition = (part.get_content_disposition() or "").lower()
    return (
        part.get_content_type() in ("text/plain", "text/html")
        and not filename
        and disposition != "attachment"
    )


def only_body(raw: bytes, head: bytes | None = None) -> bool:
    """Whether a message is one part that ``walk`` reads as body, so it carries no file.

    Judged from the header block alone, so a plain reply need not be parsed whole;
    a text block that names no file anywhere (no ``name`` parameter, no
    Content-Disposition) is body without asking the parser. ``head``, when
    given, is the block lower-cased (``headers.lowered_head``).
    """
    lowered = head
    if lowered is None:
        lowered = _top_block(raw).lower()
    if b"content-disposition" not in lowered and b"name" not in lowered:
        fast = _plain_text_type(lowered)
        if fast is not None:
            return fast
    try:
        top = BytesHeaderParser(policy=policy.compat32).parsebytes(_top_block(raw))
    except Exception:
        return False
    return is_text_body(top, _filename(top, 0, []))


def _top_block(raw: bytes) -> bytes:
    """The message up to its first blank CRLF line (all of it when there is none)."""
    end = raw.find(b"\r\n\r\n")
    return raw if end == -1 else raw[: end + 4]


def _plain_text_type(lowered: bytes) -> bool | None:
    """From a lower-cased header block: whether its one Content-Type is text/plain or
    text/html (none at all is text/plain); None when the parser should say."""
    if lowered.count(b"content-type") > 1:
        return None
    at = 0 if lowered.startswith(b"content-type:") else lowered.find(b"\ncontent-type:") + 1
    if at == 0 and not lowered.startswith(b"content-type:"):
        return True
    value = lowered[at + len(b"content-type:") :].lstrip()
    for kind in (b"text/plain", b"text/html"):
        if value.startswith(kind) and value[len(kind) : len(kind) + 1] in b"; \t\r\n":
            return True
    return False


def _children(part: Message) -> list[Message | str]:
    """A multipart's parts (the stdlib's payload of a multipart is their list)."""
    payload = part.get_payload()
    return payload if isinstance(payload, list) else []


def _decoded_payload(part: Message, notes: list[str] | None = None) -> bytes:
    """A leaf part's body with its transfer encoding undone (``b""`` when there is none).

    The encoding's name is trimmed and lower-cased first (``base64 `` is base64)
    and base64 is decoded leniently (``decoding.decode_base64``), with a note
    when it had to be: the stdlib does neither, and filed raw base64 as text.
    """
    declared = part.get("Content-Transfer-Encoding")
    cte = transfer_encoding(declared)
    if cte == "base64":
        try:
            text = part.get_payload()
        except Exception:  # 8-bit bytes under a label the stdlib cannot decode
            text = None
        if isinstance(text, str):
            value, note = decode_base64(text)
            if note and notes is not None:
                notes.append(note)
            return value
    elif declared is not None and str(declared) != cte:
        part.replace_header("Content-Transfer-Encoding", cte)
    raw = part.get_payload(decode=True)
    return raw if isinstance(raw, bytes) else b""


def _attach_message(out: Walk, part: Message, inner: object, index: int) -> None:
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
    out.files.append(
        FoundFile(
            filename=filename or "message.eml",
            content_type=part.get_content_type(),
            payload=payload,
            content_id=_content_id(part),
        )
    )


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
    raw = _decoded_payload(part)
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


def _fallback_name(ctype: str, n: int) -> str:
    return f"attachment-{n}{_EXTENSIONS.get(ctype, '.bin')}"
