"""Bytes of a mail body or header to ``str``: never raising, never leaving mojibake.

mail-parser decodes a text part with its declared charset or else UTF-8 with
replacement characters, and drops undecodable bytes of 8-bit header values.
Mail in the wild is often mislabelled or unlabelled (an undeclared
windows-1252 body from Outlook or an old webmail, "iso-8859-1" on windows-1252
or UTF-8 text), so the parser decodes with the rules here instead and records
what it had to guess.

Every function here is linear in its input: RFC 2047 words are decoded by
``decode_header_value`` itself, since the standard library's ``decode_header``
takes quadratic time on a header of many words (a 1 MB Subject: 18 s).
"""

from __future__ import annotations

import binascii
import codecs
import re

try:  # C implementation: ~100x faster than pure-Python chardet on the same bytes
    import cchardet as _chardet
except ImportError:  # pragma: no cover - both are declared dependencies
    import chardet as _chardet  # type: ignore[no-redef]

__all__ = ["decode_base64", "decode_header_value", "decode_text", "transfer_encoding"]

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


# Codecs Python calls text encodings that are no charset of mail: they raise on
# most bytes (``undefined``, ``idna``) or read escapes into the text.
_NOT_CHARSETS = frozenset(
    {"undefined", "idna", "punycode", "unicode-escape", "raw-unicode-escape", "mbcs", "oem"}
)


def _codec(label: str) -> str | None:
    """Python codec name for a charset label, or ``None`` when unknown or no charset.

    ``rot13``, ``base64``, ``hex``, ``zip`` and the like are codecs of the
    registry but not text encodings: a label naming one is no charset.
    """
    label = _ALIASES.get(label, label)
    try:
        info = codecs.lookup(label)
    except Exception:  # LookupError, or ValueError for a label holding a NUL
        return None
    if not getattr(info, "_is_text_encoding", True) or info.name in _NOT_CHARSETS:
        return None
    return info.name


def _label_note(label: str) -> str:
    try:
        codecs.lookup(_ALIASES.get(label, label))
    except Exception:
        return f"unknown charset {label}"
    return f"charset {label} is not a text charset"


_UTF16 = frozenset({"utf-16", "utf-16-le", "utf-16-be"})
_UTF16_SAMPLE = 65_536


def _utf16_order(data: bytes) -> str | None:
    """``utf-16-le`` or ``utf-16-be`` for BOM-less UTF-16 of mostly Latin text, else None.

    Rule: at least a third of the 16-bit units have a zero high byte and the
    other byte position is almost never zero (a NUL in real 8-bit text is
    rare, a NUL in every other byte is UTF-16). A byte-order mark decides alone.
    """
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    sample = data[:_UTF16_SAMPLE]
    if len(sample) < 4 or b"\x00" not in sample:
        return None
    units = len(sample) // 2
    even, odd = sample[0::2].count(0), sample[1::2].count(0)
    if odd * 3 >= units and even * 8 <= odd:
        return "utf-16-le"
    if even * 3 >= units and odd * 8 <= even:
        return "utf-16-be"
    return None


def _strict(data: bytes, codec: str) -> str | None:
    """``data`` decoded strictly, or None when the bytes are not of that codec."""
    try:
        return data.decode(codec)
    except Exception:  # UnicodeError and whatever an odd codec raises
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

    Before all of these, UTF-16 is recognised by its byte-order mark or, without
    one, by its zero bytes (``_utf16_order``), whatever the label. A label
    naming no charset (unknown, or a codec such as ``rot13`` or ``base64``)
    counts as none, with a note. windows-1252 is our Latin-1: it decodes every
    byte, so the last rule always succeeds.
    """
    label = (declared or "").strip().strip("\"'").lower()
    order = _utf16_order(data) if label in _UTF16 or b"\x00" in data else None
    if order is not None:
        decoded = _strict(data, order)
        if decoded is not None:
            if label in _UTF16:
                return decoded, None
            return decoded, f"labelled {label or 'nothing'} but the bytes are UTF-16"
    if _is_ascii(data):
        return data.decode("ascii"), None
    note: str | None = None
    if label not in _UNDECLARED and label not in _WESTERN:
        codec = _codec(label)
        if codec is not None:
            decoded = _strict(data, codec)
            if decoded is not None:
                return decoded, None
            note = f"charset {label} does not match the bytes"
        else:
            note = _label_note(label)
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
        try:
            detected = data.decode(guess, errors="replace")
        except Exception:  # a detector's answer we cannot use
            pass
        else:
            return detected, f"{reason}decoded as {guess} (detected)"
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


_SURROGATE = re.compile("[\udc80-\udcff]")
# RFC 2047 encoded word. The text stops at the next "?", so every attempt to
# match is bounded by it and the scan stays linear; spaces inside are allowed,
# as clients write them and the standard library reads them.
_ENCODED_WORD = re.compile(r"=\?([^?]*)\?([qQbB])\?([^?]*)\?=")


def decode_header_value(value: object) -> str:
    """Unfold and decode one raw header value (RFC 2047 encoded words, raw 8-bit bytes).

    Rules: whitespace between two encoded words goes (RFC 2047 6.2); adjacent
    words of one charset are joined as bytes before decoding, so a character
    split across two words survives; each run is decoded by ``decode_text``
    (a bad label falls back like a body's); text outside words stays as written.
    """
    text = str(value)
    if _SURROGATE.search(text):
        # Raw 8-bit bytes reach us as surrogate escapes: recover and decode them.
        raw = text.encode("utf-8", "surrogateescape")
        text = decode_text(raw, None)[0]
    text = _FOLD.sub(" ", text).strip()
    if "=?" not in text:
        return text
    out: list[str] = []
    run: list[bytes] = []
    run_charset: str | None = None
    end = 0
    for word in _ENCODED_WORD.finditer(text):
        between = text[end : word.start()]
        charset = word.group(1).split("*", 1)[0].strip().lower()
        if run and (between.strip() or charset != run_charset):
            out.append(decode_text(b"".join(run), run_charset)[0])
            run = []
        if between and not (between.isspace() and end > 0):
            out.append(between)
        run.append(_word_bytes(word.group(2), word.group(3)))
        run_charset = charset
        end = word.end()
    if run:
        out.append(decode_text(b"".join(run), run_charset)[0])
    out.append(text[end:])
    return "".join(out).strip()


def _word_bytes(encoding: str, encoded: str) -> bytes:
    """The bytes one encoded word carries; a malformed word gives what can be read."""
    data = encoded.encode("utf-8", "surrogateescape")
    if encoding in "qQ":
        return binascii.a2b_qp(data, header=True)
    return decode_base64(encoded)[0]


_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/=]+")
_NOT_BASE64_SPACE = re.compile(rb"[^A-Za-z0-9+/=\s]")


def decode_base64(text: str) -> tuple[bytes, str | None]:
    """Base64 decoded leniently, and a sentence when it had to be.

    Rules: characters outside the alphabet are skipped (line breaks silently);
    padding may be missing, and ``=`` inside the text ends one chunk and starts
    the next (concatenated encodings); a chunk one character past a group of
    four drops that character, since six bits make no byte. The standard
    library returns such a body undecoded, and the raw base64 was filed.
    """
    data = text.encode("ascii", "ignore")
    compact = _NOT_BASE64.sub(b"", data)
    problems: list[str] = []
    if len(data) != len(text) or _NOT_BASE64_SPACE.search(data):
        problems.append("characters outside the base64 alphabet skipped")
    if len(compact) % 4 == 0:
        try:
            value = binascii.a2b_base64(compact, strict_mode=True)
        except binascii.Error:
            pass
        else:
            return value, ("; ".join(problems) or None)
    out: list[bytes] = []
    for chunk in compact.split(b"="):
        if len(chunk) % 4 == 1:
            chunk = chunk[:-1]
            problems.append("one character past a group of four dropped")
        if chunk:
            out.append(binascii.a2b_base64(chunk + b"=" * (-len(chunk) % 4)))
    problems.append("padding repaired")
    return b"".join(out), "base64 " + "; ".join(dict.fromkeys(problems))


def transfer_encoding(value: object) -> str:
    """A Content-Transfer-Encoding name as the decoders compare it: trimmed, lower case.

    ``base64 `` with a trailing space, ``"Base64"`` in quotes and a trailing
    comment are base64; no value is ``7bit``.
    """
    name = str(value or "").split("(", 1)[0].strip().strip("\"'").strip().lower()
    return name or "7bit"
