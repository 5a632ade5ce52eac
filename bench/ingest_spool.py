"""Large messages on PostgreSQL: raw bytes in ``bytea`` against a spool directory.

    python bench/ingest_spool.py [--kb 200] [--sessions 32] [--messages 600]

The durable step of the gateway alone (no SMTP), as the gateway does it:
``--sessions`` threads each hand one message at a time to the process's
group-commit writer (``InboundWriter``) and wait for its commit.

- ``bytea``: the raw bytes go in the row (``inbound_mail.raw``), one WAL
  flush per batch for all of them;
- ``spool``: each session first writes the raw bytes to a file of its own
  in a spool directory and fsyncs it and the directory (without that, a
  crash after the 250 can lose the file), then the row (raw NULL) is
  committed by the same writer.

Prints msg/s and this process's CPU ms per message for each, run
alternately ``--repeats`` times (the machine is shared).
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ingest_common import database

from replygate.store.db import make_engine, session_factory
from replygate.store.inbound_writer import InboundWriter
from replygate.store.models import utcnow


def row(raw: bytes | None, size: int, thread_id: int) -> dict:
    return {
        "received_at": utcnow(),
        "mail_from": "cleo@client.test",
        "rcpt": "reply@reply.test",
        "peer": "127.0.0.1:2525",
        "message_id": f"<{secrets.token_hex(8)}@client.test>",
        "size": size,
        "raw": raw,
        "status": "queued",
        "attempts": 0,
        "thread_id": thread_id,
        "decisions": [{"stage": "accept", "via": "smtp", "size": size}],
    }


def spool(directory: Path, raw: bytes) -> Path:
    """Write ``raw`` to a new file in ``directory``, durable on return."""
    path = directory / f"{time.time_ns()}-{secrets.token_hex(6)}.eml"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, raw)
        os.fsync(fd)
    finally:
        os.close(fd)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def run(
    mode: str,
    writer: InboundWriter,
    spool_dir: Path,
    kb: int,
    sessions: int,
    messages: int,
    thread_id: int,
) -> tuple[float, float]:
    """``messages`` through the writer from ``sessions`` threads; msg/s and CPU ms/msg."""
    raw = (b"x" * 76 + b"\r\n") * (kb * 1024 // 78)

    def one(_: int) -> None:
        if mode == "spool":
            spool(spool_dir, raw)
            writer.submit([row(None, len(raw), thread_id)]).result()
        else:
            writer.submit([row(raw, len(raw), thread_id)]).result()

    cpu, started = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(sessions) as pool:
        list(pool.map(one, range(messages)))
    elapsed = time.perf_counter() - started
    return messages / elapsed, (time.process_time() - cpu) * 1000 / messages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kb", type=int, default=200)
    parser.add_argument("--sessions", type=int, default=32)
    parser.add_argument("--messages", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="replygate-bench-") as tmp,
        database("postgresql", Path(tmp)) as world,
    ):
        engine = make_engine(world.url)
        writer = InboundWriter(session_factory(engine))
        spool_dir = Path(tmp) / "spool"
        spool_dir.mkdir()
        results: dict[str, list[tuple[float, float]]] = {"bytea": [], "spool": []}
        thread_id = world.thread_ids[0]
        for mode in results:  # warm-up
            run(mode, writer, spool_dir, args.kb, args.sessions, 50, thread_id)
        for _ in range(args.repeats):
            for mode in results:
                rate = run(
                    mode, writer, spool_dir, args.kb, args.sessions, args.messages, thread_id
                )
                results[mode].append(rate)
        writer.close()
        engine.dispose()
    print(f"{args.kb} KB, {args.sessions} sessions, {args.messages} messages, PostgreSQL")
    print("| raw bytes in | msg/s (median) | CPU ms/msg (median) | runs msg/s |")
    print("|---|---|---|---|")
    for mode, runs in results.items():
        rates = [r for r, _ in runs]
        cpu = statistics.median(c for _, c in runs)
        listed = ", ".join(f"{r:,.0f}" for r in rates)
        print(f"| {mode} | {statistics.median(rates):,.0f} | {cpu:.2f} | {listed} |")


if __name__ == "__main__":
    main()
