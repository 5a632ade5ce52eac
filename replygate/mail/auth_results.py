"""Our own Authentication-Results (RFC 8601): what the gateway found, written by us.

Pure. The gateway's checks (``gateway/authentication.py``) fill a
``MailAuthentication``; this module writes it as the value of the header
stamped on the stored mail, and makes sure no header claiming our
authserv-id survives from outside (RFC 8601 section 5: anyone can write one,
and the acceptance policy believes ours). Rules:

- every property value we write is a domain, an address or a word of a
  small alphabet; anything else (an attacker's address with a ``;`` or a
  quote in it) is written as ``invalid``, so a value can never end a result
  and start another; a From domain that cannot be written is left out, so
  the result names no domain and a failure counts whatever the From says;
- ``strip_claims`` drops every Authentication-Results field of the header
  block whose authserv-id is ours (any case, folded or not), and leaves the
  rest of the bytes as they were;
- ``stamp`` puts our field first: the nearest hop's results are read first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from replygate.mail import sender
from replygate.mail.headers import header_end

# A domain, an address, a selector or a result word: nothing that ends a value.
_SAFE_VALUE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._+=@-]{0,252}[A-Za-z0-9])?")
_SAFE_COMMENT = re.compile(r"[^\x20-\x7e]|[()\\]")
_FIELD = re.compile(rb"authentication-results[ \t]*:", re.IGNORECASE)
_MAX_COMMENT = 200


def safe_value(value: str | None) -> str:
    """``value`` when it can be written bare, else ``invalid``."""
    if value and _SAFE_VALUE.fullmatch(value) and ".." not in value:
        return value
    return "invalid"


def comment(text: str) -> str:
    """A CFWS comment holding only printable ASCII, no parentheses nor backslashes."""
    return "(" + _SAFE_COMMENT.sub("?", text)[:_MAX_COMMENT] + ")"


@dataclass(frozen=True)
class DkimOutcome:
    """One DKIM signature's result, with its signing domain and selector."""

    result: str
    domain: str | None = None
    selector: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class MailAuthentication:
    """The results of the checks on one message, as RFC 8601 names them."""

    spf: str
    dkim: tuple[DkimOutcome, ...]
    arc: str
    dmarc: str
    mail_from: str | None = None
    helo: str | None = None
    from_domain: str | None = None
    dmarc_policy: str | None = None
    spf_reason: str | None = None
    arc_reason: str | None = None
    dmarc_reason: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def header_value(self, authserv_id: str) -> str:
        """The field's value, folded one result to a line."""
        results = [self._spf(), *self._dkim(), self._arc(), self._dmarc()]
        return f"{safe_value(authserv_id)};\r\n\t" + ";\r\n\t".join(results)

    def _spf(self) -> str:
        text = f"spf={safe_value(self.spf)}"
        if self.spf_reason:
            text += " " + comment(self.spf_reason)
        if self.mail_from:
            text += f" smtp.mailfrom={safe_value(self.mail_from)}"
        if self.helo:
            text += f" smtp.helo={safe_value(self.helo)}"
        return text

    def _dkim(self) -> list[str]:
        if not self.dkim:
            return ["dkim=none"]
        out = []
        for one in self.dkim:
            text = f"dkim={safe_value(one.result)}"
            if one.reason:
                text += " " + comment(one.reason)
            if one.domain:
                text += f" header.d={safe_value(one.domain)}"
            if one.selector:
                text += f" header.s={safe_value(one.selector)}"
            out.append(text)
        return out

    def _arc(self) -> str:
        text = f"arc={safe_value(self.arc)}"
        return text + (" " + comment(self.arc_reason) if self.arc_reason else "")

    def _dmarc(self) -> str:
        text = f"dmarc={safe_value(self.dmarc)}"
        notes = [n for n in (self.dmarc_reason, *self.notes) if n]
        if notes:
            text += " " + comment("; ".join(notes))
        if self.dmarc_policy:
            text += f" policy.dmarc={safe_value(self.dmarc_policy)}"
        if self.from_domain and safe_value(self.from_domain) == self.from_domain:
            # Left out when it cannot be written: a failure naming no domain counts for all.
            text += f" header.from={self.from_domain}"
        return text


def strip_claims(raw: bytes, authserv_id: str, head: bytes | None = None) -> bytes:
    """``raw`` without the Authentication-Results fields that claim ``authserv_id``.

    Only the header block is read (``head``, when given, is that block
    lower-cased: ``headers.lowered_head``); the bytes of every other field and
    of the body stay as they were. A field is a line starting with its name
    and the lines folded under it (starting with a space or a tab).
    """
    end = header_end(raw) if head is None else len(head)
    block = raw[:end]
    if head is None:
        head = block.lower()
    if b"authentication-results" not in head or not _FIELD.search(block):
        return raw
    ours = authserv_id.strip().lower()
    lines = block.splitlines(keepends=True)
    kept: list[bytes] = []
    dropping = False
    changed = False
    for i, line in enumerate(lines):
        if line[:1] in (b" ", b"\t") and i > 0:
            if not dropping:
                kept.append(line)
            continue
        dropping = False
        if _FIELD.match(line):
            whole = [line]
            for more in lines[i + 1 :]:
                if more[:1] not in (b" ", b"\t"):
                    break
                whole.append(more)
            value = b"".join(whole).split(b":", 1)[1].decode("utf-8", "replace")
            value = value.replace("\r", " ").replace("\n", " ")
            authserv, _ = sender.parse_authentication_result(value)
            if authserv == ours:
                dropping = changed = True
                continue
        kept.append(line)
    if not changed:
        return raw
    return b"".join(kept) + raw[end:]


def stamp(raw: bytes, value: str) -> bytes:
    """``raw`` with our ``Authentication-Results: value`` as its first field."""
    return b"Authentication-Results: " + value.encode("ascii") + b"\r\n" + raw
