"""DMARC results count only for the From domain, and an organisation may demand a pass.

The attacker writes as the client (the From is the client's) from a domain
they control; a relay we trust stamps what it found. A pass for the
attacker's own domain says nothing about the client's, and under the
``require-pass`` policy a reply without a trusted pass for the From domain
is refused at DATA and by the worker alike.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from replygate.cli import main
from replygate.config import Settings
from replygate.core import intake, operations
from replygate.core.messaging import Messaging
from replygate.errors import DmarcFailed, Invalid
from replygate.store import directory, inbound
from replygate.store.db import transaction
from replygate.store.models import InboundMail, ReplyToken
from replygate.workers.inbound import InboundWorker

RELAY = "mx.practice.test"


@pytest.fixture
def trusted(settings: Settings) -> Settings:
    return dataclasses.replace(settings, trusted_authserv_ids=RELAY)


@pytest.fixture
def reply_address(sessions: sessionmaker[Session], trusted: Settings) -> str:
    with transaction(sessions) as s:
        directory.add_user(s, "dana@staff.test", "Dana Staff", "staff")
        directory.add_user(s, "cleo@example.com", "Cleo Client", "client")
    messaging = Messaging(sessions, trusted)
    messaging.set_convenience_mode(on=True, acknowledge_hipaa=True)
    messaging.send(sender="dana@staff.test", to=["cleo@example.com"], subject="Hi", body="Hi?")
    with sessions() as s:
        token = s.scalars(select(ReplyToken.token)).one()
    return f"reply+{token}@{trusted.reply_domain}"


def _mail(to: str, results: str) -> bytes:
    return (
        f"Authentication-Results: {results}\r\nFrom: Cleo <cleo@example.com>\r\nTo: {to}\r\n"
        "Subject: Re: Hi\r\nMessage-ID: <dmarc@evil.test>\r\n\r\nI am Cleo.\r\n"
    ).encode()


def _outcomes(sessions: sessionmaker[Session], trusted: Settings, to: str, raw: bytes) -> tuple:
    """(refused at DATA?, the worker's status for the same bytes)."""
    recipient = intake.check_recipient(sessions, trusted, to, now=datetime.now(UTC))
    try:
        intake.check(trusted, recipients=[recipient], raw=raw, via="smtp")
        refused = False
    except DmarcFailed:
        refused = True
    with transaction(sessions) as s:
        queue_id = inbound.enqueue(s, mail_from="x@evil.test", rcpt=to, raw=raw, message_id=None).id
    InboundWorker(sessions, trusted).drain()
    with sessions() as s:
        row = s.get(InboundMail, queue_id)
        assert row is not None
        return refused, row.status


def test_a_pass_for_the_attackers_domain_is_refused_when_a_pass_is_required(
    sessions: sessionmaker[Session], trusted: Settings, reply_address: str
) -> None:
    operations.set_dmarc_policy(sessions, trusted, "require-pass")
    raw = _mail(reply_address, f"{RELAY}; dmarc=pass header.from=evil.test")
    assert _outcomes(sessions, trusted, reply_address, raw) == (True, "rejected")


def test_an_untrusted_pass_is_refused_when_a_pass_is_required(
    sessions: sessionmaker[Session], trusted: Settings, reply_address: str
) -> None:
    operations.set_dmarc_policy(sessions, trusted, "require-pass")
    raw = _mail(reply_address, "mx.evil.test; dmarc=pass header.from=example.com")
    assert _outcomes(sessions, trusted, reply_address, raw) == (True, "rejected")


def test_a_trusted_pass_for_the_from_domain_is_filed(
    sessions: sessionmaker[Session], trusted: Settings, reply_address: str
) -> None:
    operations.set_dmarc_policy(sessions, trusted, "require-pass")
    raw = _mail(reply_address, f"{RELAY}; dmarc=pass (p=reject) header.from=Example.COM")
    assert _outcomes(sessions, trusted, reply_address, raw) == (False, "filed")


def test_by_default_a_trusted_fail_for_the_from_domain_is_refused(
    sessions: sessionmaker[Session], trusted: Settings, reply_address: str
) -> None:
    raw = _mail(reply_address, f"{RELAY}; dmarc=fail header.from=example.com")
    assert _outcomes(sessions, trusted, reply_address, raw) == (True, "rejected")


def test_require_pass_with_no_check_we_trust_is_refused_with_a_reason(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    """With ``mail_auth = off`` and no trusted relay, nothing could ever say a reply passed."""
    unchecked = dataclasses.replace(settings, mail_auth="off")
    with pytest.raises(Invalid, match="trusted_authserv_ids"):
        operations.set_dmarc_policy(sessions, unchecked, "require-pass")
    operations.set_dmarc_policy(sessions, settings, "require-pass")  # verify: our own checks


def test_the_operator_sets_the_policy_from_the_command_line(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    env = {
        "REPLYGATE_DATABASE_URL": settings.database_url,
        "REPLYGATE_SECRET_KEY": settings.secret_key,
        "REPLYGATE_ENCRYPTION_KEYS_FILE": str(settings.encryption_keys_file),
        "REPLYGATE_TRUSTED_AUTHSERV_IDS": RELAY,
    }
    result = CliRunner().invoke(main, ["settings", "dmarc-policy", "require-pass"], env=env)
    assert result.exit_code == 0, result.output
    shown = CliRunner().invoke(main, ["settings", "show", "--json"], env=env)
    assert '"dmarc_policy": "require-pass"' in shown.output
