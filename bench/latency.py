"""End-to-end latency at a steady rate: SMTP accept → filed → notification delivered.

    python bench/latency.py [--rate 50] [--seconds 60] [--backend sqlite|postgresql]
                            [--layout split|together] [--poll SECONDS]

Two layouts, each run with the shipped poll interval (``worker_poll_seconds``,
0.5 s) unless ``--poll`` says otherwise:

- ``split`` (the PostgreSQL default): one gateway process (``replygate serve
  --role gateway``) and ``--workers`` worker processes (``replygate worker``:
  engine and outbound, delivering to the default Maildir). The gateway's
  commits notify ``replygate_inbound`` and the engines LISTEN on it.
- ``together`` (the SQLite default, as ``make run`` deploys it): one
  ``replygate serve --role all`` process, whose gateway wakes its engine
  after each commit. SQLite cannot notify other processes: split SQLite
  workers find mail at their next poll, so ``--layout split`` on SQLite
  measures the poll more than anything (``--poll 0.05`` to shorten it).

Replies go to 250 threads (under the flood brake's 20 per address) at a
fixed pace (each on its own connection), once every process has said it is
ready; the clock starts when
the client has the 250. Filed is the message's ``created_at``, delivered the
notification's ``sent_at`` (same host, same clock).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import statistics
import tempfile
import time
from datetime import UTC, datetime
from email.utils import make_msgid
from pathlib import Path

import aiosmtplib
from ingest_common import CLIENT, REPLYGATE, database, free_port, gateway, process, wait_ready
from sqlalchemy import text

from replygate.store.db import make_engine

# Enough threads that no address reaches the flood brake (20 replies in 10 minutes).
THREADS = 250
# The outbound worker's lease (OutboundWorker's default).
LEASE_SECONDS = 300


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


async def drive(port: int, addresses: list[str], rate: float, seconds: float) -> dict[str, float]:
    accepted: dict[str, float] = {}
    tasks = []

    async def one(i: int) -> None:
        address = addresses[i % len(addresses)]
        mid = make_msgid(domain="client.test")
        raw = (
            f"From: {CLIENT}\r\nTo: {address}\r\nSubject: Re: hi\r\nMessage-ID: {mid}\r\n"
            f"Content-Type: text/plain\r\n\r\nReply number {i}.\r\n"
        ).encode()
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=30) as smtp:
            errors, _ = await smtp.sendmail(CLIENT, [address], raw)
        if not errors:
            accepted[mid] = time.time()

    start = time.perf_counter()
    total = int(rate * seconds)
    for i in range(total):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    return accepted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=50)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--backend", default="sqlite")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (split)")
    parser.add_argument(
        "--poll",
        type=float,
        help="the workers' poll in seconds (default: the shipped default, 0.5 s)",
    )
    parser.add_argument(
        "--layout",
        choices=("split", "together"),
        help="split: a gateway and worker processes; together: one serve --role all "
        "(default: together on SQLite, split on PostgreSQL)",
    )
    parser.add_argument(
        "--worst", type=int, default=0, help="show where the time went for the N slowest"
    )
    args = parser.parse_args()
    layout = args.layout or ("together" if args.backend == "sqlite" else "split")
    poll = args.poll or 0
    with tempfile.TemporaryDirectory(prefix="replygate-latency-") as tmp:  # noqa: SIM117
        with database(args.backend, Path(tmp), threads=THREADS) as world:
            port = free_port()
            # The clock must not run while the workers are still importing: each says
            # READY=1 on a notify socket (the systemd protocol) once it polls the queue.
            notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            notify.bind(str(Path(tmp) / "notify"))
            env = world.env(NOTIFY_SOCKET=str(Path(tmp) / "notify"))
            if poll:
                env["REPLYGATE_WORKER_POLL_SECONDS"] = str(poll)
            with contextlib.ExitStack() as running:
                if layout == "split":
                    running.enter_context(gateway(world, port))
                    for _ in range(args.workers):
                        running.enter_context(process([REPLYGATE, "worker"], env=env))
                    wait_ready(notify, args.workers)
                    notify.close()
                else:
                    serve = [REPLYGATE, "serve", "--role", "all", "--smtp", f"127.0.0.1:{port}"]
                    serve += ["--portal", f"127.0.0.1:{free_port()}"]
                    running.enter_context(process(serve, env=env, port=port))
                    wait_ready(notify, 1)
                    notify.close()
                accepted = asyncio.run(drive(port, world.addresses, args.rate, args.seconds))
                engine = make_engine(world.url)
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    with engine.connect() as conn:
                        left = conn.execute(
                            text("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
                        ).scalar()
                        filed = conn.execute(text("SELECT count(*) FROM messages")).scalar()
                    if not left and filed >= len(accepted):
                        break
                    time.sleep(0.2)
                with engine.connect() as conn:
                    rows = conn.execute(
                        text(
                            "SELECT m.email_message_id, m.created_at, max(o.sent_at) "
                            "FROM messages m JOIN outbox o ON o.message_id = m.id "
                            "GROUP BY m.email_message_id, m.created_at"
                        )
                    ).all()
                    # A sent row's next_attempt_at is the end of the lease its last
                    # claim took (the default 300 s), which dates the claim.
                    stages = conn.execute(
                        text(
                            "SELECT m.email_message_id, i.received_at, i.claimed_at, "
                            "m.created_at, max(o.next_attempt_at), max(o.sent_at) "
                            "FROM messages m JOIN inbound_mail i ON i.id = m.inbound_id "
                            "JOIN outbox o ON o.message_id = m.id "
                            "GROUP BY m.email_message_id, i.received_at, i.claimed_at, "
                            "m.created_at"
                        )
                    ).all()
                engine.dispose()

    def ts(value: datetime | str | float) -> float:
        if isinstance(value, float):
            return value
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.timestamp()

    to_filed, to_sent = [], []
    first = min(accepted.values(), default=0.0)
    by_slice: dict[int, list[float]] = {}
    for mid, created, sent in rows:
        if mid in accepted and sent is not None:
            to_filed.append((ts(created) - accepted[mid]) * 1000)
            to_sent.append((ts(sent) - accepted[mid]) * 1000)
            by_slice.setdefault(int((accepted[mid] - first) // 5), []).append(to_sent[-1])
    processes = f"gateway + {args.workers} workers" if layout == "split" else "serve --role all"
    print(
        f"{args.backend} ({layout}: {processes}, poll {poll or 'default'}): "
        f"{len(accepted)} accepted "
        f"at {args.rate:g}/s for {args.seconds:g}s, {len(to_sent)} filed and notified"
    )
    print("| from 250 to | p50 ms | p95 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|")
    for name, values in (("filed", to_filed), ("notification delivered", to_sent)):
        print(
            f"| {name} | {statistics.median(values):.0f} | {pct(values, 95):.0f} | "
            f"{pct(values, 99):.0f} | {max(values):.0f} |"
        )
    # A p99 that grows slice after slice is a backlog: the workers file fewer than arrive.
    print(
        "p99 to delivered by 5 s of sending: "
        + ", ".join(f"{pct(v, 99):.0f}" for _, v in sorted(by_slice.items()))
    )
    if args.worst:
        print(f"\nthe {args.worst} slowest, ms from 250 (received and 250 are stamped apart)")
        print("| at s | received | claimed | filed | outbox claimed | delivered |")
        print("|---|---|---|---|---|---|")
        timed = [
            (ts(sent) - accepted[mid], mid, received, claimed, created, leased, sent)
            for mid, received, claimed, created, leased, sent in stages
            if mid in accepted and sent is not None
        ]
        for _, mid, *marks in sorted(timed, reverse=True)[: args.worst]:
            marks[3] = ts(marks[3]) - LEASE_SECONDS
            cells = [(ts(m) - accepted[mid]) * 1000 for m in marks]
            print(
                f"| {accepted[mid] - first:.1f} | " + " | ".join(f"{c:.0f}" for c in cells) + " |"
            )


if __name__ == "__main__":
    main()
