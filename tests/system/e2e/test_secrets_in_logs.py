"""A running ``replygate serve --log-json`` logs no secret, start to stop.

The deployment of ``test_reply_by_email``: Dana writes to Cleo in
Convenience Mode, Cleo replies over SMTP with a file named
``secret-diagnosis.pdf``, an attacker tries a forged token, Cleo's token at
another domain, a refused file type and a forged From. The process's whole
stderr (structlog's JSON lines and stdlib logging) holds none of the tokens
issued, no reply address, no subject, body or file name; it names Cleo's
address by the fingerprint ``tokens inspect`` shows.
"""

from __future__ import annotations

import json
import os
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.store.models import ReplyToken
from tests.helpers import port_open, wait_for
from tests.system.e2e.test_reply_by_email import Deployment

FILE_NAME = "secret-diagnosis.pdf"
SUBJECT_MARK = "Heronsubjectmark"
BODY_MARK = "Wombatbodymark"
REPLY_MARK = "Axolotlreplymark"
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


class LoggedDeployment(Deployment):
    """The deployment with ``--log-json`` and its stderr kept whole in a file."""

    def __init__(self, settings: Settings, tmp: Path) -> None:
        super().__init__(settings, tmp)
        self.env["REPLYGATE_LOG_JSON"] = "1"
        self.log_path = tmp / "serve.log"

    def start(self) -> None:
        with self.log_path.open("wb") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "replygate", "serve"],
                env={**os.environ, **self.env},
                stderr=log_file,
            )
        wait_for(
            lambda: port_open("127.0.0.1", self.smtp_port) or self._died(),
            what="the SMTP gateway to listen",
        )

    def _died(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"replygate serve exited: {self.log()[-3000:]}")
        return False

    def log(self) -> str:
        return self.log_path.read_bytes().decode("utf-8", "replace")


@pytest.fixture
def deployment(settings: Settings, tmp_path: Path) -> Iterator[LoggedDeployment]:
    d = LoggedDeployment(settings, tmp_path)
    d.cli("users", "add", "dana@staff.test", "--name", "Dana Staff", "--role", "staff")
    d.cli("users", "add", "cleo@example.com", "--name", "Cleo Client", "--role", "client")
    d.cli("settings", "convenience", "on", "--acknowledge-hipaa", "--by", "dana@staff.test")
    d.start()
    yield d
    d.stop()


def _reply(to: str, *, from_: str = "Cleo <cleo@example.com>", file_type: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = from_
    msg["To"] = to
    msg["Subject"] = f"Re: {SUBJECT_MARK}"
    msg["Message-ID"] = make_msgid(domain="example.com")
    msg.set_content(f"{REPLY_MARK}, my results are attached.\n")
    maintype, subtype = file_type.split("/")
    msg.add_attachment(PDF, maintype=maintype, subtype=subtype, filename=FILE_NAME)
    return msg.as_bytes()


def _send(port: int, rcpt: str, raw: bytes, mail_from: str = "cleo@example.com") -> int:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.ehlo("mx.example.com")
        smtp.mail(mail_from)
        code, _ = smtp.rcpt(rcpt)
        return code if code != 250 else smtp.data(raw)[0]


def test_the_whole_log_of_a_deployment_holds_no_secret(
    deployment: LoggedDeployment, sessions: sessionmaker[Session]
) -> None:
    thread_id, notification = deployment.dana_writes_to_cleo(
        f"Results {SUBJECT_MARK}", f"Your results {BODY_MARK} are in."
    )
    live = str(notification["Reply-To"])
    token = live.removeprefix("reply+").partition("@")[0]
    port = deployment.smtp_port
    assert _send(port, live, _reply(live, file_type="application/pdf")) == 250
    assert _send(port, live, _reply(live, file_type="application/x-msdownload")) >= 500
    forged_from = _reply(live, from_="Cleo <cleo@evil.test>", file_type="application/pdf")
    assert _send(port, live, forged_from, mail_from="cleo@evil.test") >= 500
    forged = "reply+" + "q" * len(token) + "@reply.test"
    other_domain = f"reply+{token}@old-reply.test"
    for address in (forged, other_domain):
        assert _send(port, address, _reply(address, file_type="application/pdf")) >= 500

    def filed() -> bool:
        shown = json.loads(deployment.cli("threads", "show", str(thread_id), "--json"))
        return len(shown["messages"]) == 2

    wait_for(filed, what="the reply to be filed")
    wait_for(lambda: deployment.mails_to("dana@staff.test"), what="Dana's notification")
    inspected = json.loads(deployment.cli("tokens", "inspect", live, "--json"))
    deployment.stop()

    log = deployment.log()
    with sessions() as s:
        issued = list(s.scalars(select(ReplyToken.token)))
    assert len(issued) == 2  # Cleo's, and Dana's in her content notification
    secrets = [*issued, live, forged, other_domain, "q" * len(token)]
    secrets += [FILE_NAME, SUBJECT_MARK, BODY_MARK, REPLY_MARK]
    leaked = [secret for secret in secrets if secret.lower() in log.lower()]
    assert not leaked, f"in the log of replygate serve: {leaked}"
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert {"inbound.mail", "inbound.rcpt", "inbound.processed"} <= {e["event"] for e in lines}
    # The operator matches a log line to the token with ``tokens inspect``.
    assert f"reply+fp:{inspected['fingerprint']}@reply.test" in log
