"""Two gateway processes on one port and two workers on one PostgreSQL.

2,000 replies over 200 threads, each thread's replies sent one after the
other (the next only once the previous got 250), threads interleaved. Every
accepted reply is filed exactly once, each thread's replies are filed in the
order they arrived, nothing deadlocks, and a worker killed with SIGKILL
midway loses nothing (its claims are taken over when their lease runs out).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.store.models import Message
from tests.helpers import free_port, wait_for
from tests.system.scale.conftest import (
    Processes,
    count_status,
    needs_postgresql,
    new_message_id,
    reply,
    seed_threads,
    send_one,
)

THREADS = 200
PER_THREAD = 10
SENDERS = 20


@needs_postgresql
def test_two_gateways_two_workers_file_every_reply_once_in_order(
    settings: Settings, sessions: sessionmaker[Session], processes: Processes
) -> None:
    threads = seed_threads(sessions, settings, THREADS)
    port = free_port()
    processes.gateway(port, reuse_port=True)
    processes.gateway(port, reuse_port=True)  # the same port: SO_REUSEPORT
    doomed = processes.worker()
    processes.worker()

    sent: dict[str, tuple[int, int]] = {}  # Message-ID -> (thread, k), accepted only

    async def sender(mine: list[int]) -> None:
        for k in range(PER_THREAD):
            for i in mine:
                message_id = new_message_id()
                raw = reply(threads.addresses[i], f"Reply {k} to thread {i}.", message_id)
                while (code := await send_one(port, threads.addresses[i], raw)) != 250:
                    assert code is None or code // 100 == 4, code  # only retry what may retry
                sent[message_id] = (threads.ids[i], k)

    async def send_all() -> None:
        groups = [list(range(s, THREADS, SENDERS)) for s in range(SENDERS)]
        await asyncio.gather(*(sender(g) for g in groups))

    started = time.monotonic()

    async def kill_midway() -> None:
        """SIGKILL one worker once a few hundred replies are filed."""
        await asyncio.to_thread(
            wait_for,
            lambda: count_status(sessions).get("filed", 0) >= 300,
            timeout=120,
            what="300 replies filed",
        )
        Processes.kill(doomed)

    async def run() -> None:
        killer = asyncio.create_task(kill_midway())
        await send_all()
        await killer

    asyncio.run(run())
    assert len(sent) == THREADS * PER_THREAD
    processes.worker()  # a replacement, as a supervisor would start

    def all_final() -> bool:
        counts = count_status(sessions)
        return sum(counts.values()) >= len(sent) and not (
            counts.get("queued") or counts.get("processing")
        )

    wait_for(all_final, timeout=150, interval=0.2, what="every reply processed")
    assert time.monotonic() - started < 170

    with sessions() as session:
        messages = session.execute(
            select(Message.email_message_id, Message.thread_id, Message.id).where(
                Message.source == "email"
            )
        ).all()
    filed: dict[str, int] = defaultdict(int)
    order: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for message_id, thread_id, ident in messages:
        filed[message_id] += 1
        order[thread_id].append((ident, message_id))
    assert set(filed) == set(sent), "every accepted reply is filed"
    assert all(n == 1 for n in filed.values()), "and filed once"
    for thread_id, rows in order.items():
        ks = [sent[mid][1] for _, mid in sorted(rows)]
        assert ks == sorted(ks), f"thread {thread_id} filed out of order: {ks}"
    assert set(count_status(sessions)) == {"filed"}
