"""The engine's CPU per filed reply: one batch of queued replies filed in-process.

    python bench/filing_cost.py --tree /path/to/before --tree . --rounds 7
    python bench/filing_cost.py --tree /path/to/before --tree . --callgrind
    python bench/filing_cost.py --tree /path/to/before --tree . --backend postgresql

Each round, a fresh process of each tree (its code on ``PYTHONPATH``, run in
alternation so both see the same load) seeds a fresh database (SQLite, or
PostgreSQL with ``--backend postgresql``; one client,
``--threads`` threads with live reply addresses), queues ``--replies``
replies spread over the threads (a quoted, signed text body and, with
``--attachment``, a small text file each), and files them with
``InboundWorker.run_once`` until none is left, batch by batch as the
engine's loop does; the process CPU time of those calls alone, over the
number filed, is the round's figure. Reported:
the median per tree and their ratio.

``--callgrind`` counts instructions instead (load-independent): each tree
runs once filing the replies and once filing none under ``valgrind
--tool=callgrind``; the difference over the number filed is the cost of a
reply. The gateway is not measured: it seals only the raw mail, as before.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, time
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

sys.path.insert(0, sys.argv[1] + "/bench")
from ingest_common import CLIENT, SECRET, database
from replygate.config import load_settings
from replygate.store import inbound
from replygate.store.db import make_engine, session_factory, transaction
from replygate.workers.inbound import InboundWorker

workdir, threads, replies = Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
attachment, backend = sys.argv[5] == "1", sys.argv[6]
body = ("Tuesday at 10 works for me; I will bring the forms and my medicines. " * 6
        + "\n\nOn Mon, Dr Hale wrote:\n> Can you come in on Tuesday?\n"
        + "> We need to go over the results.\n\n-- \nCleo Park\nSent from my phone\n")
with database(backend, workdir, threads) as world:
    var_dir = world.var_dir
    settings = load_settings(env={}, overrides={
        "var_dir": var_dir, "database_url": world.url, "secret_key": SECRET,
        "encryption_keys_file": var_dir / "keys", "reply_domain": "reply.test",
        "mail_auth": "off",
    })
    engine = make_engine(world.url)
    factory = session_factory(engine)
    with transaction(factory) as session:
        for n in range(replies):
            rcpt = world.addresses[n % threads]
            mail = EmailMessage()
            mail["From"] = f"Cleo Park <{CLIENT}>"
            mail["To"] = rcpt
            mail["Subject"] = "Re: Appointment"
            mail["Message-ID"] = f"<r{n}@client.test>"
            mail.set_content(body)
            if attachment:
                mail.add_attachment(b"glucose 5.9 mmol/L\n" * 50, maintype="text",
                                    subtype="plain", filename=f"readings-{n}.txt")
            raw = mail.as_bytes(policy=SMTP)
            inbound.enqueue(session, mail_from=CLIENT, rcpt=rcpt, raw=raw,
                            message_id=mail["Message-ID"])
    worker = InboundWorker(factory, settings)
    filed = 0
    start = time.process_time()
    while filed < replies and (batch := worker.run_once(limit=replies)):
        filed += batch
    spent = time.process_time() - start
    worker.close()
    engine.dispose()
print(json.dumps({"filed": filed, "cpu": spent}))
"""


def child(
    tree: Path, replies: int, threads: int, attachment: bool, backend: str, *, callgrind: bool
) -> dict:
    with tempfile.TemporaryDirectory(prefix="replygate-filing-") as tmp:
        args = [sys.executable, "-c", CHILD, str(tree), tmp, str(threads), str(replies)]
        args += ["1" if attachment else "0", backend]
        out = Path(tmp) / "callgrind.out"
        if callgrind:
            args = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *args]
        env = {**os.environ, "PYTHONPATH": str(tree)}
        done = subprocess.run(args, cwd=tree, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.exit(f"{tree}: the child failed:\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        if callgrind:
            summary = re.search(r"^summary: (\d+)", out.read_text(errors="replace"), re.M)
            assert summary, "callgrind wrote no summary"
            result["instructions"] = int(summary.group(1))
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", action="append", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--replies", type=int, default=200)
    parser.add_argument("--threads", type=int, default=20)
    parser.add_argument("--attachment", action="store_true")
    parser.add_argument("--callgrind", action="store_true")
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    args = parser.parse_args()
    trees = [t.resolve() for t in args.tree]
    figures: dict[Path, float] = {}
    if args.callgrind:
        for tree in trees:
            full = child(
                tree, args.replies, args.threads, args.attachment, args.backend, callgrind=True
            )
            none = child(tree, 0, args.threads, args.attachment, args.backend, callgrind=True)
            assert full["filed"] == args.replies, full
            figures[tree] = (full["instructions"] - none["instructions"]) / full["filed"]
            print(f"{tree}: {figures[tree] / 1e6:.2f} M instructions per filed reply")
    else:
        per_reply: dict[Path, list[float]] = {t: [] for t in trees}
        for _ in range(args.rounds):
            for tree in trees:
                got = child(
                    tree, args.replies, args.threads, args.attachment, args.backend, callgrind=False
                )
                assert got["filed"] == args.replies, got
                per_reply[tree].append(got["cpu"] / got["filed"])
        for tree in trees:
            figures[tree] = statistics.median(per_reply[tree])
            print(f"{tree}: {figures[tree] * 1000:.2f} ms CPU per filed reply (median)")
    if len(trees) == 2:
        before, after = figures[trees[0]], figures[trees[1]]
        print(f"after ÷ before: {after / before:.3f}")


if __name__ == "__main__":
    main()
