"""A real Postfix in front of replygate, both ways docs/operating.md describes.

Debian's ``postfix`` (installed by ``.ci/system-deps.sh``; the test fails,
never skips, when it is missing) is started by the test on loopback with a
configuration, queue and log of its own (``postfix -c DIR start``; the
system instance is never touched) and stopped at the end. Its transport map
sends the reply domain to replygate:

- ``smtp``: relayed over SMTP to a running ``replygate serve --role gateway``
  on a free loopback port (``reply.test  smtp:[127.0.0.1]:PORT``);
- ``pipe``: handed to ``replygate ingest`` by a ``master.cf`` pipe service
  running as ``nobody`` (an unprivileged user that can read the virtualenv
  and owns the test's state directory; production uses the ``replygate``
  user the systemd units run as).

In both, a ``replygate worker`` process files what was queued. A reply
submitted with Postfix's own ``sendmail`` ends up filed in its thread; a reply
to a reply address we never issued is refused by replygate, and Postfix
bounces it to the sender with our sentence in the delivery report, found in
the sender's Maildir on the same Postfix.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import TypeVar

import pytest

from replygate.config import Settings
from replygate.gateway import replies
from replygate.gateway.replies import Condition
from replygate.mail import reply_token
from tests.helpers import free_port, wait_for
from tests.system.deploy.postfix import (
    POSTFIX,
    SENDMAIL,
    PostfixInstance,
    instance_root,
    remove_root,
)
from tests.system.deploy.stack import CLIENT, REPLY_DOMAIN, STAFF, Stack

T = TypeVar("T")
TRANSPORTS = ["smtp", "pipe"]

PIPE_SERVICE = (
    "replygate unix  -       n       n       -       -       pipe\n"
    "  flags=DRq user={user} null_sender=\n"
    "  argv={program} --config {config} ingest --rcpt=${{recipient}} --sender=${{sender}}"
    " --client-ip=${{client_address}} --helo=${{client_helo}}\n"
)


class Deployed:
    """Postfix and replygate wired together with one transport."""

    def __init__(self, stack: Stack, postfix: PostfixInstance, transport: str) -> None:
        self.stack = stack
        self.postfix = postfix
        self.transport = transport

    def wait(self, probe: Callable[[], T | None], what: str, timeout: float = 60.0) -> T:
        """``wait_for`` that shows the Postfix log and replygate's output when it times out."""
        try:
            return wait_for(lambda: probe() or self.stack.check_alive(), what=what, timeout=timeout)
        except AssertionError as exc:
            outputs = "\n".join(
                f"--- replygate {name}:\n{self.stack.output(name)}" for name in self.stack.processes
            )
            raise AssertionError(
                f"{exc}\n--- postfix log (end):\n{tail(self.postfix.log())}\n{outputs}"
            ) from None


def tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


def require_postfix() -> None:
    missing = [p for p in (POSTFIX, SENDMAIL) if not Path(p).exists()]
    if missing or shutil.which("postconf") is None:
        pytest.fail("Postfix is not installed (run .ci/system-deps.sh): missing " + str(missing))
    if os.geteuid() != 0:
        pytest.fail("the Postfix test starts a Postfix instance and must run as root")


@pytest.fixture(params=TRANSPORTS)
def deployed(request: pytest.FixtureRequest, settings: Settings) -> Iterator[Deployed]:
    require_postfix()
    transport = request.param
    root = instance_root()
    stack = Stack(settings, root)
    postfix: PostfixInstance | None = None
    try:
        stack.seed()
        if transport == "smtp":
            stack.start_gateway()
            target = f"smtp:[127.0.0.1]:{stack.smtp_port}"
            pipe = ""
        else:
            target = "replygate:"
            pipe = PIPE_SERVICE.format(
                user=stack.pipe_user.pw_name,
                program=stack.program(),
                config=stack.write_config_file(),
            )
        stack.start_worker()
        postfix = PostfixInstance(
            root / "postfix",
            smtpd_port=free_port(),
            transport={REPLY_DOMAIN: target},
            mailboxes=[CLIENT],
            pipe_service=pipe,
        )
        postfix.start()
        yield Deployed(stack, postfix, transport)
    finally:
        try:
            if postfix is not None:
                postfix.stop()
        finally:
            stack.stop()
            remove_root(root)


def send_and_get_reply_address(d: Deployed, body: str) -> tuple[int, EmailMessage]:
    sent = d.stack.cli_json(
        "send", "--from", STAFF, "--to", CLIENT, "--subject", "Tuesday", "--body", body
    )
    assert isinstance(sent, dict)
    thread_id = sent["threads"][0]["id"]
    (notification,) = d.wait(
        lambda: d.stack.outbox_mail_to(CLIENT), what="the client's notification"
    )
    return thread_id, notification


def reply_to(notification: EmailMessage, text: str, *, to: str | None = None) -> bytes:
    """A plain-text reply the way a mail client writes it: new text, then the quote."""
    address = to or str(notification["Reply-To"])
    msg = EmailMessage()
    msg["From"] = f"Cleo Client <{CLIENT}>"
    msg["To"] = address
    msg["Subject"] = "Re: " + str(notification["Subject"])
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain="client.test")
    if notification["Message-ID"]:
        msg["In-Reply-To"] = str(notification["Message-ID"])
        msg["References"] = str(notification["Message-ID"])
    quoted = notification.get_body(("plain",)).get_content()
    msg.set_content(
        f"{text}\n\nOn Tue, Dana Staff <{STAFF}> wrote:\n"
        + "".join(f"> {line}\n" for line in quoted.splitlines())
    )
    return msg.as_bytes()


def one_line(text: str) -> str:
    return " ".join(text.split())


def test_reply_through_postfix_is_filed(deployed: Deployed) -> None:
    d = deployed
    thread_id, notification = send_and_get_reply_address(d, "Can you make Tuesday at 10?")
    address = str(notification["Reply-To"])
    assert address.startswith("reply+") and address.endswith("@" + REPLY_DOMAIN)

    d.postfix.sendmail(
        reply_to(notification, "Tuesday at 10 works for me."), sender=CLIENT, recipients=[address]
    )

    def filed() -> dict | None:
        shown = d.stack.cli_json("threads", "show", str(thread_id))
        assert isinstance(shown, dict)
        return shown if len(shown["messages"]) == 2 else None

    shown = d.wait(filed, what="the reply to be filed in its thread")
    reply = shown["messages"][1]
    assert (reply["author"], reply["source"]) == (CLIENT, "email")
    assert reply["body"].strip() == "Tuesday at 10 works for me."

    relay = f"127.0.0.1[127.0.0.1]:{d.stack.smtp_port}" if d.transport == "smtp" else "replygate"
    delivered = f"to=<{address}>, relay={relay}, "
    d.wait(
        lambda: any(delivered in line and "status=sent" in line for line in d.postfix.log_lines()),
        what="Postfix to log the delivery to replygate",
    )
    queue = d.stack.cli_json("queue", "list")
    assert isinstance(queue, list)
    assert [(q["status"], q["rcpt"], q["mail_from"]) for q in queue] == [("filed", address, CLIENT)]
    assert d.postfix.mailbox(CLIENT) == [], "nothing bounced"


def test_unknown_reply_address_is_bounced_by_postfix_with_our_reason(deployed: Deployed) -> None:
    d = deployed
    _, notification = send_and_get_reply_address(d, "Can you make Tuesday at 10?")
    never_issued = reply_token.reply_address(
        reply_token.new_token(d.stack.secret_key), REPLY_DOMAIN
    )

    d.postfix.sendmail(
        reply_to(notification, "Is this thing on?", to=never_issued),
        sender=CLIENT,
        recipients=[never_issued],
    )

    (dsn,) = d.wait(lambda: d.postfix.mailbox(CLIENT), what="the delivery report to the sender")
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    assert "MAILER-DAEMON" in str(dsn["From"])
    text = one_line(dsn.as_string())
    ours = replies.reply(Condition.UNKNOWN_TOKEN)
    assert one_line(ours.text) in text
    assert never_issued in text
    if d.transport == "smtp":
        # Refused in the SMTP dialogue, quoted by Postfix in the report.
        assert f"said: 550 {ours.status} <{never_issued}>: " in text
        assert "(in reply to RCPT TO command)" in text
    else:
        # ingest exits EX_NOUSER and prints "5.1.1 <address>: sentence"; Postfix takes the
        # enhanced status code from that output and quotes the rest in the report.
        assert f"Status: {ours.status}" in text
        assert f"Diagnostic-Code: x-unix; <{never_issued}>: " in text
    d.wait(
        lambda: any("status=bounced" in line for line in d.postfix.log_lines()),
        what="Postfix to log the bounce",
    )
    # Nothing was queued: refused before any byte was stored.
    assert d.stack.cli_json("queue", "list") == []


def test_pipe_service_line_is_what_the_docs_show() -> None:
    """docs/operating.md carries the same master.cf entry as this test uses."""
    docs = (Path(__file__).resolve().parents[3] / "docs" / "operating.md").read_text()
    assert "flags=DRq user=replygate null_sender=" in docs
    assert (
        "ingest --rcpt=${recipient} --sender=${sender}"
        " --client-ip=${client_address} --helo=${client_helo}"
    ) in docs
    assert "replygate_destination_recipient_limit = 1" in docs
