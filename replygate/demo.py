"""``replygate demo``: a ready-to-try organisation on the embedded default.

Seeds an admin, a staff user and a client (with portal passwords), switches
Convenience Mode on with a recorded acknowledgement, sends the client a
message, delivers the notification into the Maildir outbox, and returns the
lines that tell a newcomer how to reply by email and log in to the portal.
Running it again reuses what exists and sends one more message.
"""

from __future__ import annotations

import os
import shlex
import sys

from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.core.accounts import set_password
from replygate.core.messaging import Messaging
from replygate.store import directory, outbox
from replygate.store.db import transaction, upgrade
from replygate.store.models import OutboxMessage
from replygate.workers.drain import drain_once

PEOPLE = (
    ("admin@demo.test", "Avery Admin", "admin", "demo-admin"),
    ("dana@demo.test", "Dana Staff", "staff", "demo-staff"),
    ("cleo@example.com", "Cleo Client", "client", "demo-client"),
)


def seed_demo(settings: Settings, factory: sessionmaker[Session]) -> list[str]:
    upgrade(settings.database_url)
    with transaction(factory) as session:
        org = directory.organisation(session, default_name="Demo Practice")
        for email, name, role, password in PEOPLE:
            if directory.find_user(session, email) is None:
                directory.add_user(session, email, name, role)
                set_password(session, email, password)
        org_name = org.name
    messaging = Messaging(factory, settings)
    messaging.set_convenience_mode(
        on=True, acknowledged_by="admin@demo.test", acknowledge_hipaa=True
    )
    sent = messaging.send(
        sender="dana@demo.test",
        to=["cleo@example.com"],
        subject="Your appointment on Tuesday",
        body="Hi Cleo,\n\nCould you confirm you can make Tuesday at 10:00?\n\nDana",
    )
    thread_id = sent.threads[0].id
    drain_once(settings, factory)
    with factory() as session:
        row = session.query(OutboxMessage).filter_by(thread_id=thread_id).one()
        reply_to = _reply_to(row.raw or b"")
        sent_row = outbox.get(session, row.id)
        status = sent_row.status if sent_row else "?"
    py = shlex.quote(sys.executable)
    program = _program()
    host, port = settings.smtp_host, settings.smtp_port
    message = (
        f"From: Cleo Client <cleo@example.com>\\r\\nTo: {reply_to}\\r\\n"
        "Subject: Re: Your appointment\\r\\n\\r\\nYes, Tuesday works. See you then!\\r\\n"
        "\\r\\nOn Tue, Dana Staff wrote:\\r\\n> Could you confirm you can make Tuesday?\\r\\n"
    )
    return [
        f"Demo organisation {org_name!r} is ready; Convenience Mode is on.",
        f"Thread {thread_id}: Dana Staff wrote to Cleo Client; the notification is {status}",
        f"  in the Maildir {settings.outbox_maildir}/new (Reply-To: {reply_to}).",
        "",
        "Start everything (SMTP gateway, workers, portal):",
        f"  {program} serve",
        "",
        "Then reply as Cleo, by email, to the gateway:",
        f"  printf '{message}' | {py} -c \"import smtplib,sys; "
        f"smtplib.SMTP('{host}',{port}).sendmail('cleo@example.com',['{reply_to}'],"
        'sys.stdin.read())"',
        f"  (or: swaks --server {host}:{port} --from cleo@example.com --to {reply_to}"
        " --header 'From: cleo@example.com' --body 'Yes, Tuesday works.')",
        "",
        f"See it filed:  {program} threads show {thread_id}",
        f"Dana's email with Cleo's reply lands in {settings.outbox_maildir}/new.",
        "",
        f"Portal: {settings.portal_url}/login",
        "  dana@demo.test / demo-staff   cleo@example.com / demo-client   "
        "admin@demo.test / demo-admin",
        "  Staff and admins set up a code from an authenticator app at their first login",
        f"  (or, for a quick look, without: {program} settings mfa require off).",
    ]


def _program() -> str:
    """The command line that started this program, to repeat in the instructions."""
    if os.path.basename(sys.argv[0]) == "replygate":
        return shlex.quote(sys.argv[0])  # .venv/bin/replygate, or replygate from PATH
    return f"{shlex.quote(sys.executable)} -m replygate"


def _reply_to(raw: bytes) -> str:
    from email import message_from_bytes
    from email.policy import default

    return str(message_from_bytes(raw, policy=default)["Reply-To"])
