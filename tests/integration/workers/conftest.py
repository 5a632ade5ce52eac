"""Outbound fixtures: a real smarthost (aiosmtpd) on a free local port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from aiosmtpd.controller import Controller

from tests.integration.workers.support import Smarthost, SmarthostHandler, free_port


@pytest.fixture
def smarthost() -> Iterator[Smarthost]:
    handler = SmarthostHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield Smarthost("127.0.0.1", port, handler)
    finally:
        controller.stop()
