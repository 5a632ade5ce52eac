"""What the portal's pages read and change, one transaction per call.

The portal is a web edge: it never holds a database session. Each method
here opens one transaction over the rules in ``inbox``, ``canned``,
``organisation`` and ``accounts`` and returns plain records. Every method
blocks, so an async caller runs it in a worker thread. Sending, replying and
Convenience Mode go through ``Messaging``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.core import (
    accounts,
    audit,
    canned,
    inbox,
    mfa,
    organisation,
    placement,
    receipts,
    sessions,
    views,
)
from replygate.core.audit import Action, ObjectKind
from replygate.core.canned import Canned
from replygate.core.inbox import (
    AttachmentFile,
    Recipient,
    SentRow,
    ThreadRow,
    ThreadView,
    Viewer,
)
from replygate.core.messaging import Messaging
from replygate.core.mfa import SecondStep
from replygate.core.notifying import Notifier
from replygate.core.organisation import OrganisationView
from replygate.core.placement import Change, InboxFilter
from replygate.core.views import UserRow
from replygate.errors import Invalid, NotFound
from replygate.store import directory
from replygate.store.db import transaction
from replygate.store.models import AuditOutcome, User, utcnow

T = TypeVar("T")


@dataclass(frozen=True)
class SignedIn:
    """Who is logged in, with what every page's header shows."""

    viewer: Viewer
    unread: int
    organisation: str


@dataclass(frozen=True)
class LoginOutcome:
    """A login attempt: the new session's id (for the cookie alone), or why there is none."""

    user_id: int | None
    session_id: str = ""
    throttled: bool = False
    retry_after: int = 0
    # The password was right, but the login needs a second factor: who, and which step.
    pending_user: int | None = None
    second_step: SecondStep | None = None
    recovery_codes: tuple[str, ...] = ()  # shown once, after enrolment


class Workspace:
    """The portal's reads and small writes over one store, configured by one ``Settings``."""

    def __init__(self, factory: sessionmaker[Session], settings: Settings) -> None:
        self.factory = factory
        self.settings = settings
        self._lifetimes = sessions.Lifetimes.of(settings)
        self._notifier = Notifier(settings)

    def _run(self, work: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        with transaction(self.factory) as session:
            return work(session, *args, **kwargs)

    # -- accounts -------------------------------------------------------------------------

    def log_in(
        self, email: str, password: str, *, address: str, user_agent: str = "", previous: str = ""
    ) -> LoginOutcome:
        """Check a login (throttled as ``accounts.authenticate`` says) and start a session.

        The session the browser had before (``previous``) ends: a login always
        gets a new id, so an id planted in a browser beforehand is worth nothing.
        """

        def work(session: Session) -> LoginOutcome:
            result = accounts.authenticate(session, email, password, address=address)
            if result.user is None:
                self._failed_login(session, email, throttled=result.throttled)
                return LoginOutcome(
                    user_id=None, throttled=result.throttled, retry_after=result.retry_after
                )
            org = directory.organisation(session, default_name=self.settings.organisation_name)
            step = mfa.second_step(result.user, org.mfa_required)
            if step is not None:
                return LoginOutcome(user_id=None, pending_user=result.user.id, second_step=step)
            return self._start(session, result.user, address, user_agent, previous)

        return self._run(work)

    def _start(
        self, session: Session, user: User, address: str, user_agent: str, previous: str
    ) -> LoginOutcome:
        sessions.end(session, previous)
        new = sessions.start(session, user, self._lifetimes, address=address, user_agent=user_agent)
        self._record(session, user, Action.LOGIN, ObjectKind.USER, user.id)
        return LoginOutcome(user_id=user.id, session_id=new)

    def second_factor(
        self, user_id: int, code: str, *, address: str, user_agent: str = "", previous: str = ""
    ) -> LoginOutcome:
        """The code step of a login whose password was right: a session, or why not."""

        def work(session: Session) -> LoginOutcome:
            user = session.get(User, user_id)
            if user is None or not mfa.enrolled(user):
                raise NotFound("this login has ended; log in again")
            result = mfa.check_code(session, user, code, address=address)
            outcome = AuditOutcome.OK if result.ok else AuditOutcome.DENIED
            detail = {"recovery_code": result.recovery, "throttled": result.throttled}
            self._record(
                session, user, Action.MFA_USED, ObjectKind.USER, user.id,
                outcome=outcome, detail=detail,
            )  # fmt: skip
            if not result.ok:
                return LoginOutcome(
                    user_id=None,
                    throttled=result.throttled,
                    retry_after=result.retry_after,
                    pending_user=user.id,
                    second_step=SecondStep.CODE,
                )
            return self._start(session, user, address, user_agent, previous)

        return self._run(work)

    def begin_enrolment(self, user_id: int, *, again: bool = False) -> mfa.Enrolment:
        """A pending secret to scan (the one already pending, unless ``again``)."""

        def work(session: Session) -> mfa.Enrolment:
            user = session.get(User, user_id)
            if user is None:
                raise NotFound("this login has ended; log in again")
            issuer = directory.organisation(
                session, default_name=self.settings.organisation_name
            ).name
            if user.mfa_pending_secret_sealed is not None and not again:
                return mfa.enrolment_of(user, issuer)
            return mfa.begin_enrolment(user, issuer)

        return self._run(work)

    def finish_enrolment(
        self,
        user_id: int,
        code: str,
        *,
        address: str,
        user_agent: str = "",
        previous: str = "",
        start_session: bool,
    ) -> LoginOutcome:
        """Enrol with the first code; with ``start_session`` (a login waiting on it) log in.

        ``Invalid`` for a code that does not match the pending secret.
        """

        def work(session: Session) -> LoginOutcome:
            user = session.get(User, user_id)
            if user is None:
                raise NotFound("this login has ended; log in again")
            wait = accounts.must_wait(session, user.email, address, utcnow())
            if wait:
                return LoginOutcome(user_id=None, throttled=True, retry_after=wait)
            codes = mfa.finish_enrolment(session, user, code)
            self._record(session, user, Action.MFA_ENROLLED, ObjectKind.USER, user.id)
            if not start_session:
                return LoginOutcome(user_id=user.id, recovery_codes=tuple(codes))
            started = self._start(session, user, address, user_agent, previous)
            return dataclasses.replace(started, recovery_codes=tuple(codes))

        try:
            return self._run(work)
        except Invalid:
            self._run(lambda s: self._count_enrolment_failure(s, user_id, address))
            raise

    def _count_enrolment_failure(self, session: Session, user_id: int, address: str) -> None:
        user = session.get(User, user_id)
        if user is not None:
            accounts.count_failure(session, user.email, address, utcnow())

    def mfa_status(self, user_id: int) -> tuple[bool, int]:
        """Whether the person is enrolled, and how many recovery codes they have left."""

        def work(session: Session) -> tuple[bool, int]:
            user = session.get_one(User, user_id)
            return mfa.enrolled(user), mfa.recovery_codes_left(session, user)

        return self._run(work)

    def _record(
        self,
        session: Session,
        user: User | None,
        action: Action,
        kind: ObjectKind | None = None,
        object_id: int | None = None,
        **what: Any,
    ) -> None:
        actor = audit.who(user)
        audit.record(
            session, self.settings, actor, action, object_kind=kind, object_id=object_id, **what
        )

    def _failed_login(self, session: Session, email: str, *, throttled: bool) -> None:
        """A refused login names the account only when there is one (nothing typed is kept)."""
        user = directory.find_user(session, email)
        self._record(
            session,
            user,
            Action.LOGIN_FAILED,
            ObjectKind.USER if user is not None else None,
            user.id if user is not None else None,
            outcome=AuditOutcome.DENIED,
            detail={"throttled": throttled},
        )

    def signed_in(self, session_id: str) -> SignedIn | None:
        """The session's person with their unread count, or None if it ended or expired."""

        def work(session: Session) -> SignedIn | None:
            user = sessions.resume(session, session_id, self._lifetimes)
            if user is None:
                return None
            org = directory.organisation(session, default_name=self.settings.organisation_name)
            return SignedIn(inbox.viewer(user), inbox.unread_threads(session, user.id), org.name)

        return self._run(work)

    def keep_alive(self, session_id: str) -> bool:
        """Restart the session's idle time; False if it has ended already."""
        return self._run(
            lambda s: sessions.resume(s, session_id, self._lifetimes, touch=True) is not None
        )

    def log_out(self, session_id: str) -> None:
        def work(session: Session) -> None:
            user = sessions.resume(session, session_id, self._lifetimes)
            sessions.end(session, session_id)
            if user is not None:
                self._record(session, user, Action.LOGOUT, ObjectKind.USER, user.id)

        self._run(work)

    def change_password(
        self, session_id: str, current: str, new: str, *, address: str, user_agent: str = ""
    ) -> LoginOutcome:
        """Change the session's person's password, ending all their sessions and starting one.

        ``Invalid`` for a weak new password, ``NotFound`` once the session has
        ended; a wrong current password counts as a failed login (and is
        throttled like one).
        """

        def work(session: Session) -> LoginOutcome:
            user = sessions.resume(session, session_id, self._lifetimes)
            if user is None:
                raise NotFound("this session has ended")
            result = accounts.change_password(session, user.email, current, new, address=address)
            self._record(
                session,
                user,
                Action.PASSWORD_SET,
                ObjectKind.USER,
                user.id,
                outcome=AuditOutcome.OK if result.user is not None else AuditOutcome.DENIED,
            )
            if result.user is None:
                return LoginOutcome(
                    user_id=None, throttled=result.throttled, retry_after=result.retry_after
                )
            new_id = sessions.start(
                session, result.user, self._lifetimes, address=address, user_agent=user_agent
            )
            return LoginOutcome(user_id=result.user.id, session_id=new_id)

        return self._run(work)

    # -- reading --------------------------------------------------------------------------

    def inbox(
        self, viewer_id: int, page: int, view: InboxFilter = InboxFilter.ALL
    ) -> tuple[list[ThreadRow], bool]:
        return self._run(inbox.inbox, viewer_id, page, view)

    def change_placement(self, thread_id: int, viewer: Viewer, what: Change) -> None:
        """Pin, unpin, archive or unarchive a thread for the viewer alone.

        ``NotFound`` unless the viewer takes part in it.
        """
        self._run(placement.change, thread_id, viewer.id, what)

    def sent(self, viewer_id: int, page: int) -> tuple[list[SentRow], bool]:
        return self._run(inbox.sent, viewer_id, page)

    def read_thread(self, thread_id: int, viewer: Viewer) -> ThreadView:
        """The thread, marked read (receipts to the authors who asked for them);
        ``NotFound`` unless the viewer takes part. Both are recorded in the audit
        trail (a refusal in a transaction of its own)."""

        def work(session: Session) -> ThreadView:
            user = directory.user(session, viewer.email)
            view = inbox.read_thread(session, thread_id, user)
            org = directory.organisation(session, default_name=self.settings.organisation_name)
            now = utcnow()
            thread = Messaging.thread_for(session, thread_id, user)
            receipts.mark_read(
                session, self._notifier, org, thread, user, now=now, when=receipts.moment(now)
            )
            self._record(
                session, user, Action.THREAD_VIEWED, ObjectKind.THREAD, thread_id,
                thread_id=thread_id,
            )  # fmt: skip
            return dataclasses.replace(
                view,
                convenience_mode=org.convenience_mode,
                read_receipts_default=org.read_receipts_default,
            )

        return self._audited(work, viewer, Action.THREAD_VIEWED, ObjectKind.THREAD, thread_id)

    def attachment(self, attachment_id: int, viewer: Viewer) -> AttachmentFile:
        """A file from a thread; ``NotFound`` unless the viewer takes part in it."""

        def work(session: Session) -> AttachmentFile:
            user = directory.user(session, viewer.email)
            found = inbox.attachment_for(session, attachment_id, user)
            self._record(
                session, user, Action.ATTACHMENT_DOWNLOADED, ObjectKind.ATTACHMENT,
                attachment_id, thread_id=found.thread_id,
            )  # fmt: skip
            return found

        kind = ObjectKind.ATTACHMENT
        return self._audited(work, viewer, Action.ATTACHMENT_DOWNLOADED, kind, attachment_id)

    def _audited(
        self,
        work: Callable[[Session], T],
        viewer: Viewer,
        action: Action,
        kind: ObjectKind,
        object_id: int,
    ) -> T:
        """``work`` in a transaction; a ``NotFound`` is recorded as a refused access first."""
        try:
            return self._run(work)
        except NotFound:

            def refused(session: Session) -> None:
                user = directory.find_user(session, viewer.email)
                self._record(session, user, action, kind, object_id, outcome=AuditOutcome.DENIED)

            self._run(refused)
            raise

    def recipients(self, viewer: Viewer) -> tuple[list[Recipient], list[Recipient]]:
        return self._run(inbox.recipients, viewer)

    # -- canned responses -----------------------------------------------------------------

    def canned_responses(self) -> list[Canned]:
        return self._run(canned.all_responses)

    def canned_response(self, canned_id: int) -> Canned:
        return self._run(canned.get, canned_id)

    def save_canned(
        self, *, canned_id: int | None, name: str, subject: str, body: str, author_id: int
    ) -> int:
        def work(session: Session) -> int:
            saved = canned.save(
                session,
                canned_id=canned_id,
                name=name,
                subject=subject,
                body=body,
                author_id=author_id,
            )
            action = Action.CANNED_CREATED if canned_id is None else Action.CANNED_CHANGED
            author = session.get(User, author_id)
            self._record(session, author, action, ObjectKind.CANNED, saved)
            return saved

        return self._run(work)

    def delete_canned(self, canned_id: int, *, by: int | None = None) -> None:
        def work(session: Session) -> None:
            canned.delete(session, canned_id)
            user = session.get(User, by) if by is not None else None
            self._record(session, user, Action.CANNED_DELETED, ObjectKind.CANNED, canned_id)

        self._run(work)

    # -- organisation ---------------------------------------------------------------------

    def organisation(self) -> OrganisationView:
        return self._run(organisation.view, self.settings.organisation_name)

    def organisation_name(self) -> str:
        """The name pages show before anyone logs in (the database's, as after)."""
        return self.organisation().name

    def rename_organisation(self, name: str, *, by: int | None = None) -> None:
        def work(session: Session) -> None:
            organisation.rename(session, name, self.settings.organisation_name)
            user = session.get(User, by) if by is not None else None
            detail = {"setting": "organisation_name"}
            self._record(session, user, Action.SETTING_CHANGED, ObjectKind.SETTING, detail=detail)

        self._run(work)

    def access_history(
        self, *, thread_id: int | None, user: str | None, limit: int
    ) -> list[audit.EventRow]:
        """The audit trail's newest events of a thread or a person (``UnknownUser``)."""
        return audit.events(
            self.factory, thread_id=thread_id, user=user, limit=limit, newest_first=True
        )

    def set_receipt_settings(
        self, *, read_receipts_default: bool, reminder_hours: str, by: int | None = None
    ) -> int:
        """The read-receipt default and the reminder delay (hours, 0: none) from the
        settings page; returns the delay's seconds. ``Invalid`` for a delay out of range."""
        try:
            hours = float(reminder_hours.strip() or "nan")
        except ValueError:
            hours = math.nan
        if not math.isfinite(hours):
            raise Invalid("the reminder delay is a number of hours (0 for no reminders)")
        name = self.settings.organisation_name

        def work(session: Session) -> int:
            organisation.set_read_receipts_default(session, read_receipts_default, name)
            kept = organisation.set_reminder_delay(session, hours * 3600, name)
            user = session.get(User, by) if by is not None else None
            detail = {
                "setting": "read_receipts",
                "default": read_receipts_default,
                "reminder_seconds": kept,
            }
            self._record(session, user, Action.SETTING_CHANGED, ObjectKind.SETTING, detail=detail)
            return kept

        return self._run(work)

    def suppressed_staff(self) -> list[UserRow]:
        """Staff and admins whose address bounced until suppressed: they hear of nothing."""
        return views.suppressed_staff(self.factory)
