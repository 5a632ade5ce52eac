"""The gateway killed with SIGKILL under load loses nothing it answered 250 to.

Concurrent senders keep the gateway busy; it is killed mid-stream. Every
message that got 250 is in the queue afterwards. The senders then do what an
MTA does (send again whatever got no 250) to a restarted gateway, and the
engine files every message exactly once: a message committed just before the
kill, whose 250 never left, is stored twice and filed once.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.store.models import InboundMail, Message
from replygate.workers.inbound import InboundWorker
from tests.helpers import free_port
from tests.system.scale.conftest import Processes, new_message_id, reply, seed_threads, send_one

THREADS = 60
PER_THREAD = 6
SENDERS = 24
KILL_AFTER = 120


def test_messages_answered_250_survive_a_sigkill_and_are_filed_once(
    settings: Settings, sessions: sessionmaker[Session], processes: Processes
) -> None:
    threads = seed_threads(sessions, settings, THREADS)
    todo = [
        (threads.addresses[i], reply(threads.addresses[i], f"Reply {k} to {i}.", mid), mid)
        for k in range(PER_THREAD)
        for i in range(THREADS)
        for mid in [new_message_id()]
    ]
    port = free_port()
    gateway = processes.gateway(port)
    acked: set[str] = set()

    async def first_pass() -> None:
        killed_now = asyncio.Event()
        queue: asyncio.Queue[tuple[str, bytes, str]] = asyncio.Queue()
        for item in todo:
            queue.put_nowait(item)

        async def sender() -> None:
            while not killed_now.is_set() and not queue.empty():
                address, raw, mid = queue.get_nowait()
                if await send_one(port, address, raw) == 250:
                    acked.add(mid)
                    if len(acked) >= KILL_AFTER and not killed_now.is_set():
                        Processes.kill(gateway)  # mid-stream: other sessions are in DATA
                        killed_now.set()

        await asyncio.gather(*(sender() for _ in range(SENDERS)))

    asyncio.run(first_pass())
    assert gateway.poll() is not None, "the gateway was killed under load"
    assert len(acked) < len(todo), "the kill came before the end"

    with sessions() as session:
        stored = set(session.scalars(select(InboundMail.message_id)))
    assert acked <= stored, f"lost after 250: {sorted(acked - stored)[:5]}"

    # The sending MTAs retry what got no 250, against a restarted gateway.
    port = free_port()
    processes.gateway(port)

    async def retry() -> None:
        pending = [t for t in todo if t[2] not in acked]

        async def one(address: str, raw: bytes, mid: str) -> None:
            while await send_one(port, address, raw) != 250:
                pass
            acked.add(mid)

        sem = asyncio.Semaphore(SENDERS)

        async def bounded(item: tuple[str, bytes, str]) -> None:
            async with sem:
                await one(*item)

        await asyncio.gather(*(bounded(t) for t in pending))

    asyncio.run(retry())
    assert len(acked) == len(todo)

    InboundWorker(sessions, settings).drain()
    with sessions() as session:
        statuses = Counter(session.scalars(select(InboundMail.status)))
        filed = Counter(
            session.scalars(select(Message.email_message_id).where(Message.source == "email"))
        )
    assert set(statuses) == {"filed"}, statuses
    assert set(filed) == {mid for _, _, mid in todo}
    assert set(filed.values()) == {1}
