"""The systemd readiness protocol (``sd_notify``), without a dependency.

A unit with ``Type=notify`` is "started" only when the process says
``READY=1`` on the datagram socket systemd names in ``$NOTIFY_SOCKET``; until
then units ordered after it wait, and ``systemctl start`` blocks. Outside
systemd the variable is unset and every call here is a no-op returning
``False``, so callers never need to know how they were started.

``$NOTIFY_SOCKET`` is a filesystem path (``/run/systemd/notify``) or, when it
starts with ``@``, a name in the Linux abstract namespace.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


def notify(state: str, *, env: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (``KEY=VALUE`` lines) to the service manager.

    Returns ``True`` when it was sent, ``False`` when there is no manager to
    tell (no ``$NOTIFY_SOCKET``, or an address family we do not speak).
    Errors while sending are swallowed: readiness must never crash a service.
    """
    env = os.environ if env is None else env
    address = env.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        return False  # vsock: and other forms are for virtual machines, not our services
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode("utf-8"))
    except OSError:
        return False
    return True


def ready(status: str | None = None, *, env: Mapping[str, str] | None = None) -> bool:
    """Tell the service manager that start-up is complete (``READY=1``)."""
    lines = ["READY=1"]
    if status:
        lines.append(f"STATUS={_one_line(status)}")
    return notify("\n".join(lines), env=env)


def stopping(status: str | None = None, *, env: Mapping[str, str] | None = None) -> bool:
    """Tell the service manager that an orderly shutdown has begun (``STOPPING=1``)."""
    lines = ["STOPPING=1"]
    if status:
        lines.append(f"STATUS={_one_line(status)}")
    return notify("\n".join(lines), env=env)


def status(text: str, *, env: Mapping[str, str] | None = None) -> bool:
    """Set the free-form status line shown by ``systemctl status``."""
    return notify(f"STATUS={_one_line(text)}", env=env)


def _one_line(text: str) -> str:
    return " ".join(text.split())
