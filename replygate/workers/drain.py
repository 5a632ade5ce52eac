"""Both workers built from settings, and one pass of each (``worker --once``, the demo),
reminders that fell due included."""

from __future__ import annotations

import asyncio

from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.workers.inbound import InboundWorker
from replygate.workers.outbound import OutboundWorker
from replygate.workers.reminders import ReminderSweeper
from replygate.workers.transports import transport_from_settings


def outbound_worker(settings: Settings, factory: sessionmaker[Session]) -> OutboundWorker:
    return OutboundWorker(
        factory,
        transport_from_settings(settings),
        max_attempts=settings.delivery_max_attempts,
        backoff_seconds=settings.delivery_backoff_seconds,
        secret=settings.secret_key,
    )


def drain_once(settings: Settings, factory: sessionmaker[Session]) -> tuple[int, int]:
    """Process the inbound queue, queue the reminders due, then deliver the outbox, once each."""
    inbound_worker = InboundWorker(factory, settings)
    try:
        processed = inbound_worker.drain()
    finally:
        inbound_worker.close()
    sweeper = ReminderSweeper(factory, settings)
    try:
        sweeper.run_once()
    finally:
        sweeper.close()
    worker = outbound_worker(settings, factory)

    async def deliver() -> int:
        total = 0
        while n := await worker.run_once():
            total += n
        return total

    try:
        return processed, asyncio.run(deliver())
    finally:
        worker.close()
