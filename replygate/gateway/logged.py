"""What the gateway's log lines (SMTP and pipe) may say about a mail.

A reply address is bound as its fingerprint (``reply+fp:…@``), so the line
can be matched with ``replygate tokens inspect`` but never replayed. A
refusal's reason is logged unless it names one of the mail's files (the
attachment refusals quote the file name for the queue and the operator):
then the condition alone says what was wrong.
"""

from __future__ import annotations

from replygate.config import Settings
from replygate.errors import AttachmentTooLarge, AttachmentTypeRefused, InboundRefused
from replygate.mail.redaction import redact

_NAMES_A_FILE = (AttachmentTooLarge, AttachmentTypeRefused)


def address(settings: Settings, address: str) -> str:
    """``address`` as a log line carries it: a reply or bounce address as its fingerprint."""
    return redact(settings.secret_key, address)


def reason(settings: Settings, refusal: InboundRefused | str | None) -> str | None:
    """The reason a log line carries for ``refusal``: none when it names a file of the mail."""
    if isinstance(refusal, _NAMES_A_FILE):
        return None
    return None if refusal is None else redact(settings.secret_key, str(refusal))
