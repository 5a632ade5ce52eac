"""Claims die with their worker: a worker killed with SIGKILL under load leaves
no mail ``processing`` for its lease (300 s here, the default).

``serve`` (gateway and worker in one process) is killed mid-stream and
started again; every reply it answered 250 to is filed within 15 s of the
restart, once, and nothing is left ``processing`` (SQLite; and PostgreSQL,
where a second worker process runs beside it throughout). PostgreSQL also: a
gateway and two workers; one worker is killed while it holds a claim, and
the other takes back its claims within seconds, files every reply once, and leaves nothing
``processing``.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.store.models import InboundMail, Message
from tests.helpers import free_port, owners_alive, port_open, wait_for
from tests.system.scale.conftest import (
    Processes,
    needs_postgresql,
    new_message_id,
    reply,
    seed_threads,
    send_one,
)

THREADS = 40
PER_THREAD = 5
SENDERS = 16
KILL_AFTER = 80
TAKE_OVER_SECONDS = 15.0

Item = tuple[str, bytes, str]


def _todo(sessions: sessionmaker[Session], settings: Settings) -> list[Item]:
    threads = seed_threads(sessions, settings, THREADS)
    return [
        (threads.addresses[i], reply(threads.addresses[i], f"Reply {k} to {i}.", mid), mid)
        for k in range(PER_THREAD)
        for i in range(THREADS)
        for mid in [new_message_id()]
    ]


def _send_until_killed(
    port: int, todo: list[Item], acked: set[str], kill: Callable[[], None]
) -> None:
    """Send concurrently; after ``KILL_AFTER`` replies got 250, call ``kill`` once."""

    async def run() -> None:
        killed = asyncio.Event()
        queue: asyncio.Queue[Item] = asyncio.Queue()
        for item in todo:
            queue.put_nowait(item)

        async def sender() -> None:
            while not queue.empty() and not killed.is_set():
                address, raw, mid = queue.get_nowait()
                code = await send_one(port, address, raw)
                if code == 250:
                    acked.add(mid)
                elif not killed.is_set():
                    queue.put_nowait((address, raw, mid))
                if len(acked) >= KILL_AFTER and not killed.is_set():
                    killed.set()
                    kill()

        await asyncio.gather(*(sender() for _ in range(SENDERS)))

    asyncio.run(run())


def _send_rest(port: int, todo: list[Item], acked: set[str]) -> None:
    async def run() -> None:
        sem = asyncio.Semaphore(SENDERS)

        async def one(address: str, raw: bytes, mid: str) -> None:
            async with sem:
                while await send_one(port, address, raw) != 250:
                    pass
                acked.add(mid)

        await asyncio.gather(*(one(*t) for t in todo if t[2] not in acked))

    asyncio.run(run())


def _filed(sessions: sessionmaker[Session]) -> Counter[str | None]:
    with sessions() as session:
        return Counter(
            session.scalars(select(Message.email_message_id).where(Message.source == "email"))
        )


def _statuses(sessions: sessionmaker[Session]) -> Counter[str]:
    with sessions() as session:
        return Counter(session.scalars(select(InboundMail.status)))


def _taken_back(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return sum(
            1
            for mail in session.scalars(select(InboundMail))
            if any(d.get("stage") == "taken_back" for d in mail.decisions or [])
        )


def _serve(processes: Processes) -> int:
    port = free_port()
    processes.start("serve", "--smtp", f"127.0.0.1:{port}", "--portal", f"127.0.0.1:{free_port()}")
    wait_for(lambda: port_open("127.0.0.1", port), timeout=30, what="serve to listen")
    return port


def _check_all_filed_once(sessions: sessionmaker[Session], todo: list[Item]) -> None:
    filed = _filed(sessions)
    assert set(filed) == {mid for _, _, mid in todo}
    assert set(filed.values()) == {1}, "a reply filed twice"
    assert set(_statuses(sessions)) == {"filed"}, _statuses(sessions)


def test_serve_killed_under_load_files_every_acknowledged_reply_after_a_restart(
    settings: Settings, sessions: sessionmaker[Session], processes: Processes
) -> None:
    processes.env["REPLYGATE_WORKER_LEASE_SECONDS"] = "300"
    todo = _todo(sessions, settings)
    port = _serve(processes)
    serve = processes.running[-1]
    if not processes.settings.is_sqlite:  # two workers: serve's, and one of its own
        processes.worker()
    acked: set[str] = set()
    _send_until_killed(port, todo, acked, lambda: Processes.kill(serve))
    assert serve.poll() is not None, "serve was killed under load"
    before = set(acked)
    left = _statuses(sessions)

    port = _serve(processes)
    restarted = time.monotonic()
    wait_for(
        lambda: before <= set(_filed(sessions)),
        timeout=TAKE_OVER_SECONDS,
        what="every reply answered 250 before the kill to be filed",
    )
    print(
        f"left by the kill: {dict(left)}; filed {len(before)} replies "
        f"{time.monotonic() - restarted:.1f}s after the restart, "
        f"{_taken_back(sessions)} claims taken back"
    )
    _send_rest(port, todo, acked)
    wait_for(
        lambda: len(_filed(sessions)) == len(todo) and set(_statuses(sessions)) == {"filed"},
        timeout=TAKE_OVER_SECONDS,
        what="every reply filed",
    )
    _check_all_filed_once(sessions, todo)


@needs_postgresql
def test_a_worker_killed_under_load_leaves_its_claims_to_the_other(
    settings: Settings, sessions: sessionmaker[Session], processes: Processes
) -> None:
    """The doomed worker is killed while it holds a claim (its id on a claim names
    its pid), while the senders keep the gateway busy.

    Both workers run from the start. So that the doomed one surely claims, the
    other is paused (SIGSTOP) until the kill; the doomed one is paused too once
    it is seen holding a claim, so the claim is still held when SIGKILL lands.
    """
    processes.env["REPLYGATE_WORKER_LEASE_SECONDS"] = "300"
    todo = _todo(sessions, settings)
    port = free_port()
    processes.gateway(port)
    doomed = processes.worker()
    survivor = processes.worker()
    wait_for(lambda: owners_alive(sessions) == 2, timeout=60, what="both workers to start")
    survivor.send_signal(signal.SIGSTOP)
    killed_at: list[float] = []
    held: list[int] = []

    def holds_a_claim() -> bool:
        with sessions() as session:
            held[:] = session.scalars(
                select(InboundMail.id).where(
                    InboundMail.status == "processing",
                    InboundMail.claimed_by.like(f"%:{doomed.pid}:%"),
                )
            ).all()
        return bool(held)

    def caught_holding() -> bool:
        if not holds_a_claim():
            return False
        doomed.send_signal(signal.SIGSTOP)
        if holds_a_claim():
            return True
        doomed.send_signal(signal.SIGCONT)  # it committed in between: try again
        return False

    def assassin() -> None:
        try:
            wait_for(
                caught_holding, timeout=120, interval=0.005, what="a claim of the doomed worker"
            )
            Processes.kill(doomed)
            killed_at.append(time.monotonic())
        finally:
            survivor.send_signal(signal.SIGCONT)

    killer = threading.Thread(target=assassin, daemon=True)
    killer.start()
    acked: set[str] = set()
    _send_rest(port, todo, acked)
    killer.join(120)
    assert doomed.poll() is not None and killed_at, "a worker was killed under load"
    sent = time.monotonic()
    wait_for(
        lambda: len(_filed(sessions)) == len(todo) and set(_statuses(sessions)) == {"filed"},
        timeout=TAKE_OVER_SECONDS,
        what="every reply filed by the surviving worker",
    )
    print(
        f"all filed {time.monotonic() - sent:.1f}s after the last 250, "
        f"{time.monotonic() - killed_at[0]:.1f}s after the kill; "
        f"{_taken_back(sessions)} claims taken back"
    )
    _check_all_filed_once(sessions, todo)
