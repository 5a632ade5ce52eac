"""The whole path over real sockets, through the real command line:

``replygate send`` in Convenience Mode → the notification lands in the
Maildir with a tokenized Reply-To → a reply written the way Gmail, Outlook
or an iPhone writes it goes over SMTP to a running ``replygate serve`` →
``threads show`` has the reply text without quote or signature → the
original sender's content notification is in the Maildir.
"""

from __future__ import annotations

import json
import os
import signal
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from click.testing import CliRunner

from replygate.cli import main
from replygate.config import Settings
from tests.conftest import FIXTURES
from tests.helpers import free_port, port_open, read_maildir, wait_for

CLIENTS = ["gmail", "outlook", "iphone"]


class Deployment:
    """A configured replygate: environment for the CLI and a running ``serve``."""

    def __init__(self, settings: Settings, tmp: Path) -> None:
        self.smtp_port = free_port()
        self.portal_port = free_port()
        self.maildir = tmp / "outbox"
        self.env = {
            "REPLYGATE_DATABASE_URL": settings.database_url,
            "REPLYGATE_SECRET_KEY": settings.secret_key,
            "REPLYGATE_ENCRYPTION_KEYS_FILE": str(settings.encryption_keys_file),
            "REPLYGATE_VAR_DIR": str(tmp / "var"),
            "REPLYGATE_OUTBOX_MAILDIR": str(self.maildir),
            "REPLYGATE_REPLY_DOMAIN": "reply.test",
            "REPLYGATE_SMTP_PORT": str(self.smtp_port),
            "REPLYGATE_PORTAL_PORT": str(self.portal_port),
            "REPLYGATE_WORKER_POLL_SECONDS": "0.05",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str) -> str:
        result = CliRunner().invoke(main, list(args), env=self.env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    def start(self) -> None:
        env = {**os.environ, **self.env}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "replygate", "serve"], env=env, stderr=subprocess.PIPE
        )
        wait_for(
            lambda: port_open("127.0.0.1", self.smtp_port) or self._died(),
            what="the SMTP gateway to listen",
        )

    def _died(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            err = self.proc.stderr.read().decode() if self.proc.stderr else ""
            raise AssertionError(f"replygate serve exited: {err[-3000:]}")
        return False

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            assert self.proc.wait(timeout=20) == 0, "serve did not stop cleanly on Ctrl-C"
        finally:
            if self.proc.poll() is None:
                self.proc.kill()

    def dana_writes_to_cleo(self, subject: str, body: str) -> tuple[int, EmailMessage]:
        """``replygate send`` from Dana to Cleo; the thread id and Cleo's notification."""
        sent = json.loads(
            self.cli(
                "send",
                "--from",
                "dana@staff.test",
                "--to",
                "cleo@example.com",
                "--subject",
                subject,
                "--body",
                body,
                "--json",
            )
        )
        assert sent["threads"][0]["recipient"] == "cleo@example.com"
        (notification,) = wait_for(
            lambda: self.mails_to("cleo@example.com"), what="Cleo's notification in the Maildir"
        )
        return sent["threads"][0]["id"], notification

    def mails_to(self, address: str) -> list[EmailMessage]:
        return [m for m in read_maildir(self.maildir) if address in str(m["To"])]


@pytest.fixture
def deployment(settings: Settings, tmp_path: Path) -> Iterator[Deployment]:
    d = Deployment(settings, tmp_path)
    d.cli("users", "add", "dana@staff.test", "--name", "Dana Staff", "--role", "staff")
    d.cli("users", "add", "cleo@example.com", "--name", "Cleo Client", "--role", "client")
    d.cli("settings", "convenience", "on", "--acknowledge-hipaa", "--by", "dana@staff.test")
    d.start()
    yield d
    d.stop()


@pytest.mark.parametrize("client", CLIENTS)
def test_reply_from_a_mail_client_is_filed_and_notified(
    deployment: Deployment, client: str
) -> None:
    thread_id, notification = deployment.dana_writes_to_cleo(
        "Tuesday appointment", "Can you make Tuesday at 10?"
    )
    reply_to = str(notification["Reply-To"])
    assert reply_to.startswith("reply+") and reply_to.endswith("@reply.test")
    assert "Can you make Tuesday at 10?" in notification.get_body(("plain",)).get_content()

    raw = (FIXTURES / "replies" / f"{client}.eml").read_bytes()
    raw = raw.replace(b"reply+TOKEN@reply.test", reply_to.encode())
    expected = (FIXTURES / "replies" / f"{client}.expected.txt").read_text().strip()
    with smtplib.SMTP("127.0.0.1", deployment.smtp_port, timeout=10) as smtp:
        refused = smtp.sendmail("cleo@example.com", [reply_to], raw)
    assert refused == {}

    def filed() -> dict | None:
        shown = json.loads(deployment.cli("threads", "show", str(thread_id), "--json"))
        return shown if len(shown["messages"]) == 2 else None

    shown = wait_for(filed, what="the reply to be filed")
    reply = shown["messages"][1]
    assert reply["author"] == "cleo@example.com"
    assert reply["source"] == "email"
    assert reply["body"].strip() == expected

    (to_dana,) = wait_for(
        lambda: deployment.mails_to("dana@staff.test"), what="Dana's content notification"
    )
    assert expected.splitlines()[0] in to_dana.get_body(("plain",)).get_content()
    queue = json.loads(deployment.cli("queue", "list", "--json"))
    assert [(q["status"], q["rcpt"]) for q in queue] == [("filed", reply_to)]


def _rcpt_refusal(port: int, address: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.ehlo()
        smtp.mail("cleo@example.com")
        return smtp.rcpt(address)


def test_secure_mode_leaks_nothing_and_a_reply_to_it_is_refused(deployment: Deployment) -> None:
    deployment.cli("settings", "convenience", "off")
    _, notification = deployment.dana_writes_to_cleo(
        "Biopsy results walrus", "Your results show a pelican marker."
    )
    raw = notification.as_bytes().lower()
    for word in (b"biopsy", b"walrus", b"pelican"):
        assert word not in raw
    assert notification["Reply-To"] is None
    # Replying goes to the notification's From, which names no thread: refused at RCPT.
    code, text = _rcpt_refusal(
        deployment.smtp_port, str(notification["From"].addresses[0].addr_spec)
    )
    assert code == 550 and text.startswith(b"5.1.1")
    assert json.loads(deployment.cli("queue", "list", "--json")) == []


def test_switching_convenience_off_refuses_replies_to_notifications_already_sent(
    deployment: Deployment,
) -> None:
    _, notification = deployment.dana_writes_to_cleo("Hello", "Hello Cleo")
    reply_to = str(notification["Reply-To"])
    deployment.cli("settings", "convenience", "off")
    code, text = _rcpt_refusal(deployment.smtp_port, reply_to)
    assert code == 550 and text.startswith(b"5.7.1")
    assert json.loads(deployment.cli("queue", "list", "--json")) == []


def test_a_forwarded_notification_answered_by_someone_else_is_refused(
    deployment: Deployment,
) -> None:
    _, notification = deployment.dana_writes_to_cleo("Hello", "Hello Cleo")
    reply_to = str(notification["Reply-To"])
    forwarded = EmailMessage()
    forwarded["From"] = "Eve Third <eve@elsewhere.test>"
    forwarded["To"] = reply_to
    forwarded["Subject"] = "Re: Fwd: Hello"
    forwarded["Message-ID"] = "<eve-1@elsewhere.test>"
    forwarded.set_content("Cleo sent me this; what is it about?\n")
    with (
        smtplib.SMTP("127.0.0.1", deployment.smtp_port, timeout=10) as smtp,
        pytest.raises(smtplib.SMTPDataError) as refused,
    ):
        smtp.sendmail("eve@elsewhere.test", [reply_to], forwarded.as_bytes())
    assert refused.value.smtp_code == 550
    assert refused.value.smtp_error.startswith(b"5.7.1")
    assert json.loads(deployment.cli("queue", "list", "--json")) == []
    shown = json.loads(deployment.cli("threads", "show", "1", "--json"))
    assert len(shown["messages"]) == 1
