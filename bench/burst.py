"""Does filing keep up with the gateway? A burst of replies, and a one-thread backlog.

Burst: N clients, each in a thread of their own with a live reply address
(Convenience Mode on), send K Gmail-style replies each over S concurrent
SMTP sessions. Measured: the accept time (first 250 to last 250), and the
time from the first 250 until every reply is filed and its notification
written (the database polled every 20 ms); their ratio is the figure. Two
layouts: ``sqlite`` (``replygate serve``, the README's command) and
``postgresql`` (``serve --role gateway`` and two ``replygate worker``).

Backlog (``--backlog N``): N replies to one thread queued through a
gateway-only process, then one worker started; the drain rate is N over the
time from the first reply filed to the last, and the worker's CPU per reply.

Layouts: ``sqlite`` is ``replygate serve`` as the README starts it (on two
cores, the engine in a child process); ``sqlite-one`` is ``serve
--one-process``; ``sqlite-split`` a gateway and one ``replygate worker``.
Beside the times, each process's CPU per reply (``/proc``), steadier than
wall time on a shared machine. Run another tree's code with
``PYTHONPATH=<tree>`` (the processes import it; the bench itself needs only
``ingest_common``).

    python bench/burst.py                                   # 40 × 15 over 16, both layouts
    python bench/burst.py --clients 20 --replies 10 --sessions 16 --layout sqlite
    python bench/burst.py --backlog 1500 [--layout postgresql]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import secrets
import smtplib
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

from ingest_common import (
    REPLY_DOMAIN,
    REPLYGATE,
    SECRET,
    STAFF,
    World,
    database,
    free_port,
    process,
    wait_ready,
)
from sqlalchemy import text

from replygate.mail import reply_token
from replygate.store import directory, tokens
from replygate.store.db import make_engine, session_factory, transaction
from replygate.store.models import Thread, ThreadParticipant, User, utcnow

# Neither the flood brake nor the poll is what is measured.
ENV = {"REPLYGATE_BREAKER_MAX_REPLIES": "100000", "REPLYGATE_WORKER_POLL_SECONDS": "0.5"}


def seed_clients(world: World, clients: int) -> list[tuple[str, str]]:
    """``clients`` clients, each in a new thread with the staff member and a reply address."""
    engine = make_engine(world.url)
    out: list[tuple[str, str]] = []
    try:
        with transaction(session_factory(engine)) as session:
            staff = session.query(User).filter_by(email=STAFF).one()
            now = utcnow()
            for i in range(clients):
                email = f"client{i}@gmail.test"
                client = directory.add_user(session, email, f"Client {i}", "client")
                thread = Thread(subject=f"Your appointment {i}", created_by_id=staff.id)
                session.add(thread)
                session.flush()
                session.add_all(
                    [
                        ThreadParticipant(thread_id=thread.id, user_id=staff.id),
                        ThreadParticipant(thread_id=thread.id, user_id=client.id),
                    ]
                )
                token = reply_token.new_token(SECRET)
                tokens.add(
                    session,
                    token,
                    thread.id,
                    client.id,
                    now=now,
                    expires_at=now + timedelta(days=9),
                )
                out.append((email, reply_token.reply_address(token, REPLY_DOMAIN)))
    finally:
        engine.dispose()
    return out


def gmail_reply(sender: str, address: str, n: int) -> bytes:
    """A reply as Gmail writes one: text and HTML alternatives, the quote under an attribution."""
    boundary = secrets.token_hex(12)
    mid = f"<CAF{secrets.token_hex(16)}@mail.gmail.com>"
    return (
        f"MIME-Version: 1.0\r\nFrom: Client <{sender}>\r\nTo: <{address}>\r\n"
        f"Date: Mon, 18 Mar 2024 09:52:05 +0000\r\nMessage-ID: {mid}\r\n"
        f"Subject: Re: Your appointment\r\n"
        f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n\r\n'
        f'--{boundary}\r\nContent-Type: text/plain; charset="UTF-8"\r\n\r\n'
        f"Reply {n}: yes, Thursday at 2pm works for me. I'll bring the forms.\r\n\r\n"
        f"Best,\r\nClient\r\n\r\n"
        f"On Mon, Mar 18, 2024 at 9:30 AM Dr Hale <notifications@{REPLY_DOMAIN}> wrote:\r\n\r\n"
        f"> ##- Please type your reply above this line -##\r\n>\r\n"
        f"> Can we meet on Thursday at 2pm?\r\n>\r\n\r\n"
        f'--{boundary}\r\nContent-Type: text/html; charset="UTF-8"\r\n\r\n'
        f'<div dir="ltr">Reply {n}: yes, Thursday at 2pm works for me.</div><br>'
        f'<div class="gmail_quote"><div dir="ltr" class="gmail_attr">On Mon, Mar 18, 2024 '
        f'Dr Hale wrote:<br></div><blockquote class="gmail_quote">Can we meet on Thursday?'
        f"<br></blockquote></div>\r\n\r\n--{boundary}--\r\n"
    ).encode()


def send_all(port: int, mails: list[tuple[str, str, bytes]], sessions: int) -> tuple[float, float]:
    """Send ``mails`` over ``sessions`` SMTP sessions; the times of the first and last 250."""
    work: queue.Queue[tuple[str, str, bytes]] = queue.Queue()
    for mail in mails:
        work.put(mail)
    stamps: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def session() -> None:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=60) as smtp:
                while True:
                    try:
                        sender, rcpt, raw = work.get_nowait()
                    except queue.Empty:
                        return
                    smtp.sendmail(sender, [rcpt], raw)
                    with lock:
                        stamps.append(time.perf_counter())
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=session) for _ in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"sending failed: {errors[0]!r}")
    return min(stamps), max(stamps)


def counts(url: str) -> tuple[int, int, int, int]:
    """Mails filed, notifications written, mails not yet decided, and mails queued in all."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            # Counted from the status index: the poll must not read the rows' raw bytes.
            by_status = dict(
                conn.execute(
                    text("SELECT status, count(*) FROM inbound_mail GROUP BY status")
                ).all()
            )
            notes = conn.execute(text("SELECT count(*) FROM outbox")).scalar()
        pending = by_status.get("queued", 0) + by_status.get("processing", 0)
        accepted = sum(by_status.values())
        return int(by_status.get("filed", 0)), int(notes or 0), int(pending), int(accepted)
    finally:
        engine.dispose()


Timeline = list[tuple[float, int, int, int]]  # (when, queued in all, filed, notified)


def wait_filed(
    url: str, total: int, timeout: float = 600, timeline: Timeline | None = None
) -> tuple[float, float]:
    """Poll until ``total`` mails are filed and notified: (first seen filed, all done).
    Each poll's counts are appended to ``timeline`` when one is given."""
    first = None
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        filed, notes, pending, accepted = counts(url)
        now = time.perf_counter()
        if timeline is not None:
            timeline.append((now, accepted, filed, notes))
        if filed and first is None:
            first = now
        if filed >= total and notes >= total:
            return first or now, now
        if accepted >= total and filed + pending < total:
            raise RuntimeError(f"only {filed} of {total} filed and none pending: see queue stats")
        time.sleep(0.02)
    raise RuntimeError(f"not filed within {timeout}s: {counts(url)}")


class Watcher(threading.Thread):
    """``wait_filed`` in a thread, recording the timeline while the mail is still sent."""

    def __init__(self, url: str, total: int, samples: Timeline) -> None:
        super().__init__(daemon=True)
        self.url, self.total, self.samples = url, total, samples
        self.done = 0.0

    def run(self) -> None:
        _, self.done = wait_filed(self.url, self.total, timeline=self.samples)


@contextlib.contextmanager
def started(commands: list[list[str]], world: World) -> Iterator[list[int]]:
    """Run ``commands`` (their output discarded) and yield their pids once each has said
    READY=1 (the systemd protocol): a worker still importing must not be timed as filing."""
    with tempfile.TemporaryDirectory(prefix="replygate-notify-") as tmp:
        path = str(Path(tmp) / "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify.bind(path)
            with contextlib.ExitStack() as stack:
                pids = [
                    stack.enter_context(
                        process(command, env=world.env(NOTIFY_SOCKET=path, **ENV))
                    ).pid
                    for command in commands
                ]
                wait_ready(notify, len(commands))
                yield pids


def with_children(pids: list[int]) -> list[int]:
    """``pids`` and their child processes (``serve``'s engine process)."""
    out = []
    for pid in pids:
        out.append(pid)
        with contextlib.suppress(OSError):
            found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            out += [int(child) for child in found]
    return out


def cpu_seconds(pid: int) -> float:
    """User and system CPU time the process has used so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_cpu(url: str) -> dict[int, float]:
    """CPU seconds so far of each PostgreSQL backend serving this database (none on SQLite;
    readable in ``/proc`` when the server runs on this machine)."""
    if not url.startswith("postgresql"):
        return {}
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            pids = conn.execute(
                text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
            ).scalars()
            found = {}
            for pid in pids:
                with contextlib.suppress(OSError):
                    found[int(pid)] = cpu_seconds(int(pid))
            return found
    finally:
        engine.dispose()


@contextlib.contextmanager
def layout(kind: str, world: World, port: int) -> Iterator[list[int]]:
    """The processes of one layout, started the way an operator starts them."""
    smtp = ["--smtp", f"127.0.0.1:{port}"]
    if kind == "sqlite":
        portal = ["--portal", f"127.0.0.1:{free_port()}"]
        commands = [[REPLYGATE, "serve", *smtp, *portal]]
    elif kind == "sqlite-one":
        portal = ["--portal", f"127.0.0.1:{free_port()}"]
        commands = [[REPLYGATE, "serve", "--one-process", *smtp, *portal]]
    elif kind == "sqlite-split":
        commands = [[REPLYGATE, "serve", "--role", "gateway", *smtp], [REPLYGATE, "worker"]]
    else:
        gateway = [REPLYGATE, "serve", "--role", "gateway", *smtp]
        commands = [gateway, [REPLYGATE, "worker"], [REPLYGATE, "worker"]]
    with started(commands, world) as pids:
        yield with_children(pids)


def burst(
    kind: str, clients: int, replies: int, sessions: int, workdir: Path, *, timeline: bool = False
) -> str:
    with database("postgresql" if kind == "postgresql" else "sqlite", workdir) as world:
        people = seed_clients(world, clients)
        # Round by round, so each client's replies arrive in order, spread over the sessions.
        mails = [
            (sender, address, gmail_reply(sender, address, k))
            for k in range(replies)
            for sender, address in people
        ]
        total = len(mails)
        port = free_port()
        with layout(kind, world, port) as pids:
            before = [cpu_seconds(pid) for pid in pids]
            server_before = server_cpu(world.url)
            samples: Timeline = []
            if timeline:  # polled while sending too, to see when filing starts
                watcher = Watcher(world.url, total, samples)
                watcher.start()
            first, last = send_all(port, mails, sessions)
            if timeline:
                watcher.join()
                done = watcher.done
            else:
                _, done = wait_filed(world.url, total)
            used = [cpu_seconds(pid) - b for pid, b in zip(pids, before, strict=True)]
            server_after = server_cpu(world.url)
        accept, through = last - first, done - first
        # CPU per reply, process by process: on a loaded machine the wall times move
        # with the neighbours, these much less.
        per_reply = " + ".join(f"{1000 * u / total:.1f}" for u in used)
        if server_after:
            server = sum(t - server_before.get(pid, 0.0) for pid, t in server_after.items())
            per_reply += f"; PostgreSQL's backends {1000 * server / total:.1f}"
        shown = "".join(
            f"\n  {when - first:+6.2f} s  queued {queued:4}  filed {filed:4}  notified {notes:4}"
            for when, queued, filed, notes in samples[:: max(1, len(samples) // 40)] + samples[-1:]
        )
        return (
            f"{kind:12} {clients} clients × {replies} replies over {sessions} sessions: "
            f"accepted in {accept:.2f} s ({total / accept:.0f}/s), filed and notified "
            f"{through:.2f} s after the first 250 ({total / through:.0f}/s); "
            f"ratio {through / accept:.2f}; CPU ms per reply by process {per_reply}{shown}"
        )


def backlog(kind: str, replies: int, sessions: int, workdir: Path) -> str:
    with database("postgresql" if kind == "postgresql" else "sqlite", workdir) as world:
        [(sender, address)] = seed_clients(world, 1)
        mails = [(sender, address, gmail_reply(sender, address, k)) for k in range(replies)]
        port = free_port()
        with started(
            [[REPLYGATE, "serve", "--role", "gateway", "--smtp", f"127.0.0.1:{port}"]], world
        ):
            send_all(port, mails, sessions)
        with started([[REPLYGATE, "worker"]], world) as [pid]:
            before = cpu_seconds(pid)
            first, done = wait_filed(world.url, replies)
            used = cpu_seconds(pid) - before
        rate = (replies - 1) / max(done - first, 1e-9)
        return (
            f"{kind:12} backlog of {replies} replies to one thread: drained at {rate:.0f}/s "
            f"({done - first:.2f} s from the first filed to the last); worker CPU "
            f"{1000 * used / replies:.1f} ms per reply"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=40)
    parser.add_argument("--replies", type=int, default=15)
    parser.add_argument("--sessions", type=int, default=16)
    parser.add_argument(
        "--layout",
        choices=("sqlite", "sqlite-one", "sqlite-split", "postgresql", "both"),
        default="both",
    )
    parser.add_argument("--backlog", type=int, metavar="N", help="measure a one-thread backlog")
    parser.add_argument(
        "--timeline", action="store_true", help="poll while sending too; print the counts"
    )
    args = parser.parse_args()
    kinds = ("sqlite", "postgresql") if args.layout == "both" else (args.layout,)
    with tempfile.TemporaryDirectory(prefix="replygate-burst-") as tmp:
        for kind in kinds:
            if args.backlog:
                print(backlog(kind, args.backlog, args.sessions, Path(tmp)), flush=True)
            else:
                burst_ = burst(
                    kind,
                    args.clients,
                    args.replies,
                    args.sessions,
                    Path(tmp),
                    timeline=args.timeline,
                )
                print(burst_, flush=True)


if __name__ == "__main__":
    main()
