"""Writing notifications into the outbox: one per person, composed by ``mail.compose``.

Every notification (a new message, a reminder of one unread, a read
receipt) goes through ``Notifier.queue``, in the transaction of what caused
it: composed, refused and logged when its headers are not the ones meant,
recorded as ``suppressed`` (never sent) for an address suppressed after
repeated bounces. In Secure Mode the mail carries no content whatever the
purpose: ``compose`` ignores the content fields.
"""

from __future__ import annotations

import dataclasses
import secrets
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy.orm import Session

from replygate.config import Settings
from replygate.errors import HeaderMismatch
from replygate.logs import get_logger
from replygate.mail import reply_token
from replygate.mail.compose import Notification, compose
from replygate.mail.verp import bounce_key
from replygate.store import outbox, tokens
from replygate.store.models import (
    AddressStatus,
    Message,
    Organisation,
    OutboxStatus,
    Thread,
    User,
)

TOKEN_MIN_REMAINING = timedelta(days=7)
SUPPRESSED_REASON = "address suppressed after repeated hard bounces"

log = get_logger("replygate.messaging")


class Notifier:
    """Composes and queues notifications for one deployment's settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._portal_base = settings.portal_url.rstrip("/")
        self._bounce_key = bounce_key(settings.secret_key)

    def secure(self, org: Organisation, person: User, thread_id: int) -> Notification:
        """The content-free notification to ``person`` about a thread; others derive from it."""
        return Notification(
            mode="secure",
            notification_id=secrets.token_hex(10),
            to_address=person.email,
            to_name=person.name,
            from_address=self.settings.notification_from,
            organisation=org.name,
            reply_domain=self.settings.reply_domain,
            portal_link=f"{self._portal_base}/threads/{thread_id}",
            bounce_key=self._bounce_key,
        )

    def about_message(
        self,
        session: Session,
        org: Organisation,
        thread: Thread,
        message: Message,
        author: User,
        person: User,
        *,
        now: datetime,
        purpose: Literal["message", "reminder"] = "message",
        flush: bool = True,
    ) -> Notification:
        """A message (or a reminder of it) for ``person``: content and a reply address
        in Convenience Mode, nothing but a link in Secure Mode."""
        secure = dataclasses.replace(self.secure(org, person, thread.id), purpose=purpose)
        if not org.convenience_mode:
            return secure
        previous = outbox.latest_header_message_id(session, thread.id, person.id)
        return dataclasses.replace(
            secure,
            mode="content",
            subject=thread.subject,
            body=message.body,
            author_name=author.name,
            reply_address=reply_token.reply_address(
                self._token_for(session, thread.id, person.id, now, flush=flush),
                self.settings.reply_domain,
            ),
            in_reply_to=previous,
            references=(previous,) if previous else (),
        )

    def queue(
        self,
        session: Session,
        notification: Notification,
        person: User,
        *,
        kind: str,
        thread_id: int,
        message_id: int,
        flush: bool = True,
    ) -> bool:
        """Compose ``notification`` and write it to the outbox; False when it was refused."""
        try:
            composed = compose(notification)
        except HeaderMismatch as exc:
            # The message stays stored and readable in the portal; only
            # this mail, whose headers are not the ones meant, is not sent.
            log.error(
                "notification refused",
                reason=str(exc),
                notification_id=notification.notification_id,
                kind=kind,
                thread_id=thread_id,
                message_id=message_id,
                user_id=person.id,
            )
            return False
        suppressed = person.address_status == AddressStatus.SUPPRESSED
        outbox.add(
            session,
            composed,
            kind=kind,
            user_id=person.id,
            thread_id=thread_id,
            message_id=message_id,
            status=OutboxStatus.SUPPRESSED if suppressed else OutboxStatus.QUEUED,
            last_error=SUPPRESSED_REASON if suppressed else None,
            flush=flush,
        )
        return True

    def _token_for(
        self, session: Session, thread_id: int, user_id: int, now: datetime, *, flush: bool = True
    ) -> str:
        """The recipient's live token for this thread, issuing a new one when needed."""
        row = tokens.current(
            session, thread_id, user_id, now=now, min_remaining=TOKEN_MIN_REMAINING
        )
        if row is not None:
            return row.token
        token = reply_token.new_token(self.settings.secret_key)
        expires = now + timedelta(days=self.settings.token_ttl_days)
        tokens.add(session, token, thread_id, user_id, now=now, expires_at=expires, flush=flush)
        return token
