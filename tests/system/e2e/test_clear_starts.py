"""Clear starts: every reason ``replygate serve`` cannot start is one line on
stderr and exit status 1, never a traceback, never a silent half start.

Each case runs ``python -m replygate serve`` as a process, with a var
directory and ports of its own: an SMTP port someone already listens on (even
with SO_REUSEPORT, as a gateway started with ``--reuse-port`` does), a portal
port in use, an operator (``--metrics``) port in use, a database without the
schema or behind the newest revision.
``--migrate`` brings such a database up to date and starts.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from replygate.config import Settings
from replygate.store.db import make_engine, normalise_url, upgrade
from replygate.store.keyring import Keyring
from tests.conftest import TEST_SECRET
from tests.helpers import free_port, port_open, wait_for

DEADLINE = 60.0
SERVE = [sys.executable, "-m", "replygate", "serve"]
UPGRADE = "run `replygate db upgrade` first (or start with `replygate serve --migrate`)"


def environment(database_url: str, tmp: Path) -> dict[str, str]:
    return {
        **os.environ,
        "REPLYGATE_DATABASE_URL": database_url,
        "REPLYGATE_SECRET_KEY": TEST_SECRET,
        "REPLYGATE_ENCRYPTION_KEYS_FILE": str(Keyring.open_or_create(tmp / "keys").path),
        "REPLYGATE_VAR_DIR": str(tmp / "var"),
        "REPLYGATE_OUTBOX_MAILDIR": str(tmp / "outbox"),
        "REPLYGATE_REPLY_DOMAIN": "reply.test",
    }


def serve_fails(env: dict[str, str], *args: str) -> list[str]:
    """Run ``serve`` until it exits; assert exit status 1, give the non-empty stderr lines."""
    done = subprocess.run(
        [*SERVE, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    return [line for line in done.stderr.splitlines() if line.strip()]


def ports() -> list[str]:
    return ["--smtp", f"127.0.0.1:{free_port()}", "--portal", f"127.0.0.1:{free_port()}"]


@pytest.fixture
def listener() -> Iterator[tuple[socket.socket, int]]:
    """A socket listening on a free port with SO_REUSEPORT, as a running gateway
    started with ``--reuse-port`` holds it."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock, sock.getsockname()[1]


def test_a_busy_smtp_port_is_one_line(
    settings: Settings, tmp_path: Path, listener: tuple[socket.socket, int]
) -> None:
    """Without ``--reuse-port`` a second server never shares the port (and its mail)."""
    _, port = listener
    env = environment(settings.database_url, tmp_path)
    args = ["--smtp", f"127.0.0.1:{port}", "--portal", f"127.0.0.1:{free_port()}"]
    assert serve_fails(env, *args) == [
        f"replygate: cannot listen on 127.0.0.1:{port}: address already in use "
        "(another replygate, or another mail server?)"
    ]


def test_a_busy_smtp_port_alone_for_the_gateway_role(
    settings: Settings, tmp_path: Path, listener: tuple[socket.socket, int]
) -> None:
    _, port = listener
    env = environment(settings.database_url, tmp_path)
    assert serve_fails(env, "--role", "gateway", "--smtp", f"127.0.0.1:{port}") == [
        f"replygate: cannot listen on 127.0.0.1:{port}: address already in use "
        "(another replygate, or another mail server?)"
    ]


def test_reuse_port_shares_the_port_on_purpose(
    settings: Settings, tmp_path: Path, listener: tuple[socket.socket, int]
) -> None:
    """``--reuse-port`` joins a port held with SO_REUSEPORT and runs."""
    _, port = listener
    env = environment(settings.database_url, tmp_path)
    proc = subprocess.Popen(
        [*SERVE, "--role", "gateway", "--reuse-port", "--smtp", f"127.0.0.1:{port}"],
        env={**env, "NOTIFY_SOCKET": ""},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(
            lambda: (
                "gateway.listening" in (proc.stderr.readline() if proc.stderr else "")
                or proc.poll() is not None
            ),
            timeout=DEADLINE,
            what="the second gateway to listen",
        )
        assert proc.poll() is None, "serve --reuse-port exited"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_a_busy_portal_port_is_one_line(
    settings: Settings, tmp_path: Path, listener: tuple[socket.socket, int]
) -> None:
    _, port = listener
    env = environment(settings.database_url, tmp_path)
    args = ["--smtp", f"127.0.0.1:{free_port()}", "--portal", f"127.0.0.1:{port}"]
    assert serve_fails(env, *args) == [
        f"replygate: cannot listen on 127.0.0.1:{port}: address already in use "
        "(another replygate, or another web server?)"
    ]


def test_a_busy_metrics_port_is_one_line(
    settings: Settings, tmp_path: Path, listener: tuple[socket.socket, int]
) -> None:
    """The operator port is bound before anything starts, and nothing else is left behind."""
    _, port = listener
    env = environment(settings.database_url, tmp_path)
    args = [*ports(), "--metrics", f"127.0.0.1:{port}"]
    assert serve_fails(env, *args) == [
        f"replygate: cannot listen on 127.0.0.1:{port}: address already in use "
        "(another replygate, or another exporter?)"
    ]
    assert not (tmp_path / "var" / "metrics" / str(port)).exists()


def test_an_empty_database_says_to_upgrade(tmp_path: Path) -> None:
    env = environment(f"sqlite:///{tmp_path / 'empty.db'}", tmp_path)
    assert serve_fails(env, *ports()) == [
        f"replygate: the database has no replygate schema yet: {UPGRADE}"
    ]


def test_a_schema_behind_says_to_upgrade(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, "0006")
    env = environment(url, tmp_path)
    expected = "replygate: the database schema is at revision 0006, behind "
    (line,) = serve_fails(env, *ports())
    assert line.startswith(expected) and line.endswith(UPGRADE), line


def test_the_worker_says_the_same(tmp_path: Path) -> None:
    env = environment(f"sqlite:///{tmp_path / 'empty.db'}", tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "replygate", "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert done.returncode == 1
    assert [line for line in done.stderr.splitlines() if line.strip()] == [
        f"replygate: the database has no replygate schema yet: {UPGRADE}"
    ]


@pytest.mark.skipif(not os.environ.get("REPLYGATE_TEST_DATABASE_URL"), reason="needs PostgreSQL")
def test_an_empty_postgresql_database_says_to_upgrade(tmp_path: Path) -> None:
    admin = make_engine(os.environ["REPLYGATE_TEST_DATABASE_URL"]).execution_options(
        isolation_level="AUTOCOMMIT"
    )
    name = f"replygate_empty_{os.getpid()}_{secrets.token_hex(3)}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        base = make_url(normalise_url(os.environ["REPLYGATE_TEST_DATABASE_URL"]))
        url = base.set(database=name).render_as_string(hide_password=False)
        assert serve_fails(environment(url, tmp_path), *ports()) == [
            f"replygate: the database has no replygate schema yet: {UPGRADE}"
        ]
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_migrate_brings_the_schema_up_and_starts(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    env = environment(url, tmp_path)
    smtp = free_port()
    proc = subprocess.Popen(
        [
            *SERVE,
            "--migrate",
            "--smtp",
            f"127.0.0.1:{smtp}",
            "--portal",
            f"127.0.0.1:{free_port()}",
        ],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(
            lambda: port_open("127.0.0.1", smtp) or proc.poll() is not None,
            timeout=DEADLINE,
            what="serve --migrate to listen",
        )
        assert proc.poll() is None, "serve --migrate exited"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            assert proc.wait(20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
