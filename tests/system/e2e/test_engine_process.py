"""``replygate serve`` on a machine of two cores runs the engine and outbound worker
in a child process of its own: a reply sent to the gateway is filed and its
notification delivered by the child, Ctrl-C stops both processes cleanly, and
an engine process that dies stops the service with one line and exit status 1
(for the supervisor to restart it whole). ``--one-process`` keeps one process.
"""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import subprocess
import sys
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import select

from replygate.config import Settings
from replygate.core.messaging import Messaging
from replygate.store import directory
from replygate.store.db import make_engine, session_factory, transaction
from replygate.store.models import InboundMail, ReplyToken
from tests.conftest import TEST_SECRET
from tests.helpers import free_port, read_maildir, wait_for

DEADLINE = 60.0
two_cores = pytest.mark.skipif(
    (os.cpu_count() or 1) < 2, reason="serve keeps one process on a machine of one core"
)


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` that run replygate (not multiprocessing's helpers)."""
    found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [
        int(child)
        for child in found
        if b"resource_tracker" not in Path(f"/proc/{child}/cmdline").read_bytes()
    ]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.fixture
def reply_address(settings: Settings) -> str:
    engine = make_engine(settings.database_url)
    sessions = session_factory(engine)
    with transaction(sessions) as s:
        directory.add_user(s, "dana@staff.test", "Dana Staff", "staff")
        directory.add_user(s, "cleo@example.com", "Cleo Client", "client")
    messaging = Messaging(sessions, settings)
    messaging.set_convenience_mode(on=True, acknowledge_hipaa=True)
    messaging.send(sender="dana@staff.test", to=["cleo@example.com"], subject="Hi", body="Hello?")
    with sessions() as s:
        token = s.scalars(select(ReplyToken.token)).one()
    engine.dispose()
    return f"reply+{token}@{settings.reply_domain}"


@pytest.fixture
def serve(
    settings: Settings, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[subprocess.Popen[str], int, Path]]:
    """``python -m replygate serve`` with ports of its own, once it said READY=1 (the
    systemd protocol), which it says once its engine process is ready too."""
    smtp, portal = free_port(), free_port()
    outbox = tmp_path / "outbox"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(DEADLINE)
    env = {
        **os.environ,
        "REPLYGATE_DATABASE_URL": settings.database_url,
        "REPLYGATE_SECRET_KEY": TEST_SECRET,
        "REPLYGATE_ENCRYPTION_KEYS_FILE": str(settings.encryption_keys_file),
        "REPLYGATE_VAR_DIR": str(settings.var_dir),
        "REPLYGATE_OUTBOX_MAILDIR": str(outbox),
        "REPLYGATE_REPLY_DOMAIN": settings.reply_domain,
        "REPLYGATE_WORKER_POLL_SECONDS": "30",  # woken by the gateway, never by the poll
        "NOTIFY_SOCKET": str(tmp_path / "notify"),
    }
    args = [sys.executable, "-m", "replygate", "serve", *getattr(request, "param", [])]
    args += ["--smtp", f"127.0.0.1:{smtp}", "--portal", f"127.0.0.1:{portal}"]
    proc = subprocess.Popen(
        args, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        while b"READY=1" not in notify.recv(4096).split(b"\n"):
            pass
        yield proc, smtp, outbox
    finally:
        notify.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _send(port: int, to: str) -> None:
    msg = EmailMessage()
    msg["From"] = "Cleo Client <cleo@example.com>"
    msg["To"] = to
    msg["Subject"] = "Re: Hi"
    msg["Message-ID"] = "<engine-process@mail.example.com>"
    msg.set_content("Thursday works for me.\n\nOn Mon, Dana Staff wrote:\n> Hello?\n")
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.send_message(msg, from_addr="cleo@example.com", to_addrs=[to])


@two_cores
def test_the_engine_process_files_and_ctrl_c_stops_both(
    serve: tuple[subprocess.Popen[str], int, Path], settings: Settings, reply_address: str
) -> None:
    proc, port, outbox = serve
    [engine] = wait_for(lambda: children(proc.pid), timeout=DEADLINE, what="the engine process")
    _send(port, reply_address)
    # Delivered by the child: the staff member's notification of the reply.
    wait_for(
        lambda: any("Thursday works" in m.as_string() for m in read_maildir(outbox / "")),
        timeout=DEADLINE,
        what="the notification of the reply",
    )
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole group
    proc.wait(DEADLINE)
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    assert not alive(engine)
    engine_db = make_engine(settings.database_url)
    with engine_db.connect() as conn:
        assert conn.execute(select(InboundMail.status)).scalars().all() == ["filed"]
    engine_db.dispose()


@two_cores
def test_an_engine_process_that_dies_stops_the_service_with_one_line(
    serve: tuple[subprocess.Popen[str], int, Path],
) -> None:
    proc, _, _ = serve
    [engine] = wait_for(lambda: children(proc.pid), timeout=DEADLINE, what="the engine process")
    os.kill(engine, signal.SIGKILL)
    proc.wait(DEADLINE)
    assert proc.returncode == 1
    assert proc.stderr is not None
    last = [line for line in proc.stderr.read().splitlines() if line.strip()][-1]
    assert last == f"replygate: the engine process exited (status -{int(signal.SIGKILL)})"


@two_cores
def test_the_engine_process_stops_when_serve_is_killed(
    serve: tuple[subprocess.Popen[str], int, Path],
) -> None:
    """SIGKILL gives ``serve`` no chance to stop its child: the child notices by itself,
    or an orphaned engine would go on claiming mail (with whatever keys it holds)."""
    proc, _, _ = serve
    [engine] = wait_for(lambda: children(proc.pid), timeout=DEADLINE, what="the engine process")
    proc.kill()
    proc.wait(DEADLINE)
    wait_for(lambda: not alive(engine), timeout=DEADLINE, what="the orphaned engine to exit")


@pytest.mark.parametrize("serve", [["--one-process"]], indirect=True)
def test_one_process_keeps_the_engine_in_the_serve_process(
    serve: tuple[subprocess.Popen[str], int, Path], reply_address: str
) -> None:
    proc, port, outbox = serve
    _send(port, reply_address)
    wait_for(
        lambda: any("Thursday works" in m.as_string() for m in read_maildir(outbox / "")),
        timeout=DEADLINE,
        what="the notification of the reply",
    )
    assert children(proc.pid) == []
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(DEADLINE)
    assert proc.returncode == 0
