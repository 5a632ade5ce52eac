"""The operator port over a real socket and real databases.

- the queues' depth and age come from the database at each scrape;
- what several processes record in one multiprocess directory is summed;
- ``/readyz`` turns unready when the database goes away and ready again when
  it is back: an SQLite file moved away (a pooled connection would still
  answer), a PostgreSQL server of the test's own stopped with ``pg_ctl``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client import values
from sqlalchemy.orm import Session, sessionmaker

from replygate import metrics
from replygate.monitoring.server import OperatorServer
from replygate.store.db import (
    database_problem,
    make_engine,
    session_factory,
    transaction,
    upgrade,
)
from replygate.store.models import InboundMail, OutboxMessage, utcnow
from tests.helpers import free_port, http_get, sample, scrape, wait_for


@pytest.fixture
def metrics_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Metrics on in this process, recording under a directory of the test's; put back after."""
    directory = tmp_path / "metrics"
    # Set through monkeypatch first, so that what enable() writes is undone after the
    # test (deleting an absent variable records nothing to put back): later tests in
    # this process must not record into a directory of this one's.
    monkeypatch.setenv(metrics.ENV, str(directory))
    monkeypatch.setattr(metrics, "_current", None)
    monkeypatch.setattr(values, "ValueClass", values.ValueClass)
    metrics.enable(directory, owner=True)
    yield directory


def serve(factory: sessionmaker[Session], directory: Path) -> OperatorServer:
    server = OperatorServer(
        "127.0.0.1",
        0,
        directory=directory,
        factory=factory,
        checks={"database": lambda: database_problem(factory)},
    )
    server.start()
    return server


def test_queues_are_read_from_the_database_and_processes_are_summed(
    sessions: sessionmaker[Session], metrics_dir: Path
) -> None:
    now = utcnow()
    with transaction(sessions) as session:
        session.add(
            InboundMail(
                mail_from="cleo@example.com",
                rcpt="reply+x@reply.test",
                size=3,
                raw=b"x\r\n",
                received_at=now - timedelta(seconds=120),
            )
        )
        session.add(
            OutboxMessage(
                kind="content",
                recipient="dana@staff.test",
                envelope_from="bounces@reply.test",
                header_message_id="<n1@reply.test>",
                raw=b"x",
                created_at=now - timedelta(seconds=300),
            )
        )
    found = metrics.instruments()
    assert found is not None
    found.delivery_attempts.labels("sent").inc()
    # Another process started with this one's directory (as a child inherits it).
    subprocess.run(
        [
            sys.executable,
            "-c",
            "from replygate import metrics; "
            "metrics.join_inherited().delivery_attempts.labels('sent').inc(3)",
        ],
        check=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    server = serve(sessions, metrics_dir)
    try:
        samples = scrape(server.port)
        assert sample(samples, "replygate_delivery_attempts_total", outcome="sent") == 4
        assert sample(samples, "replygate_inbound_queue", status="queued") == 1
        assert sample(samples, "replygate_inbound_queue", status="failed") == 0
        assert 120 <= sample(samples, "replygate_inbound_oldest_seconds", status="queued") < 600
        assert sample(samples, "replygate_outbox", status="queued") == 1
        assert 300 <= sample(samples, "replygate_outbox_oldest_seconds", status="queued") < 900
        assert sample(samples, "replygate_backlog_up") == 1
        assert http_get(server.port, "/healthz") == (200, "ok\n")
        assert http_get(server.port, "/readyz") == (200, "ready\ndatabase: ok\n")
        assert http_get(server.port, "/nothing")[0] == 404
    finally:
        server.stop()


def test_readyz_is_unready_while_the_sqlite_file_is_away(tmp_path: Path, metrics_dir: Path) -> None:
    path = tmp_path / "db" / "replygate.db"
    path.parent.mkdir()
    upgrade(f"sqlite:///{path}")
    engine = make_engine(f"sqlite:///{path}")
    factory = session_factory(engine)
    server = serve(factory, metrics_dir)
    try:
        with factory() as session:  # a pooled connection now holds the file open
            session.get(InboundMail, 1)
        assert http_get(server.port, "/readyz")[0] == 200
        shutil.move(path, tmp_path / "moved.db")
        status, body = http_get(server.port, "/readyz")
        assert status == 503
        assert body.startswith("not ready\ndatabase: OperationalError: "), body
        # A new connection finds no file and SQLite makes an empty one: not ours either.
        assert sample(scrape(server.port), "replygate_backlog_up") == 0
        assert http_get(server.port, "/readyz")[0] == 503
        shutil.move(tmp_path / "moved.db", path)
        assert http_get(server.port, "/readyz")[0] == 200
    finally:
        server.stop()
        engine.dispose()


class PrivatePostgres:
    """A PostgreSQL server of the test's own (``initdb``, ``pg_ctl``) on a free port;
    as root, its commands run as the ``postgres`` user, which ``initdb`` requires."""

    def __init__(self) -> None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        assert found, "no pg_ctl under /usr/lib/postgresql/*/bin: install postgresql"
        self.bindir = found[-1].parent
        self.root = Path(tempfile.mkdtemp(prefix="replygate-pg-"))
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self.prefix = ["runuser", "-u", "postgres", "--"]
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self._run("initdb", "-D", str(self.root / "data"), "-U", "postgres", "--auth=trust")

    def _run(self, program: str, *args: str) -> None:
        done = subprocess.run(
            [*self.prefix, str(self.bindir / program), *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, f"{program} {args}: {done.stdout}{done.stderr}"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        data, log = str(self.root / "data"), str(self.root / "log")
        self._run("pg_ctl", "-D", data, "-l", log, "-o", options, "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        if (self.root / "data" / "postmaster.pid").exists():
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    server.start()
    try:
        yield server
    finally:
        server.destroy()


def test_readyz_is_unready_while_postgresql_is_stopped(
    private_postgres: PrivatePostgres, metrics_dir: Path
) -> None:
    upgrade(private_postgres.url)
    engine = make_engine(private_postgres.url)
    factory = session_factory(engine)
    server = serve(factory, metrics_dir)
    try:
        assert http_get(server.port, "/readyz")[0] == 200
        private_postgres.stop()
        status, body = http_get(server.port, "/readyz")
        assert status == 503
        assert body.startswith("not ready\ndatabase: OperationalError: "), body
        assert sample(scrape(server.port), "replygate_backlog_up") == 0
        private_postgres.start()
        wait_for(lambda: http_get(server.port, "/readyz")[0] == 200, what="ready again")
    finally:
        server.stop()
        engine.dispose()
