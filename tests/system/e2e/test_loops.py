"""No mail loops: our notification reaches an auto-responder that answers
the Reply-To; the answer is recorded as ignored and never notified on, so at
most one notification is ever sent."""

from __future__ import annotations

import json
import smtplib
import threading
from collections.abc import Iterator
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from replygate.config import Settings
from tests.helpers import free_port, wait_for
from tests.system.e2e.test_reply_by_email import Deployment


class AutoResponder:
    """A mail server that answers every message it receives, as vacation
    responders do: to the Reply-To, from the recipient's address."""

    def __init__(self, gateway_port: int, *, style: str) -> None:
        self.gateway_port = gateway_port
        self.style = style
        self.received: list[EmailMessage] = []
        self.answered = threading.Event()

    async def handle_DATA(self, server, session, envelope) -> str:
        original = message_from_bytes(envelope.content, policy=default)
        self.received.append(original)
        answer = EmailMessage()
        answer["From"] = envelope.rcpt_tos[0]
        answer["To"] = str(original["Reply-To"] or original["From"])
        answer["Message-ID"] = f"<auto-{len(self.received)}@responder.test>"
        answer["In-Reply-To"] = str(original["Message-ID"])
        if self.style == "rfc3834":
            answer["Subject"] = "Auto: " + str(original["Subject"])
            answer["Auto-Submitted"] = "auto-replied"
        else:  # Outlook's, which sets no RFC 3834 header
            answer["Subject"] = "Automatic reply: " + str(original["Subject"])
            answer["X-Auto-Response-Suppress"] = "All"
        answer.set_content("I am out of the office until Monday.\n")
        with smtplib.SMTP("127.0.0.1", self.gateway_port, timeout=10) as smtp:
            smtp.send_message(answer, from_addr=envelope.rcpt_tos[0])
        self.answered.set()
        return "250 2.0.0 OK"


@pytest.fixture(params=["rfc3834", "outlook"])
def looped(
    request: pytest.FixtureRequest, settings: Settings, tmp_path: Path
) -> Iterator[tuple[Deployment, AutoResponder]]:
    d = Deployment(settings, tmp_path)
    responder = AutoResponder(d.smtp_port, style=request.param)
    port = free_port()
    controller = Controller(responder, hostname="127.0.0.1", port=port)
    controller.start()
    d.env.update(
        {
            "REPLYGATE_SMARTHOST_HOST": "127.0.0.1",
            "REPLYGATE_SMARTHOST_PORT": str(port),
            "REPLYGATE_SMARTHOST_STARTTLS": "false",
        }
    )
    d.cli("users", "add", "dana@staff.test", "--name", "Dana Staff", "--role", "staff")
    d.cli("users", "add", "cleo@example.com", "--name", "Cleo Client", "--role", "client")
    d.cli("settings", "convenience", "on", "--acknowledge-hipaa")
    d.start()
    yield d, responder
    d.stop()
    controller.stop()


def test_an_auto_responder_cannot_start_a_loop(looped: tuple[Deployment, AutoResponder]) -> None:
    d, responder = looped
    d.cli(
        "send", "--from", "dana@staff.test", "--to", "cleo@example.com",
        "--subject", "Hello", "--body", "Are you coming on Tuesday?",
    )  # fmt: skip
    assert responder.answered.wait(20), "the responder never received our notification"

    def settled() -> list | None:
        queue = json.loads(d.cli("queue", "list", "--json"))
        return queue if queue and queue[0]["status"] not in ("queued", "processing") else None

    (row,) = wait_for(settled, what="the auto-reply to be processed")
    assert row["status"] == "ignored"
    outbox = json.loads(d.cli("threads", "show", "1", "--json"))
    assert len(outbox["messages"]) == 1  # nothing filed
    assert len(responder.received) == 1  # one notification, no ping-pong
