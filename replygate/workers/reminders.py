"""The reminder sweeper: every ``reminder_sweep_seconds``, queue the unread
reminders that have fallen due (``core.reminders``).

It runs in every process that runs the inbound worker, so there is no cron
to set up; any number may run, since ``core.reminders.send_due`` claims each
reminder once. When idle on SQLite it only peeks at a snapshot, never
queueing for the write lock; after queueing reminders it sets ``notified``,
so the outbound worker of its process delivers them without waiting to poll.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.core import reminders
from replygate.core.notifying import Notifier
from replygate.logs import get_logger
from replygate.store.db import close_reads, snapshot_reads
from replygate.store.models import utcnow
from replygate.workers.waiting import first_of

log = get_logger("replygate.reminders")


class ReminderSweeper:
    """Queues due reminders; one per worker process, any number of processes."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        settings: Settings,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.factory = factory
        self.settings = settings
        self.clock = clock
        self.notifier = Notifier(settings)
        self.peek = snapshot_reads(factory)
        self.sweeps = 0  # how many sweeps have finished (tests wait on it)

    def run_once(self) -> int:
        """Queue every reminder due now; returns how many."""
        try:
            return self._sweep()
        finally:
            self.sweeps += 1

    def _sweep(self) -> int:
        now = self.clock()
        if self.peek is not None:
            with self.peek() as session:
                if not reminders.any_due(session, now=now):
                    return 0
        total = 0
        while n := reminders.send_due(self.factory, self.settings, now=now, notifier=self.notifier):
            total += n
        return total

    async def run(self, stop: asyncio.Event, *, notified: asyncio.Event | None = None) -> None:
        """Sweep until ``stop`` is set; an error (the database away) is logged and the
        next sweep tries again."""
        try:
            while not stop.is_set():
                try:
                    queued = await asyncio.to_thread(self.run_once)
                except Exception:
                    log.exception("reminders.sweep_error")
                    queued = 0
                if queued and notified is not None:
                    notified.set()
                await first_of(stop, None, timeout=self.settings.reminder_sweep_seconds)
        finally:
            self.close()

    def close(self) -> None:
        close_reads(self.peek)
