"""Is an inbound mail a person's reply, an auto-reply, a bounce, or our own mail back?

Pure: a ``ParsedMail`` and the envelope in, a ``Verdict`` out. Only a
``"reply"`` is ever filed; everything else is recorded with its reasons and
dropped, which is what keeps two automatons from answering each other forever.

Each rule is a small predicate whose docstring lists what it looks for and
whose body follows that list line by line; it returns the reasons it found
(short sentences an operator reads in ``queue explain``), empty when it has
nothing to say. The order of the kinds matters and is decided in ``classify``:

1. loop — our own notification came back (it carries ``Auto-Submitted`` and
   ``Precedence: bulk`` too, so it must be named before the auto-reply rules);
2. bounce — a delivery status notification (often also ``Auto-Submitted``);
3. auto-reply — vacation and other automatic answers;
4. reply — none of the above.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.utils import parseaddr
from typing import TYPE_CHECKING

from replygate.mail.markers import LOOP_HEADER, MESSAGE_ID_PREFIX, NOTIFICATION_ID
from replygate.mail.verp import claimed_notification_id, verified_notification_id

if TYPE_CHECKING:  # the record's type only; this module imports nothing of ours at run time
    from replygate.mail.parse import ParsedMail

KINDS = ("reply", "auto_reply", "bounce", "loop")

# What ``outbound.compose`` accepts as a notification id (it names the outbox row).
_STATUS = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")
_MSG_ID = re.compile(r"<[^<>\s]+>")


@dataclass(frozen=True)
class BounceReport:
    """What a bounce tells about the delivery that failed.

    ``recipients`` are the failed addresses (lower-cased), ``status`` the
    RFC 3463 code (``5.1.1``), ``action`` the RFC 3464 action (``failed``,
    ``delayed``), ``diagnostic`` the remote server's words, and
    ``notification_id`` the notification of ours that bounced, when known.
    """

    recipients: tuple[str, ...] = ()
    status: str | None = None
    action: str | None = None
    diagnostic: str | None = None
    notification_id: str | None = None

    @property
    def permanent(self) -> bool:
        """A hard bounce: a 5.x.x status, or ``failed`` with no status at all."""
        if self.status:
            return self.status.startswith("5")
        return self.action in (None, "failed")


@dataclass(frozen=True)
class Verdict:
    kind: str
    reasons: tuple[str, ...]
    bounce: BounceReport | None = None


def classify(
    mail: ParsedMail, *, mail_from: str, our_domain: str, rcpt: str | None = None
) -> Verdict:
    """Decide what ``mail`` is. ``mail_from`` is the envelope sender, ``rcpt`` the recipient.

    A null reverse-path alone means a bounce unless the mail reads as an
    auto-reply: RFC 3834 and Sieve vacation (RFC 5230) send their answers from
    ``<>`` too, and calling those bounces would mark a working address failing.
    """
    loop = our_notification_back(mail, our_domain)
    if loop:
        return Verdict("loop", tuple(loop))
    report = delivery_report(mail) + failed_recipients_header(mail)
    auto = auto_reply_reasons(mail)
    null = null_reverse_path(mail_from)
    if report or (null and not auto):
        bounce = bounce_report(mail, rcpt=rcpt, our_domain=our_domain)
        return Verdict("bounce", tuple(report + null + _describe(bounce)), bounce)
    if auto:
        return Verdict("auto_reply", tuple(auto + null))
    return Verdict("reply", ("no auto-reply, bounce or loop marker found",))


def auto_reply_reasons(mail: ParsedMail) -> list[str]:
    """Every auto-reply rule that fires, in a fixed order."""
    return (
        auto_submitted(mail)
        + x_autoreply(mail)
        + x_autorespond(mail)
        + precedence(mail)
        + exchange_auto_response(mail)
        + other_autoresponder_headers(mail)
        + out_of_office_subject(mail)
    )


# -- loops -------------------------------------------------------------------------------------


def our_notification_back(mail: ParsedMail, our_domain: str) -> list[str]:
    """Our own notification came back to us.

    - it carries our ``X-Replygate-Loop`` header;
    - its Message-ID is one of ours: ``<rg.…@<our domain>>``.

    Only the mail's own Message-ID counts: a person's reply names ours in
    In-Reply-To and References, which is how threading works.
    """
    reasons: list[str] = []
    if mail.header(LOOP_HEADER) is not None:
        reasons.append(f"carries our {LOOP_HEADER} header: one of our notifications came back")
    if is_our_message_id(mail.message_id, our_domain):
        reasons.append(f"Message-ID {mail.message_id} is one of ours")
    return reasons


def is_our_message_id(message_id: str | None, our_domain: str) -> bool:
    """``<rg.…@our_domain>``, the domain compared case-insensitively."""
    if not message_id or not our_domain:
        return False
    value = message_id.strip()
    if not (value.startswith(f"<{MESSAGE_ID_PREFIX}") and value.endswith(">")):
        return False
    _, _, domain = value[1:-1].rpartition("@")
    return domain.lower() == our_domain.strip().lower()


def notification_id_from_message_id(message_id: str | None, our_domain: str) -> str | None:
    """The notification id in ``<rg.n.ID@our_domain>`` (``<rg.KIND.ID.RANDOM@…>`` too)."""
    if not is_our_message_id(message_id, our_domain):
        return None
    assert message_id is not None
    local = message_id.strip()[1:-1].rpartition("@")[0][len(MESSAGE_ID_PREFIX) :]
    pieces = local.split(".")
    if len(pieces) >= 2 and pieces[0] == "n" and NOTIFICATION_ID.fullmatch(pieces[1]):
        return pieces[1]
    return None


# -- bounces -----------------------------------------------------------------------------------


def null_reverse_path(mail_from: str) -> list[str]:
    """The envelope sender is null.

    - ``MAIL FROM:<>`` reaches us as ``""`` or ``"<>"`` depending on the ingress.
    """
    if mail_from.strip() in ("", "<>"):
        return ["null reverse-path (MAIL FROM:<>), as bounces and auto-replies are sent"]
    return []


def delivery_report(mail: ParsedMail) -> list[str]:
    """A delivery status notification (RFC 3464).

    - top-level ``multipart/report`` with ``report-type=delivery-status``;
    - or a ``message/delivery-status`` part under any ``multipart/report``.
    """
    if mail.content_type == "multipart/report" and mail.report_type == "delivery-status":
        return ["multipart/report; report-type=delivery-status (RFC 3464 DSN)"]
    if mail.content_type == "multipart/report" and mail.report_parts:
        return ["multipart/report carrying a message/delivery-status part (RFC 3464 DSN)"]
    return []


def failed_recipients_header(mail: ParsedMail) -> list[str]:
    """An Exim bounce, which names the failed addresses in a header of its own.

    - ``X-Failed-Recipients`` is present.
    """
    value = mail.header("X-Failed-Recipients")
    if value is not None:
        return [f"X-Failed-Recipients: {value[:200]} (Exim bounce)"]
    return []


def bounce_report(mail: ParsedMail, *, rcpt: str | None, our_domain: str) -> BounceReport:
    """What the bounce says, from the most to the least structured source.

    - RFC 3464 per-recipient fields of the ``message/delivery-status`` part;
    - else ``X-Failed-Recipients`` and the first status code in the text;
    - the notification: the VERP recipient ``bounces+<id>-<mac>@<our domain>``,
      else our loop header or Message-ID inside the returned headers. Neither
      is verified here (there is no key): ``core.bounces`` counts a bounce
      only through a VERP address whose MAC verifies.
    """
    recipients: tuple[str, ...] = ()
    status = action = diagnostic = None
    if mail.report_parts:
        recipients, status, action, diagnostic = parse_delivery_status(mail.report_parts[0])
    if not recipients:
        listed = mail.header("X-Failed-Recipients") or ""
        recipients = tuple(a.strip().lower() for a in listed.split(",") if "@" in a)
    if status is None:
        found = _STATUS.search(diagnostic or mail.text_plain or "")
        status = found.group(1) if found else None
    notification_id = None
    if rcpt:
        notification_id = claimed_notification_id(rcpt, our_domain)
    if notification_id is None:
        notification_id = returned_notification_id(mail.returned_headers, our_domain)
    return BounceReport(recipients, status, action, diagnostic, notification_id)


def parse_delivery_status(text: str) -> tuple[tuple[str, ...], str | None, str | None, str | None]:
    """(failed recipients, status, action, diagnostic) from RFC 3464 text.

    The first block holds per-message fields and is skipped; each later block
    is one recipient. Recipients whose action is ``failed`` are reported; when
    none failed, those ``delayed``; else all. Status, action and diagnostic
    are those of the first reported recipient.
    """
    blocks = [_fields(block) for block in re.split(r"\n[ \t]*\n", text.strip()) if block.strip()]
    per_recipient = [b for b in blocks if "final-recipient" in b or "original-recipient" in b]
    if not per_recipient:
        return (), None, None, None
    chosen = (
        [b for b in per_recipient if b.get("action", "").lower() == "failed"]
        or [b for b in per_recipient if b.get("action", "").lower() == "delayed"]
        or per_recipient
    )
    addresses = (
        _typed_address(b.get("final-recipient") or b.get("original-recipient")) for b in chosen
    )
    recipients = tuple(a for a in addresses if a)
    first = chosen[0]
    status_field = _STATUS.search(first.get("status", ""))
    diagnostic = _diagnostic(first.get("diagnostic-code"))
    status = status_field.group(1) if status_field else None
    if status is None and diagnostic:
        found = _STATUS.search(diagnostic)
        status = found.group(1) if found else None
    action = (first.get("action") or "").strip().lower() or None
    return recipients, status, action, diagnostic


def _fields(block: str) -> dict[str, str]:
    """One RFC 822-style field block, names lower-cased, continuation lines unfolded."""
    fields: dict[str, str] = {}
    name = None
    for line in block.splitlines():
        if line[:1] in (" ", "\t") and name:
            fields[name] += " " + line.strip()
            continue
        key, sep, value = line.partition(":")
        if not sep:
            continue
        name = key.strip().lower()
        fields.setdefault(name, value.strip())
    return fields


def _typed_address(value: str | None) -> str | None:
    """``rfc822; user@example.org`` → ``user@example.org``."""
    if not value:
        return None
    _, _, address = value.partition(";") if ";" in value else ("", "", value)
    address = parseaddr(address.strip())[1] or address.strip().strip("<>")
    return address.lower() or None


def _diagnostic(value: str | None) -> str | None:
    """``smtp; 550 5.1.1 …`` → ``550 5.1.1 …``."""
    if not value:
        return None
    kind, sep, rest = value.partition(";")
    text = rest if sep and kind.strip().lower() in ("smtp", "x-unix", "x-postfix") else value
    return text.strip() or None


def returned_notification_id(returned_headers: str | None, our_domain: str) -> str | None:
    """Our notification id in the headers a bounce returns: loop header, then Message-ID."""
    if not returned_headers:
        return None
    fields = _fields(returned_headers)
    loop_value = fields.get(LOOP_HEADER.lower(), "").strip()
    if NOTIFICATION_ID.fullmatch(loop_value):
        return loop_value
    for message_id in _MSG_ID.findall(fields.get("message-id", "")):
        found = notification_id_from_message_id(message_id, our_domain)
        if found:
            return found
    return None


def verp_notification_id(rcpt: str, our_domain: str, key: bytes) -> str | None:
    """The notification id in our signed VERP address ``bounces+<id>-<mac>@<our domain>``.

    ``None`` unless the MAC was made with ``key`` (``verp.bounce_key``): an id
    alone, guessed or read off a notification's Message-ID, names nothing.
    """
    return verified_notification_id(rcpt, our_domain, key)


def _describe(report: BounceReport) -> list[str]:
    """One sentence on what failed, for the record."""
    if not report.recipients and not report.status:
        return []
    who = ", ".join(report.recipients) or "the recipient"
    what = report.action or "failed"
    code = f" ({report.status})" if report.status else ""
    return [f"delivery to {who} {what}{code}"]


# -- auto-replies ------------------------------------------------------------------------------


def auto_submitted(mail: ParsedMail) -> list[str]:
    """RFC 3834 ``Auto-Submitted``.

    - present with any value but ``no`` (``auto-replied``, ``auto-generated``,
      ``auto-notified``, with or without parameters or a comment).
    """
    value = mail.header("Auto-Submitted")
    if value is None:
        return []
    keyword = re.split(r"[\s;(]", value.strip(), maxsplit=1)[0].lower()
    if keyword == "no":
        return []
    return [f"Auto-Submitted: {keyword or value.strip()} (RFC 3834)"]


def x_autoreply(mail: ParsedMail) -> list[str]:
    """``X-Autoreply`` (cPanel/Exim, many vacation scripts).

    - present with any value but ``no``/``false``.
    """
    value = mail.header("X-Autoreply")
    if value is not None and value.strip().lower() not in ("no", "false"):
        return [f"X-Autoreply: {value.strip()[:60] or 'present'}"]
    return []


def x_autorespond(mail: ParsedMail) -> list[str]:
    """``X-Autorespond`` (autoresponder plug-ins, some hosted mail).

    - present with any value but ``no``/``false``.
    """
    value = mail.header("X-Autorespond")
    if value is not None and value.strip().lower() not in ("no", "false"):
        return [f"X-Autorespond: {value.strip()[:60] or 'present'}"]
    return []


_PRECEDENCE = frozenset({"auto_reply", "bulk", "junk", "list"})


def precedence(mail: ParsedMail) -> list[str]:
    """``Precedence`` of a machine (RFC 3834 §5 notes legacy responders set it).

    - ``auto_reply``, ``bulk``, ``junk`` or ``list``, case-insensitively.
    """
    value = (mail.header("Precedence") or "").strip().lower()
    if value in _PRECEDENCE:
        return [f"Precedence: {value}"]
    return []


_SUPPRESS_VALUES = frozenset({"all", "oof", "autoreply"})


def exchange_auto_response(mail: ParsedMail) -> list[str]:
    """Exchange/Outlook out-of-office answers.

    - ``X-Auto-Response-Suppress`` naming ``All``, ``OOF`` or ``AutoReply``:
      Exchange stamps it on its own automatic replies so that they are not
      answered in turn; a person's reply from Outlook does not carry it.
    """
    value = mail.header("X-Auto-Response-Suppress")
    if value is None:
        return []
    names = {v.strip().lower() for v in value.split(",")}
    if names & _SUPPRESS_VALUES:
        return [f"X-Auto-Response-Suppress: {value.strip()} (Exchange automatic reply)"]
    return []


def other_autoresponder_headers(mail: ParsedMail) -> list[str]:
    """Older autoresponder markers.

    - ``X-Autogenerated: Reply``;
    - ``X-Autoreply-From`` present;
    - ``X-Mail-Autoreply`` present.
    """
    reasons: list[str] = []
    if (mail.header("X-Autogenerated") or "").strip().lower() == "reply":
        reasons.append("X-Autogenerated: Reply")
    if mail.header("X-Autoreply-From") is not None:
        reasons.append("X-Autoreply-From present (autoresponder)")
    if mail.header("X-Mail-Autoreply") is not None:
        reasons.append("X-Mail-Autoreply present (autoresponder)")
    return reasons


# Subjects auto-responders write, anchored at the start: a person writing
# "Re: Out of office next week?" is replying, not away.
_OOO_SUBJECTS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "English",
        re.compile(
            r"^\s*(?:automatic reply|auto[- ]?reply|auto[- ]?response|autoresponse"
            r"|out of (?:the )?office|auto:)",
            re.IGNORECASE,
        ),
    ),
    (
        "French",
        re.compile(
            r"^\s*(?:r[ée]ponse automatique|absente? du bureau|absence du bureau"
            r"|message d[’']absence)",
            re.IGNORECASE,
        ),
    ),
    (
        "German",
        re.compile(
            r"^\s*(?:automatische antwort|abwesenheitsnotiz|abwesenheitsmeldung"
            r"|nicht im b(?:ü|ue)ro)",
            re.IGNORECASE,
        ),
    ),
    (
        "Spanish",
        re.compile(
            r"^\s*(?:respuesta autom[áa]tica|fuera de (?:la )?oficina|autorespuesta"
            r"|mensaje de ausencia)",
            re.IGNORECASE,
        ),
    ),
)


def out_of_office_subject(mail: ParsedMail) -> list[str]:
    """Out-of-office subjects in English, French, German and Spanish.

    - English: "Automatic reply", "Auto-reply", "Auto response", "Out of (the) office", "Auto:";
    - French: "Réponse automatique", "Absent(e) du bureau", "Absence du bureau",
      "Message d'absence";
    - German: "Automatische Antwort", "Abwesenheitsnotiz", "Abwesenheitsmeldung",
      "Nicht im Büro";
    - Spanish: "Respuesta automática", "Fuera de (la) oficina", "Autorespuesta",
      "Mensaje de ausencia";
    - each only at the very start of the subject.
    """
    for language, pattern in _OOO_SUBJECTS:
        found = pattern.match(mail.subject or "")
        if found:
            return [f'Subject starts "{found.group(0).strip()}" (out-of-office, {language})']
    return []
