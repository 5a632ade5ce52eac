"""The service wiring: the parts of a role share one loop and signal each other."""

from __future__ import annotations

import asyncio
import dataclasses
from email.message import EmailMessage

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.messaging import Messaging
from replygate.service import run_service
from replygate.store import directory, inbound
from replygate.store.db import transaction
from replygate.store.models import OutboxMessage, ReplyToken
from tests.helpers import read_maildir, wait_for


def test_a_filed_reply_is_delivered_without_waiting_for_the_poll(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    """Role "worker": the engine wakes the outbound worker beside it, so the
    notification of a filed reply goes out in seconds although both poll only
    every 30 s."""
    slow = dataclasses.replace(settings, worker_poll_seconds=30)
    with transaction(sessions) as s:
        directory.add_user(s, "dana@staff.test", "Dana Staff", "staff")
        directory.add_user(s, "cleo@example.com", "Cleo Client", "client")
    messaging = Messaging(sessions, slow)
    messaging.set_convenience_mode(on=True, acknowledge_hipaa=True)
    messaging.send(sender="dana@staff.test", to=["cleo@example.com"], subject="Hi", body="Well?")
    with sessions() as s:
        token = s.scalars(select(ReplyToken.token)).one()
    address = f"reply+{token}@{slow.reply_domain}"
    reply = EmailMessage()
    reply["From"] = "Cleo Client <cleo@example.com>"
    reply["To"] = address
    reply["Subject"] = "Re: Hi"
    reply["Message-ID"] = "<r1@mail.example.com>"
    reply.set_content("Very well, thanks.\n")
    with transaction(sessions) as s:
        inbound.enqueue(
            s, mail_from="cleo@example.com", rcpt=address, raw=reply.as_bytes(), message_id=None
        )

    def delivered_to_dana() -> bool:
        with sessions() as s:
            rows = s.scalars(
                select(OutboxMessage).where(OutboxMessage.recipient == "dana@staff.test")
            ).all()
        return len(rows) == 1 and rows[0].status == "sent"

    async def scenario() -> None:
        stop, ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(
            run_service(slow, sessions, role="worker", stop=stop, ready=ready)
        )
        await asyncio.wait_for(ready.wait(), timeout=10)
        await asyncio.to_thread(wait_for, delivered_to_dana, timeout=5, what="Dana's notification")
        stop.set()
        await asyncio.wait_for(task, timeout=10)

    asyncio.run(scenario())
    mails = [
        m for m in read_maildir(slow.outbox_maildir) if m["To"].addresses[0].username == "dana"
    ]
    assert len(mails) == 1
    assert "Very well, thanks." in mails[0].get_content()
