"""Text fit for a log: reply and bounce addresses, and bare reply tokens, as fingerprints (pure).

A reply token is a password for one thread: with it and a forged From, mail
can be posted as the client wherever the sender check is weak. A signed
bounce address is one too, for marking a person's address as failing. So a
log names them only by ``reply_token.fingerprint``:

- ``reply+<token>@domain`` becomes ``reply+fp:<fingerprint>@domain``, and
  ``bounces+<id>-<mac>@domain`` becomes ``bounces+fp:<fingerprint>@domain``,
  whatever the token (forged ones too: a log reader cannot tell them apart);
- a token of ours standing alone (the parameters of an SQL error, a
  traceback) becomes ``fp:<fingerprint>``; only authentic tokens are
  rewritten, since only they match the HMAC tag.

Without the secret (before settings are loaded) addresses become
``reply+fp:hidden@domain`` and bare tokens cannot be recognised. Rewriting is
idempotent: ``reply+fp:…@`` is left as it is.
"""

from __future__ import annotations

import functools
import re

from replygate.mail import reply_token
from replygate.mail.markers import TOKEN_LENGTH, VERP_PREFIX

HIDDEN = "hidden"

# The local part after the prefix, up to "@": anything but spaces, brackets,
# quotes and ":" (which a fingerprinted address holds, so it is never rewritten twice).
_ADDRESS = re.compile(
    rf"({re.escape(reply_token.LOCAL_PREFIX)}|{re.escape(VERP_PREFIX)})"
    r"([^\s@<>\"'`,;:()\[\]\\]+)@",
    re.IGNORECASE,
)
# A run of exactly as many base32 characters as a token, not part of a longer word.
_BARE_TOKEN = re.compile(rf"(?<![A-Za-z0-9])[A-Za-z2-7]{{{TOKEN_LENGTH}}}(?![A-Za-z0-9])")


def redact(secret: str | None, text: str) -> str:
    """``text`` with every reply or bounce address, and every bare token of ours, fingerprinted.

    Most strings of a log line (levels, times, conditions, peers) hold no
    ``+`` and are shorter than a token (``markers.TOKEN_LENGTH``), so they
    cannot hold either and are returned at once (the log's processor does not
    even call this for them: ``logs.configure``'s ``plain_below``); the rest
    are remembered (``_rewritten``).
    """
    if "+" not in text and len(text) < TOKEN_LENGTH:
        return text
    return _rewritten(secret, text)


@functools.lru_cache(maxsize=8192)
def _rewritten(secret: str | None, text: str) -> str:
    """``redact`` for a string that may hold an address or a token. Remembered: the
    gateway writes the same few addresses and values on every line, and a
    fingerprint is an HMAC."""
    if "+" in text:

        def address(match: re.Match[str]) -> str:
            shown = HIDDEN if not secret else reply_token.fingerprint(secret, match[2])
            return f"{match[1]}fp:{shown}@"

        text = _ADDRESS.sub(address, text)
    if secret and len(text) >= TOKEN_LENGTH:  # most values are shorter

        def bare(match: re.Match[str]) -> str:
            token = match[0].lower()
            if not reply_token.is_authentic(secret, token):
                return match[0]
            return f"fp:{reply_token.fingerprint(secret, token)}"

        text = _BARE_TOKEN.sub(bare, text)
    return text
