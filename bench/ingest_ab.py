"""The gateway of two source trees against each other, in the same rounds.

    git worktree add --detach /tmp/before <commit>
    python bench/ingest_ab.py /tmp/before . --backend sqlite --size 4096 --rounds 5

Each round runs both gateways once, the order alternating from round to
round, so a machine whose load drifts treats both alike. Each run seeds a
database with its own tree's code (the schema may differ between them),
starts ``replygate serve --role gateway`` from that tree, warms it up and
sends ``--messages`` with Postfix's ``smtp-source`` over ``--sessions``.
Reported per tree: the gateway process's CPU per message (user + system,
from ``/proc``; steadier than throughput on a shared machine) and messages
per second, medians of the rounds, and B ÷ A for both.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def one_run(tree: Path, backend: str, messages: int, size: int, sessions: int) -> dict[str, float]:
    """Run in a child whose ``sys.path`` starts with ``tree``: one gateway, one measurement."""
    sys.path[:0] = [str(tree), str(tree / "bench")]
    from ingest import drive  # the tree's own
    from ingest_common import database, free_port, gateway

    tick = os.sysconf("SC_CLK_TCK")

    def cpu_seconds(pid: int) -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick

    with (
        tempfile.TemporaryDirectory(prefix="replygate-ab-") as tmp,
        database(backend, Path(tmp)) as world,
    ):
        port = free_port()
        with gateway(world, port) as proc:
            drive(port, sessions, size, max(messages // 10, 50), world.addresses[0])
            before = cpu_seconds(proc.pid)
            rate = drive(port, sessions, size, messages, world.addresses[0])
            used = cpu_seconds(proc.pid) - before
    return {"rate": rate, "cpu_ms": 1000 * used / messages}


def measure(tree: Path, args: argparse.Namespace) -> dict[str, float]:
    command = [
        sys.executable, __file__, "--one", str(tree),
        "--backend", args.backend, "--messages", str(args.messages),
        "--size", str(args.size), "--sessions", str(args.sessions),
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(tree))
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"the run of {tree} failed: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path, nargs="?", help="source tree A (the baseline)")
    parser.add_argument("b", type=Path, nargs="?", help="source tree B")
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--size", type=int, default=4096, help="message size in bytes")
    parser.add_argument("--sessions", type=int, default=32, help="concurrent SMTP sessions")
    parser.add_argument("--messages", type=int, default=1500, help="messages per run")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        result = one_run(args.one.resolve(), args.backend, args.messages, args.size, args.sessions)
        print(json.dumps(result))
        return
    if args.a is None or args.b is None:
        parser.error("give two source trees")
    trees = [args.a.resolve(), args.b.resolve()]
    runs: dict[Path, list[dict[str, float]]] = {tree: [] for tree in trees}
    for number in range(args.rounds):
        for tree in trees if number % 2 == 0 else trees[::-1]:
            result = measure(tree, args)
            runs[tree].append(result)
            print(f"round {number + 1} {tree}: {result['cpu_ms']:.3f} ms CPU/msg, "
                  f"{result['rate']:,.0f} msg/s", flush=True)  # fmt: skip
    medians = {
        tree: {key: statistics.median(r[key] for r in runs[tree]) for key in ("cpu_ms", "rate")}
        for tree in trees
    }
    a, b = (medians[tree] for tree in trees)
    load = os.getloadavg()[0]
    print(f"\n{args.backend}, {args.size} bytes, {args.sessions} sessions, "
          f"{args.messages} messages × {args.rounds} rounds, load {load:.1f}")  # fmt: skip
    for tree in trees:
        m = medians[tree]
        print(f"  {tree}: {m['cpu_ms']:.3f} ms CPU/msg, {m['rate']:,.0f} msg/s")
    print(f"  B ÷ A: CPU/msg {b['cpu_ms'] / a['cpu_ms']:.2f}×, msg/s {b['rate'] / a['rate']:.2f}×")


if __name__ == "__main__":
    main()
