"""Ingest throughput: Postfix's smtp-source against the gateway, stock aiosmtpd and smtp-sink.

    python bench/ingest.py                       # the full table
    python bench/ingest.py --sessions 32 --sizes 4096 --quick
    python bench/ingest.py --quick --mail-auth   # also each gateway checking SPF/DKIM/DMARC

Every server is measured in the same run, in rounds (each round runs every
server once, the table gives the median of the rounds), so the ratios
compare like with like on a shared, noisy machine. One message per connection (smtp-source's
default), as MTAs mostly deliver. Durable accept: the gateway answers 250
only after the message is committed (SQLite WAL, ``synchronous=FULL``; or
PostgreSQL), and each run checks afterwards that every message is stored.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from ingest_common import (
    CLIENT,
    database,
    free_port,
    gateway,
    loopback_dns,
    process,
    stock_server,
)

SMTP_SOURCE = "/usr/sbin/smtp-source"
SMTP_SINK = "/usr/sbin/smtp-sink"


def drive(port: int, sessions: int, size: int, messages: int, rcpt: str) -> float:
    """Send ``messages`` with smtp-source; messages per second."""
    args = [
        SMTP_SOURCE,
        "-s", str(sessions),
        "-m", str(messages),
        "-l", str(size),
        "-f", CLIENT,
        "-t", rcpt,
        "-M", "client.test",
        f"127.0.0.1:{port}",
    ]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - started
    if done.returncode != 0 or done.stderr.strip():
        raise RuntimeError(f"smtp-source failed: {done.stderr.strip()[:500]}")
    return messages / elapsed


def sink(port: int):
    """Postfix's smtp-sink: accepts and discards, the practical upper bound."""
    return process([SMTP_SINK, "-u", "nobody", f"127.0.0.1:{port}", "1024"], port=port)


def count_for(size: int, sessions: int, quick: bool) -> int:
    base = 6000 if size <= 16 * 1024 else 2000
    if sessions == 1:
        base //= 5
    return base // 3 if quick else base


def measure_rounds(servers: dict, sessions: int, size: int, n: int) -> dict[str, float]:
    """Median msg/s of each server over ``REPEATS`` rounds.

    Each round runs every server once, one after the other, each after a
    warm-up: a slow spell on the shared machine then falls on all of them
    alike instead of on whichever server was being measured.
    """
    rates: dict[str, list[float]] = {name: [] for name in servers}
    for _ in range(REPEATS):
        for name, (start, rcpt, check) in servers.items():
            port = free_port()
            with start(port):
                drive(port, min(sessions, 4), size, max(50, n // 20), rcpt)  # warm-up
                if check is not None:
                    check.reset_inbound()
                rates[name].append(drive(port, sessions, size, n, rcpt))
                if check is not None and (stored := check.count_inbound()) != n:
                    raise RuntimeError(f"{name}: {stored} stored of {n} sent")
    return {name: statistics.median(values) for name, values in rates.items()}


REPEATS = 3


def main() -> None:
    global REPEATS
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", default="1,8,32")
    parser.add_argument("--sizes", default="4096,204800")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="fewer messages per run")
    parser.add_argument("--no-pair", action="store_true", help="skip two gateways on one port")
    parser.add_argument(
        "--mail-auth",
        action="store_true",
        help="also run each gateway with mail_auth = verify against a loopback DNS server",
    )
    args = parser.parse_args()
    REPEATS = args.repeats
    sessions_list = [int(s) for s in args.sessions.split(",")]
    sizes = [int(s) for s in args.sizes.split(",")]
    backends = args.backends.split(",")

    with (
        tempfile.TemporaryDirectory(prefix="replygate-bench-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        worlds = {b: stack.enter_context(database(b, Path(tmp))) for b in backends}
        verify = stack.enter_context(loopback_dns()) if args.mail_auth else None
        rcpt = next(iter(worlds.values())).addresses[0]
        rows = []
        for size in sizes:
            for sessions in sessions_list:
                n = count_for(size, sessions, args.quick)
                row = {"size": size, "sessions": sessions, "n": n}
                servers = {
                    "smtp-sink": (sink, rcpt, None),
                    "stock": (stock_server, rcpt, None),
                }
                for backend, world in worlds.items():
                    servers[backend] = (lambda p, w=world: gateway(w, p), w_rcpt(world), world)
                    if verify is not None:
                        servers[f"{backend}+auth"] = (
                            lambda p, w=world: gateway(w, p, **verify),
                            w_rcpt(world),
                            world,
                        )
                if not args.no_pair and "postgresql" in worlds and size <= 16 * 1024:
                    world = worlds["postgresql"]

                    @contextlib.contextmanager
                    def pair(p, w=world):
                        with gateway(w, p, reuse_port=True), gateway(w, p, reuse_port=True):
                            yield

                    servers["2×pg"] = (pair, w_rcpt(world), world)
                row.update(measure_rounds(servers, sessions, size, n))
                rows.append(row)
                print_row(row, backends)
        print()
        print_table(rows, backends)
        if verify is not None:
            print()
            print_auth_table(rows, backends)


def w_rcpt(world) -> str:
    return world.addresses[0]


def print_row(row: dict, backends: list[str]) -> None:
    parts = [f"{k}={v:,.0f}" for k, v in row.items() if isinstance(v, float)]
    print(f"size={row['size']} sessions={row['sessions']} n={row['n']}: " + " ".join(parts))


def print_table(rows: list[dict], backends: list[str]) -> None:
    cols = ["smtp-sink", "stock", *backends, "2×pg"]
    head = "| size | sessions | " + " | ".join(f"{c} msg/s" for c in cols)
    head += " | " + " | ".join(f"{b} ÷ stock" for b in backends) + " | 2×pg ÷ smtp-sink |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for row in rows:
        cells = [f"{row['size'] // 1024} KB", str(row["sessions"])]
        cells += [f"{row[c]:,.0f}" if c in row else "–" for c in cols]
        cells += [f"{row[b] / row['stock']:.2f}×" for b in backends]
        cells.append(f"{row['2×pg'] / row['smtp-sink']:.2f}×" if "2×pg" in row else "–")
        print("| " + " | ".join(cells) + " |")


def print_auth_table(rows: list[dict], backends: list[str]) -> None:
    """Each gateway checking mail itself against the same gateway not checking it."""
    print("| size | sessions | " + " | ".join(f"{b}+auth ÷ {b}" for b in backends) + " |")
    print("|---|---|" + "---|" * len(backends))
    for row in rows:
        cells = [f"{row['size'] // 1024} KB", str(row["sessions"])]
        cells += [f"{row[f'{b}+auth'] / row[b]:.2f}×" for b in backends]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
