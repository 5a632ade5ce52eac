"""The flood brake counts replies per reply address, whatever the envelope sender.

The attacker holds a client's reply address and a From the sender check
accepts (under the ``hold`` policy an operator would release, or a
compromised mailbox); rotating ``MAIL FROM`` on every message must not
reset the count.
"""

from __future__ import annotations

import dataclasses

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.core.messaging import Messaging
from replygate.store import directory, inbound
from replygate.store.db import transaction
from replygate.store.models import InboundMail, ReplyToken
from replygate.workers.inbound import InboundWorker


def test_rotating_the_envelope_sender_does_not_get_past_the_brake(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    tight = dataclasses.replace(settings, breaker_max_replies=3)
    with transaction(sessions) as s:
        directory.add_user(s, "dana@staff.test", "Dana Staff", "staff")
        directory.add_user(s, "cleo@example.com", "Cleo Client", "client")
    messaging = Messaging(sessions, tight)
    messaging.set_convenience_mode(on=True, acknowledge_hipaa=True)
    messaging.send(sender="dana@staff.test", to=["cleo@example.com"], subject="Hi", body="Hi?")
    with sessions() as s:
        address = f"reply+{s.scalars(select(ReplyToken.token)).one()}@{tight.reply_domain}"
    for n in range(6):
        raw = (
            f"From: Cleo <cleo@example.com>\r\nTo: {address}\r\nSubject: Re: Hi\r\n"
            f"Message-ID: <flood{n}@evil.test>\r\n\r\nReply number {n}.\r\n"
        ).encode()
        with transaction(sessions) as s:
            inbound.enqueue(
                s, mail_from=f"bounce{n}@rotating{n}.test", rcpt=address, raw=raw, message_id=None
            )
        InboundWorker(sessions, tight).drain()
    with sessions() as s:
        statuses = [row.status for row in s.scalars(select(InboundMail).order_by(InboundMail.id))]
    assert statuses == ["filed"] * 3 + ["held"] * 3
