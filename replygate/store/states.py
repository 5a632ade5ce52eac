"""The states the tables keep, as string enums, apart from the tables themselves.

Importing them costs nothing (no SQLAlchemy), so the command line can offer
them as choices in ``--help`` without loading the ORM; ``models`` re-exports
them, where the rest of the code finds them.
"""

from __future__ import annotations

from enum import StrEnum


class UserRole(StrEnum):
    """What a person may do in the portal; staff and admins see every client."""

    ADMIN = "admin"
    STAFF = "staff"
    CLIENT = "client"


class AddressStatus(StrEnum):
    """Whether notifications still go to a person's address (hard bounces count)."""

    OK = "ok"
    FAILING = "failing"
    SUPPRESSED = "suppressed"


class MessageSource(StrEnum):
    PORTAL = "portal"
    EMAIL = "email"


class SenderPolicy(StrEnum):
    """What happens to a reply whose From is not the person its address names."""

    REJECT = "reject"
    HOLD = "hold"


class DmarcPolicy(StrEnum):
    """How trusted Authentication-Results decide: refuse a reported failure, or demand a pass."""

    REJECT_FAIL = "reject-fail"
    REQUIRE_PASS = "require-pass"


class InboundStatus(StrEnum):
    """Where one accepted inbound mail stands; the last five are final but replayable."""

    QUEUED = "queued"
    PROCESSING = "processing"
    FILED = "filed"
    HELD = "held"
    REJECTED = "rejected"
    IGNORED = "ignored"
    FAILED = "failed"


class OutboxStatus(StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    SUPPRESSED = "suppressed"


class MfaRequirement(StrEnum):
    """Who must log in with a second factor (a TOTP code) besides the password."""

    STAFF = "staff"  # staff and admins
    ALL = "all"
    OFF = "off"


class ActorKind(StrEnum):
    """Who did what an audit event records: a portal user, an operator at the CLI, or us."""

    USER = "user"
    OPERATOR = "operator"
    SYSTEM = "system"


class AuditOutcome(StrEnum):
    OK = "ok"
    DENIED = "denied"
    FAILED = "failed"
