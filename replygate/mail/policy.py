"""The acceptance policy: one set of rules for the gateway at DATA and for the inbound worker.

Pure. Both callers read the same raw bytes through ``headers.read_headers``
and ``parse.parse_message`` and ask these functions, so a reply the gateway
accepts is never refused by the worker for a reason the gateway read
differently, nor the other way round. Rules, in the order they apply:

1. size: at most ``max_message_size`` bytes (``check_size``), and parts
   nested at most ``max_nesting`` levels deep (``check_nesting``; the worker
   files what is above the limit of a mail queued before this rule);
2. sender: the message has one From header naming one mailbox
   (``sender.read_from``), the address every reply token was issued to
   (``sender_mismatch``); a ``+tag`` is ignored only when allowed;
3. DMARC: no trusted ``Authentication-Results`` says the From domain failed,
   and under the ``require-pass`` policy one says it passed (``check_dmarc``);
   a result counts only for the From domain, and untrusted ones are ignored,
   since anyone can write one;
4. attachments: at most ``max_attachments`` files, each of an allowed type
   whose name and content agree with it, and within the per-file and total
   limits (``files_to_keep``, rules in ``attachments``); inline images
   referenced from the HTML are dropped, not refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from replygate.errors import DmarcFailed, MessageTooLarge, NestedTooDeep
from replygate.mail import attachments, nesting, sender
from replygate.mail.headers import Headers
from replygate.mail.parse import Attachment


@dataclass(frozen=True)
class Policy:
    """The limits and trust settings the rules use, built once from the configuration."""

    max_message_size: int
    attachment_max_bytes: int
    attachments_total_max_bytes: int
    attachment_types: tuple[str, ...]
    trusted_authserv: frozenset[str] = frozenset()
    allow_plus_tags: bool = False
    max_nesting: int = nesting.MAX_NESTING
    max_attachments: int = 20


def check_size(policy: Policy, size: int) -> None:
    if size > policy.max_message_size:
        raise MessageTooLarge(
            f"message of {size} bytes exceeds the limit of {policy.max_message_size}"
        )


def check_nesting(policy: Policy, raw: bytes, head: bytes | None = None) -> None:
    """Refuse parts nested deeper than ``max_nesting`` (read in one pass, no recursion;
    ``head`` as ``nesting.too_deep`` takes it)."""
    if nesting.too_deep(raw, limit=policy.max_nesting, head=head):
        raise NestedTooDeep(f"MIME parts nested more than {policy.max_nesting} levels deep")


def sender_mismatch(policy: Policy, headers: Headers, issued_to: Sequence[str]) -> str | None:
    """Why the From header is not the person every one of ``issued_to`` names, or None.

    A message to reply addresses of different people has one From and so
    cannot be theirs at once.
    """
    found = sender.read_from(headers.from_values)
    if found.problem is not None:
        return found.problem
    assert found.value is not None
    for address in issued_to:
        if not _same(found.value, address, policy.allow_plus_tags):
            return f"From {found.value!r} is not {address}, the address its reply address names"
    return None


def _same(from_value: str, issued_to: str, allow_plus_tags: bool) -> bool:
    return sender.same_sender(from_value, issued_to, allow_plus_tags=allow_plus_tags)


def check_dmarc(policy: Policy, headers: Headers, *, require_pass: bool = False) -> None:
    """Refuse a message whose From domain failed DMARC, as a trusted relay reports it;
    with ``require_pass``, refuse one without a trusted pass for its From domain too."""
    if not policy.trusted_authserv and not require_pass:
        return
    domain = sender.read_from(headers.from_values).domain
    found = sender.dmarc_result(
        list(headers.authentication_results), policy.trusted_authserv, domain
    )
    shown = domain or "the From domain"
    if found == "fail":
        raise DmarcFailed(f"DMARC failed for {shown} (trusted Authentication-Results)")
    if require_pass and found != "pass":
        raise DmarcFailed(
            f"no trusted Authentication-Results says DMARC passed for {shown}, "
            "and this organisation requires it"
        )


def files_to_keep(policy: Policy, files: Iterable[Attachment]) -> list[Attachment]:
    """The attachments to store, or raise the refusal that says which file and why."""
    return attachments.files_to_keep(
        files,
        max_file=policy.attachment_max_bytes,
        max_total=policy.attachments_total_max_bytes,
        allowed=policy.attachment_types,
        max_count=policy.max_attachments,
    )
