"""The unit tier: pure modules only, so it may use neither a database nor the network.

A unit test that asks for a database fixture fails at collection, and one that
opens a network connection or listens fails when it tries.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

DATABASE_FIXTURES = frozenset(
    {"backend_template", "database_url", "settings", "sessions", "engine"}
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if not Path(item.path).resolve().is_relative_to(HERE):
            continue  # the hook sees the whole session's items
        wanted = DATABASE_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        if wanted:
            raise pytest.UsageError(
                f"{item.nodeid} is in the unit tier but uses {sorted(wanted)}; "
                "move it to tests/integration"
            )


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("unit tests may not use the network; move this to tests/integration")

    for name in ("connect", "connect_ex", "bind"):
        monkeypatch.setattr(socket.socket, name, refuse)
