"""Peak memory of one gateway process under 32 concurrent 10 MB messages.

    python bench/memory.py [--sessions 32] [--mb 10] [--backend sqlite]

Starts ``replygate serve --role gateway`` (default byte budget, 64 MiB in
flight), sends ``--sessions`` messages of ``--mb`` MB at once (no SIZE
declared, so each grows its reservation while being read), and reads the
process's peak RSS (``VmHWM``) from /proc. Messages answered 452 4.3.1 (no
room in the budget right now) are sent again, as an MTA would, until all
are stored.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import aiosmtplib
from ingest_common import CLIENT, database, free_port, gateway


def rss_mb(pid: int) -> tuple[float, float]:
    """Current and peak resident set size of ``pid``, in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


async def send_all(port: int, address: str, sessions: int, size: int) -> tuple[int, int]:
    line = b"x" * 76 + b"\r\n"
    body = line * (size // len(line))
    deferred = 0

    async def one(i: int) -> None:
        nonlocal deferred
        raw = (
            f"From: {CLIENT}\r\nTo: {address}\r\nSubject: big {i}\r\n"
            f"Message-ID: <big-{i}@client.test>\r\nContent-Type: text/plain\r\n\r\n"
        ).encode() + body
        while True:
            try:
                async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=120) as smtp:
                    await smtp.ehlo()
                    await smtp.mail(CLIENT)  # no SIZE=: the worst case for the budget
                    await smtp.rcpt(address)
                    await smtp.data(raw)
                    return
            except aiosmtplib.SMTPResponseException as exc:
                if exc.code // 100 != 4:
                    raise
                deferred += 1

    await asyncio.gather(*(one(i) for i in range(sessions)))
    return sessions, deferred


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=32)
    parser.add_argument("--mb", type=float, default=10)
    parser.add_argument("--backend", default="sqlite")
    args = parser.parse_args()
    size = int(args.mb * 1024 * 1024)
    with (
        tempfile.TemporaryDirectory(prefix="replygate-memory-") as tmp,
        database(args.backend, Path(tmp)) as world,
    ):
        port = free_port()
        env = {"REPLYGATE_MAX_MESSAGE_SIZE": str(32 * 1024 * 1024)}
        with gateway(world, port, **env) as proc:
            idle, _ = rss_mb(proc.pid)
            started = time.perf_counter()
            sent, deferred = asyncio.run(send_all(port, world.addresses[0], args.sessions, size))
            elapsed = time.perf_counter() - started
            _, peak = rss_mb(proc.pid)
        stored = world.count_inbound()
    print(
        f"{args.backend}: {sent} × {args.mb:g} MB concurrently, {stored} stored, "
        f"{deferred} answers 452 4.3.1 (sent again), {elapsed:.1f} s"
    )
    print(f"gateway RSS idle {idle:.0f} MB, peak {peak:.0f} MB (target < 300 MB)")


if __name__ == "__main__":
    main()
