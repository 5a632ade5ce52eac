"""Nothing a person wrote is left readable in the database, whole, as a thief would take it.

The scenario runs through the real command line and a running ``replygate
serve`` in Convenience Mode: Dana sends Cleo a message (a marker in its
subject and one in its body); Cleo replies over SMTP through the gateway
with her own words (quoted-printable, not ASCII) and a file (a marker in its
name and one in its bytes, base64); the reply is filed and Dana told of it.
Then the database is read as bytes: on SQLite the file and its ``-wal``
beside it while ``serve`` still runs (nothing checkpointed first) and again
after a checkpoint; on PostgreSQL a ``pg_dump`` of the database. No marker
may be found in any of the forms the mail carried it in (UTF-8, base64 at
each alignment, quoted-printable, and hex as ``pg_dump`` writes bytea).

The Maildir outbox holds the notifications as files and is no part of the
database: the operator encrypts that disk.
"""

from __future__ import annotations

import base64
import glob
import json
import quopri
import shutil
import smtplib
import sqlite3
import subprocess
from collections.abc import Iterator
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from replygate.config import Settings
from tests.helpers import wait_for
from tests.system.e2e.test_reply_by_email import Deployment

SUBJECT = "Kinkajou subject marker"
BODY = "Axolotl body marker"
REPLY = "Pangolin-réponse-marqueur"  # not ASCII: the reply carries it quoted-printable
FILENAME = "Okapi-filename-marker.txt"
FILE_BYTES = b"Tapir attachment marker: HbA1c 6.1%\n"
MARKERS = {"subject": SUBJECT, "body": BODY, "reply": REPLY, "file name": FILENAME}


def _forms(marker: bytes) -> set[bytes]:
    """``marker`` as it may lie in stored bytes: itself, quoted-printable, hex (lower and
    upper), and base64 at each of the three alignments a longer text can put it at."""
    forms = {marker, quopri.encodestring(marker).rstrip(b"\n"), marker.hex().encode()}
    forms.add(marker.hex().upper().encode())
    for skip in range(3):
        part = marker[skip:]
        forms.add(base64.b64encode(part[: len(part) // 3 * 3]))
    return {f for f in forms if len(f) >= 8}


FORMS = {name: _forms(text.encode()) for name, text in MARKERS.items()}
FORMS["file bytes"] = _forms(FILE_BYTES.split(b":")[0])


def _found(dump: bytes) -> list[str]:
    """The markers ``dump`` holds in some form, named."""
    flat = dump.replace(b"\r\n", b"").replace(b"\n", b"")  # base64 and QP lines broken
    return sorted(
        name for name, forms in FORMS.items() if any(f in dump or f in flat for f in forms)
    )


def _reply(reply_to: str) -> bytes:
    mail = EmailMessage()
    mail["From"] = "Cleo Client <cleo@example.com>"
    mail["To"] = reply_to
    mail["Subject"] = f"Re: {SUBJECT}"
    mail["Message-ID"] = "<sealed-at-rest-1@example.com>"
    mail.set_content(f"Thank you. {REPLY}\n", cte="quoted-printable")
    mail.add_attachment(FILE_BYTES, maintype="text", subtype="plain", filename=FILENAME)
    raw = mail.as_bytes(policy=SMTP)
    assert REPLY.encode() not in raw and FILE_BYTES not in raw  # as the mail carried them
    return raw


@pytest.fixture
def deployment(settings: Settings, tmp_path: Path) -> Iterator[Deployment]:
    d = Deployment(settings, tmp_path)
    d.cli("users", "add", "dana@staff.test", "--name", "Dana Staff", "--role", "staff")
    d.cli("users", "add", "cleo@example.com", "--name", "Cleo Client", "--role", "client")
    d.cli("settings", "convenience", "on", "--acknowledge-hipaa", "--by", "dana@staff.test")
    d.start()
    yield d
    d.stop()


def _scenario(deployment: Deployment) -> None:
    """Dana writes, Cleo replies by email with a file, the reply is filed and Dana told."""
    thread_id, notification = deployment.dana_writes_to_cleo(SUBJECT, BODY)
    reply_to = str(notification["Reply-To"])
    with smtplib.SMTP("127.0.0.1", deployment.smtp_port, timeout=10) as smtp:
        assert smtp.sendmail("cleo@example.com", [reply_to], _reply(reply_to)) == {}

    def filed() -> dict | None:
        shown = json.loads(deployment.cli("threads", "show", str(thread_id), "--json"))
        return shown if len(shown["messages"]) == 2 else None

    shown = wait_for(filed, what="the reply to be filed")
    assert shown["subject"] == SUBJECT
    first, reply = shown["messages"]
    assert first["body"] == BODY and REPLY in reply["body"]
    assert [a["filename"] for a in reply["attachments"]] == [FILENAME]
    (to_dana,) = wait_for(
        lambda: deployment.mails_to("dana@staff.test"), what="Dana's content notification"
    )
    assert REPLY in to_dana.get_body(("plain",)).get_content()  # the outbox carried it


def _pg_dump(url: str) -> bytes:
    found = shutil.which("pg_dump") or next(
        iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_dump"), reverse=True)), None
    )
    if found is None:
        pytest.fail("pg_dump is not installed: the PostgreSQL dump cannot be checked")
    target = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    done = subprocess.run([found, "--no-owner", target], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


def test_no_marker_is_in_the_database_or_its_wal(
    deployment: Deployment, settings: Settings
) -> None:
    _scenario(deployment)
    url = make_url(settings.database_url)
    if url.get_backend_name() == "postgresql":
        dump = _pg_dump(settings.database_url)
        assert b"COPY public.messages" in dump and b"COPY public.message_attachments" in dump
        assert _found(dump) == []
        return
    path = Path(url.database or "")
    wal = Path(f"{path}-wal")
    # While serve runs, nothing checkpointed: the newest pages may be in the WAL alone.
    assert wal.exists() and wal.stat().st_size > 0
    before = {"database": path.read_bytes(), "wal": wal.read_bytes()}
    assert {name: _found(data) for name, data in before.items()} == {"database": [], "wal": []}
    with sqlite3.connect(path) as conn:
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    assert busy == 0
    after = path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")
    assert len(after) > 0 and _found(after) == []
    # The check itself finds a marker where one is: the Maildir holds the notifications.
    maildir = b"".join(p.read_bytes() for p in deployment.maildir.rglob("*") if p.is_file())
    assert {"subject", "body", "reply"} <= set(_found(maildir))
