"""The queues' figures for Prometheus, read from the database at each scrape.

Whatever process serves them, and however many gateways and workers share
the database, every scrape sees the same depth and age: they are the
database's, not a process's. On SQLite the reads use a WAL snapshot
(``db.snapshot_reads``), so a scrape never takes the write lock from the
gateway's commits. A database that cannot be read gives
``replygate_backlog_up 0`` and no queue figures, never a failed scrape.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker

from replygate.logs import get_logger
from replygate.store import backlog
from replygate.store.backlog import StatusCount
from replygate.store.models import InboundStatus, OutboxStatus, utcnow

log = get_logger("replygate.monitoring")

# The statuses whose oldest row is worth an age: what still waits for someone.
INBOUND_WAITING = (
    InboundStatus.QUEUED,
    InboundStatus.PROCESSING,
    InboundStatus.HELD,
    InboundStatus.FAILED,
)
OUTBOX_WAITING = (OutboxStatus.QUEUED, OutboxStatus.SENDING)
UP = "replygate_backlog_up"
INBOUND_DEPTH = "replygate_inbound_queue"
INBOUND_AGE = "replygate_inbound_oldest_seconds"
OUTBOX_DEPTH = "replygate_outbox"
OUTBOX_AGE = "replygate_outbox_oldest_seconds"
NAMES = (UP, INBOUND_DEPTH, INBOUND_AGE, OUTBOX_DEPTH, OUTBOX_AGE)


class BacklogCollector(Collector):
    """Inbound queue and outbox depth by status, and the age of the oldest waiting row."""

    def __init__(
        self, reads: sessionmaker[Session], *, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self.reads = reads
        self.clock = clock

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily(
            UP,
            "1 when the last scrape could read the queues from the database, else 0.",
        )
        try:
            with self.reads() as session:
                inbound = backlog.inbound_by_status(session)
                outbox = backlog.outbox_by_status(session)
        except Exception as exc:  # the scrape still answers; readiness says why
            log.warning("metrics.backlog_unreadable", error=f"{type(exc).__name__}: {exc}")
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        now = self.clock()
        yield from _families(
            INBOUND_DEPTH,
            "Inbound mails by status (filed, rejected and ignored ones until purged).",
            INBOUND_AGE,
            "Age of the oldest inbound mail in each waiting status (0 when there is none).",
            inbound,
            [str(s) for s in InboundStatus],
            INBOUND_WAITING,
            now,
        )
        yield from _families(
            OUTBOX_DEPTH,
            "Notifications by status (sent ones until purged).",
            OUTBOX_AGE,
            "Age of the oldest notification not yet delivered, by status: the delivery lag "
            "now (0 when there is none).",
            outbox,
            [str(s) for s in OutboxStatus],
            OUTBOX_WAITING,
            now,
        )


def _families(
    depth_name: str,
    depth_help: str,
    age_name: str,
    age_help: str,
    rows: list[StatusCount],
    statuses: list[str],
    waiting: Iterable[str],
    now: datetime,
) -> Iterable[Metric]:
    """A depth gauge with every status (0 for the empty ones, so alerts have a series)
    and an age gauge for the waiting statuses."""
    by_status = {row.status: row for row in rows}
    depth = GaugeMetricFamily(depth_name, depth_help, labels=["status"])
    for status in [*statuses, *sorted(set(by_status) - set(statuses))]:
        row = by_status.get(status)
        depth.add_metric([status], row.count if row is not None else 0)
    age = GaugeMetricFamily(age_name, age_help, labels=["status"])
    for status in waiting:
        row = by_status.get(status)
        oldest = row.oldest if row is not None else None
        age.add_metric([status], max(0.0, (now - oldest).total_seconds()) if oldest else 0.0)
    yield depth
    yield age
