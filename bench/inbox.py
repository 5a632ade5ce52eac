"""The first page of a big inbox: server time of ``GET /inbox``, render included.

    python bench/inbox.py [--backend sqlite|postgresql|both] [--threads 20000]
                          [--rounds 40] [--before REV|none]

Seeds one database per backend with a staff member who takes part in
``--threads`` threads (a quarter answered by a client, half of those still
unread, 1 in 10 archived, 5 pinned), another staff member with 200 threads,
and 2,000 clients. Then the portal app itself (``replygate.portal.create_app``,
every middleware, the session lookup, the queries and the template) answers
``GET /inbox`` for a logged-in staff member, called in-process as an ASGI app
so the time is the server's alone: from the request's arrival to its last
body byte (wall clock), and the process's CPU time over the same span (the
process does nothing else; on a shared machine the wall clock also counts
waiting for a core).

Each round asks, in an order shuffled per round, for both inboxes with
today's inbox code and with the code of ``--before`` (the commit before
pinned threads; its ``core/inbox.py`` read from git and run on the same
database, whose extra columns it ignores), so a machine whose load drifts
treats all four alike. Reported: median and p95 per variant (wall clock),
the median CPU time, and before ÷ after of the wall-clock medians. Code from
before subjects and bodies were sealed at rest cannot read today's database:
``--before none`` measures today's code alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import insert, text
from sqlalchemy.engine import make_url

from replygate.config import load_settings
from replygate.core import workspace
from replygate.core.accounts import hash_password
from replygate.portal import create_app
from replygate.store import directory, keyring, sealed
from replygate.store.db import make_engine, normalise_url, session_factory, upgrade
from replygate.store.models import Message, MfaRequirement, Thread, ThreadParticipant, User

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get(
    "REPLYGATE_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
SECRET = "bench-secret-" + "i" * 51
PASSWORD = "bench password, long enough"
BIG, SMALL = "big.inbox@clinic.test", "small.inbox@clinic.test"
SMALL_THREADS = 200
CLIENTS = 2_000
PINNED = 5
ROWS_RE = re.compile(r"data-thread-row ")


# -- seeding -------------------------------------------------------------------------------


def seed(url: str, threads: int) -> None:
    """The two staff members, the clients and their threads, written in bulk."""
    upgrade(url)
    engine = make_engine(url)
    now = datetime.now(UTC)
    digest = hash_password(PASSWORD)
    with engine.begin() as conn:
        conn.execute(
            insert(User),
            [
                {"id": 1, "email": BIG, "name": "Dr Big", "role": "staff", "password_hash": digest},
                {
                    "id": 2,
                    "email": SMALL,
                    "name": "Dr Small",
                    "role": "staff",
                    "password_hash": digest,
                },
            ]
            + [
                {"id": 3 + n, "email": f"client{n}@example.test", "name": f"Client {n}"}
                | {"role": "client", "password_hash": None}
                for n in range(CLIENTS)
            ],
        )
    rows_of: dict[str, list[dict[str, Any]]] = {"threads": [], "parts": [], "messages": []}
    message_id = 0
    plan = [(1, n) for n in range(threads)] + [(2, n) for n in range(SMALL_THREADS)]
    for thread_id, (staff_id, n) in enumerate(plan, start=1):
        client_id = 3 + (thread_id % CLIENTS)
        at = now - timedelta(minutes=thread_id)
        answered = n % 4 == 0
        rows_of["threads"].append(
            sealed.seal_row(
                "threads",
                {
                    "id": thread_id,
                    "subject": f"Appointment follow-up {thread_id}",
                    "created_by_id": staff_id,
                    "created_at": at,
                    "last_activity_at": at,
                },
            )
        )
        message_id += 1
        first = message_id
        rows_of["messages"].append(_message(first, thread_id, staff_id, at, "portal"))
        last_by_client = None
        if answered:
            message_id += 1
            last_by_client = message_id
            rows_of["messages"].append(_message(message_id, thread_id, client_id, at, "email"))
        staff_read = last_by_client if (answered and n % 8 == 0) else first
        rows_of["parts"] += [
            {
                "thread_id": thread_id,
                "user_id": staff_id,
                "last_read_message_id": staff_read,
                "last_incoming_message_id": last_by_client,
                "last_activity_at": at,
                "pinned": staff_id == 1 and n % (threads // PINNED) == 7,
                "archived": staff_id == 1 and n % 10 == 3,
            },
            {
                "thread_id": thread_id,
                "user_id": client_id,
                "last_read_message_id": last_by_client,
                "last_incoming_message_id": first,
                "last_activity_at": at,
                "pinned": False,
                "archived": False,
            },
        ]
    with engine.begin() as conn:
        for table, rows in (
            (Thread, rows_of["threads"]),
            (ThreadParticipant, rows_of["parts"]),
            (Message, rows_of["messages"]),
        ):
            for start in range(0, len(rows), 5_000):
                conn.execute(insert(table), rows[start : start + 5_000])
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":  # ids were given: move the sequences past them
            for table in ("users", "threads", "messages"):
                conn.execute(
                    text(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                        f"(SELECT max(id) FROM {table}))"
                    )
                )
        conn.execute(text("ANALYZE"))  # the statistics a live database would have
    with session_factory(engine)() as session, session.begin():
        # A password alone: the measured request comes after the login, whatever it took.
        directory.organisation(session).mfa_required = MfaRequirement.OFF
    engine.dispose()


def _message(mid: int, thread_id: int, author_id: int, at: datetime, source: str) -> dict[str, Any]:
    body = (
        "Thank you for coming in on Tuesday. As we discussed, please book the follow-up "
        "appointment and bring the forms we went through; reply here with any questions. "
    ) * 2
    return sealed.seal_row(
        "messages",
        {
            "id": mid,
            "thread_id": thread_id,
            "author_id": author_id,
            "body": body,
            "source": source,
            "created_at": at,
        },
    )


@contextlib.contextmanager
def database(backend: str, workdir: Path, threads: int) -> Iterator[str]:
    # The key file the settings of ``measure`` name (``var/keys``): the seed seals with it.
    keyring.install(keyring.Keyring.open_or_create(workdir / "var" / "keys"))
    if backend == "sqlite":
        url = f"sqlite:///{workdir / 'inbox.db'}"
        seed(url, threads)
        yield url
        return
    admin = make_engine(PG_ADMIN_URL).execution_options(isolation_level="AUTOCOMMIT")
    name = f"replygate_bench_inbox_{os.getpid()}_{secrets.token_hex(3)}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(normalise_url(PG_ADMIN_URL)).set(database=name).render_as_string(False)
    try:
        seed(url, threads)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# -- the code before -----------------------------------------------------------------------


def before_inbox(rev: str) -> types.ModuleType:
    """``core/inbox.py`` as it was at ``rev``, adapted to today's call (which adds a view)."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:replygate/core/inbox.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    old = types.ModuleType("replygate_inbox_before")
    sys.modules[old.__name__] = old  # dataclasses look their module up
    exec(compile(source, f"{rev}:replygate/core/inbox.py", "exec"), old.__dict__)
    shim = types.ModuleType("replygate_inbox_before_shim")
    shim.__dict__.update(old.__dict__)
    shim.inbox = lambda session, user_id, page=0, view=None: old.inbox(session, user_id, page)
    return shim


def default_before() -> str:
    """The commit before the one that added pinned threads (``core/placement.py``)."""
    added = subprocess.run(
        [
            "git",
            "-C",
            str(ROOT),
            "log",
            "--format=%H",
            "--diff-filter=A",
            "--",
            "replygate/core/placement.py",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    if not added:
        sys.exit("no commit adds replygate/core/placement.py: pass --before REV")
    return added[-1] + "^"


# -- the app, called in-process ------------------------------------------------------------


class Browser:
    """Cookies and forms over direct ASGI calls; each call's duration is the server's."""

    def __init__(self, app: Any, origin: str) -> None:
        self.app, self.origin = app, origin
        self.cookies: dict[str, str] = {}

    async def request(self, method: str, path: str, form: dict[str, str] | None = None):
        body = urlencode(form).encode() if form is not None else b""
        target, _, query = path.partition("?")
        headers = [(b"host", b"127.0.0.1:8025"), (b"origin", self.origin.encode())]
        if self.cookies:
            jar = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
            headers.append((b"cookie", jar.encode()))
        if form is not None:
            headers.append((b"content-type", b"application/x-www-form-urlencoded"))
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": target,
            "raw_path": target.encode(),
            "query_string": query.encode(),
            "headers": headers,
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8025),
        }
        sent = False
        out: dict[str, Any] = {"status": 0, "body": b"", "headers": []}

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                await asyncio.Event().wait()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                out["status"], out["headers"] = message["status"], message["headers"]
            elif message["type"] == "http.response.body":
                out["body"] += message.get("body", b"")

        started, cpu = time.perf_counter(), time.process_time()
        await self.app(scope, receive, send)
        elapsed = (time.perf_counter() - started, time.process_time() - cpu)
        for name, value in out["headers"]:
            if name == b"set-cookie":
                key, _, rest = value.decode().split(";", 1)[0].partition("=")
                self.cookies[key] = rest
        return out["status"], out["body"].decode(), elapsed

    async def login(self, email: str) -> None:
        _, page, _ = await self.request("GET", "/login")
        token = re.search(r'name="csrf" value="([^"]+)"', page)
        assert token, "no CSRF field on /login"
        form = {"csrf": token.group(1), "email": email, "password": PASSWORD, "next": "/inbox"}
        status, _, _ = await self.request("POST", "/login", form)
        assert status == 303, f"login as {email} answered {status}"


async def measure(url: str, workdir: Path, rounds: int, before: types.ModuleType | None) -> dict:
    settings = load_settings(
        env={},
        overrides={
            "var_dir": workdir / "var",
            "database_url": url,
            "secret_key": SECRET,
            "encryption_keys_file": workdir / "var" / "keys",
            "portal_url": "http://127.0.0.1:8025",
        },
    )
    engine = make_engine(url)
    app = create_app(settings, session_factory(engine))
    after = workspace.inbox
    browsers = {}
    for who, email in (("big", BIG), ("small", SMALL)):
        browsers[who] = Browser(app, "http://127.0.0.1:8025")
        await browsers[who].login(email)
    codes = ("before", "after") if before is not None else ("after",)
    variants = [(who, code) for who in browsers for code in codes]
    times: dict[tuple[str, str], list[float]] = {v: [] for v in variants}
    cpu: dict[tuple[str, str], list[float]] = {v: [] for v in variants}
    try:
        for n in range(rounds + 3):  # three warm-up rounds, not counted
            order = variants[:]
            random.shuffle(order)
            for who, code in order:
                workspace.inbox = before if code == "before" else after  # type: ignore[attr-defined]
                status, page, elapsed = await browsers[who].request("GET", "/inbox")
                assert status == 200, status
                assert len(ROWS_RE.findall(page)) == 50, "the first page shows 50 threads"
                if n >= 3:
                    times[(who, code)].append(elapsed[0] * 1000)
                    cpu[(who, code)].append(elapsed[1] * 1000)
    finally:
        workspace.inbox = after  # type: ignore[attr-defined]
        engine.dispose()
    return times, cpu


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--threads", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument(
        "--before",
        default=None,
        help="the commit to compare with, or none (code from before content was sealed "
        "at rest reads subjects and bodies as plain text, which the database no longer holds)",
    )
    args = parser.parse_args()
    rev = args.before or default_before()
    before = None if rev == "none" else before_inbox(rev)
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    print(f"first page of /inbox, server time in ms; before = {rev}, {args.rounds} rounds")
    print(f"{'backend':<11} {'inbox':<16} {'code':<7} {'median':>8} {'p95':>8} {'CPU':>8}")
    for backend in backends:
        workdir = Path(tempfile.mkdtemp(prefix="replygate-inbox-"))
        try:
            with database(backend, workdir, args.threads) as url:
                times, cpu = asyncio.run(measure(url, workdir, args.rounds, before))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        sizes = {"big": f"{args.threads:,} threads", "small": f"{SMALL_THREADS} threads"}
        for (who, code), values in times.items():
            print(
                f"{backend:<11} {sizes[who]:<16} {code:<7} "
                f"{statistics.median(values):>8.1f} {pct(values, 95):>8.1f} "
                f"{statistics.median(cpu[(who, code)]):>8.1f}"
            )
        for who in ("big", "small") if before is not None else ():
            ratio = statistics.median(times[(who, "before")]) / statistics.median(
                times[(who, "after")]
            )
            print(f"{backend:<11} {sizes[who]:<16} before ÷ after: {ratio:.1f}×")
        big = statistics.median(times[("big", "after")])
        small = statistics.median(times[("small", "after")])
        print(
            f"{backend:<11} after: {args.threads:,} ÷ {SMALL_THREADS} threads: {big / small:.2f}×"
        )


if __name__ == "__main__":
    main()
