"""Domain errors, one module so every layer raises the same names.

    ReplygateError
    ├── ConfigError          configuration is missing or contradictory
    ├── NotFound             a named user, Circle, thread or queue entry does not exist
    ├── Invalid              a request the domain refuses (bad role, empty body, ...)
    ├── StartupError         a part of ``serve`` cannot start (port taken, schema behind)
    ├── ServiceFailed        a process of a running ``serve`` died; the service stopped
    ├── HeaderMismatch       a composed notification's headers are not the ones intended
    ├── SealBroken           a value sealed at rest does not open (wrong key, tampered, moved)
    └── InboundRefused       an inbound mail we refuse in the SMTP dialogue
        ├── NotAReplyAddress   recipient is not reply+<token>@<reply domain>
        ├── UnknownToken       token well-formed but never issued (or forged)
        ├── UnknownBounceAddress bounces+… address whose MAC does not verify
        ├── TokenExpired       token past its expiry date
        ├── TokenRevoked       token revoked, or voided when Convenience Mode went off
        ├── ConvenienceModeOff the organisation does not accept replies by email
        ├── SenderMismatch     From is not the address the token was issued to
        ├── DmarcFailed        a trusted relay, or our own check, says DMARC failed for From
        ├── AuthenticationUnavailable the sender's domain could not be checked in time (DNS)
        ├── MessageTooLarge    message exceeds the configured size limit
        ├── NestedTooDeep      MIME parts nested deeper than any mail client nests them
        ├── AttachmentTooLarge an attachment, or all of them, exceed their size limits
        ├── TooManyAttachments the message carries more files than we accept
        └── AttachmentTypeRefused an attachment's content type is not on the allow-list
            ├── AttachmentNameRefused     its name runs when clicked or hides characters
            └── AttachmentContentMismatch its content or name is not its declared type

The gateway maps each ``InboundRefused`` subclass to one SMTP reply in
``replygate.gateway.replies``; nothing else decides SMTP codes.
"""

from __future__ import annotations


class ReplygateError(Exception):
    """Base of every error we raise on purpose."""


class ConfigError(ReplygateError):
    """Raised when configuration is missing, malformed or unsafe."""


class NotFound(ReplygateError):
    """Raised when a named object does not exist."""


class Invalid(ReplygateError):
    """Raised when a request breaks a domain rule."""


class StartupError(ReplygateError):
    """Raised when a part of the service cannot start: its port is taken, or the
    database's schema is not the one this release writes. The message is one
    sentence the operator can act on."""


class ServiceFailed(ReplygateError):
    """Raised when a running service stops because one of its processes died."""


class HeaderMismatch(ReplygateError):
    """Raised when a composed mail, parsed back, has other headers than we meant to write.

    Text that became a header of its own (a ``Bcc``, a ``Content-Type``) is
    the sign of an injection; such a mail is never sent.
    """


class SealBroken(ReplygateError):
    """Raised when a sealed value does not open: wrong key, tampered with, or moved from
    elsewhere. Never read as empty; the store logs it as ``store.seal_broken``."""


class InboundRefused(ReplygateError):
    """An inbound mail refused in the SMTP dialogue (never bounced later)."""


class NotAReplyAddress(InboundRefused):
    """Raised when the recipient is not a reply address of our reply domain."""


class UnknownToken(InboundRefused):
    """Raised when the token was never issued by us (or fails its check)."""


class UnknownBounceAddress(InboundRefused):
    """Raised when a bounce address of ours carries no valid MAC (forged, guessed or unsigned)."""


class TokenExpired(InboundRefused):
    """Raised when the token's expiry date has passed."""


class TokenRevoked(InboundRefused):
    """Raised when the token was revoked or voided by switching Convenience Mode off."""


class ConvenienceModeOff(InboundRefused):
    """Raised when replies by email are not enabled for the organisation."""


class SenderMismatch(InboundRefused):
    """Raised when From is not the address the token was issued to."""


class DmarcFailed(SenderMismatch):
    """Raised when a trusted Authentication-Results header says DMARC failed for From."""


class AuthenticationUnavailable(InboundRefused):
    """Raised when the gateway's SPF, DKIM and DMARC checks ran out of time (DNS away).

    Temporary: the sending MTA keeps the message and tries again later.
    """


class MessageTooLarge(InboundRefused):
    """Raised when a message exceeds the size limit."""


class NestedTooDeep(InboundRefused):
    """Raised when a message nests multiparts or attached messages past ``MAX_NESTING``.

    No mail client nests so deep; parsers recurse once per level, so such a
    mail is a way to make them fail, refused while its sender can be told.
    """


class AttachmentTooLarge(InboundRefused):
    """Raised when one attachment or their total exceeds the configured limits."""


class TooManyAttachments(InboundRefused):
    """Raised when a message carries more files than ``max_attachments``."""


class AttachmentTypeRefused(InboundRefused):
    """Raised when an attachment's content type is outside the allow-list."""


class AttachmentNameRefused(AttachmentTypeRefused):
    """Raised when an attachment's name ends in an extension a click runs or renders
    (``.exe``, ``.js``, ``.html``), or holds control or bidi characters."""


class AttachmentContentMismatch(AttachmentTypeRefused):
    """Raised when an attachment's bytes or name are not of the type it declares
    (a program declared ``image/png``, ``x.html`` declared ``image/png``)."""
