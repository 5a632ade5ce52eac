"""SIGTERM under load: ``serve`` stops taking mail but loses none.

While senders keep the gateway busy and one client is in the middle of its
DATA, ``serve`` gets SIGTERM. New sessions hear ``421 4.3.2``; the message
in DATA is read to its end, stored and answered 250 (then 421); the writer
commits what it holds; the process exits by itself within 10 s, status 0.
Started again, it files every reply it answered 250 to, once.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import socket
import threading
import time

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.store.models import InboundMail
from tests.helpers import free_port, port_open, wait_for
from tests.system.chaos.conftest import LoggedProcesses, Senders, run_in_thread
from tests.system.chaos.test_database_outage import _filed, _statuses
from tests.system.scale.conftest import CLIENT, new_message_id, reply, seed_threads

THREADS = 20
SENDERS = 8
EXIT_SECONDS = 10.0
FILED_SECONDS = 15.0


class SlowClient:
    """A client that stops in the middle of its DATA until told to finish."""

    def __init__(self, port: int, address: str, raw: bytes) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.file = self.sock.makefile("rb")
        self.raw = raw
        self.line()  # the greeting
        for command in ("EHLO mx.client.test", f"MAIL FROM:<{CLIENT}>", f"RCPT TO:<{address}>"):
            self.sock.sendall(command.encode() + b"\r\n")
            reply = self.reply()
            assert reply.startswith("250"), reply
        self.sock.sendall(b"DATA\r\n")
        assert self.reply().startswith("354")
        self.sock.sendall(raw[: len(raw) // 2])

    def line(self) -> str:
        return self.file.readline().decode()

    def reply(self) -> str:
        """One whole reply (the last line of a multi-line one)."""
        while True:
            line = self.line()
            if line[3:4] != "-":
                return line.rstrip("\r\n")

    def finish(self) -> tuple[str, str]:
        """Send the rest and the end of data: the DATA reply, and what follows it."""
        self.sock.sendall(self.raw[len(self.raw) // 2 :] + b"\r\n.\r\n")
        answer = self.reply()
        after = self.reply()
        self.sock.close()
        return answer, after


def _serve(processes: LoggedProcesses) -> tuple[int, int]:
    port = free_port()
    proc = processes.start(
        "serve", "--smtp", f"127.0.0.1:{port}", "--portal", f"127.0.0.1:{free_port()}"
    )
    wait_for(lambda: port_open("127.0.0.1", port), timeout=30, what="serve to listen")
    return port, proc.pid


def _queued(sessions: sessionmaker[Session]) -> set[str | None]:
    with sessions() as session:
        return set(session.scalars(select(InboundMail.message_id)))


def test_sigterm_under_load_finishes_data_and_loses_nothing(
    settings: Settings, sessions: sessionmaker[Session], processes: LoggedProcesses
) -> None:
    threads = seed_threads(sessions, settings, THREADS)
    port, _ = _serve(processes)
    serve = processes.running[-1]
    senders = Senders(port)
    stopping = threading.Event()
    counter = itertools.count()

    async def load() -> None:
        async def sender() -> None:
            while not stopping.is_set():
                i = next(counter)
                address = threads.addresses[i % THREADS]
                mid = new_message_id()
                answer = await senders.send(address, reply(address, f"Reply {i}.", mid), mid)
                if answer.code is None and serve.poll() is not None:
                    return  # the process is gone: nothing more to hear

        await asyncio.gather(*(sender() for _ in range(SENDERS)))

    join = run_in_thread(load)
    wait_for(lambda: len(senders.acked()) >= 40, timeout=60, what="mail accepted")
    slow_id = new_message_id()
    slow = SlowClient(port, threads.addresses[0], reply(threads.addresses[0], "Slow.", slow_id))
    term = time.monotonic()
    serve.send_signal(signal.SIGTERM)
    wait_for(
        lambda: any(a.code == 421 and a.started > term for a in senders.answers),
        timeout=EXIT_SECONDS,
        what="a new session to hear 421",
    )
    answer, after = slow.finish()
    serve.wait(EXIT_SECONDS)
    exited = time.monotonic() - term
    stopping.set()
    join()

    assert answer.startswith("250 "), (answer, processes.logs())
    assert after.startswith("421 4.3.2 "), after
    assert serve.returncode == 0, processes.logs()
    assert exited < EXIT_SECONDS
    refused = [a for a in senders.answers if a.code not in (250, None)]
    assert refused and all(a.code == 421 and a.text.startswith("4.3.2 ") for a in refused), refused[
        :5
    ]
    acked = senders.acked() | {slow_id}
    assert acked <= _queued(sessions), "a 250 without a commit"

    _serve(processes)
    wait_for(
        lambda: acked <= set(_filed(sessions)) and set(_statuses(sessions)) == {"filed"},
        timeout=FILED_SECONDS,
        what="every reply answered 250 to be filed after the restart",
    )
    filed = _filed(sessions)
    assert set(filed.values()) == {1}, "a reply filed twice"
    print(
        f"exited {exited:.2f}s after SIGTERM; {len(acked)} accepted, "
        f"{len(refused)} sessions told 421 4.3.2"
    )
