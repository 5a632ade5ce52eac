"""The one catalogue of what the gateway answers, over SMTP and through the pipe.

Every refusal the core raises (an ``InboundRefused`` subclass) and every
condition of the gateway itself (store down, too many recipients, accepted)
has exactly one entry here: an SMTP basic code, an RFC 3463 enhanced status
code, a sentence the person who replied can act on (the sending MTA copies
it into the bounce they receive), and the sysexits code the pipe ingress
exits with for a Postfix ``pipe`` transport. Nothing else in the gateway
decides wording or codes.

The gateway advertises ENHANCEDSTATUSCODES (RFC 2034), so every reply after
the greeting and EHLO carries one. aiosmtpd answers grammar errors itself
without a code ("503 Error: need MAIL command"); ``with_status`` gives each
of those the status of the catalogue's entry for its basic code
(``PROTOCOL_BY_CODE``) and keeps aiosmtpd's words, which name the command
or the syntax expected. Such an entry's text is what the gateway says when
it answers that condition itself.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from replygate.errors import (
    AttachmentContentMismatch,
    AttachmentNameRefused,
    AttachmentTooLarge,
    AttachmentTypeRefused,
    AuthenticationUnavailable,
    ConvenienceModeOff,
    DmarcFailed,
    InboundRefused,
    MessageTooLarge,
    NestedTooDeep,
    NotAReplyAddress,
    SenderMismatch,
    TokenExpired,
    TokenRevoked,
    TooManyAttachments,
    UnknownBounceAddress,
    UnknownToken,
)
from replygate.store import dialect

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
    UNKNOWN_BOUNCE_ADDRESS = "unknown_bounce_address"
    TOKEN_EXPIRED = "token_expired"
    TOKEN_REVOKED = "token_revoked"
    CONVENIENCE_MODE_OFF = "convenience_mode_off"
    SENDER_MISMATCH = "sender_mismatch"
    DMARC_FAILED = "dmarc_failed"
    AUTHENTICATION_UNAVAILABLE = "authentication_unavailable"
    REFUSED = "refused"
    MESSAGE_TOO_LARGE = "message_too_large"
    NESTED_TOO_DEEP = "nested_too_deep"
    ATTACHMENT_TOO_LARGE = "attachment_too_large"
    ATTACHMENT_TYPE_REFUSED = "attachment_type_refused"
    ATTACHMENT_NAME_REFUSED = "attachment_name_refused"
    ATTACHMENT_CONTENT_MISMATCH = "attachment_content_mismatch"
    TOO_MANY_ATTACHMENTS = "too_many_attachments"
    TOO_MANY_RECIPIENTS = "too_many_recipients"
    LINE_TOO_LONG = "line_too_long"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    SHUTTING_DOWN = "shutting_down"
    NO_ROOM = "no_room"
    STORE_UNAVAILABLE = "store_unavailable"
    STORE_FULL = "store_full"
    INTERNAL_ERROR = "internal_error"
    # Limits on the session and the client.
    COMMAND_TIMEOUT = "command_timeout"
    DATA_TIMEOUT = "data_timeout"
    THROTTLED = "throttled"
    THROTTLED_AT_CONNECT = "throttled_at_connect"
    # The protocol's own answers (aiosmtpd's grammar), success and errors.
    OK = "ok"
    SENDER_OK = "sender_ok"
    CLOSING = "closing"
    TLS_READY = "tls_ready"
    HELP = "help"
    CANNOT_VERIFY = "cannot_verify"
    SYNTAX_ERROR = "syntax_error"
    BAD_ARGUMENTS = "bad_arguments"
    NOT_IMPLEMENTED = "not_implemented"
    BAD_SEQUENCE = "bad_sequence"
    PARAMETER_NOT_IMPLEMENTED = "parameter_not_implemented"
    PARAMETERS_UNRECOGNISED = "parameters_unrecognised"
    MALFORMED_ADDRESS = "malformed_address"
    TLS_UNAVAILABLE = "tls_unavailable"
    STARTTLS_REQUIRED = "starttls_required"
    INSECURE = "insecure"


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
        text = self.text.format(**values) if values and "{" in self.text else self.text
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
        # No backscatter: a report refused here is the reporting MTA's to drop.
        Condition.UNKNOWN_BOUNCE_ADDRESS: Reply(
            550,
            "5.1.1",
            "this bounce address does not exist; we accept delivery reports only for "
            "notifications we sent",
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
        Condition.DMARC_FAILED: Reply(
            550,
            "5.7.1",
            "the sender's domain says this message was not sent by it (DMARC failed); "
            "please reply from your usual mail account",
            EX_NOPERM,
        ),
        # X.4.3 directory server failure: DNS did not answer our SPF/DKIM/DMARC lookups.
        Condition.AUTHENTICATION_UNAVAILABLE: Reply(
            451,
            "4.4.3",
            "the sender's domain could not be checked just now; please try again later",
            EX_TEMPFAIL,
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
        # X.6.0 other media error: the structure, not the size or the type, is refused.
        Condition.NESTED_TOO_DEEP: Reply(
            554,
            "5.6.0",
            "this message nests attachments or forwarded messages inside each other "
            "too deeply for us to read; please send your reply without them, or use the portal",
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
        # X.7.1: refused by policy, whatever the allow-list says.
        Condition.ATTACHMENT_NAME_REFUSED: Reply(
            550,
            "5.7.1",
            "an attachment's name is not accepted: we refuse programs, scripts, web pages "
            "and names with hidden characters; please rename the file or use the portal",
            EX_NOPERM,
        ),
        # X.6.1 media not supported: the content is not the media type it declares.
        Condition.ATTACHMENT_CONTENT_MISMATCH: Reply(
            554,
            "5.6.1",
            "an attachment's content does not match its name or type (for example a "
            "program named as a document); please attach the original file, or use the portal",
            EX_NOPERM,
        ),
        # X.3.4 message too big for system: one mail carries at most so many files.
        Condition.TOO_MANY_ATTACHMENTS: Reply(
            552,
            "5.3.4",
            "this message carries more attachments than we accept by email; please send "
            "fewer files per reply, or upload them in the portal",
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
        # The gateway is stopping (SIGTERM): new sessions and idle ones hear this, and a
        # session in DATA after its reply; 421 closes the connection (RFC 5321 3.8).
        Condition.SHUTTING_DOWN: Reply(
            421,
            "4.3.2",
            "this server is restarting; please try again in a moment",
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
        # The database has no room (its disk, or SQLite's size cap): 452 with X.3.1,
        # as for NO_ROOM; the sending MTA keeps the message and retries.
        Condition.STORE_FULL: Reply(
            452,
            "4.3.1",
            "our message store is full right now; please try again later",
            EX_TEMPFAIL,
        ),
        Condition.INTERNAL_ERROR: Reply(
            451,
            "4.3.0",
            "a temporary problem on our side; please try again later",
            EX_TEMPFAIL,
        ),
        # RFC 5321 4.5.3.2: the server closes an idle session with 421;
        # X.4.2 is "bad connection" (RFC 3463), what a stalled client is.
        Condition.COMMAND_TIMEOUT: Reply(
            421,
            "4.4.2",
            "timeout waiting for a command; closing the connection",
            EX_TEMPFAIL,
        ),
        Condition.DATA_TIMEOUT: Reply(
            421,
            "4.4.2",
            "timeout receiving the message; closing the connection, please send it again",
            EX_TEMPFAIL,
        ),
        # X.7.1 delivery not authorized, X.7.0 other security status: a host that
        # kept naming addresses we never issued waits out a cool-down.
        Condition.THROTTLED: Reply(
            450,
            "4.7.1",
            "too many unknown reply addresses from your server; please try again later",
            EX_TEMPFAIL,
        ),
        Condition.THROTTLED_AT_CONNECT: Reply(
            421,
            "4.7.0",
            "too many unknown reply addresses from your server; please try again later",
            EX_TEMPFAIL,
        ),
        Condition.OK: Reply(250, "2.0.0", "OK", EX_OK),
        Condition.SENDER_OK: Reply(250, "2.1.0", "sender ok", EX_OK),
        Condition.CLOSING: Reply(221, "2.0.0", "Bye", EX_OK),
        Condition.TLS_READY: Reply(220, "2.0.0", "Ready to start TLS", EX_OK),
        Condition.HELP: Reply(250, "2.0.0", "Supported commands", EX_OK),
        Condition.CANNOT_VERIFY: Reply(
            252, "2.0.0", "Cannot VRFY user, but will accept message and attempt delivery", EX_OK
        ),
        Condition.SYNTAX_ERROR: Reply(
            500, "5.5.2", "Error: command not recognized or bad syntax", EX_NOPERM
        ),
        Condition.BAD_ARGUMENTS: Reply(
            501, "5.5.4", "Syntax error in parameters or arguments", EX_NOPERM
        ),
        Condition.NOT_IMPLEMENTED: Reply(502, "5.5.1", "Command not implemented", EX_NOPERM),
        Condition.BAD_SEQUENCE: Reply(503, "5.5.1", "Error: bad sequence of commands", EX_NOPERM),
        Condition.PARAMETER_NOT_IMPLEMENTED: Reply(
            504, "5.5.4", "Command parameter not implemented", EX_NOPERM
        ),
        Condition.PARAMETERS_UNRECOGNISED: Reply(
            555, "5.5.4", "MAIL FROM/RCPT TO parameters not recognized", EX_NOPERM
        ),
        Condition.MALFORMED_ADDRESS: Reply(553, "5.1.3", "Error: malformed address", EX_NOPERM),
        Condition.TLS_UNAVAILABLE: Reply(454, "4.7.0", "TLS not available", EX_TEMPFAIL),
        Condition.STARTTLS_REQUIRED: Reply(
            530, "5.7.0", "Must issue a STARTTLS command first", EX_NOPERM
        ),
        Condition.INSECURE: Reply(
            554, "5.7.0", "Command refused due to lack of security", EX_NOPERM
        ),
    }
)

# The status of each basic code aiosmtpd answers with no enhanced code of its own.
PROTOCOL_BY_CODE: Mapping[int, Condition] = MappingProxyType(
    {
        421: Condition.TOO_MANY_CONNECTIONS,
        454: Condition.TLS_UNAVAILABLE,
        500: Condition.SYNTAX_ERROR,
        501: Condition.BAD_ARGUMENTS,
        502: Condition.NOT_IMPLEMENTED,
        503: Condition.BAD_SEQUENCE,
        504: Condition.PARAMETER_NOT_IMPLEMENTED,
        530: Condition.STARTTLS_REQUIRED,
        552: Condition.MESSAGE_TOO_LARGE,
        553: Condition.MALFORMED_ADDRESS,
        554: Condition.INSECURE,
        555: Condition.PARAMETERS_UNRECOGNISED,
    }
)

# aiosmtpd's success replies, whole (the greeting and the HELO/EHLO replies,
# which RFC 2034 exempts, never match).
PROTOCOL_SUCCESS: Mapping[str, Condition] = MappingProxyType(
    {
        "250 OK": Condition.OK,
        "221 Bye": Condition.CLOSING,
        "220 Ready to start TLS": Condition.TLS_READY,
        "252 Cannot VRFY user, but will accept message and attempt delivery": (
            Condition.CANNOT_VERIFY
        ),
    }
)
_HELP_PREFIXES = ("250 Supported commands:", "250 Syntax:")
_HAS_STATUS = re.compile(r"\d{3}[ -][245]\.\d{1,3}\.\d{1,3}(?: |$)")

# Which condition each refusal of the core is; the most specific class wins.
REFUSALS: Mapping[type[InboundRefused], Condition] = MappingProxyType(
    {
        NotAReplyAddress: Condition.NOT_A_REPLY_ADDRESS,
        UnknownToken: Condition.UNKNOWN_TOKEN,
        UnknownBounceAddress: Condition.UNKNOWN_BOUNCE_ADDRESS,
        TokenExpired: Condition.TOKEN_EXPIRED,
        TokenRevoked: Condition.TOKEN_REVOKED,
        ConvenienceModeOff: Condition.CONVENIENCE_MODE_OFF,
        SenderMismatch: Condition.SENDER_MISMATCH,
        DmarcFailed: Condition.DMARC_FAILED,
        AuthenticationUnavailable: Condition.AUTHENTICATION_UNAVAILABLE,
        MessageTooLarge: Condition.MESSAGE_TOO_LARGE,
        NestedTooDeep: Condition.NESTED_TOO_DEEP,
        AttachmentTooLarge: Condition.ATTACHMENT_TOO_LARGE,
        AttachmentTypeRefused: Condition.ATTACHMENT_TYPE_REFUSED,
        AttachmentNameRefused: Condition.ATTACHMENT_NAME_REFUSED,
        AttachmentContentMismatch: Condition.ATTACHMENT_CONTENT_MISMATCH,
        TooManyAttachments: Condition.TOO_MANY_ATTACHMENTS,
    }
)


def condition_for(error: InboundRefused) -> Condition:
    """The condition a refusal stands for (a subclass answers as its nearest listed base)."""
    for cls in type(error).__mro__:
        if cls in REFUSALS:
            return REFUSALS[cls]
    return Condition.REFUSED  # a refusal not catalogued yet: still refused, never a crash


def store_condition(exc: BaseException) -> Condition:
    """What a failed commit answers: the store full (452 4.3.1) or away (451 4.3.0)."""
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    full = dialect.storage_full(exc) or dialect.storage_full(cause)
    return Condition.STORE_FULL if full else Condition.STORE_UNAVAILABLE


def reply(condition: Condition) -> Reply:
    return CATALOGUE[condition]


def with_status(line: str) -> str:
    """``line`` with the enhanced status code its basic code stands for, if it lacks one.

    A 4xx/5xx line aiosmtpd wrote keeps its words after the catalogue's
    status; a success line is rewritten only when it is one aiosmtpd's
    stock answers, so the greeting and the HELO/EHLO replies stay as they
    are. Anything else (354, continuation lines) is returned unchanged.
    """
    if len(line) < 4 or line[3] != " " or _HAS_STATUS.match(line):
        return line
    first = line[0]
    if first in "45" and line[:3].isdigit():
        basic = int(line[:3])
        condition = PROTOCOL_BY_CODE.get(basic)
        status = CATALOGUE[condition].status if condition is not None else f"{first}.0.0"
        return f"{basic} {status} {line[4:]}"
    success = PROTOCOL_SUCCESS.get(line)
    if success is not None:
        return CATALOGUE[success].render()
    if line.startswith(_HELP_PREFIXES):
        return f"250 {CATALOGUE[Condition.HELP].status} {line[4:]}"
    return line


def reply_key(line: str) -> str:
    """What the metrics count ``line`` under: ``"550 5.1.1"``, or the basic code alone
    (``"220"``) for a reply without an enhanced status code."""
    found = _HAS_STATUS.match(line)
    if found is None:
        return line[:3]
    return f"{line[:3]} {found.group(0)[4:].rstrip()}"


def refusal(error: InboundRefused) -> Reply:
    """The reply for a refusal raised by the core."""
    return CATALOGUE[condition_for(error)]
