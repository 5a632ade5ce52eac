"""What the service counts for Prometheus, in prometheus-client's multiprocess mode.

Off unless a process is started with ``--metrics`` (or by one that was):
until ``enable`` runs, ``instruments()`` is None and nothing is recorded.
Enabled, every value lives in a per-process file of one directory
(``PROMETHEUS_MULTIPROC_DIR``): the process that serves ``/metrics`` sums
the files of every process that wrote there, so the processes a ``serve``
starts report through its one port, and a counter of a process that has
exited still counts. The serving process owns the directory and empties it
when it starts; a process that inherits the variable joins it
(``join_inherited``). Gauges of processes that are gone drop out once
``process_exited`` has run for them (each process runs it for itself as it
stops; a parent that starts others runs it for those that die).

The gateway's hot path touches none of this: it counts replies in a plain
dict (``gateway.shared.Shared.replies_sent``) and the runtime copies the
figures here once a second (``Instruments.publish_smtp``), so an SMTP
transaction pays a dict increment per reply, with metrics on or off.

The one piece of global state is this module's ``_current``: prometheus-client
itself keeps its value class and open files per process.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"

# Engine batches and extractions: a few milliseconds normally, seconds when a
# large HTML reply or the database is slow.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# Delivery lag, from the notification being written to its transport having it.
LAG_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)


class Instruments:
    """The metrics one process records (the database's figures are read at scrape time
    by ``monitoring.backlog`` instead)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.smtp_replies = Counter(
            "replygate_smtp_replies",
            "SMTP replies sent, by basic code and RFC 3463 enhanced code ('' for replies "
            "that carry none: the greeting, EHLO, 354).",
            ["code", "enhanced"],
            registry=None,
        )
        self.smtp_sessions = Gauge(
            "replygate_smtp_sessions_open",
            "SMTP connections open now.",
            multiprocess_mode="livesum",
            registry=None,
        )
        self.smtp_bytes = Gauge(
            "replygate_smtp_bytes_in_flight",
            "Bytes of messages being received or committed now (the byte budget in use).",
            multiprocess_mode="livesum",
            registry=None,
        )
        self.engine_batch = Histogram(
            "replygate_engine_batch_seconds",
            "Time the inbound worker took to decide and file one claimed batch.",
            buckets=DURATION_BUCKETS,
            registry=None,
        )
        self.extraction = Histogram(
            "replygate_extraction_seconds",
            "Time reply extraction took for one inbound reply.",
            buckets=DURATION_BUCKETS,
            registry=None,
        )
        self.inbound_processed = Counter(
            "replygate_inbound_processed",
            "Inbound mails decided by the inbound worker, by the status they were left in "
            "(filed: a reply filed into its thread).",
            ["status"],
            registry=None,
        )
        self.bounces = Counter(
            "replygate_bounces_received",
            "Delivery reports (bounces) received for our notifications.",
            registry=None,
        )
        self.delivery_attempts = Counter(
            "replygate_delivery_attempts",
            "Notification delivery attempts, by outcome (sent, retry, failed).",
            ["outcome"],
            registry=None,
        )
        self.delivery_lag = Histogram(
            "replygate_delivery_lag_seconds",
            "From a notification being queued to its transport having it.",
            buckets=LAG_BUCKETS,
            registry=None,
        )
        self._published: dict[str, int] = {}

    def publish_smtp(self, replies_sent: Mapping[str, int], sessions: int, in_flight: int) -> None:
        """Copy a gateway's own tallies here: ``replies_sent`` maps ``"550 5.1.1"`` (or
        ``"220"``) to how many have been sent since the gateway started."""
        published = self._published
        for key, total in list(replies_sent.items()):
            delta = total - published.get(key, 0)
            if delta > 0:
                code, _, enhanced = key.partition(" ")
                self.smtp_replies.labels(code, enhanced).inc(delta)
                published[key] = total
        self.smtp_sessions.set(sessions)
        self.smtp_bytes.set(in_flight)


_current: Instruments | None = None


def instruments() -> Instruments | None:
    """This process's instruments, or None while metrics are off."""
    return _current


def enable(directory: Path, *, owner: bool) -> Instruments:
    """Record metrics in ``directory`` from now on (and in processes started from here).

    The ``owner`` serves them and empties the directory first: files left by
    processes of an earlier run would otherwise be summed with this one's.
    """
    global _current
    directory.mkdir(parents=True, exist_ok=True)
    if owner:
        for stale in directory.glob("*.db"):
            stale.unlink(missing_ok=True)
    os.environ[ENV] = str(directory)
    from prometheus_client import values

    # The value class is chosen when prometheus_client is first imported; one made
    # now writes to ``directory`` whatever was imported before.
    values.ValueClass = values.MultiProcessValue()
    _current = Instruments()
    return _current


def join_inherited() -> Instruments | None:
    """Record into the directory of the process that started this one, if it serves metrics."""
    inherited = os.environ.get(ENV)
    if not inherited:
        return None
    return enable(Path(inherited), owner=False)


def process_exited(pid: int | None = None) -> None:
    """Drop the live gauges of process ``pid`` (default: this one) from what is served."""
    directory = os.environ.get(ENV)
    if _current is None or not directory:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(os.getpid() if pid is None else pid, directory)
