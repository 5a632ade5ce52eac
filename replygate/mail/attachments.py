"""Attachment policy (pure): which files a reply may carry.

Inline images referenced from the HTML (signature logos) are not
attachments and are dropped silently; every other file must fit the size
limits and have a content type on the allow-list (``*`` wildcards allowed,
e.g. ``application/vnd.openxmlformats-officedocument.*``).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

from replygate.errors import AttachmentTooLarge, AttachmentTypeRefused
from replygate.mail.parse import Attachment


def files_to_keep(
    attachments: Iterable[Attachment],
    *,
    max_file: int,
    max_total: int,
    allowed: tuple[str, ...],
) -> list[Attachment]:
    """The attachments to store, or raise the refusal that says which file and why."""
    kept = [a for a in attachments if not a.inline]
    total = 0
    for a in kept:
        kind = a.content_type.lower().split(";")[0].strip()
        if not any(fnmatch.fnmatchcase(kind, pattern) for pattern in allowed):
            raise AttachmentTypeRefused(
                f"the attachment {a.filename!r} is of type {kind}, which we do not accept"
            )
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


def _mb(n: int) -> str:
    return f"{n / 1_048_576:.1f} MB"
