"""How long the command line takes to start: ``replygate --help`` and ``threads list``.

Each run is a fresh process (``python -m replygate``, as an operator or a
cron job starts it) against a small SQLite database seeded by ``demo``. Wall
time moves with the machine's load; CPU time (user + system of the child)
much less, so both are reported, as medians of ``--runs`` runs, with how
many modules the command imports (one more run under ``-X importtime``,
which does not move with the load). With several ``--tree`` checkouts the
runs are interleaved (A, B, A, B …) so they share the same load, and the
ratios to the first tree are printed. ``--listings`` adds the other
listings (``users list``, ``queue list``, ``outbox list``).

    python bench/cli_startup.py --runs 15
    python bench/cli_startup.py --runs 15 --tree /path/to/old/checkout --tree .
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = {"--help": ["--help"], "threads list": ["threads", "list"]}
LISTINGS = {
    "users list": ["users", "list"],
    "queue list": ["queue", "list"],
    "outbox list": ["outbox", "list"],
}
BUDGET_SECONDS = 0.4


def _env(tree: Path, var: Path) -> dict[str, str]:
    """The environment of one tree's processes; bytecode is written (an installed package
    has it), so every tree's warm-up compiles it once, whatever the caller's environment
    says (``PYTHONDONTWRITEBYTECODE`` would make each start compile the tree again)."""
    return {
        **{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
        "PYTHONPATH": str(tree),
        "REPLYGATE_DATABASE_URL": f"sqlite:///{var}/bench.db",
        "REPLYGATE_VAR_DIR": str(var),
        "REPLYGATE_SECRET_KEY": "bench-secret-bench-secret-bench-secret",
        "REPLYGATE_ENCRYPTION_KEYS_FILE": str(var / "keys"),
        "REPLYGATE_REPLY_DOMAIN": "reply.test",
    }


def _replygate(tree: Path, env: dict[str, str], *args: str) -> tuple[float, float]:
    """Wall and CPU seconds of one ``replygate`` process of ``tree`` (``-m`` looks in the
    working directory first, so the process runs there)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "replygate", *args],
        cwd=tree,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def _modules(tree: Path, env: dict[str, str], *args: str) -> int:
    """How many modules one ``replygate`` process of ``tree`` imports (``-X importtime``
    prints a line for each)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "replygate", *args],
        cwd=tree,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    return sum(1 for line in done.stderr.splitlines() if line.startswith("import time:")) - 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="runs of each command per tree")
    parser.add_argument(
        "--tree", action="append", type=Path, help="a checkout to measure (repeat; default: this)"
    )
    parser.add_argument(
        "--listings", action="store_true", help="measure users, queue and outbox list too"
    )
    args = parser.parse_args()
    trees = [t.resolve() for t in args.tree or [ROOT]]
    commands = {**COMMANDS, **(LISTINGS if args.listings else {})}
    with tempfile.TemporaryDirectory() as tmp:
        var = Path(tmp)
        seed = _env(trees[-1], var)
        for setup in (["db", "upgrade"], ["demo"]):
            subprocess.run(
                [sys.executable, "-m", "replygate", *setup],
                cwd=trees[-1],
                env=seed,
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        times: dict[tuple[Path, str], list[tuple[float, float]]] = {}
        modules: dict[tuple[Path, str], int] = {}
        for tree in trees:  # one warm-up each: the first start compiles bytecode
            for name, argv in commands.items():
                _replygate(tree, _env(tree, var), *argv)
                modules[(tree, name)] = _modules(tree, _env(tree, var), *argv)
        for _ in range(args.runs):
            for tree in trees:
                for name, argv in commands.items():
                    times.setdefault((tree, name), []).append(
                        _replygate(tree, _env(tree, var), *argv)
                    )
    load = os.getloadavg()[0]
    print(f"median of {args.runs} runs; load average {load:.1f} on {os.cpu_count()} cores")
    print(
        f"{'tree':<28} {'command':<13} {'wall s':>7} {'cpu s':>7} {'modules':>7}"
        f" {'wall vs first':>14} {'cpu vs first':>13}"
    )
    for name in commands:
        first_wall = statistics.median(w for w, _ in times[(trees[0], name)])
        first_cpu = statistics.median(c for _, c in times[(trees[0], name)])
        for tree in trees:
            wall = statistics.median(w for w, _ in times[(tree, name)])
            cpu = statistics.median(c for _, c in times[(tree, name)])
            mark = "" if wall < BUDGET_SECONDS else f"  (over {BUDGET_SECONDS} s)"
            print(
                f"{str(tree)[-28:]:<28} {name:<13} {wall:>7.3f} {cpu:>7.3f}"
                f" {modules[(tree, name)]:>7} {wall / first_wall:>13.2f}x"
                f" {cpu / first_cpu:>12.2f}x{mark}"
            )


if __name__ == "__main__":
    main()
