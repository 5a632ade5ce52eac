"""Header text from what people typed: decoded, cleaned, then encoded by us.

A subject or a display name is a person's text, and an attacker is a person.
Python's email package (3.11 before 3.11.10: the CVE-2024-6923 class) decodes
RFC 2047 encoded words while it folds a header and writes what they decode to
back raw, so a subject holding ``=?utf-8?q?=0D=0ABcc:_x@evil.test?=`` becomes
a ``Bcc`` header of its own. So such text is

1. decoded (``clean``): raw control characters become spaces first, so none
   can hide a word from the decoder; then encoded words are decoded, wherever
   they stand (the email package decodes them even inside a word), by
   ``decoding.decode_header_value``, which takes linear time where the email
   package's parser takes quadratic time on many words;
2. cleaned (``clean``): C0 and C1 controls (NUL, TAB, LF, VT, FF, CR, NEL,
   DEL...), line and paragraph separators and lone surrogates become a space;
   bidi controls and invisible format characters go; white space runs become
   one space;
3. encoded by us (``unstructured``, ``mailbox``): words of printable ASCII as
   they are, every other run of words (non-ASCII, holding ``=?``, or too long
   for a line) as UTF-8 "Q" encoded words, folded into lines of at most 78
   characters.

The caller stores the result verbatim (``EmailMessage.set_raw``): the email
package never parses, decodes or refolds it.
"""

from __future__ import annotations

import re
import string
from email import quoprimime

from replygate.mail.decoding import decode_header_value

# What becomes a space: C0 controls, DEL and C1 controls (NEL among them), the
# Unicode line and paragraph separators, and lone surrogates (undecodable bytes).
_TO_SPACE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
# What goes: bidi embeddings, overrides, isolates and marks (which reorder what a
# reader sees), zero-width space and word joiners, the byte order mark and the
# interlinear annotation controls. ZWJ and ZWNJ stay: scripts and emoji need them.
_DROP = re.compile(
    "[\u061c\u200b\u200e\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff\ufff9-\ufffb]"
)
# Both, for refusing text that did not go through ``clean``.
_UNCLEAN = re.compile(f"{_TO_SPACE.pattern}|{_DROP.pattern}|\\s\\s|^\\s|\\s$|[^\\S ]")

MAX_LINE = 78  # RFC 5322's recommended line length, which policy.SMTP folds at too
MAX_ENCODED_WORD = 75  # RFC 2047's limit on one encoded word
# A word written as it is: printable ASCII, short enough to leave room on a line.
MAX_PLAIN_WORD = 60
_PLAIN_WORD = re.compile(rf"^[!-~]{{1,{MAX_PLAIN_WORD}}}$")
# atext (RFC 5322): a display name of such words needs neither quotes nor encoding.
_ATEXT_WORD = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+$")
# An addr-spec of atext and dots (what compose lets through): no specials, no spaces.
_ADDR_SPEC = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+$")
# The bytes "Q" encoding leaves as they are (email.quoprimime's header map, which is
# also within what RFC 2047 allows in a phrase); a space becomes "_", others "=XX".
_Q_SAFE = frozenset((string.ascii_letters + string.digits + "-!*+/").encode())
_Q_PREFIX = "=?utf-8?q?"
_Q_OVERHEAD = len(_Q_PREFIX) + len("?=")


def clean(text: str) -> str:
    """``text`` decoded and fit for one header line, as a person would read it."""
    text = _DROP.sub("", _TO_SPACE.sub(" ", text))
    if "=?" in text:
        text = _DROP.sub("", _TO_SPACE.sub(" ", decode_header_value(text)))
    return " ".join(text.split())


def unstructured(name: str, text: str) -> str:
    """The folded value of header ``name`` holding ``text`` (already ``clean``)."""
    _check_clean(text)
    return _fold(len(name) + 2, _tokens(text))


def mailbox(name: str, display_name: str, addr_spec: str) -> str:
    """The folded value of header ``name`` naming one mailbox.

    ``display_name`` must be ``clean``; ``addr_spec`` atext and dots around
    one "@". A display name of atext words goes as it is, other
    ASCII in quotes when they fit on the line, anything else (non-ASCII,
    ``=?``) as encoded words.
    """
    _check_clean(display_name)
    if not _ADDR_SPEC.match(addr_spec):
        raise ValueError(f"not a plain email address: {addr_spec!r}")
    if not display_name:
        return addr_spec
    start = len(name) + 2
    words = display_name.split(" ")
    quoted = '"' + display_name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    phrase: list[tuple[str, bool]]
    if all(_ATEXT_WORD.match(w) and "=?" not in w for w in words):
        phrase = [(w, False) for w in words]
    elif "=?" not in display_name and display_name.isascii() and start + len(quoted) <= MAX_LINE:
        phrase = [(quoted, False)]
    else:
        phrase = [(display_name, True)]
    return _fold(start, [*phrase, (f"<{addr_spec}>", False)])


def _check_clean(text: str) -> None:
    if _UNCLEAN.search(text):
        raise ValueError(f"header text was not cleaned first: {text!r}")


def _plain(word: str) -> bool:
    return _PLAIN_WORD.match(word) is not None and "=?" not in word


def _tokens(text: str) -> list[tuple[str, bool]]:
    """Plain words one by one, and each run of other words as one text to encode.

    Spaces inside a run are encoded with it: white space between two encoded
    words is dropped when they are read back (RFC 2047, section 6.2).
    """
    tokens: list[tuple[str, bool]] = []
    for word in text.split(" ") if text else []:
        if _plain(word):
            tokens.append((word, False))
        elif tokens and tokens[-1][1]:
            tokens[-1] = (f"{tokens[-1][0]} {word}", True)
        else:
            tokens.append((word, True))
    return tokens


def _fold(start: int, tokens: list[tuple[str, bool]]) -> str:
    """Lay tokens out on lines of at most MAX_LINE, continuation lines opened by a space.

    ``start`` is what the first line holds already ("Subject: "). Lines are
    joined with "\\n "; the generator writes them with the policy's CRLF.
    """
    lines: list[str] = []
    line = ""  # the current line, after its "Name: " or its opening space
    width = start  # characters on the current line
    for text, encode in tokens:
        if encode:
            room = MAX_LINE - width - (1 if line else 0)
            pieces = _encoded_words(text, room, MAX_LINE - 1)
        else:
            pieces = [text]
        for piece in pieces:
            gap = 1 if line else 0
            if width + gap + len(piece) > MAX_LINE and (line or not lines):
                lines.append(line)
                line, width, gap = "", 1, 0
            line = f"{line}{' ' * gap}{piece}"
            width += gap + len(piece)
    lines.append(line)
    return "\n ".join(lines)


def _encoded_words(text: str, first_room: int, room: int) -> list[str]:
    """``text`` as UTF-8 "Q" encoded words, never splitting a character.

    The first word fits in ``first_room`` when it can hold a character (else it
    opens the next line); every word fits in ``room`` and in RFC 2047's 75.
    """
    words: list[str] = []
    chunk: list[bytes] = []
    size = _Q_OVERHEAD
    limit = min(first_room, MAX_ENCODED_WORD)
    for char in text:
        data = char.encode("utf-8")
        width = sum(1 if b in _Q_SAFE or b == 0x20 else 3 for b in data)
        if size + width > limit:
            if chunk:
                words.append(quoprimime.header_encode(b"".join(chunk), "utf-8"))
            chunk, size = [], _Q_OVERHEAD
            limit = min(room, MAX_ENCODED_WORD)
        chunk.append(data)
        size += width
    if chunk:
        words.append(quoprimime.header_encode(b"".join(chunk), "utf-8"))
    return words
