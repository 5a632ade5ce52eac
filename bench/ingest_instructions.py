"""Instructions per message of the gateway's DATA handler, its writer or a whole SMTP session,
counted by callgrind.

    python bench/ingest_instructions.py /tmp/before .
    python bench/ingest_instructions.py . --part writer --backend postgresql
    python bench/ingest_instructions.py /tmp/before . --part session

Times on a shared machine wander with the load; instruction counts do not.
For each source tree, a database is seeded with that tree's code and
``valgrind --tool=callgrind`` runs the tree's own ``GatewayHandler`` twice,
each time feeding it ``--warm`` messages and then ``--messages`` more: once
calling ``handle_DATA`` for the counted ones, once doing everything around
it but that call. The difference divided by ``--messages`` is what
``handle_DATA`` costs a message. The mail is what ``smtp-source -l 4096``
(``bench/ingest.py``'s client) sends, each with its own Message-Id, from 32
sessions' peers; the logs are configured as ``serve`` configures them (JSON,
redacted where the tree redacts) and the heap settled as ``serve`` settles it.

``--part data``: the writer is faked (its future is resolved at once), so
this is the event loop's share. ``--part writer``: the tree's own batch
INSERT (``inbound_writer.BulkInsert``, in batches of ``--batch`` rows, sealing
included where the tree seals), the writer thread's share; the database's
own work in another process (PostgreSQL) is not counted. ``--part session``:
the tree's own ``Gateway`` on a loopback port, with the writer faked, and
Postfix's ``smtp-source`` (not counted) sending one message per connection
over ``--sessions`` sessions (1: every read and reply comes alone, so the
count does not follow the timing): the event loop's whole share of a
message, connection, greeting, EHLO, MAIL, RCPT, DATA and QUIT included. ``PYTHONHASHSEED``
is fixed, so two runs of one tree count alike to a fraction of a per cent.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SESSIONS = 32
SMTP_SOURCE = "/usr/sbin/smtp-source"
BODY_LINE = b"X" * 77  # smtp-source's body: numbered lines of X, 80 octets with CRLF


def mail(n: int, size: int = 4096) -> bytes:
    """The ``n``-th message of the benchmark's client: smtp-source's headers and body."""
    head = (
        b"From: <cleo@client.test>\r\n"
        b"To: <reply+x@reply.test>\r\n"
        b"Date: Thu,  3 Dec 2026 18:23:46 +0000 (UTC)\r\n"
        + f"Message-Id: <{4000 + n % SESSIONS}.{n // SESSIONS:04d}.0000@client.test>\r\n".encode()
        + b"\r\n"
    )
    lines, length = [], len(head)
    while length < size:
        line = str(len(lines) % 10).encode() + BODY_LINE + b"\r\n"
        lines.append(line)
        length += len(line)
    return head + b"".join(lines)


# -- the counted child (valgrind runs this, with the tree first on sys.path) -----------------


def _intake():
    try:
        from replygate.core import intake
    except ImportError:  # trees before the core package
        from replygate.gateway import intake
    return intake


def _settle_heap() -> None:
    try:
        from replygate.runtime import settle_heap
    except ImportError:
        from replygate.service import settle_heap
    settle_heap()


def _app():
    """The tree's own CLI object, and its logs configured as ``serve`` configures them."""
    from replygate import logs
    from replygate.cli import App

    app = App(config_file=None, overrides={})
    parameters = inspect.signature(logs.configure).parameters
    if "plain_below" in parameters:
        from replygate.mail.markers import TOKEN_LENGTH

        logs.configure(json=True, redact=app.redact, plain_below=TOKEN_LENGTH)
    elif "redact" in parameters:
        logs.configure(json=True, redact=app.redact)
    else:
        logs.configure(json=True)
    try:
        from replygate.store import keyring
    except ImportError:  # trees before sealing
        pass
    else:
        keyring.load(app.settings)
    return app


class _FakeWriter:
    """Resolves each message's future at once: the DATA path without the commit."""

    def submit_async(self, rows: list[dict]) -> asyncio.Future[list[int]]:
        done = asyncio.get_running_loop().create_future()
        done.set_result(list(range(len(rows))))
        return done

    def close(self) -> None:
        pass


async def _count_data(app, address: str, warm: int, messages: int, call: bool) -> None:
    from aiosmtpd.smtp import Envelope, Session

    from replygate.gateway.handler import GatewayHandler
    from replygate.store.models import utcnow

    handler = GatewayHandler(app.settings, app.factory)
    handler.writer.close()
    handler.writer = _FakeWriter()
    recipient = _intake().check_recipient(app.factory, app.settings, address, now=utcnow())
    loop = asyncio.get_running_loop()
    sessions = []
    for i in range(SESSIONS):
        session = Session(loop)
        session.peer = ("127.0.0.1", 40000 + i)
        session.host_name = "client.test"
        sessions.append(session)
    mails = [mail(n) for n in range(warm + messages)]
    _settle_heap()
    for n, raw in enumerate(mails):
        envelope = Envelope()
        envelope.mail_from = "cleo@client.test"
        envelope.rcpt_tos.append(address)
        envelope.original_content = raw
        handler._accepted[envelope] = [recipient]
        if n < warm or call:
            reply = await handler.handle_DATA(None, sessions[n % SESSIONS], envelope)
            assert reply.startswith("250"), reply
    handler.close()


def _count_writer(app, address: str, warm: int, messages: int, call: bool, batch: int) -> None:
    from replygate.store import inbound_writer
    from replygate.store.models import utcnow

    intake = _intake()
    recipient = intake.check_recipient(app.factory, app.settings, address, now=utcnow())
    rows = []
    for n in range(warm + messages):
        raw = mail(n)
        checked = intake.check(app.settings, recipients=[recipient], raw=raw, via="smtp")
        rows.extend(
            intake.queue_rows(
                checked,
                mail_from="cleo@client.test",
                recipients=[recipient],
                raw=raw,
                peer="127.0.0.1:40000",
                now=utcnow(),
            )
        )
    insert = inbound_writer.BulkInsert(app.engine)
    _settle_heap()
    for at in range(0, len(rows), batch):
        if at < warm or call:
            inbound_writer.insert_rows(insert, rows[at : at + batch])
    insert.close()


async def _count_session(
    app, address: str, warm: int, messages: int, call: bool, sessions: int
) -> None:
    from replygate.gateway.handler import GatewayHandler
    from replygate.gateway.server import Gateway

    # One RCPT lookup (in a thread) for the whole run, not one per expiry of the cache.
    handler = GatewayHandler(app.settings, app.factory, rcpt_cache_seconds=1e9)
    handler.writer.close()
    handler.writer = _FakeWriter()
    gateway = Gateway(app.settings, app.factory, host="127.0.0.1", port=0, handler=handler)
    await gateway.start()
    _settle_heap()
    client = [
        SMTP_SOURCE, "-s", str(sessions), "-m", str(warm + messages if call else warm),
        "-l", "4096", "-f", "cleo@client.test", "-t", address, "-M", "client.test",
        f"127.0.0.1:{gateway.port}",
    ]  # fmt: skip
    source = await asyncio.create_subprocess_exec(*client)
    if await source.wait() != 0:
        raise RuntimeError("smtp-source failed")
    await gateway.stop()


def count(args: argparse.Namespace) -> None:
    app = _app()
    if args.part == "data":
        asyncio.run(_count_data(app, args.address, args.warm, args.messages, args.call))
    elif args.part == "session":
        session = _count_session(
            app, args.address, args.warm, args.messages, args.call, args.sessions
        )
        asyncio.run(session)
    else:
        _count_writer(app, args.address, args.warm, args.messages, args.call, args.batch)


# -- one tree: seed, then two counted runs --------------------------------------------------


def _instructions(out: Path) -> int:
    found = re.search(rb"^(?:summary|totals): (\d+)", out.read_bytes(), re.MULTILINE)
    if found is None:
        raise RuntimeError(f"no total in {out}")
    return int(found[1])


def one_tree(tree: Path, args: argparse.Namespace) -> dict[str, float]:
    """Seed with ``tree``'s code (this process has it first on sys.path) and count."""
    sys.path[:0] = [str(tree), str(tree / "bench")]
    from ingest_common import CLIENT, database

    assert CLIENT == "cleo@client.test"
    with (
        tempfile.TemporaryDirectory(prefix="replygate-instr-") as tmp,
        database(args.backend, Path(tmp)) as world,
    ):
        env = world.env(PYTHONPATH=str(tree), PYTHONHASHSEED="0")
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        # One run without valgrind first, so that no counted run compiles a module
        # whose bytecode is missing or stale (an edited tree): that cost fell on
        # whichever of the two came first.
        first = [sys.executable, __file__, "--count", "--part", args.part,
                 "--address", world.addresses[0], "--warm", str(args.batch),
                 "--messages", str(args.batch), "--batch", str(args.batch),
                 "--sessions", str(args.sessions), "--call"]  # fmt: skip
        subprocess.run(first, env=env, cwd=tmp, capture_output=True, check=True, timeout=600)
        totals = {}
        for call in (False, True):
            out = Path(tmp) / f"callgrind.{int(call)}.out"
            command = [
                "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                f"--log-file={Path(tmp) / 'valgrind.log'}",
                sys.executable, __file__, "--count", "--part", args.part,
                "--address", world.addresses[0], "--warm", str(args.warm),
                "--messages", str(args.messages), "--batch", str(args.batch),
                "--sessions", str(args.sessions),
            ]  # fmt: skip
            if call:
                command.append("--call")
            done = subprocess.run(
                command, env=env, cwd=tmp, capture_output=True, text=True, timeout=3600
            )
            if done.returncode != 0:
                log = (Path(tmp) / "valgrind.log").read_text(errors="replace")
                raise RuntimeError(f"the count of {tree} failed: {done.stderr[-800:]}{log[-800:]}")
            totals[call] = _instructions(out)
    per = (totals[True] - totals[False]) / args.messages
    return {"per_message": per, "total_without": totals[False], "total_with": totals[True]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", type=Path, nargs="*", default=[Path(".")])
    parser.add_argument("--part", choices=["data", "writer", "session"], default="data")
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--messages", type=int, default=1024, help="counted messages")
    parser.add_argument("--warm", type=int, default=64, help="messages before the counted ones")
    parser.add_argument("--batch", type=int, default=32, help="rows per INSERT (--part writer)")
    parser.add_argument("--sessions", type=int, default=1, help="smtp-source's (--part session)")
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--count", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--call", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part == "writer" and (args.warm % args.batch or args.messages % args.batch):
        parser.error("--warm and --messages must be multiples of --batch for --part writer")
    if args.count:
        count(args)
        return
    if args.one is not None:
        print(json.dumps(one_tree(args.one.resolve(), args)))
        return
    results = {}
    for tree in args.trees:
        command = [
            sys.executable, __file__, "--one", str(tree.resolve()), "--part", args.part,
            "--backend", args.backend, "--messages", str(args.messages),
            "--warm", str(args.warm), "--batch", str(args.batch),
            "--sessions", str(args.sessions),
        ]  # fmt: skip
        env = dict(os.environ, PYTHONPATH=str(tree.resolve()))
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=7200)
        if done.returncode != 0:
            raise SystemExit(f"{tree}: {done.stderr.strip()[-1500:]}")
        results[tree] = json.loads(done.stdout.strip().splitlines()[-1])
        per = results[tree]["per_message"]
        print(f"{tree}: {per:,.0f} instructions per message ({args.part}, {args.backend})")
    if len(results) == 2:
        a, b = (results[t]["per_message"] for t in args.trees)
        print(f"{args.trees[1]} ÷ {args.trees[0]}: {b / a:.2f}×")


if __name__ == "__main__":
    main()
