"""The sd_notify helper speaks systemd's datagram protocol, path and abstract sockets."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from replygate import sdnotify


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
