"""Two worker processes sweeping one PostgreSQL for unread reminders: every
reminder that falls due is queued exactly once and delivered once, while
messages keep arriving and falling due under both sweepers."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.core import operations
from replygate.core.messaging import Messaging
from replygate.store import directory
from replygate.store.db import transaction
from replygate.store.models import MessageReceipt, OutboxMessage
from tests.helpers import wait_for
from tests.system.scale.conftest import Processes, needs_postgresql

WAVES = 3
PER_WAVE = 100


@needs_postgresql
def test_two_workers_send_each_due_reminder_exactly_once(
    settings: Settings, sessions: sessionmaker[Session], processes: Processes
) -> None:
    with transaction(sessions) as s:
        directory.add_user(s, "dr.hale@clinic.test", "Dr Hale", "staff")
        for wave in range(WAVES):
            directory.add_circle(s, f"wave {wave}")
            for i in range(PER_WAVE):
                email = f"client{wave}-{i}@client.test"
                directory.add_user(s, email, f"Client {wave}-{i}", "client")
                directory.add_member(s, f"wave {wave}", email)
    operations.set_reminder_delay(sessions, settings, "1s")
    processes.env["REPLYGATE_REMINDER_SWEEP_SECONDS"] = "0.05"
    processes.worker()
    processes.worker()
    messaging = Messaging(sessions, settings)
    for wave in range(WAVES):  # each wave falls due while both workers sweep
        messaging.send(
            sender="dr.hale@clinic.test", to=[f"circle:wave {wave}"], subject="Hi", body="Hello"
        )

    total = WAVES * PER_WAVE

    def reminders() -> list[tuple[int | None, int | None, str]]:
        with sessions() as s:
            return [
                (m, u, st)
                for m, u, st in s.execute(
                    select(
                        OutboxMessage.message_id, OutboxMessage.user_id, OutboxMessage.status
                    ).where(OutboxMessage.kind == "reminder")
                )
            ]

    def all_sent() -> bool:
        rows = reminders()
        return len(rows) >= total and all(st == "sent" for *_, st in rows)

    wait_for(all_sent, timeout=180, interval=0.2, what="every reminder queued and delivered")
    rows = reminders()
    assert len(rows) == total, "one reminder per recipient"
    assert len({(m, u) for m, u, _ in rows}) == total, "never two for one message"
    with sessions() as s:
        pending = s.scalar(select(func.count()).where(MessageReceipt.remind_at.is_not(None)))
        reminded = s.scalar(select(func.count()).where(MessageReceipt.reminded_at.is_not(None)))
    assert pending == 0 and reminded == total
