"""An engine that starts just as PostgreSQL stops taking connections waits for it.

``replygate worker`` checks the schema and the key file, then starts the engine,
whose first act is to mark itself alive (an advisory lock on a connection of
its own). A database gone between the two used to end the worker with a
start-up error; now the engine waits the outage out as it does any later one.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, MutableMapping
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker
from structlog.testing import capture_logs

from replygate.config import Settings
from replygate.workers.inbound import InboundWorker
from tests.helpers import database_away, owners_alive

pytestmark = pytest.mark.skipif(
    not os.environ.get("REPLYGATE_TEST_DATABASE_URL"),
    reason="connections refused by PostgreSQL: runs in the PostgreSQL run of the suite",
)

DEADLINE = 20.0


async def _until(probe: Callable[[], object], what: str) -> None:
    """Poll ``probe`` on the loop until it holds, failing after ``DEADLINE`` seconds."""
    try:
        async with asyncio.timeout(DEADLINE):
            while not probe():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"waited {DEADLINE} s for {what}") from None


async def _started_unreachable(
    engine: InboundWorker, stop: asyncio.Event, logs: list[MutableMapping[str, Any]]
) -> asyncio.Task[None]:
    """The engine's run, started with the database away, once it has logged the loss."""
    run = asyncio.create_task(engine.run(stop))
    await _until(
        lambda: any(e["event"] == "engine.store_lost" for e in logs) or run.done(),
        "the engine to notice the database is away",
    )
    return run


def test_the_engine_waits_for_a_database_gone_at_its_start(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    engine = InboundWorker(sessions, settings)

    async def scenario() -> None:
        stop = asyncio.Event()
        with capture_logs() as logs, database_away(settings):
            run = await _started_unreachable(engine, stop, logs)
            assert not run.done(), run.exception()
        await _until(lambda: engine.owner is not None, "the engine to mark itself alive")
        assert owners_alive(sessions) == 1
        stop.set()
        await run  # ends cleanly, releasing its mark
        assert owners_alive(sessions) == 0

    asyncio.run(scenario())


def test_an_engine_stopped_before_the_database_returns_ends_cleanly(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    engine = InboundWorker(sessions, settings)

    async def scenario() -> None:
        stop = asyncio.Event()
        with capture_logs() as logs, database_away(settings):
            run = await _started_unreachable(engine, stop, logs)
            stop.set()
            await run  # no error: nothing was claimed
        assert engine.owner is None
        assert owners_alive(sessions) == 0

    asyncio.run(scenario())
