"""Reminders and read receipts composed: content-free in Secure Mode whatever the
caller passes; in Convenience Mode a reminder repeats the message with its reply
address and a receipt names reader, subject and time with no reply address."""

from __future__ import annotations

from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest

from replygate.core.organisation import parse_delay
from replygate.errors import Invalid
from replygate.mail.compose import (
    SECURE_RECEIPT_SUBJECT,
    SECURE_REMINDER_SUBJECT,
    ComposedMail,
    compose,
)
from replygate.mail.markers import REPLY_ABOVE_LINE
from tests.helpers import notification

NOW = datetime(2026, 12, 1, 10, 14, tzinfo=UTC)
SECRETS = ("Your appointment", "Zanzibar", "Dr Ada", "Cleo Park", "reply+")


def parse(mail: ComposedMail) -> EmailMessage:
    msg = message_from_bytes(mail.raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


@pytest.mark.parametrize(
    ("purpose", "subject"),
    [("reminder", SECURE_REMINDER_SUBJECT), ("receipt", SECURE_RECEIPT_SUBJECT)],
)
def test_secure_reminders_and_receipts_carry_nothing_but_a_link(purpose: str, subject: str) -> None:
    mail = compose(
        notification(mode="secure", purpose=purpose, read_by="Cleo Park", read_at="1 Dec"),
        now=NOW,
    )
    msg = parse(mail)
    everything = mail.raw.decode("ascii") + msg.get_content()
    for secret in SECRETS:
        assert secret not in everything
    assert msg["Subject"] == subject and msg["Reply-To"] is None
    assert "http://portal.test/threads/1" in msg.get_content()


def test_a_convenience_reminder_repeats_the_message_with_its_reply_address() -> None:
    msg = parse(compose(notification(purpose="reminder", in_reply_to="<a@b.test>"), now=NOW))
    assert msg["Subject"] == "Reminder: Your appointment"
    assert msg["Reply-To"] == "reply+abcdefabcdef@reply.test"
    text = msg.get_content()
    assert text.index(REPLY_ABOVE_LINE) < text.index("Zanzibar")
    assert "not opened this message in the portal" in text


def test_a_convenience_receipt_names_reader_subject_and_time_and_takes_no_reply() -> None:
    msg = parse(
        compose(
            notification(
                purpose="receipt",
                reply_address=None,
                read_by="Cleo\r\nBcc: x@evil.test",
                read_at="1 Dec 2026, 10:14 UTC",
            ),
            now=NOW,
        )
    )
    assert msg["Subject"] == "Read: Your appointment"
    assert msg["Reply-To"] is None and msg["Bcc"] is None
    text = msg.get_content()
    assert "read your message “Your appointment” in the portal on 1 Dec 2026, 10:14 UTC" in text
    assert "Zanzibar" not in text and REPLY_ABOVE_LINE not in text


def test_an_unknown_purpose_is_refused() -> None:
    with pytest.raises(ValueError):
        compose(notification(purpose="digest"), now=NOW)


@pytest.mark.parametrize(
    ("text", "seconds"), [("0", 0), ("90s", 90), ("30m", 1800), ("24h", 86400), ("1.5D", 129600)]
)
def test_reminder_delays_are_read_with_their_unit(text: str, seconds: float) -> None:
    assert parse_delay(text) == seconds


@pytest.mark.parametrize("text", ["", "24", "h", "-1h", "1 week", "1e3s"])
def test_a_delay_without_a_unit_is_refused(text: str) -> None:
    with pytest.raises(Invalid):
        parse_delay(text)
