"""The one catalogue of what the gateway answers, over SMTP and through the pipe.

Every refusal the core raises (an ``InboundRefused`` subclass) and every
condition of the gateway itself (store down, too many recipients, accepted)
has exactly one entry here: an SMTP basic code, an RFC 3463 enhanced status
code, a sentence the person who replied can act on (the sending MTA copies
it into the bounce they receive), and the sysexits code the pipe ingress
exits with for a Postfix ``pipe`` transport. Nothing else in the gateway
decides wording or codes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from replygate.errors import (
    AttachmentTooLarge,
    AttachmentTypeRefused,
    ConvenienceModeOff,
    InboundRefused,
    MessageTooLarge,
    NotAReplyAddress,
    SenderMismatch,
    TokenExpired,
    TokenRevoked,
    UnknownToken,
)

# sysexits.h, as Postfix's pipe(8) reads them.
EX_OK = 0
EX_NOUSER = 67  # the recipient does not exist: bounce
EX_TEMPFAIL = 75  # try again later: Postfix defers and retries
EX_NOPERM = 77  # refused by policy: bounce


class Condition(StrEnum):
    """Everything the gateway can answer, by name (also what decisions record)."""

    RECIPIENT_OK = "recipient_ok"
    BOUNCE_RECIPIENT_OK = "bounce_recipient_ok"
    ACCEPTED = "accepted"
    NOT_A_REPLY_ADDRESS = "not_a_reply_address"
    UNKNOWN_TOKEN = "unknown_token"
    TOKEN_EXPIRED = "token_expired"
    TOKEN_REVOKED = "token_revoked"
    CONVENIENCE_MODE_OFF = "convenience_mode_off"
    SENDER_MISMATCH = "sender_mismatch"
    REFUSED = "refused"
    MESSAGE_TOO_LARGE = "message_too_large"
    ATTACHMENT_TOO_LARGE = "attachment_too_large"
    ATTACHMENT_TYPE_REFUSED = "attachment_type_refused"
    TOO_MANY_RECIPIENTS = "too_many_recipients"
    LINE_TOO_LONG = "line_too_long"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    NO_ROOM = "no_room"
    STORE_UNAVAILABLE = "store_unavailable"
    INTERNAL_ERROR = "internal_error"


@dataclass(frozen=True)
class Reply:
    """One SMTP reply: ``code status [<address>: ]text``.

    ``text`` may hold ``{limit}`` (the size limit in bytes); ``exit_code`` is
    the pipe ingress's answer to the same condition.
    """

    code: int
    status: str
    text: str
    exit_code: int

    def render(self, address: str | None = None, **values: object) -> str:
        """The reply line; ``address`` names the recipient a RCPT reply is about."""
        return f"{self.code} {self.describe(address, **values)}"

    def describe(self, address: str | None = None, **values: object) -> str:
        """The reply without its basic code: what a pipe ingress prints for the MTA."""
        text = self.text.format(**values) if values else self.text
        prefix = f"<{address}>: " if address else ""
        return f"{self.status} {prefix}{text}"


_LOG_IN = "please log in to the portal to reply"

CATALOGUE: Mapping[Condition, Reply] = MappingProxyType(
    {
        Condition.RECIPIENT_OK: Reply(250, "2.1.5", "recipient ok", EX_OK),
        Condition.BOUNCE_RECIPIENT_OK: Reply(250, "2.1.5", "delivery reports accepted", EX_OK),
        Condition.ACCEPTED: Reply(250, "2.0.0", "Message accepted for delivery", EX_OK),
        Condition.NOT_A_REPLY_ADDRESS: Reply(
            550,
            "5.1.1",
            "no such address; this domain only accepts replies to notification emails",
            EX_NOUSER,
        ),
        Condition.UNKNOWN_TOKEN: Reply(
            550,
            "5.1.1",
            "this reply address does not exist; please reply from the notification email "
            "or log in to the portal",
            EX_NOUSER,
        ),
        Condition.TOKEN_EXPIRED: Reply(
            550,
            "5.1.1",
            f"this reply address has expired; {_LOG_IN}, or reply to a newer notification",
            EX_NOUSER,
        ),
        Condition.TOKEN_REVOKED: Reply(
            550,
            "5.7.1",
            f"this reply address has been withdrawn and no longer accepts replies; {_LOG_IN}",
            EX_NOPERM,
        ),
        Condition.CONVENIENCE_MODE_OFF: Reply(
            550,
            "5.7.1",
            f"replies by email are not accepted for this organisation; {_LOG_IN}",
            EX_NOPERM,
        ),
        Condition.SENDER_MISMATCH: Reply(
            550,
            "5.7.1",
            "this reply address belongs to someone else; please reply from the address "
            "the notification was sent to",
            EX_NOPERM,
        ),
        Condition.REFUSED: Reply(
            550, "5.7.1", f"this message cannot be accepted; {_LOG_IN}", EX_NOPERM
        ),
        Condition.MESSAGE_TOO_LARGE: Reply(
            552,
            "5.3.4",
            "message too big: the limit is {limit} bytes; please send a shorter reply "
            "or attach large files in the portal",
            EX_NOPERM,
        ),
        Condition.ATTACHMENT_TOO_LARGE: Reply(
            552,
            "5.3.4",
            "an attachment is larger than we accept by email; please send large files "
            "through the portal",
            EX_NOPERM,
        ),
        Condition.ATTACHMENT_TYPE_REFUSED: Reply(
            554,
            "5.6.1",
            "an attachment is of a type we do not accept; please send documents as PDF or "
            "images, or through the portal",
            EX_NOPERM,
        ),
        Condition.TOO_MANY_RECIPIENTS: Reply(
            452,
            "4.5.3",
            "too many recipients; please send to the rest in another message",
            EX_TEMPFAIL,
        ),
        # RFC 5321 4.5.3.1.10 answers a text line over 4.5.3.1.6's limit with
        # "500 Line too long"; 500 is a syntax error, whose RFC 3463 detail is X.5.2.
        Condition.LINE_TOO_LONG: Reply(
            500,
            "5.5.2",
            "a line of the message is longer than 1000 characters (RFC 5321); "
            "please send it again from a standard mail program",
            EX_NOPERM,
        ),
        # 421 closes the connection; X.3.2: the system is not accepting messages now.
        Condition.TOO_MANY_CONNECTIONS: Reply(
            421,
            "4.3.2",
            "too many connections right now; please try again later",
            EX_TEMPFAIL,
        ),
        # 452 insufficient system storage (RFC 5321), X.3.1 mail system full (RFC 3463).
        Condition.NO_ROOM: Reply(
            452,
            "4.3.1",
            "we are receiving too much mail at once; please try again later",
            EX_TEMPFAIL,
        ),
        Condition.STORE_UNAVAILABLE: Reply(
            451,
            "4.3.0",
            "we cannot store your message right now; please try again later",
            EX_TEMPFAIL,
        ),
        Condition.INTERNAL_ERROR: Reply(
            451,
            "4.3.0",
            "a temporary problem on our side; please try again later",
            EX_TEMPFAIL,
        ),
    }
)

# Which condition each refusal of the core is; the most specific class wins.
REFUSALS: Mapping[type[InboundRefused], Condition] = MappingProxyType(
    {
        NotAReplyAddress: Condition.NOT_A_REPLY_ADDRESS,
        UnknownToken: Condition.UNKNOWN_TOKEN,
        TokenExpired: Condition.TOKEN_EXPIRED,
        TokenRevoked: Condition.TOKEN_REVOKED,
        ConvenienceModeOff: Condition.CONVENIENCE_MODE_OFF,
        SenderMismatch: Condition.SENDER_MISMATCH,
        MessageTooLarge: Condition.MESSAGE_TOO_LARGE,
        AttachmentTooLarge: Condition.ATTACHMENT_TOO_LARGE,
        AttachmentTypeRefused: Condition.ATTACHMENT_TYPE_REFUSED,
    }
)


def condition_for(error: InboundRefused) -> Condition:
    """The condition a refusal stands for (a subclass answers as its nearest listed base)."""
    for cls in type(error).__mro__:
        if cls in REFUSALS:
            return REFUSALS[cls]
    return Condition.REFUSED  # a refusal not catalogued yet: still refused, never a crash


def reply(condition: Condition) -> Reply:
    return CATALOGUE[condition]


def refusal(error: InboundRefused) -> Reply:
    """The reply for a refusal raised by the core."""
    return CATALOGUE[condition_for(error)]
