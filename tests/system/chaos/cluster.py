"""A PostgreSQL server of the test's own, to stop and start under load.

``initdb`` makes a cluster in a fresh directory and ``pg_ctl`` runs it on a
free port of 127.0.0.1 with trust authentication, its socket in that
directory: the shared server the rest of the suite uses is never touched.
The binaries are found under ``/usr/lib/postgresql/<version>/bin`` (or on
``PATH``); without them the test fails, saying what to install. ``initdb``
refuses to run as root, so as root every server command runs as the
``postgres`` user (``runuser``), which owns the cluster's directory.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import free_port

SERVER_USER = "postgres"


def postgres_bin() -> Path:
    """The directory holding ``initdb`` and ``pg_ctl``; fails loudly when there is none."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1].parent
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).parent
    raise AssertionError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found under /usr/lib/postgresql/*/bin "
        "or on PATH; install the postgresql package (.ci/system-deps.sh does)"
    )


def _as_server_user() -> list[str]:
    """The prefix that runs a server command as a user ``initdb`` accepts."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError as exc:
        raise AssertionError(
            f"running as root and there is no {SERVER_USER!r} user to run initdb as "
            "(initdb refuses root); install the postgresql package or run as another user"
        ) from exc
    runuser = shutil.which("runuser")
    if runuser is None:
        raise AssertionError("running as root without runuser to run initdb as postgres")
    return [runuser, "-u", SERVER_USER, "--"]


@dataclass
class Cluster:
    """One private server: ``start``, ``stop``, ``restart``, ``terminate_backends``."""

    bindir: Path
    root: Path
    port: int

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://{SERVER_USER}@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 60) -> None:
        done = subprocess.run(
            [*_as_server_user(), *args], capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed: {done.stdout}{done.stderr}")

    @classmethod
    def create(cls) -> Cluster:
        bindir = postgres_bin()
        root = Path(tempfile.mkdtemp(prefix="replygate-pg-"))
        prefix = _as_server_user()
        if prefix:
            user = pwd.getpwnam(SERVER_USER)
            os.chown(root, user.pw_uid, user.pw_gid)
        cluster = cls(bindir, root, free_port())
        cluster._run(
            str(bindir / "initdb"),
            "-D",
            str(cluster.data),
            "-U",
            SERVER_USER,
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
        )
        return cluster

    def start(self) -> None:
        """Start and wait until it accepts connections (``pg_ctl -w``)."""
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=100"
        )
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.root / "log"),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop it; ``fast`` terminates every backend, ``immediate`` is a crash."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def terminate_backends(self) -> int:
        """Terminate every other client backend, as an operator's ``pg_terminate_backend``
        would; returns how many."""
        import psycopg

        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user={SERVER_USER} dbname=postgres",
            autocommit=True,
        ) as conn:
            row = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'"
            ).fetchone()
        return int(row[0]) if row else 0

    def destroy(self) -> None:
        with contextlib.suppress(AssertionError):  # already stopped
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
