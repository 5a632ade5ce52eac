"""Shared set-up for the ingest, latency and memory benchmarks.

A seeded database (one organisation in Convenience Mode, one client, threads
with live reply addresses), gateway and worker processes started the way an
operator starts them (``replygate serve --role gateway``, ``replygate
worker``), and a stock aiosmtpd server whose handler does nothing, for
comparison. Never imported by the application.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url

from replygate.mail import reply_token
from replygate.store import directory, tokens
from replygate.store.db import make_engine, normalise_url, session_factory, transaction, upgrade
from replygate.store.models import Thread, ThreadParticipant, utcnow

SECRET = "bench-secret-" + "b" * 51
REPLY_DOMAIN = "reply.test"
CLIENT = "cleo@client.test"
STAFF = "dr.hale@clinic.test"
PG_ADMIN_URL = os.environ.get(
    "REPLYGATE_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REPLYGATE = str(Path(sys.executable).with_name("replygate"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


@dataclass
class World:
    """A seeded database and the reply addresses the client may send to."""

    url: str
    addresses: list[str]
    thread_ids: list[int]
    var_dir: Path

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            # No DNS unless a benchmark starts its loopback server (``loopback_dns``):
            # never the machine's resolver.
            REPLYGATE_MAIL_AUTH="off",
            REPLYGATE_DATABASE_URL=self.url,
            REPLYGATE_SECRET_KEY=SECRET,
            REPLYGATE_ENCRYPTION_KEYS_FILE=str(self.var_dir / "keys"),
            REPLYGATE_REPLY_DOMAIN=REPLY_DOMAIN,
            REPLYGATE_VAR_DIR=str(self.var_dir),
            REPLYGATE_LOG_JSON="1",
        )
        env.update(extra)
        return env

    def count_inbound(self) -> int:
        engine = make_engine(self.url)
        try:
            with engine.connect() as conn:
                return int(conn.execute(text("SELECT count(*) FROM inbound_mail")).scalar() or 0)
        finally:
            engine.dispose()

    def reset_inbound(self) -> None:
        engine = make_engine(self.url)
        try:
            with engine.begin() as conn:
                conn.execute(text("DELETE FROM inbound_mail"))
        finally:
            engine.dispose()


def _install_keys(path: Path) -> None:
    """The key file every process of a run seals with (trees before sealing ignore it)."""
    try:
        from replygate.store import keyring
    except ImportError:
        return
    keyring.install(keyring.Keyring.open_or_create(path))


def seed(url: str, var_dir: Path, threads: int = 1) -> World:
    """Migrate ``url`` and add a client with ``threads`` threads, one reply address each."""
    _install_keys(var_dir / "keys")
    upgrade(url)
    engine = make_engine(url)
    factory = session_factory(engine)
    addresses, thread_ids = [], []
    with transaction(factory) as session:
        directory.organisation(session).convenience_mode = True
        staff = directory.add_user(session, STAFF, "Dr Hale", "staff")
        client = directory.add_user(session, CLIENT, "Cleo Park", "client")
        now = utcnow()
        from datetime import timedelta

        for i in range(threads):
            thread = Thread(subject=f"Appointment {i}", created_by_id=staff.id)
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
                session, token, thread.id, client.id, now=now, expires_at=now + timedelta(days=9)
            )
            addresses.append(reply_token.reply_address(token, REPLY_DOMAIN))
            thread_ids.append(thread.id)
    engine.dispose()
    return World(url, addresses, thread_ids, var_dir)


@contextlib.contextmanager
def database(backend: str, workdir: Path, threads: int = 1) -> Iterator[World]:
    """A fresh seeded database on ``backend`` ("sqlite" or "postgresql"), dropped after."""
    var_dir = workdir / f"var-{backend}-{secrets.token_hex(3)}"
    var_dir.mkdir(parents=True)
    if backend == "sqlite":
        yield seed(f"sqlite:///{var_dir / 'replygate.db'}", var_dir, threads)
        shutil.rmtree(var_dir, ignore_errors=True)
        return
    admin = make_engine(PG_ADMIN_URL).execution_options(isolation_level="AUTOCOMMIT")
    name = f"replygate_bench_{os.getpid()}_{secrets.token_hex(3)}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(normalise_url(PG_ADMIN_URL)).set(database=name)
    try:
        yield seed(url.render_as_string(hide_password=False), var_dir, threads)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        shutil.rmtree(var_dir, ignore_errors=True)


@contextlib.contextmanager
def process(args: list[str], env: dict[str, str] | None = None, port: int | None = None):
    """A child process (its output discarded), stopped with SIGTERM at the end."""
    proc = subprocess.Popen(
        args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        if port is not None:
            wait_port(port)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_ready(notify: socket.socket, count: int, timeout: float = 120) -> None:
    """Wait until ``count`` processes have said READY=1 on ``notify`` (the systemd protocol)."""
    notify.settimeout(timeout)
    ready = 0
    while ready < count:
        if b"READY=1" in notify.recv(4096).split(b"\n"):
            ready += 1


@contextlib.contextmanager
def gateway(
    world: World, port: int, *, reuse_port: bool = False, extra: Sequence[str] = (), **env: str
) -> Iterator[subprocess.Popen[bytes]]:
    """``replygate serve --role gateway``, yielded once it has said READY=1.

    Gateways sharing a port must each be started with ``reuse_port``
    (``--reuse-port``, SO_REUSEPORT). Waiting for the port is not enough when
    a second gateway shares it: the first already answers while the second is
    still importing, and its start-up would be measured as the pair's throughput.
    """
    with tempfile.TemporaryDirectory(prefix="replygate-notify-") as tmp:
        path = str(Path(tmp) / "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify.bind(path)
            serve = [REPLYGATE, "serve", "--role", "gateway", "--smtp", f"127.0.0.1:{port}"]
            if reuse_port:
                serve.append("--reuse-port")
            serve.extend(extra)
            with process(serve, env=world.env(NOTIFY_SOCKET=path, **env)) as proc:
                deadline = time.monotonic() + 120
                while True:
                    try:
                        wait_ready(notify, 1, timeout=1)
                        break
                    except TimeoutError:
                        if proc.poll() is not None or time.monotonic() > deadline:
                            code = proc.poll()
                            raise RuntimeError(f"the gateway did not start ({code=})") from None
                yield proc


@contextlib.contextmanager
def loopback_dns() -> Iterator[dict[str, str]]:
    """The tests' DNS server on loopback, publishing the client domain's SPF (127.0.0.1)
    and a DMARC reject policy; yields the gateway settings that check mail against it
    as the MX would (``mail_auth = verify``, loopback no relay)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.dns_server import LoopbackDns

    server = LoopbackDns()
    domain = CLIENT.rpartition("@")[2]
    server.zone.txt(domain, "v=spf1 ip4:127.0.0.1 -all")
    server.zone.txt(f"_dmarc.{domain}", "v=DMARC1; p=reject")
    try:
        yield {
            "REPLYGATE_MAIL_AUTH": "verify",
            "REPLYGATE_DNS_NAMESERVERS": server.address,
            "REPLYGATE_SMTP_TRUSTED_RELAYS": "192.0.2.0/24",
        }
    finally:
        server.stop()


def stock_server(port: int):
    """aiosmtpd 1.4.6 as shipped, a handler that does nothing, ``hostname=`` given."""
    return process(
        [sys.executable, str(Path(__file__).with_name("ingest_stock_noop.py")), str(port)],
        port=port,
    )
