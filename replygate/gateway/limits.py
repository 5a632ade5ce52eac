"""What one gateway process holds at once: connections and message bytes in memory.

Both are temporary refusals when exceeded (the sending MTA retries later),
so a burst slows down instead of exhausting memory:

- ``Sessions``: more concurrent connections than the cap are answered
  ``421 4.3.2`` before the greeting and closed;
- ``ByteBudget``: the bytes of messages being received or committed. A DATA
  transaction first reserves what ``MAIL FROM ... SIZE=`` declared (or a
  small default), waiting in line for others to finish, then grows without
  waiting; a message that cannot grow is read to its end, discarded, and
  answered ``452 4.3.1``. Reservations up front never wait on each other
  mid-message, so sessions cannot deadlock holding half a budget each.

Single event loop only: nothing here is thread-safe, nothing needs to be.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque


class Sessions:
    """Counts open connections against a cap."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.open = 0

    def enter(self) -> bool:
        """Count a new connection; False when it is over the cap (it still counts until
        ``leave``)."""
        self.open += 1
        return self.open <= self.cap

    def leave(self) -> None:
        self.open -= 1


class ByteBudget:
    """A budget of bytes shared by the transactions of one gateway process."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self.peak = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    def try_take(self, amount: int) -> bool:
        """Take ``amount`` now if it fits (a message already being read goes first)."""
        if self.used + amount > self.capacity:
            return False
        self._take(amount)
        return True

    async def take(self, amount: int, timeout: float) -> int:
        """Wait in line for ``amount`` (at most the whole budget); 0 after ``timeout``."""
        amount = min(amount, self.capacity)
        if not self._waiters and self.try_take(amount):
            return amount
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (amount, waiter)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except TimeoutError:
            if waiter.done():  # granted just as the time ran out
                return amount
            with contextlib.suppress(ValueError):
                self._waiters.remove(entry)
            waiter.cancel()
            self._wake()
            return 0
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give(amount)  # granted, but the session is gone
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)
                waiter.cancel()
            raise
        return amount

    def give(self, amount: int) -> None:
        self.used -= amount
        self._wake()

    def _take(self, amount: int) -> None:
        self.used += amount
        self.peak = max(self.peak, self.used)

    def _wake(self) -> None:
        """Grant waiters in order while the first in line fits."""
        while self._waiters:
            amount, waiter = self._waiters[0]
            if waiter.done():
                self._waiters.popleft()
                continue
            if self.used + amount > self.capacity:
                return
            self._waiters.popleft()
            self._take(amount)
            waiter.set_result(None)
