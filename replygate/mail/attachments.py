"""Attachment policy (pure): which files a reply may carry, checked for what they are.

Inline images an HTML body shows by ``cid:`` (signature logos) are not
attachments: they are dropped, not checked. Every other file, and every file
inside a forwarded message (``message/rfc822``, which is stored whole, so
its files reach staff as surely as ours), must pass these rules; the first
rule a file fails refuses the whole mail, with the error that says why:

1. count: at most ``max_count`` files, those inside forwarded messages
   included (``TooManyAttachments``);
2. declared type: its Content-Type is on the allow-list, ``*`` wildcards
   allowed (``AttachmentTypeRefused``);
3. name: no control character, no bidi control (a U+202E before ``gpj.exe``
   shows ``invoice_gpj.exe`` as ``invoice_exe.jpg``), no other invisible
   format character but the joiners U+200C/U+200D that scripts and emoji
   need; and its last extension, trailing dots and spaces dropped as Windows
   drops them, is none of ``RUNNABLE_EXTENSIONS``: programs, scripts,
   shortcuts, disk images, macro-enabled Office files and web pages, which a
   click runs or renders whatever the allow-list says (``AttachmentNameRefused``);
4. kind: the declared type is a kind of file we can check (``KINDS``, or a
   type ``filetype`` knows by its magic number); any other is refused, since
   nobody can say what it is (``AttachmentContentMismatch``);
5. extension: an extension that names another kind of file refuses it
   (``photo.pdf`` declared ``image/png``); one naming nothing we know
   (``.bin``, ``Scan 2024.03.01``) is allowed, the content being checked
   (``AttachmentContentMismatch``);
6. content (``AttachmentContentMismatch``):
   - a binary kind: ``filetype`` recognises the bytes as that kind (a PNG
     may read as APNG), and never as a program (PE, ELF, Flash, WebAssembly);
   - text (``text/plain``, ``text/csv``): magic numbers cannot tell text from
     anything else (``ID3,name`` starts like an MP3), so instead the bytes
     hold no NUL nor other C0 control but tab, line feed, vertical tab, form
     feed, carriage return and escape (ISO-2022-JP needs it); UTF-16 with a
     byte-order mark is decoded first and checked the same way. Any
     ASCII-compatible charset passes; executables never do;
   - a forwarded message: its own files pass every rule here, down to
     ``MAX_FORWARD_DEPTH`` messages inside messages; deeper ones are
     refused (``AttachmentTypeRefused``);
7. size: each file at most ``max_file`` bytes and all together at most
   ``max_total`` (``AttachmentTooLarge``).

Content is sniffed with ``filetype`` (pure Python, no libmagic): it reads the
first 8 KiB and knows every binary kind the default allow-list names.
"""

from __future__ import annotations

import codecs
import fnmatch
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

import filetype  # type: ignore[import-untyped]

from replygate.errors import (
    AttachmentContentMismatch,
    AttachmentNameRefused,
    AttachmentTooLarge,
    AttachmentTypeRefused,
    TooManyAttachments,
)
from replygate.mail.parse import Attachment, parse_message

__all__ = ["KINDS", "MAX_FORWARD_DEPTH", "RUNNABLE_EXTENSIONS", "Kind", "files_to_keep"]

# A forward of a forward of a forward is the deepest a person sends on purpose.
MAX_FORWARD_DEPTH = 3

RUNNABLE_EXTENSIONS = frozenset(
    {
        # Windows programs, installers and the interpreters a double click starts
        "exe", "scr", "com", "pif", "cpl", "dll", "sys", "msi", "msp", "msc", "bat", "cmd",
        "js", "jse", "vbs", "vbe", "wsf", "wsh", "ws", "ps1", "psm1", "psd1", "hta", "sct",
        "jar", "reg", "inf", "chm", "gadget", "application", "appx", "appxbundle", "msix",
        "msixbundle", "appinstaller", "xll", "xlam", "py", "pyw",
        # shortcuts and disk images (which escape the mark of the web)
        "lnk", "url", "scf", "iso", "img", "vhd", "vhdx", "dmg",
        # other systems' programs
        "sh", "bash", "command", "app", "pkg", "apk", "deb", "rpm", "elf",
        # Office files with macros
        "docm", "dotm", "xlsm", "xltm", "xlsb", "pptm", "potm", "ppsm", "sldm",
        # web pages and script-carrying images, which a browser or viewer renders
        "html", "htm", "xhtml", "shtml", "mht", "mhtml", "svg", "svgz", "xht",
    }
)  # fmt: skip
# What a sniffer names a program as; refused whatever its declared type.
_PROGRAMS = frozenset(
    {
        "application/x-msdownload",
        "application/x-executable",
        "application/x-shockwave-flash",
        "application/wasm",
    }
)
# Format characters scripts and emoji sequences need (ZWNJ, ZWJ).
_JOINERS = frozenset({"\u200c", "\u200d"})
# C0 controls that text never holds: all but tab, LF, VT, FF, CR and ESC.
_NOT_TEXT = re.compile(rb"[\x00-\x08\x0e-\x1a\x1c-\x1f]")
_NOT_TEXT_CHARS = re.compile(r"[\x00-\x08\x0e-\x1a\x1c-\x1f]")
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


class Check(Enum):
    """How a kind's content is recognised."""

    MAGIC = "magic"  # filetype names it
    TEXT = "text"  # the text rule
    MESSAGE = "message"  # its own files are checked


@dataclass(frozen=True)
class Kind:
    """A kind of file: the types that declare it, its extensions, how its bytes are checked,
    and (for ``MAGIC``) the types ``filetype`` may call it."""

    name: str
    types: frozenset[str]
    extensions: frozenset[str]
    check: Check
    sniffed: frozenset[str] = frozenset()


def _kind(name: str, types: str, extensions: str, check: Check, sniffed: str = "") -> Kind:
    return Kind(
        name,
        frozenset(types.split()),
        frozenset(extensions.split()),
        check,
        frozenset(sniffed.split()),
    )


_OOXML = "application/vnd.openxmlformats-officedocument."
_ODF = "application/vnd.oasis.opendocument."
KINDS = (
    _kind("a PDF", "application/pdf", "pdf", Check.MAGIC, "application/pdf"),
    _kind("a PNG image", "image/png", "png", Check.MAGIC, "image/png image/apng"),
    _kind("a JPEG image", "image/jpeg", "jpg jpeg jpe jfif", Check.MAGIC, "image/jpeg"),
    _kind("a GIF image", "image/gif", "gif", Check.MAGIC, "image/gif"),
    _kind("a HEIC image", "image/heic image/heif", "heic heif", Check.MAGIC, "image/heic"),
    _kind("a Word 97 document", "application/msword", "doc dot", Check.MAGIC, "application/msword"),
    _kind(
        "a Word document",
        f"{_OOXML}wordprocessingml.document {_OOXML}wordprocessingml.template",
        "docx dotx",
        Check.MAGIC,
        f"{_OOXML}wordprocessingml.document",
    ),
    _kind(
        "an Excel workbook",
        f"{_OOXML}spreadsheetml.sheet {_OOXML}spreadsheetml.template",
        "xlsx xltx",
        Check.MAGIC,
        f"{_OOXML}spreadsheetml.sheet",
    ),
    _kind(
        "a PowerPoint presentation",
        f"{_OOXML}presentationml.presentation {_OOXML}presentationml.template "
        f"{_OOXML}presentationml.slideshow",
        "pptx potx ppsx",
        Check.MAGIC,
        f"{_OOXML}presentationml.presentation",
    ),
    _kind("an OpenDocument text", f"{_ODF}text", "odt", Check.MAGIC, f"{_ODF}text"),
    _kind(
        "an OpenDocument spreadsheet",
        f"{_ODF}spreadsheet",
        "ods",
        Check.MAGIC,
        f"{_ODF}spreadsheet",
    ),
    _kind(
        "an OpenDocument presentation",
        f"{_ODF}presentation",
        "odp",
        Check.MAGIC,
        f"{_ODF}presentation",
    ),
    _kind("an RTF document", "application/rtf text/rtf", "rtf", Check.MAGIC, "application/rtf"),
    _kind(
        "text", "text/plain text/csv text/tab-separated-values", "txt text csv tsv log", Check.TEXT
    ),
    _kind("a forwarded message", "message/rfc822", "eml", Check.MESSAGE),
)
_KIND_OF_TYPE = {t: kind for kind in KINDS for t in kind.types}
# Every extension that names some kind of file, ours or one filetype knows.
_KNOWN_EXTENSIONS = frozenset(
    {e for kind in KINDS for e in kind.extensions}
    | {str(t.extension).lower() for t in filetype.types}
    | RUNNABLE_EXTENSIONS
)


def files_to_keep(
    attachments: Iterable[Attachment],
    *,
    max_file: int,
    max_total: int,
    allowed: tuple[str, ...],
    max_count: int = 20,
) -> list[Attachment]:
    """The attachments to store, or raise the refusal that says which file and why."""
    kept = [a for a in attachments if not a.inline]
    _Checker(allowed, max_count).check(kept, depth=0)
    total = 0
    for a in kept:
        if a.size > max_file:
            raise AttachmentTooLarge(
                f"the attachment {a.filename!r} is {_mb(a.size)}; the limit per file is "
                f"{_mb(max_file)}"
            )
        total += a.size
    if total > max_total:
        raise AttachmentTooLarge(
            f"the attachments add up to {_mb(total)}; the limit is {_mb(max_total)}"
        )
    return kept


class _Checker:
    """Rules 1 to 6 over one mail's files, counting those of forwarded messages too."""

    def __init__(self, allowed: tuple[str, ...], max_count: int) -> None:
        self.allowed = allowed
        self.max_count = max_count
        self.count = 0

    def check(self, files: list[Attachment], *, depth: int) -> None:
        self.count += len(files)
        if self.count > self.max_count:
            raise TooManyAttachments(
                f"the message carries more than {self.max_count} files; that is the limit"
            )
        for a in files:
            self.one(a, depth=depth)

    def one(self, a: Attachment, *, depth: int) -> None:
        declared = a.content_type.lower().split(";")[0].strip()
        where = f"the attachment {a.filename!r}" + (" (in a forwarded message)" if depth else "")
        if not any(fnmatch.fnmatchcase(declared, pattern) for pattern in self.allowed):
            raise AttachmentTypeRefused(f"{where} is of type {declared}, which we do not accept")
        name_problem = _name_problem(a.filename)
        if name_problem is not None:
            raise AttachmentNameRefused(f"{where}: {name_problem}")
        kind = kind_of(declared)
        if kind is None:
            raise AttachmentContentMismatch(
                f"{where} is declared {declared}, a type whose content we cannot check"
            )
        ext = extension(a.filename)
        if ext in _KNOWN_EXTENSIONS and ext not in kind.extensions:
            raise AttachmentContentMismatch(
                f"{where} is declared {declared} but its name says .{ext}"
            )
        if kind.check is Check.MESSAGE:
            if depth + 1 > MAX_FORWARD_DEPTH:
                raise AttachmentTypeRefused(
                    f"{where} nests forwarded messages deeper than {MAX_FORWARD_DEPTH}"
                )
            self.check(list(parse_message(a.payload).attachments), depth=depth + 1)
            return
        problem = _content_problem(kind, a.payload)
        if problem is not None:
            raise AttachmentContentMismatch(f"{where} is declared {declared} but {problem}")


def kind_of(declared: str) -> Kind | None:
    """The kind a declared type names: ours, else one ``filetype`` recognises, else None."""
    kind = _KIND_OF_TYPE.get(declared)
    if kind is not None or declared == "application/octet-stream":
        return kind
    extensions = {str(t.extension).lower() for t in filetype.types if t.mime == declared}
    if not extensions:
        return None
    return Kind(
        declared, frozenset({declared}), frozenset(extensions), Check.MAGIC, frozenset({declared})
    )


def extension(filename: str) -> str:
    """The last extension, lower-cased, of the name as Windows saves it (trailing dots and
    spaces dropped); ``""`` when there is none."""
    stem, dot, ext = filename.rstrip(" .").rpartition(".")
    return ext.lower() if dot and stem else ""


def _name_problem(filename: str) -> str | None:
    for ch in filename:
        category = unicodedata.category(ch)
        if category in ("Cc", "Zl", "Zp") or (category == "Cf" and ch not in _JOINERS):
            what = "a bidi control" if ch in _BIDI_CONTROLS else "a control"
            return f"its name holds {what} character (U+{ord(ch):04X})"
    ext = extension(filename)
    if ext in RUNNABLE_EXTENSIONS:
        return f"its name ends in .{ext}, a file a click runs or renders"
    return None


# The embeddings, overrides, isolates and marks of the Unicode bidi algorithm (UAX #9).
_BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


def _content_problem(kind: Kind, payload: bytes) -> str | None:
    """Why the bytes are not of ``kind`` (rule 6), or None."""
    if kind.check is Check.TEXT:
        return None if _is_text(payload) else "its content is not text"
    found = _sniff(payload)
    if found in _PROGRAMS:
        return f"its content is a program ({found})"
    if found not in kind.sniffed:
        return f"its content is not {kind.name} ({found or 'unrecognised'})"
    return None


def _sniff(payload: bytes) -> str | None:
    try:
        found = filetype.guess(payload)
    except Exception:  # a matcher tripped on hostile bytes: nothing recognised
        return None
    return str(found.mime) if found is not None else None


def _is_text(payload: bytes) -> bool:
    if payload.startswith(_UTF16_BOMS):
        try:
            decoded = payload.decode("utf-16")
        except UnicodeDecodeError:
            return False
        return _NOT_TEXT_CHARS.search(decoded) is None
    return _NOT_TEXT.search(payload) is None


def _mb(n: int) -> str:
    return f"{n / 1_048_576:.1f} MB"
