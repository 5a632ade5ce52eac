"""Never lose the person's words: a reply every line of which looks quoted or like a
signature, but which holds what the person wrote, is filed whole and the fallback is
recorded where ``queue explain`` reads it."""

from __future__ import annotations

from email.message import EmailMessage

import pytest
from click.testing import CliRunner
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from replygate.cli import main
from replygate.config import Settings
from replygate.core.messaging import Messaging
from replygate.store import directory, inbound
from replygate.store.db import transaction
from replygate.store.models import InboundMail, Message, ReplyToken
from replygate.workers.inbound import InboundWorker
from tests.helpers import cli_env

# A sign-off, then everything the person wrote under a "--" delimiter, then the quote.
BODY = (
    "Thanks,\n\n"
    "--\n"
    "I can come on Thursday at two, and I will bring the signed lease with me.\n"
    "Cleo\n\n"
    "On Mon, May 6, 2024 at 9:12 AM Dana Staff <dana@staff.test> wrote:\n"
    "> How are you?\n"
)


@pytest.fixture
def reply_address(sessions: sessionmaker[Session], settings: Settings) -> str:
    with transaction(sessions) as s:
        directory.add_user(s, "dana@staff.test", "Dana Staff", "staff")
        directory.add_user(s, "cleo@example.com", "Cleo Client", "client")
    messaging = Messaging(sessions, settings)
    messaging.set_convenience_mode(on=True, acknowledge_hipaa=True)
    messaging.send(
        sender="dana@staff.test", to=["cleo@example.com"], subject="Hello", body="How are you?"
    )
    with sessions() as s:
        token = s.scalars(select(ReplyToken.token)).one()
    return f"reply+{token}@{settings.reply_domain}"


def _mail(to: str, body: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Cleo Client <cleo@example.com>"
    msg["To"] = to
    msg["Subject"] = "Re: Hello"
    msg["Message-ID"] = "<fallback@mail.example.com>"
    msg.set_content(body)
    return msg.as_bytes()


def test_a_reply_cut_to_a_sign_off_files_the_unquoted_text(
    sessions: sessionmaker[Session], settings: Settings, reply_address: str
) -> None:
    with transaction(sessions) as s:
        queue_id = inbound.enqueue(
            s,
            mail_from="cleo@example.com",
            rcpt=reply_address,
            raw=_mail(reply_address, BODY),
            message_id=None,
        ).id
    InboundWorker(sessions, settings).drain()
    with sessions() as s:
        row = s.get(InboundMail, queue_id)
        assert row is not None and row.status == "filed"
        filed = s.scalars(select(Message).where(Message.inbound_id == queue_id)).one()
        assert filed.body.startswith("Thanks,")
        assert "I can come on Thursday at two" in filed.body
        assert "How are you?" not in filed.body
        assert [d.get("fallback") for d in row.decisions or [] if d.get("stage") == "extract"]
    env = cli_env(settings)
    explained = CliRunner().invoke(main, ["queue", "explain", str(queue_id)], env=env)
    assert explained.exit_code == 0, explained.output
    assert "only a sign-off was left" in explained.output
    assert "signature kept) was filed instead" in explained.output


def test_a_plain_thanks_with_a_signature_is_filed_as_cut(
    sessions: sessionmaker[Session], settings: Settings, reply_address: str
) -> None:
    """A sign-off over an ordinary signature is what the person typed: no fallback."""
    body = "Thanks!\n\n-- \nCleo Client\n+1 555 0100\n\n> How are you?\n"
    with transaction(sessions) as s:
        queue_id = inbound.enqueue(
            s,
            mail_from="cleo@example.com",
            rcpt=reply_address,
            raw=_mail(reply_address, body),
            message_id=None,
        ).id
    InboundWorker(sessions, settings).drain()
    with sessions() as s:
        row = s.get(InboundMail, queue_id)
        assert row is not None and row.status == "filed"
        filed = s.scalars(select(Message).where(Message.inbound_id == queue_id)).one()
        assert filed.body == "Thanks!"
        assert all("fallback" not in d for d in row.decisions or [])
