"""The sending service: private threads per recipient, notifications in the
same transaction, Secure Mode leaking nothing, tokens one per (thread, person)."""

from __future__ import annotations

from email import message_from_bytes
from email.policy import default

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.core.messaging import Messaging
from replygate.errors import Invalid, NotFound
from replygate.mail.markers import REPLY_ABOVE_LINE
from replygate.store import directory
from replygate.store.db import transaction
from replygate.store.models import OutboxMessage, ReplyToken, Thread

SUBJECT = "Quarterly lab results zebrafish"
BODY = "Your potassium came back marmalade-high.\nPlease call us about the aardvark protocol."


@pytest.fixture
def people(sessions: sessionmaker[Session]) -> None:
    with transaction(sessions) as s:
        directory.add_user(s, "dana@staff.test", "Dana Staff", "staff")
        directory.add_user(s, "cleo@example.com", "Cleo Client", "client")
        directory.add_user(s, "carl@example.com", "Carl Client", "client")
        directory.add_circle(s, "Tuesday group")
        directory.add_member(s, "Tuesday group", "cleo@example.com")
        directory.add_member(s, "Tuesday group", "carl@example.com")


def _outbox(sessions: sessionmaker[Session]) -> list[OutboxMessage]:
    with sessions() as s:
        return list(s.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))


def test_circle_expands_to_one_private_thread_per_client(
    sessions: sessionmaker[Session], settings: Settings, people: None
) -> None:
    result = Messaging(sessions, settings).send(
        sender="dana@staff.test", to=["circle:Tuesday group"], subject=SUBJECT, body=BODY
    )
    assert [t.recipient for t in result.threads] == ["cleo@example.com", "carl@example.com"]
    with sessions() as s:
        for sent in result.threads:
            thread = s.get(Thread, sent.id)
            assert thread is not None
            emails = sorted(p.user.email for p in thread.participants)
            assert emails == sorted(["dana@staff.test", sent.recipient])
    rows = _outbox(sessions)
    assert [r.recipient for r in rows] == ["cleo@example.com", "carl@example.com"]


def test_secure_mode_notification_carries_neither_subject_nor_body(
    sessions: sessionmaker[Session], settings: Settings, people: None
) -> None:
    Messaging(sessions, settings).send(
        sender="dana@staff.test", to=["cleo@example.com"], subject=SUBJECT, body=BODY
    )
    (row,) = _outbox(sessions)
    text = row.raw.decode("utf-8", "replace").lower()
    parsed = message_from_bytes(row.raw, policy=default)
    decoded = parsed.get_body(("plain",)).get_content().lower()
    for secret in ["zebrafish", "quarterly", "marmalade", "aardvark", "potassium"]:
        assert secret not in text and secret not in decoded
    assert parsed["Reply-To"] is None
    assert "reply+" not in text
    assert f"{settings.portal_url}/threads/" in decoded
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(ReplyToken)) == 0


def test_convenience_mode_notification_has_content_token_and_marker(
    sessions: sessionmaker[Session], settings: Settings, people: None
) -> None:
    messaging = Messaging(sessions, settings)
    messaging.set_convenience_mode(
        on=True, acknowledged_by="dana@staff.test", acknowledge_hipaa=True
    )
    result = messaging.send(
        sender="dana@staff.test", to=["cleo@example.com"], subject=SUBJECT, body=BODY
    )
    messaging.reply(thread_id=result.threads[0].id, author="dana@staff.test", body="One more thing")
    first, second = _outbox(sessions)
    msg = message_from_bytes(first.raw, policy=default)
    body = msg.get_body(("plain",)).get_content()
    assert SUBJECT in str(msg["Subject"])
    assert "marmalade-high" in body and REPLY_ABOVE_LINE in body
    assert msg["Auto-Submitted"] == "auto-generated"
    assert str(msg["Reply-To"]).startswith("reply+") and str(msg["Reply-To"]).endswith(
        "@reply.test"
    )
    # One token per (thread, recipient): the second notification reuses it and
    # threads under the first.
    again = message_from_bytes(second.raw, policy=default)
    assert str(again["Reply-To"]) == str(msg["Reply-To"])
    assert str(again["In-Reply-To"]) == first.header_message_id
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(ReplyToken)) == 1


def test_switching_convenience_off_voids_every_token(
    sessions: sessionmaker[Session], settings: Settings, people: None
) -> None:
    messaging = Messaging(sessions, settings)
    messaging.set_convenience_mode(on=True, acknowledge_hipaa=True)
    messaging.send(
        sender="dana@staff.test", to=["circle:Tuesday group"], subject=SUBJECT, body=BODY
    )
    assert messaging.set_convenience_mode(on=False) == 2
    with sessions() as s:
        assert all(t.revoked_at is not None for t in s.scalars(select(ReplyToken)))


def test_convenience_mode_needs_the_acknowledgement(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    with pytest.raises(Invalid, match="HIPAA"):
        Messaging(sessions, settings).set_convenience_mode(on=True)


def test_a_user_outside_a_thread_cannot_reply_to_it(
    sessions: sessionmaker[Session], settings: Settings, people: None
) -> None:
    messaging = Messaging(sessions, settings)
    result = messaging.send(
        sender="dana@staff.test", to=["circle:Tuesday group"], subject=SUBJECT, body=BODY
    )
    cleo_thread = result.threads[0].id
    with pytest.raises(NotFound):
        messaging.reply(thread_id=cleo_thread, author="carl@example.com", body="let me in")
    assert len(_outbox(sessions)) == 2


def test_bad_requests_are_refused_with_reasons(
    sessions: sessionmaker[Session], settings: Settings, people: None
) -> None:
    messaging = Messaging(sessions, settings)
    with pytest.raises(NotFound, match="nobody@"):
        messaging.send(sender="dana@staff.test", to=["nobody@x.test"], subject="s", body="b")
    with pytest.raises(Invalid, match="subject"):
        messaging.send(sender="dana@staff.test", to=["cleo@example.com"], subject=" ", body="b")
    with pytest.raises(Invalid, match="clients"):
        messaging.send(sender="cleo@example.com", to=["carl@example.com"], subject="s", body="b")
    assert _outbox(sessions) == []
