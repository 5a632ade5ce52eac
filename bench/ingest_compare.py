"""Two source trees of the gateway (and optional extra ``serve`` flags) in the same rounds.

    python bench/ingest_compare.py --before /path/to/old/checkout
    python bench/ingest_compare.py --before ../old --with-metrics --rounds 6

Each round runs every variant once, alternating which goes first, with
Postfix's ``smtp-source`` against ``replygate serve --role gateway`` started
with ``PYTHONPATH`` set to that variant's tree, on a fresh seeded database
per backend; every run checks that each message was stored. Prints msg/s and
the gateway process's CPU time per message (user + system, from
``/proc/<pid>/stat``: steadier than msg/s on a loaded machine) per round,
and the median ratio of each variant to the first ("before"), so a change is
judged against its own code on the same machine at the same time.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
from pathlib import Path

from ingest import drive
from ingest_common import database, free_port, gateway

HERE = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--before", required=True, type=Path, help="the tree to compare with")
    parser.add_argument("--after", type=Path, default=HERE, help="default: this checkout")
    parser.add_argument("--with-metrics", action="store_true", help="also run after --metrics")
    parser.add_argument("--backend", default="sqlite", choices=["sqlite", "postgresql"])
    parser.add_argument("--sessions", type=int, default=32)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--messages", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()

    # name: (tree, whether the operator port is on)
    variants: dict[str, tuple[Path, bool]] = {
        "before": (args.before.resolve(), False),
        "after": (args.after.resolve(), False),
    }
    if args.with_metrics:
        variants["after --metrics"] = (args.after.resolve(), True)
    rates: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    with (
        tempfile.TemporaryDirectory(prefix="replygate-compare-") as tmp,
        database(args.backend, Path(tmp)) as world,
    ):
        rcpt = world.addresses[0]
        names = list(variants)
        for round_no in range(args.rounds):
            order = names if round_no % 2 == 0 else names[::-1]
            for name in order:
                tree, metrics = variants[name]
                port = free_port()
                extra = ["--metrics", f"127.0.0.1:{free_port()}"] if metrics else []
                with gateway(world, port, extra=extra, PYTHONPATH=str(tree)) as proc:
                    drive(port, 4, args.size, 75, rcpt)  # warm-up
                    world.reset_inbound()
                    used = cpu_seconds(proc.pid)
                    rate = drive(port, args.sessions, args.size, args.messages, rcpt)
                    used = cpu_seconds(proc.pid) - used
                    if (stored := world.count_inbound()) != args.messages:
                        raise RuntimeError(f"{name}: {stored} stored of {args.messages}")
                rates[name].append(rate)
                cpu[name].append(used * 1000 / args.messages)
                print(
                    f"round {round_no + 1} {name}: {rate:,.0f} msg/s, "
                    f"{cpu[name][-1]:.3f} ms CPU/msg",
                    flush=True,
                )
    for label, figures in (("msg/s", rates), ("ms CPU/msg", cpu)):
        base = figures["before"]
        for name, values in figures.items():
            ratios = [v / b for v, b in zip(values, base, strict=True)]
            print(
                f"{name}: median {statistics.median(values):,.3f} {label}, "
                f"÷ before: median {statistics.median(ratios):.3f} "
                f"(rounds {', '.join(f'{r:.2f}' for r in ratios)})"
            )


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
