"""Bytes of a mail body or header to ``str``: never raising, never leaving mojibake.

mail-parser decodes a text part with its declared charset or else UTF-8 with
replacement characters, and drops undecodable bytes of 8-bit header values.
Mail in the wild is often mislabelled or unlabelled (an undeclared
windows-1252 body from Outlook or an old webmail, "iso-8859-1" on windows-1252
or UTF-8 text), so the parser decodes with the rules here instead and records
what it had to guess.
"""

from __future__ import annotations

import codecs
import re
from email.header import decode_header

try:  # C implementation: ~100x faster than pure-Python chardet on the same bytes
    import cchardet as _chardet
except ImportError:  # pragma: no cover - both are declared dependencies
    import chardet as _chardet  # type: ignore[no-redef]

__all__ = ["decode_header_value", "decode_text"]

_FOLD = re.compile(r"\r?\n[ \t]*|\r[ \t]*")

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


def decode_header_value(value: object) -> str:
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
