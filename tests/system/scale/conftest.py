"""Helpers for multi-process tests: a seeded organisation with many threads,
``replygate`` gateway and worker processes, and concurrent senders."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from email.utils import make_msgid
from pathlib import Path

import aiosmtplib
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.mail import reply_token
from replygate.store import directory, tokens
from replygate.store.db import transaction
from replygate.store.models import InboundMail, Thread, ThreadParticipant, utcnow
from tests.helpers import port_open, wait_for

CLIENT = "cleo@client.test"
REPLYGATE = str(Path(sys.executable).with_name("replygate"))

needs_postgresql = pytest.mark.skipif(
    not os.environ.get("REPLYGATE_TEST_DATABASE_URL"),
    reason="several processes sharing one database is PostgreSQL's job; this runs in the "
    "PostgreSQL run of the suite (make test, or REPLYGATE_TEST_DATABASE_URL=...)",
)


@dataclass
class Threads:
    """Threads between one staff member and one client, a reply address each."""

    ids: list[int]
    addresses: list[str]


def seed_threads(sessions: sessionmaker[Session], settings: Settings, count: int) -> Threads:
    now = utcnow()
    ids, addresses = [], []
    with transaction(sessions) as session:
        directory.organisation(session).convenience_mode = True
        staff = directory.add_user(session, "dr.hale@clinic.test", "Dr Hale", "staff")
        client = directory.add_user(session, CLIENT, "Cleo Park", "client")
        for i in range(count):
            thread = Thread(subject=f"Appointment {i}", created_by_id=staff.id)
            session.add(thread)
            session.flush()
            session.add_all(
                [
                    ThreadParticipant(thread_id=thread.id, user_id=staff.id),
                    ThreadParticipant(thread_id=thread.id, user_id=client.id),
                ]
            )
            token = reply_token.new_token(settings.secret_key)
            tokens.add(
                session, token, thread.id, client.id, now=now, expires_at=now + timedelta(days=9)
            )
            ids.append(thread.id)
            addresses.append(reply_token.reply_address(token, settings.reply_domain))
    return Threads(ids, addresses)


def reply(address: str, body: str, message_id: str) -> bytes:
    return (
        f"From: Cleo Park <{CLIENT}>\r\nTo: {address}\r\nSubject: Re: Appointment\r\n"
        f"Message-ID: {message_id}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        f"{body}\r\n"
    ).encode()


def new_message_id() -> str:
    return make_msgid(domain="client.test")


@dataclass
class Processes:
    """``replygate`` child processes sharing the test's database."""

    settings: Settings
    env: dict[str, str]
    running: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [REPLYGATE, *args],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.running.append(proc)
        return proc

    def gateway(self, port: int, *, reuse_port: bool = False) -> subprocess.Popen[bytes]:
        """A gateway process; gateways sharing one port each need ``reuse_port``."""
        args = ["serve", "--role", "gateway", "--smtp", f"127.0.0.1:{port}"]
        proc = self.start(*args, *(["--reuse-port"] if reuse_port else []))
        wait_for(lambda: port_open("127.0.0.1", port), timeout=30, what="the gateway")
        return proc

    def worker(self) -> subprocess.Popen[bytes]:
        return self.start("worker")

    @staticmethod
    def kill(proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL: no clean shutdown, no chance to finish what it holds."""
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop_all(self) -> None:
        for proc in self.running:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.running:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def processes(settings: Settings, database_url: str, tmp_path: Path) -> Iterator[Processes]:
    env = dict(os.environ)
    env.update(
        REPLYGATE_DATABASE_URL=database_url,
        REPLYGATE_SECRET_KEY=settings.secret_key,
        REPLYGATE_ENCRYPTION_KEYS_FILE=str(settings.encryption_keys_file),
        REPLYGATE_REPLY_DOMAIN=settings.reply_domain,
        REPLYGATE_VAR_DIR=str(settings.var_dir),
        REPLYGATE_PORTAL_URL=settings.portal_url,
        REPLYGATE_WORKER_POLL_SECONDS="0.05",
        REPLYGATE_WORKER_LEASE_SECONDS="3",
        REPLYGATE_LOG_JSON="1",
    )
    procs = Processes(settings, env)
    yield procs
    procs.stop_all()


async def send_one(port: int, address: str, raw: bytes) -> int | None:
    """One message over a new connection; the DATA reply code, or None if the
    connection broke before a reply (the sender cannot know whether it was kept)."""
    try:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=30) as smtp:
            errors, _ = await smtp.sendmail(CLIENT, [address], raw)
            return 250 if not errors else None
    except aiosmtplib.SMTPResponseException as exc:
        return exc.code
    except (TimeoutError, aiosmtplib.SMTPException, OSError):
        return None


def count_status(sessions: sessionmaker[Session]) -> dict[str, int]:
    with sessions() as session:
        rows = session.execute(
            select(InboundMail.status, func.count()).group_by(InboundMail.status)
        ).all()
    return {status: int(n) for status, n in rows}
