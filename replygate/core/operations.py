"""What operators do: add people and Circles, replay, release, reject and purge
inbound mail, retry notifications, clear an address's bounces, set the
organisation's policies, revoke a reply address.

Each operation is a function over a session maker (and the settings, where
the organisation's defaults matter) that commits its own transaction and
raises ``NotFound`` or ``Invalid`` with a sentence the operator reads; nothing
here prints. Filing a mail belongs to the inbound worker, above this layer:
replay and release make the queue's status transition and record the
operator's decision, and the caller hands the mail to the worker
(``replay_one`` takes its ``process`` as an argument).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.core import audit, mfa, organisation, sessions
from replygate.core.audit import Action, ObjectKind
from replygate.core.messaging import Messaging
from replygate.core.views import UserRow, plain, user_row
from replygate.errors import Invalid, NotFound
from replygate.mail import reply_token
from replygate.store import claim_owners, directory, inbound, inbound_admin, outbox, tokens
from replygate.store.db import transaction
from replygate.store.models import (
    AddressStatus,
    DmarcPolicy,
    InboundMail,
    InboundStatus,
    MfaRequirement,
    SenderPolicy,
    UserRole,
    utcnow,
)

# What to do with a reply whose From is not the address its token was issued to.
SENDER_POLICIES = tuple(policy.value for policy in SenderPolicy)
# What trusted Authentication-Results must say of the From domain.
DMARC_POLICIES = tuple(policy.value for policy in DmarcPolicy)
# Who must log in with a second factor.
MFA_REQUIREMENTS = tuple(requirement.value for requirement in MfaRequirement)


# -- people ---------------------------------------------------------------------------------


def add_user(
    factory: sessionmaker[Session], settings: Settings, email: str, name: str, role: str
) -> UserRow:
    with transaction(factory) as session:
        user = directory.add_user(session, email, name, role)
        session.flush()
        audit.record(
            session, settings, audit.who(), Action.USER_ADDED, object_kind=ObjectKind.USER,
            object_id=user.id, detail={"role": role},
        )  # fmt: skip
        return user_row(user)


def set_role(factory: sessionmaker[Session], settings: Settings, email: str, role: str) -> UserRow:
    """Give a user another role; their portal sessions end, so the new role (and the
    second factor it may require) applies from their next login. The last admin
    stays one, so someone can still run the organisation's settings."""
    wanted = UserRole(role)
    with transaction(factory) as session:
        user = directory.user(session, email)
        before = UserRole(user.role)
        if before is wanted:
            return user_row(user)
        if before is UserRole.ADMIN and not directory.other_admins(session, user.id):
            raise Invalid(f"{user.email} is the only admin; make someone else admin first")
        user.role = wanted.value
        ended = sessions.end_all(session, user.id)
        audit.record(
            session, settings, audit.who(), Action.ROLE_CHANGED, object_kind=ObjectKind.USER,
            object_id=user.id, detail={"from": before.value, "to": wanted.value, "sessions": ended},
        )  # fmt: skip
        return user_row(user)


def set_password(
    factory: sessionmaker[Session], settings: Settings, email: str, password: str
) -> str:
    """Set a user's portal password; returns the address as stored."""
    # Imported here: the module hashes a dummy password when loaded, which
    # every start of the command line (one per mail on a Postfix pipe) would pay.
    from replygate.core.accounts import set_password as set_hash

    with transaction(factory) as session:
        set_hash(session, email, password)
        user = directory.user(session, email)
        audit.record(
            session, settings, audit.who(), Action.PASSWORD_SET, object_kind=ObjectKind.USER,
            object_id=user.id,
        )  # fmt: skip
    return directory.normalise_email(email)


def enrol_mfa(
    factory: sessionmaker[Session], settings: Settings, email: str
) -> tuple[str, list[str]]:
    """Give a user a live TOTP secret now: its ``otpauth://`` URI and recovery codes, once."""
    with transaction(factory) as session:
        user = directory.user(session, email)
        issuer = directory.organisation(session, default_name=settings.organisation_name).name
        shown, codes = mfa.enrol_now(session, user, issuer)
        audit.record(
            session, settings, audit.who(), Action.MFA_ENROLLED, object_kind=ObjectKind.USER,
            object_id=user.id, detail={"by": "operator"},
        )  # fmt: skip
        return shown.uri, codes


def reset_mfa(factory: sessionmaker[Session], settings: Settings, email: str) -> str:
    """Forget a user's second factor (a lost phone): they enrol again at the next login."""
    with transaction(factory) as session:
        user = directory.user(session, email)
        mfa.reset(session, user)
        audit.record(
            session, settings, audit.who(), Action.MFA_RESET, object_kind=ObjectKind.USER,
            object_id=user.id,
        )  # fmt: skip
        return user.email


def reset_bounces(factory: sessionmaker[Session], email: str) -> str:
    """Mark an address good again once its bounces were dealt with; notifications resume.

    Clears the count and the days of its hard bounces; returns the address as stored.
    """
    with transaction(factory) as session:
        user = directory.user(session, email)
        user.bounce_count, user.bounce_days, user.address_status = 0, [], AddressStatus.OK
        return user.email


def add_circle(
    factory: sessionmaker[Session], name: str, *, clients_may_write: bool = False
) -> None:
    """Create a Circle; only staff may write to it unless ``clients_may_write``."""
    with transaction(factory) as session:
        directory.add_circle(session, name, clients_may_write=clients_may_write)


def set_circle_access(
    factory: sessionmaker[Session], name: str, *, clients_may_write: bool
) -> None:
    """Open a Circle to messages from clients (reaching its staff), or close it again."""
    with transaction(factory) as session:
        directory.circle(session, name).clients_may_write = clients_may_write


def add_member(factory: sessionmaker[Session], circle: str, email: str) -> None:
    """Add a user to a Circle (nothing changes if they are a member already)."""
    with transaction(factory) as session:
        directory.add_member(session, circle, email)


# -- the organisation -----------------------------------------------------------------------


def set_convenience_mode(
    factory: sessionmaker[Session],
    settings: Settings,
    *,
    on: bool,
    acknowledged_by: str | None = None,
    acknowledge_hipaa: bool = False,
) -> int:
    """Switch Convenience Mode, by the one rule the portal uses too (``Messaging``).

    Returns how many reply addresses were voided (switching off voids them all).
    """
    return Messaging(factory, settings).set_convenience_mode(
        on=on, acknowledged_by=acknowledged_by, acknowledge_hipaa=acknowledge_hipaa
    )


def rename_organisation(factory: sessionmaker[Session], settings: Settings, name: str) -> str:
    """Give the organisation a new name (one line); returns the name as kept."""
    with transaction(factory) as session:
        organisation.rename(session, name, settings.organisation_name)
        _setting_changed(session, settings, {"setting": "organisation_name"})
        return directory.organisation(session).name


def set_mfa_requirement(factory: sessionmaker[Session], settings: Settings, value: str) -> None:
    """Who must log in with a second factor: staff and admins, everyone, or nobody."""
    if value not in MFA_REQUIREMENTS:
        raise Invalid(f"MFA requirement must be one of {', '.join(MFA_REQUIREMENTS)}")
    with transaction(factory) as session:
        org = directory.organisation(session, default_name=settings.organisation_name)
        org.mfa_required = MfaRequirement(value)
        _setting_changed(session, settings, {"setting": "mfa_required", "value": value})


def _setting_changed(session: Session, settings: Settings, detail: audit.Detail) -> None:
    audit.record(
        session, settings, audit.who(), Action.SETTING_CHANGED,
        object_kind=ObjectKind.SETTING, detail=detail,
    )  # fmt: skip


def set_sender_policy(factory: sessionmaker[Session], settings: Settings, policy: str) -> None:
    """Reject a reply from the wrong sender, or hold it for an operator to release."""
    if policy not in SENDER_POLICIES:
        raise Invalid(f"sender policy must be one of {', '.join(SENDER_POLICIES)}, not {policy!r}")
    with transaction(factory) as session:
        org = directory.organisation(session, default_name=settings.organisation_name)
        org.sender_policy = SenderPolicy(policy)
        audit.record(
            session, settings, audit.who(), Action.SENDER_POLICY_CHANGED,
            object_kind=ObjectKind.SETTING, detail={"policy": policy},
        )  # fmt: skip


def set_read_receipts_default(factory: sessionmaker[Session], settings: Settings, on: bool) -> None:
    """Whether "Tell me when it is read" starts ticked at compose and reply."""
    with transaction(factory) as session:
        organisation.set_read_receipts_default(session, on, settings.organisation_name)
        _setting_changed(session, settings, {"setting": "read_receipts", "default": on})


def set_reminder_delay(factory: sessionmaker[Session], settings: Settings, delay: str) -> int:
    """After how long (``24h``, ``30m``, ``0`` for never) an unread message gets its one
    reminder; returns the seconds kept."""
    seconds = organisation.parse_delay(delay)
    with transaction(factory) as session:
        kept = organisation.set_reminder_delay(session, seconds, settings.organisation_name)
        _setting_changed(session, settings, {"setting": "reminder_delay", "seconds": kept})
        return kept


def set_dmarc_policy(factory: sessionmaker[Session], settings: Settings, policy: str) -> None:
    """Refuse replies that failed DMARC, or also those not shown to pass it.

    Whose word counts: the gateway's own checks (``mail_auth = verify``) and
    the relays of ``trusted_authserv_ids``. ``require-pass`` with neither
    (``mail_auth = off`` and no relay) would refuse every reply, so it is refused.
    """
    if policy not in DMARC_POLICIES:
        raise Invalid(f"DMARC policy must be one of {', '.join(DMARC_POLICIES)}, not {policy!r}")
    if policy == DmarcPolicy.REQUIRE_PASS and not settings.authserv_ids_believed:
        raise Invalid(
            "require-pass needs mail_auth = verify (REPLYGATE_MAIL_AUTH) or "
            "trusted_authserv_ids (REPLYGATE_TRUSTED_AUTHSERV_IDS): with no check we "
            "trust, no reply could ever pass"
        )
    with transaction(factory) as session:
        org = directory.organisation(session, default_name=settings.organisation_name)
        org.dmarc_policy = DmarcPolicy(policy)
        audit.record(
            session, settings, audit.who(), Action.DMARC_POLICY_CHANGED,
            object_kind=ObjectKind.SETTING, detail={"policy": policy},
        )  # fmt: skip


def revoke_reply_address(factory: sessionmaker[Session], settings: Settings, address: str) -> None:
    """Revoke one reply address: the gateway refuses it from now on."""
    token = reply_token.token_from_address(address, settings.reply_domain)
    if token is None:
        raise NotFound(f"{address} is not a reply address of {settings.reply_domain}")
    with transaction(factory) as session:
        if not tokens.revoke(session, token, now=utcnow()):
            raise NotFound(f"no live reply address {address}")


# -- the inbound queue ----------------------------------------------------------------------


@dataclass(frozen=True)
class Requeued:
    """A mail put back in the queue for replay, and the status it had before."""

    inbound_id: int
    previous: str


class Processed(Protocol):
    """What filing one claimed mail reports (the inbound worker's ``Outcome``)."""

    @property
    def status(self) -> str: ...
    @property
    def reason(self) -> str | None: ...


@dataclass(frozen=True)
class Replayed:
    """How one replay ended; ``status`` is None when a running worker claimed the mail first."""

    inbound_id: int
    previous: str
    status: str | None
    reason: str | None


def requeue_inbound(
    factory: sessionmaker[Session], ids: Sequence[int] = (), *, all_failed: bool = False
) -> list[Requeued]:
    """Put the named mails, and with ``all_failed`` every failed one, back in the queue.

    One transaction: a mail that does not exist, was purged or cannot be
    replayed refuses the whole request. Each requeued mail's history records
    the replay.
    """
    if not ids and not all_failed:
        raise Invalid("name the mails to replay, or ask for every failed one")
    with transaction(factory) as session:
        chosen = list(ids) + (inbound.failed_ids(session) if all_failed else [])
        previous = {i: plain(inbound.get(session, i).status) for i in chosen}
        return [Requeued(i, previous[i]) for i in inbound.requeue(session, chosen)]


def replay_one(
    factory: sessionmaker[Session], item: Requeued, process: Callable[[int], Processed]
) -> Replayed:
    """Claim one requeued mail and file it with ``process``; filing stays exactly-once.

    A worker running meanwhile may have claimed it first: then it files the
    mail and this leaves it alone.
    """
    if not inbound.claim_one(factory, item.inbound_id):
        return Replayed(item.inbound_id, item.previous, None, None)
    outcome = process(item.inbound_id)
    return Replayed(item.inbound_id, item.previous, plain(outcome.status), outcome.reason)


def release_held(factory: sessionmaker[Session], inbound_id: int) -> None:
    """Claim a held mail for filing, recording that an operator vouched for its sender.

    The caller then files it (the inbound worker's ``process`` with
    ``released=True``).
    """
    owner = claim_owners.process_owner(factory, "release")
    with transaction(factory) as session:
        row = _held(session, inbound_id)
        row.status, row.claimed_at = InboundStatus.PROCESSING, None
        # Owned by this process while it lives: if it dies before filing, a worker
        # takes the claim back (and decides the mail again).
        row.claimed_by = owner
        inbound.note(row, {"stage": "operator", "action": "release"})


def reject_held(
    factory: sessionmaker[Session], inbound_id: int, reason: str = "rejected by an operator"
) -> None:
    """Drop a held mail without filing it; the reason is what the queue shows."""
    with transaction(factory) as session:
        row = _held(session, inbound_id)
        inbound.record(
            row, InboundStatus.REJECTED, reason, {"stage": "operator", "action": "reject"}
        )


def _held(session: Session, inbound_id: int) -> InboundMail:
    row = inbound.lock(session, inbound_id)
    if row.status != InboundStatus.HELD:
        raise Invalid(f"mail {inbound_id} is {plain(row.status)}, not held")
    return row


@dataclass(frozen=True)
class Purged:
    count: int
    days: float


def purge_raw_mail(
    factory: sessionmaker[Session], settings: Settings, older_than_days: float | None = None
) -> Purged:
    """Drop the raw bytes of finished mail older than the retention period (or ``older_than_days``).

    Queue records and filed messages stay; queued, processing and held mail is never purged.
    """
    days = settings.retention_days if older_than_days is None else older_than_days
    with transaction(factory) as session:
        purged = inbound_admin.purge(session, older_than=utcnow() - timedelta(days=days))
        return Purged(purged, days)


# -- the outbox -----------------------------------------------------------------------------


def retry_notifications(
    factory: sessionmaker[Session], ids: Sequence[int] = (), *, all_failed: bool = False
) -> int:
    """Queue failed notifications again, due at once; returns how many.

    The named ones when any are named, otherwise (with ``all_failed``) every
    failed one, however many. Rows that are not ``failed`` are left alone.
    """
    if not ids and not all_failed:
        raise Invalid("name the notifications to retry, or ask for every failed one")
    with transaction(factory) as session:
        if ids:
            return outbox.requeue(session, list(ids), now=utcnow())
        return outbox.requeue_failed(session, now=utcnow())
