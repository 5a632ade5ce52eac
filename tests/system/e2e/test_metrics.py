"""The operator port during the whole path, scraped the way Prometheus scrapes it.

``replygate serve --role gateway --metrics`` and, beside it, a ``replygate
worker`` that records into the same multiprocess directory (as a process
started by ``serve`` inherits it): staff send a message (delivered by the
worker), the client replies by SMTP (accepted by the gateway, filed and
notified by the worker), someone else's guess is refused. Every figure on
the gateway's port moves by what the scenario says, the worker's figures
included (they exist in no other process), and still count once the worker
has stopped. Then the database goes away and ``/readyz`` says so.
"""

from __future__ import annotations

import os
import signal
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from replygate.config import Settings
from tests.conftest import FIXTURES
from tests.helpers import database_away, free_port, http_get, sample, scrape, wait_for
from tests.system.e2e.test_reply_by_email import Deployment


class MonitoredDeployment(Deployment):
    """A gateway serving the operator port, and a worker process reporting through it."""

    def __init__(self, settings: Settings, tmp: Path) -> None:
        super().__init__(settings, tmp)
        self.metrics_port = free_port()
        self.metrics_dir = tmp / "var" / "metrics" / str(self.metrics_port)
        self.worker: subprocess.Popen[bytes] | None = None
        self.worker_log = tmp / "worker.log"

    def start(self) -> None:
        env = {**os.environ, **self.env}
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "replygate", "serve", "--role", "gateway"),
                *("--metrics", f"127.0.0.1:{self.metrics_port}"),
            ],
            env=env,
            stderr=subprocess.PIPE,
        )
        wait_for(lambda: self._ready() or self._died(), what="the operator port to say ready")
        with self.worker_log.open("wb") as log:
            self.worker = subprocess.Popen(
                [sys.executable, "-m", "replygate", "worker"],
                env={**env, "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir)},
                stderr=log,
            )
        # It has joined the directory (and so runs) once its own files are there.
        joined = self.metrics_dir / f"counter_{self.worker.pid}.db"
        wait_for(lambda: joined.exists() or self._worker_died(), what="the worker to start")

    def _worker_died(self) -> bool:
        if self.worker is not None and self.worker.poll() is not None:
            raise AssertionError(f"replygate worker exited: {self.worker_log.read_text()[-3000:]}")
        return False

    def _ready(self) -> bool:
        try:
            return http_get(self.metrics_port, "/readyz")[0] == 200
        except OSError:
            return False

    def stop_worker(self) -> None:
        if self.worker is None:
            return
        self.worker.send_signal(signal.SIGINT)
        try:
            assert self.worker.wait(timeout=20) == 0, self.worker_log.read_text()[-3000:]
        finally:
            if self.worker.poll() is None:
                self.worker.kill()
            self.worker = None

    def stop(self) -> None:
        try:
            self.stop_worker()
        finally:
            super().stop()


@pytest.fixture
def deployment(settings: Settings, tmp_path: Path) -> Iterator[MonitoredDeployment]:
    d = MonitoredDeployment(settings, tmp_path)
    d.cli("users", "add", "dana@staff.test", "--name", "Dana Staff", "--role", "staff")
    d.cli("users", "add", "cleo@example.com", "--name", "Cleo Client", "--role", "client")
    d.cli("settings", "convenience", "on", "--acknowledge-hipaa", "--by", "dana@staff.test")
    d.start()
    yield d
    d.stop()


COUNTERS = [
    ("replygate_smtp_replies_total", {"code": "250", "enhanced": "2.0.0"}),
    ("replygate_smtp_replies_total", {"code": "250", "enhanced": "2.1.5"}),
    ("replygate_smtp_replies_total", {"code": "550", "enhanced": "5.1.1"}),
    ("replygate_smtp_replies_total", {"code": "221", "enhanced": "2.0.0"}),
    ("replygate_inbound_processed_total", {"status": "filed"}),
    ("replygate_delivery_attempts_total", {"outcome": "sent"}),
    ("replygate_delivery_attempts_total", {"outcome": "failed"}),
    ("replygate_delivery_lag_seconds_count", {}),
    ("replygate_extraction_seconds_count", {}),
    ("replygate_bounces_received_total", {}),
]
# Dana's message to Cleo and Cleo's reply to Dana: two notifications, one reply.
EXPECTED = {
    ("replygate_smtp_replies_total", "250 2.0.0"): 1,  # the reply accepted
    ("replygate_smtp_replies_total", "250 2.1.5"): 1,  # its recipient
    ("replygate_smtp_replies_total", "550 5.1.1"): 1,  # the guessed address
    ("replygate_smtp_replies_total", "221 2.0.0"): 2,  # both sessions said QUIT
    ("replygate_inbound_processed_total", "filed"): 1,
    ("replygate_delivery_attempts_total", "sent"): 2,
    ("replygate_delivery_attempts_total", "failed"): 0,
    ("replygate_delivery_lag_seconds_count", ""): 2,
    ("replygate_extraction_seconds_count", ""): 1,
    ("replygate_bounces_received_total", ""): 0,
}


def _key(name: str, labels: dict[str, str]) -> tuple[str, str]:
    return name, " ".join(labels.values())


def _figures(port: int) -> dict[tuple[str, str], float]:
    samples = scrape(port)
    return {_key(name, labels): sample(samples, name, **labels) for name, labels in COUNTERS}


def test_metrics_move_as_the_scenario_says(deployment: MonitoredDeployment) -> None:
    port = deployment.metrics_port
    before = _figures(port)
    thread_id, notification = deployment.dana_writes_to_cleo("Tuesday", "Can you make Tuesday?")
    reply_to = str(notification["Reply-To"])
    raw = (FIXTURES / "replies" / "gmail.eml").read_bytes()
    raw = raw.replace(b"reply+TOKEN@reply.test", reply_to.encode())
    with smtplib.SMTP("127.0.0.1", deployment.smtp_port, timeout=10) as smtp:
        assert smtp.sendmail("cleo@example.com", [reply_to], raw) == {}
    with smtplib.SMTP("127.0.0.1", deployment.smtp_port, timeout=10) as smtp:
        smtp.ehlo()
        smtp.mail("eve@elsewhere.test")
        code, _ = smtp.rcpt("reply+guessedguessedguessed@reply.test")
        assert code == 550
    wait_for(lambda: deployment.mails_to("dana@staff.test"), what="Dana's notification")

    def moved() -> dict[tuple[str, str], float] | None:
        after = _figures(port)
        deltas = {key: after[key] - before[key] for key in EXPECTED}
        return deltas if deltas == EXPECTED else None

    # The gateway publishes its tallies once a second; poll until they are all in.
    try:
        wait_for(moved, timeout=15, interval=0.2, what="the counters to move")
    except AssertionError:
        after = _figures(port)
        raise AssertionError({k: after[k] - before[k] for k in EXPECTED}) from None

    samples = scrape(port)
    assert sample(samples, "replygate_inbound_queue", status="filed") == 1
    assert sample(samples, "replygate_inbound_queue", status="queued") == 0
    assert sample(samples, "replygate_inbound_oldest_seconds", status="queued") == 0
    assert sample(samples, "replygate_outbox", status="sent") == 2
    assert sample(samples, "replygate_outbox_oldest_seconds", status="queued") == 0
    assert sample(samples, "replygate_smtp_sessions_open") == 0
    assert sample(samples, "replygate_engine_batch_seconds_count") >= 1
    assert sample(samples, "replygate_backlog_up") == 1

    # The worker's counters outlive it: a counter of a process that stopped still counts.
    deployment.stop_worker()
    assert sample(scrape(port), "replygate_inbound_processed_total", status="filed") == (
        before[("replygate_inbound_processed_total", "filed")] + 1
    )
    assert thread_id  # filed into the thread the notification named (shown by test_reply_by_email)


def test_readyz_turns_unready_when_the_database_goes_away(
    deployment: MonitoredDeployment, settings: Settings
) -> None:
    port = deployment.metrics_port
    assert http_get(port, "/readyz") == (200, "ready\ndatabase: ok\nwriter: ok\n")
    with database_away(settings):
        _, body = wait_for(
            lambda: (got := http_get(port, "/readyz"))[0] == 503 and got,
            what="/readyz to turn unready",
        )
        assert body.startswith("not ready\ndatabase: "), body
        assert http_get(port, "/healthz") == (200, "ok\n")  # alive, only not ready
    wait_for(lambda: http_get(port, "/readyz")[0] == 200, what="/readyz to be ready again")
