"""Small test utilities: free ports and polling with a deadline (never sleeping blindly)."""

from __future__ import annotations

import mailbox
import os
import shutil
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default
from pathlib import Path
from typing import TypeVar

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.mail.compose import Notification
from replygate.mail.verp import bounce_key
from replygate.store.db import make_engine
from replygate.store.dialect import OWNER_LOCK_SPACE
from tests.conftest import TEST_SECRET

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    probe: Callable[[], T | None], *, timeout: float = 20.0, interval: float = 0.05, what: str = ""
) -> T:
    """Call ``probe`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or probe!r}")
        time.sleep(interval)


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def read_maildir(path: Path) -> list[EmailMessage]:
    """Every message in a Maildir, or none while it is still being created.

    Deliverers (ours, Postfix's) make tmp/, new/ and cur/ one by one; the
    stdlib reader fails on a Maildir that has only some of them.
    """
    if not all((path / sub).is_dir() for sub in ("tmp", "new", "cur")):
        return []
    box = mailbox.Maildir(path, create=False)
    return [message_from_bytes(box.get_bytes(key), policy=default) for key in box.iterkeys()]


def http_get(port: int, path: str) -> tuple[int, str]:
    """GET ``path`` from 127.0.0.1:``port``: the status and the body (4xx/5xx too)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    """The operator port's ``/metrics``, parsed: (sample name, labels) to value."""
    from prometheus_client.parser import text_string_to_metric_families

    status, body = http_get(port, "/metrics")
    assert status == 200, body
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value, 0 when it has not appeared yet (a counter not yet incremented)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


BODY_WORDS = "Zanzibar quokka thermometer"
# The key the test settings' secret signs bounce addresses with (``settings`` in conftest).
BOUNCE_KEY = bounce_key(TEST_SECRET)


def notification(n: int = 1, **changes: object) -> Notification:
    values: dict[str, object] = dict(
        mode="content",
        notification_id=f"n{n:04d}abc",
        to_address=f"client{n}@example.com",
        to_name=f"Client {n}",
        from_address="notifications@reply.test",
        organisation="Acme Clinic",
        reply_domain="reply.test",
        portal_link="http://portal.test/threads/1",
        subject="Your appointment",
        body=f"Hello,\n{BODY_WORDS}\nSee you soon.",
        author_name="Dr Ada",
        reply_address="reply+abcdefabcdef@reply.test",
        bounce_key=BOUNCE_KEY,
    )
    values.update(changes)
    return Notification(**values)  # type: ignore[arg-type]


def as_sent(stored: bytes) -> bytes:
    """Stored mail without the Authentication-Results field the gateway puts first
    (``mail_auth = verify``): the bytes the sender sent."""
    if not stored.startswith(b"Authentication-Results: "):
        return stored
    at = stored.find(b"\r\n")
    while stored[at + 2 : at + 3] in (b" ", b"\t"):
        at = stored.find(b"\r\n", at + 2)
    return stored[at + 2 :]


def cli_env(settings: Settings) -> dict[str, str]:
    """The environment a ``replygate`` command needs to reach the test's store and keys."""
    return {
        "REPLYGATE_DATABASE_URL": settings.database_url,
        "REPLYGATE_SECRET_KEY": settings.secret_key,
        "REPLYGATE_ENCRYPTION_KEYS_FILE": str(settings.encryption_keys_file),
        "REPLYGATE_REPLY_DOMAIN": settings.reply_domain,
        "REPLYGATE_VAR_DIR": str(settings.var_dir),
    }


def owners_alive(sessions: sessionmaker[Session]) -> int:
    """How many engine processes hold their mark of being alive in this database
    (PostgreSQL's owner advisory locks; other test runs may share the server)."""
    with sessions() as session:
        return int(
            session.execute(
                text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                    "AND granted AND classid::bigint = :space AND database = "
                    "(SELECT oid FROM pg_database WHERE datname = current_database())"
                ),
                {"space": OWNER_LOCK_SPACE},
            ).scalar_one()
        )


class database_away:
    """The database unreachable for new connections while inside: on SQLite the file
    moved away; on PostgreSQL connections refused (``ALLOW_CONNECTIONS false``) and the
    service's own ended. Put back on the way out."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def __enter__(self) -> None:
        if self.settings.is_sqlite:
            self.path = Path(self.settings.database_url.removeprefix("sqlite:///"))
            shutil.move(self.path, self.path.with_suffix(".away"))
            return
        self._admin(
            "ALTER DATABASE {db} ALLOW_CONNECTIONS false",
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = '{name}' AND pid <> pg_backend_pid()",
        )

    def __exit__(self, *exc: object) -> None:
        if self.settings.is_sqlite:
            shutil.move(self.path.with_suffix(".away"), self.path)
            return
        self._admin("ALTER DATABASE {db} ALLOW_CONNECTIONS true")

    def _admin(self, *statements: str) -> None:
        url = os.environ["REPLYGATE_TEST_DATABASE_URL"]
        name = make_engine(self.settings.database_url).url.database
        admin = make_engine(url).execution_options(isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                for statement in statements:
                    conn.execute(text(statement.format(db=f'"{name}"', name=name)))
        finally:
            admin.dispose()
