"""How loops wait: for the first of a stop, a wake-up or a timeout, and through
database outages.

``first_of`` is how idle loops sleep. ``through_outages`` runs one round of
a worker again and again while the database is unreachable
(``dialect.unreachable``: refused, lost, restarting), with exponential
backoff and jitter (tenacity) capped at ``OUTAGE_RETRY_MAX_SECONDS``, so a
worker is back at work within about that long of the database's return and
never restarts. The loss is logged once, and so is the return.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    wait_exponential,
    wait_random,
)

from replygate.logs import get_logger
from replygate.store import dialect

T = TypeVar("T")

OUTAGE_RETRY_FIRST_SECONDS = 0.1
OUTAGE_RETRY_MAX_SECONDS = 2.0

log = get_logger("replygate.workers")


async def first_of(stop: asyncio.Event, wake: asyncio.Event | None, *, timeout: float) -> None:
    """Wait until ``stop`` or ``wake`` is set, or ``timeout`` seconds pass."""
    if wake is None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=timeout)
        return
    waiters = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())}
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def through_outages(
    round_: Callable[[], Awaitable[T]], stop: asyncio.Event, *, part: str
) -> T:
    """``round_()``'s result, retried while the database is unreachable.

    Any other error is raised at once (the caller logs it and goes on);
    so is the last outage error when ``stop`` is set while waiting.
    ``part`` names the loop in the log lines (``engine``, ``outbox``).
    """

    def lost(state: RetryCallState) -> None:
        if state.attempt_number == 1:
            error = state.outcome.exception() if state.outcome is not None else None
            log.warning(f"{part}.store_lost", error=f"{type(error).__name__}: {error}")

    async def nap(seconds: float) -> None:
        await first_of(stop, None, timeout=seconds)

    retrying = AsyncRetrying(
        retry=retry_if_exception(dialect.unreachable),
        wait=wait_exponential(multiplier=OUTAGE_RETRY_FIRST_SECONDS, max=OUTAGE_RETRY_MAX_SECONDS)
        + wait_random(0, OUTAGE_RETRY_FIRST_SECONDS),
        stop=lambda _state: stop.is_set(),
        sleep=nap,
        before_sleep=lost,
        reraise=True,
    )
    result: T = await retrying(round_)
    if retrying.statistics.get("attempt_number", 1) > 1:
        log.info(f"{part}.store_back", attempts=retrying.statistics["attempt_number"])
    return result
