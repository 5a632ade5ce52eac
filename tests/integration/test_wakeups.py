"""Wake-ups: queued mail is claimed at once, not at the engine's next poll.

Every engine here polls only every 30 s, so mail filed within seconds proves
a wake-up: the gateway's writer in the same process (any database), or a
PostgreSQL notification from another connection. The listener's connection
may die; the engine carries on and listens again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import time
from collections.abc import Callable
from email.message import EmailMessage
from typing import TypeVar

import aiosmtplib
import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session, sessionmaker
from structlog.testing import capture_logs

from replygate.config import Settings
from replygate.core import intake
from replygate.core.intake import Recipient
from replygate.core.messaging import Messaging
from replygate.mail.decisions import RecipientAccepted
from replygate.runtime import GC_YOUNG_THRESHOLD, run_service
from replygate.store import directory, inbound
from replygate.store.db import transaction
from replygate.store.inbound_writer import InboundWriter
from replygate.store.models import InboundMail, OutboxMessage, ReplyToken, utcnow
from replygate.workers import inbound as engine_module
from replygate.workers.inbound import InboundWorker
from tests.helpers import free_port, read_maildir, wait_for

SLOW_POLL = 30.0
T = TypeVar("T")


@pytest.fixture
def slow(settings: Settings) -> Settings:
    return dataclasses.replace(settings, worker_poll_seconds=SLOW_POLL)


@pytest.fixture
def address(sessions: sessionmaker[Session], slow: Settings) -> str:
    """A live reply address of Cleo's, in Convenience Mode."""
    with transaction(sessions) as s:
        directory.add_user(s, "dana@staff.test", "Dana Staff", "staff")
        directory.add_user(s, "cleo@example.com", "Cleo Client", "client")
    messaging = Messaging(sessions, slow)
    messaging.set_convenience_mode(on=True, acknowledge_hipaa=True)
    messaging.send(sender="dana@staff.test", to=["cleo@example.com"], subject="Hi", body="Well?")
    with sessions() as s:
        token = s.scalars(select(ReplyToken.token)).one()
    return f"reply+{token}@{slow.reply_domain}"


def reply(address: str, n: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Cleo Client <cleo@example.com>"
    msg["To"] = address
    msg["Subject"] = "Re: Hi"
    msg["Message-ID"] = f"<r{n}@mail.example.com>"
    msg.set_content(f"Reply number {n}.\n")
    return msg.as_bytes()


def enqueue(session: Session, address: str, n: int) -> InboundMail:
    """Reply number ``n`` queued in ``session``, as the pipe ingress queues it."""
    return inbound.enqueue(
        session, mail_from="cleo@example.com", rcpt=address, raw=reply(address, n), message_id=None
    )


def row(address: str, n: int) -> dict[str, object]:
    """One queue row as the gateway's writer stores it."""
    raw = reply(address, n)
    return {
        "received_at": utcnow(),
        "mail_from": "cleo@example.com",
        "rcpt": address,
        "peer": "127.0.0.1",
        "message_id": f"<r{n}@mail.example.com>",
        "size": len(raw),
        "raw": raw,
        "status": "queued",
        "attempts": 0,
        "thread_id": None,
        "decisions": [],
    }


def filed(sessions: sessionmaker[Session], queue_id: int) -> bool:
    with sessions() as s:
        return s.get(InboundMail, queue_id).status == "filed"  # type: ignore[union-attr]


def filed_mail(sessions: sessionmaker[Session], n: int) -> bool:
    """Whether reply number ``n`` (by its Message-ID) is filed."""
    with sessions() as s:
        status = s.scalar(
            select(InboundMail.status).where(InboundMail.message_id == f"<r{n}@mail.example.com>")
        )
    return status == "filed"


def postgresql_only(settings: Settings) -> None:
    if not settings.database_url.startswith("postgresql"):
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's; SQLite engines in other processes poll")


def listener_pid(engine: Engine) -> int | None:
    """The backend of the engine's listening connection, once it listens."""
    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND query = :listen AND pid <> pg_backend_pid()"
            ),
            {"listen": f"LISTEN {inbound.CHANNEL}"},
        ).scalar()


async def in_thread(probe: Callable[[], T | None], what: str, timeout: float = 5.0) -> T:
    """``wait_for`` off the loop, so the engine on it keeps running."""
    return await asyncio.to_thread(wait_for, probe, timeout=timeout, what=what)


def test_role_all_files_mail_the_gateway_committed_without_waiting_for_the_poll(
    sessions: sessionmaker[Session], slow: Settings, address: str
) -> None:
    """Gateway and engine in one process: the writer wakes the engine after its
    commit, on SQLite too (no notification there). Once started, the service
    has frozen its start-up heap out of garbage collection."""

    async def scenario() -> None:
        stop, ready = asyncio.Event(), asyncio.Event()
        smtp_port = free_port()
        task = asyncio.create_task(
            run_service(
                slow,
                sessions,
                role="all",
                smtp_addr=("127.0.0.1", smtp_port),
                portal_addr=("127.0.0.1", free_port()),
                stop=stop,
                ready=ready,
            )
        )
        await asyncio.wait_for(ready.wait(), timeout=10)
        # Started: the start-up heap is frozen out of collections (service.settle_heap).
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD
        for n in (1, 2):
            async with aiosmtplib.SMTP(hostname="127.0.0.1", port=smtp_port) as smtp:
                errors, _ = await smtp.sendmail("cleo@example.com", [address], reply(address, n))
            assert not errors
            started = time.monotonic()
            await in_thread(lambda n=n: filed_mail(sessions, n), f"reply {n} filed")
            assert time.monotonic() - started < 5
        stop.set()
        await asyncio.wait_for(task, timeout=10)

    threshold = gc.get_threshold()
    try:
        asyncio.run(scenario())
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_the_writer_sets_its_wake_event_after_each_committed_batch(
    sessions: sessionmaker[Session], address: str
) -> None:
    """``wake_on_commit``: set on the loop that asked, once the rows are durable."""

    async def scenario() -> None:
        writer = InboundWriter(sessions)
        committed = asyncio.Event()
        writer.wake_on_commit(committed)
        try:
            ids = await writer.submit_async([row(address, 1)])
            await asyncio.wait_for(committed.wait(), timeout=5)
            with sessions() as s:
                assert s.get(InboundMail, ids[0]) is not None
        finally:
            await asyncio.to_thread(writer.close)

    asyncio.run(scenario())


def test_an_engine_is_woken_by_mail_another_connection_queued(
    sessions: sessionmaker[Session], engine: Engine, slow: Settings, address: str
) -> None:
    """PostgreSQL: the gateway writer's insert and the pipe ingress's enqueue
    notify; an engine that polls every 30 s files each within seconds."""
    postgresql_only(slow)
    writer = InboundWriter(sessions)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(InboundWorker(sessions, slow).run(stop))
        await in_thread(lambda: listener_pid(engine), "the engine listening")
        # Through the gateway's writer (its own connection, another thread).
        started = time.monotonic()
        (first,) = await asyncio.to_thread(lambda: writer.submit([row(address, 1)]).result(10))
        await in_thread(lambda: filed(sessions, first), "the writer's mail filed")
        # Through the pipe ingress (``replygate ingest``).
        (second,) = await asyncio.to_thread(
            intake.enqueue,
            sessions,
            mail_from="cleo@example.com",
            recipients=[
                Recipient(
                    address=address,
                    kind="reply",
                    route=None,
                    decision=RecipientAccepted(address, "reply"),
                )
            ],
            raw=reply(address, 2),
            message_id="<r2@mail.example.com>",
            peer=None,
            decisions=[],
        )
        await in_thread(lambda: filed(sessions, second), "the piped mail filed")
        assert time.monotonic() - started < SLOW_POLL / 2
        stop.set()
        await asyncio.wait_for(task, timeout=10)

    try:
        asyncio.run(scenario())
    finally:
        writer.close()


def test_the_listener_survives_its_connection_being_terminated(
    sessions: sessionmaker[Session], engine: Engine, slow: Settings, address: str
) -> None:
    """PostgreSQL: the backend of the listening connection is killed; the loss
    is logged once, the engine keeps running, listens again, and mail queued
    meanwhile and after is filed without waiting for the 30 s poll."""
    postgresql_only(slow)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(InboundWorker(sessions, slow).run(stop))
        pid = await in_thread(lambda: listener_pid(engine), "the engine listening")
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        with transaction(sessions) as s:
            meanwhile = enqueue(s, address, 1).id
        again = await in_thread(
            lambda: (p := listener_pid(engine)) != pid and p, "the engine listening again"
        )
        assert again and not task.done()
        await in_thread(lambda: filed(sessions, meanwhile), "mail queued while deaf filed")
        with transaction(sessions) as s:
            after = enqueue(s, address, 2)
            inbound.notify_queued(s)
            after_id = after.id
        await in_thread(lambda: filed(sessions, after_id), "mail queued after filed")
        stop.set()
        await asyncio.wait_for(task, timeout=10)

    with capture_logs() as logs:
        asyncio.run(scenario())
    assert [e["event"] for e in logs if e["event"].startswith("engine.listen")] == [
        "engine.listen_lost",
        "engine.listening_again",
    ]


def test_without_a_listener_the_engine_falls_back_to_polling(
    sessions: sessionmaker[Session],
    slow: Settings,
    address: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A listener that cannot connect (nothing on its port) is logged once and
    retried; the engine neither stops nor waits for it, and polls."""
    closed = f"postgresql://nobody@127.0.0.1:{free_port()}/none"
    monkeypatch.setattr(engine_module, "_listen_url", lambda factory: closed)
    polling = dataclasses.replace(slow, worker_poll_seconds=0.2)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(InboundWorker(sessions, polling).run(stop))
        for n in (1, 2):
            with transaction(sessions) as s:
                queue_id = enqueue(s, address, n).id
            await in_thread(lambda q=queue_id: filed(sessions, q), f"reply {n} filed by a poll")
        assert not task.done()
        stop.set()
        await asyncio.wait_for(task, timeout=10)

    with capture_logs() as logs:
        asyncio.run(scenario())
    lost = [e for e in logs if e["event"] == "engine.listen_lost"]
    assert len(lost) == 1 and lost[0]["fallback"] == "polling"


def test_role_worker_delivers_a_filed_reply_without_waiting_for_the_poll(
    sessions: sessionmaker[Session], slow: Settings, address: str
) -> None:
    """Role "worker": the engine wakes the outbound worker beside it, so the
    notification of a filed reply goes out in seconds although both poll only
    every 30 s."""
    with transaction(sessions) as s:
        enqueue(s, address, 1)

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
        await in_thread(delivered_to_dana, "Dana's notification")
        stop.set()
        await asyncio.wait_for(task, timeout=10)

    asyncio.run(scenario())
    mails = [
        m for m in read_maildir(slow.outbox_maildir) if m["To"].addresses[0].username == "dana"
    ]
    assert len(mails) == 1
    assert "Reply number 1." in mails[0].get_content()
