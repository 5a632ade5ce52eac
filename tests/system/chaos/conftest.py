"""Fixtures for chaos tests: a private PostgreSQL server, ``replygate`` processes
whose logs are kept for the failure message, and senders that record every reply."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiosmtplib
import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings, load_settings
from replygate.store import keyring
from replygate.store.db import make_engine, session_factory, upgrade
from replygate.store.keyring import Keyring
from tests.conftest import TEST_SECRET
from tests.system.chaos.cluster import Cluster
from tests.system.scale.conftest import CLIENT, REPLYGATE, Processes


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """A PostgreSQL server of this test's own, started."""
    server = Cluster.create()
    try:
        server.start()
        yield server
    finally:
        server.destroy()


@dataclass
class PrivateDatabase:
    """The replygate schema on the private server, and settings pointing at it."""

    url: str
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]


@pytest.fixture
def private_db(cluster: Cluster, tmp_path: Path) -> Iterator[PrivateDatabase]:
    upgrade(cluster.url)
    settings = load_settings(
        env={},
        overrides={
            "var_dir": tmp_path / "var",
            "database_url": cluster.url,
            "secret_key": TEST_SECRET,
            "encryption_keys_file": keyring.install(Keyring.create(tmp_path / "keys")).path,
            "reply_domain": "reply.test",
            "portal_url": "http://portal.test",
        },
    )
    engine = make_engine(cluster.url)
    try:
        yield PrivateDatabase(cluster.url, settings, engine, session_factory(engine))
    finally:
        engine.dispose()


def process_env(settings: Settings, database_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        REPLYGATE_DATABASE_URL=database_url,
        REPLYGATE_SECRET_KEY=settings.secret_key,
        REPLYGATE_ENCRYPTION_KEYS_FILE=str(settings.encryption_keys_file),
        REPLYGATE_REPLY_DOMAIN=settings.reply_domain,
        REPLYGATE_VAR_DIR=str(settings.var_dir),
        REPLYGATE_PORTAL_URL=settings.portal_url,
        REPLYGATE_WORKER_POLL_SECONDS="0.2",
        REPLYGATE_WORKER_LEASE_SECONDS="300",
        REPLYGATE_LOG_JSON="1",
        # Load tests reply to a few threads many times a minute: not a mail loop.
        REPLYGATE_BREAKER_MAX_REPLIES="1000000",
    )
    return env


@dataclass
class LoggedProcesses(Processes):
    """``Processes`` whose output goes to a file each, shown by ``logs()``."""

    log_dir: Path = Path(".")

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        path = self.log_dir / f"{len(self.running)}-{args[0]}.log"
        with path.open("wb") as out:
            proc = subprocess.Popen(
                [REPLYGATE, *args],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.running.append(proc)
        return proc

    def lines_with(self, text: str) -> list[str]:
        """Every line of every process's output that contains ``text``."""
        return [
            line
            for path in sorted(self.log_dir.glob("*.log"))
            for line in path.read_text(errors="replace").splitlines()
            if text in line
        ]

    def logs(self, tail: int = 40) -> str:
        shown = []
        for path in sorted(self.log_dir.glob("*.log")):
            lines = path.read_text(errors="replace").splitlines()[-tail:]
            shown.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(shown)


@pytest.fixture
def private_processes(private_db: PrivateDatabase, tmp_path: Path) -> Iterator[LoggedProcesses]:
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    env = process_env(private_db.settings, private_db.url)
    procs = LoggedProcesses(private_db.settings, env, log_dir=log_dir)
    yield procs
    procs.stop_all()


@dataclass
class Answer:
    """What one message heard: the DATA (or earlier) reply, or None for a broken connection."""

    message_id: str
    started: float
    ended: float
    code: int | None
    text: str


@dataclass
class Senders:
    """Concurrent senders, each one message per connection, recording every answer."""

    port: int
    answers: list[Answer] = field(default_factory=list)

    async def send(self, address: str, raw: bytes, message_id: str) -> Answer:
        started = time.monotonic()
        code: int | None
        try:
            async with aiosmtplib.SMTP(hostname="127.0.0.1", port=self.port, timeout=30) as smtp:
                await smtp.sendmail(CLIENT, [address], raw)
                code, text = 250, ""
        except aiosmtplib.SMTPRecipientsRefused as exc:
            code, text = exc.recipients[0].code, exc.recipients[0].message
        except aiosmtplib.SMTPResponseException as exc:
            code, text = exc.code, exc.message
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            code, text = None, repr(exc)
        answer = Answer(message_id, started, time.monotonic(), code, text)
        self.answers.append(answer)
        return answer

    def acked(self) -> set[str]:
        return {a.message_id for a in self.answers if a.code == 250}


def run_in_thread(coro_factory):  # type: ignore[no-untyped-def]
    """Run an async sender loop in a thread of its own while the test drives the chaos."""
    import threading

    result: dict[str, BaseException] = {}

    def main() -> None:
        try:
            asyncio.run(coro_factory())
        except BaseException as exc:  # reported by join
            result["error"] = exc

    thread = threading.Thread(target=main, daemon=True)
    thread.start()

    def join(timeout: float = 120) -> None:
        thread.join(timeout)
        assert not thread.is_alive(), "the senders did not finish"
        if "error" in result:
            raise result["error"]

    return join


@pytest.fixture
def processes(settings: Settings, database_url: str, tmp_path: Path) -> Iterator[LoggedProcesses]:
    """``replygate`` processes on the suite's database (SQLite, or the shared PostgreSQL)."""
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    procs = LoggedProcesses(settings, process_env(settings, database_url), log_dir=log_dir)
    yield procs
    procs.stop_all()
