"""The sd_notify helper speaks systemd's datagram protocol, path and abstract sockets."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from replygate import sdnotify
from replygate.config import Settings
from tests.helpers import free_port, port_open, wait_for


class Listener:
    """A datagram socket standing in for systemd's notification socket."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env = {"NOTIFY_SOCKET": env_value}

    def received(self) -> dict[str, str]:
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.splitlines())


@pytest.fixture(params=["path", "abstract"])
def listener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Listener]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.settimeout(5)
    if request.param == "path":
        path = tmp_path / "notify"
        sock.bind(str(path))
        value = str(path)
    else:
        name = f"replygate-test-{os.getpid()}-{id(sock)}"
        sock.bind("\0" + name)
        value = "@" + name
    try:
        yield Listener(sock, value)
    finally:
        sock.close()


def test_ready_sends_ready_and_status(listener: Listener) -> None:
    assert sdnotify.ready("gateway listening on\n0.0.0.0:25", env=listener.env) is True
    assert listener.received() == {"READY": "1", "STATUS": "gateway listening on 0.0.0.0:25"}


def test_stopping_and_status(listener: Listener) -> None:
    assert sdnotify.stopping(env=listener.env)
    assert listener.received() == {"STOPPING": "1"}
    assert sdnotify.status("draining", env=listener.env)
    assert listener.received() == {"STATUS": "draining"}


def test_outside_systemd_every_call_is_a_no_op() -> None:
    assert sdnotify.ready(env={}) is False
    assert sdnotify.notify("READY=1", env={"NOTIFY_SOCKET": ""}) is False
    assert sdnotify.notify("READY=1", env={"NOTIFY_SOCKET": "vsock:2:1234"}) is False


def test_a_socket_that_is_gone_does_not_raise(tmp_path: Path) -> None:
    env = {"NOTIFY_SOCKET": str(tmp_path / "missing")}
    assert sdnotify.ready(env=env) is False


def test_reads_the_process_environment_by_default(
    listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", listener.env["NOTIFY_SOCKET"])
    assert sdnotify.ready()
    assert listener.received() == {"READY": "1"}


@pytest.mark.parametrize("role", ["gateway", "portal"])
def test_serve_tells_systemd_when_it_is_ready(
    settings: Settings, tmp_path: Path, role: str
) -> None:
    """What ``Type=notify`` in replygate-gateway.service and -portal.service relies on."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    smtp_port, portal_port = free_port(), free_port()
    env = {
        **os.environ,
        "NOTIFY_SOCKET": str(tmp_path / "notify"),
        "REPLYGATE_DATABASE_URL": settings.database_url,
        "REPLYGATE_SECRET_KEY": settings.secret_key,
        "REPLYGATE_ENCRYPTION_KEYS_FILE": str(settings.encryption_keys_file),
        "REPLYGATE_VAR_DIR": str(tmp_path / "var"),
        "REPLYGATE_SMTP_PORT": str(smtp_port),
        "REPLYGATE_PORTAL_PORT": str(portal_port),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "replygate", "serve", "--role", role],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    port = smtp_port if role == "gateway" else portal_port
    try:
        wait_for(
            lambda: port_open("127.0.0.1", port) or proc.poll() is not None,
            what=f"replygate serve --role {role} to listen",
            timeout=30,
        )
        assert proc.poll() is None, "serve exited"
        # READY=1 is due as soon as the socket listens.
        sock.settimeout(5)
        try:
            state = sock.recv(4096).decode()
        except TimeoutError:
            raise AssertionError("listening, but no READY=1 within 5 s") from None
        assert "READY=1" in state.splitlines()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        sock.close()
