"""The portal's read-receipt and reminder forms over HTTP: only admins change the
settings, a delay that is no number of hours is refused with the page, the
checkbox at compose and reply decides whether the author is told, and the
thread page says that reading by email does not count."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from replygate.core.messaging import Messaging
from replygate.store import directory
from replygate.store.db import transaction
from replygate.store.models import AuditEvent, Message, Thread
from tests.portal_support import Client, People


def test_only_admins_set_the_default_and_the_delay_and_nonsense_is_refused(
    client_for: Callable[[], Client], people: People, sessions: sessionmaker[Session]
) -> None:
    staff = client_for()
    staff.login(people.staff)
    forged = {"csrf": staff.csrf("/compose"), "receipts_default": "yes", "reminder_hours": "1"}
    assert staff.post("/settings/receipts", forged).status == 403

    admin = client_for()
    admin.login(people.admin)
    token = admin.csrf("/settings")
    for wrong in ("soon", "", "-1", "nan", "inf", "1e9"):
        refused = admin.post("/settings/receipts", {"csrf": token, "reminder_hours": wrong})
        assert refused.status == 400, wrong
        assert 'role="alert"' in refused.text
    saved = admin.post(
        "/settings/receipts", {"csrf": token, "receipts_default": "yes", "reminder_hours": "0.5"}
    )
    assert saved.status == 303
    with transaction(sessions) as s:
        org = directory.organisation(s)
        assert org.read_receipts_default is True and org.reminder_delay_seconds == 1800
        (changed,) = s.scalars(
            select(AuditEvent).where(AuditEvent.action == "setting_changed")
        ).all()  # the refused ones changed nothing, and are not in the trail
        assert changed.actor == people.admin
        assert changed.detail == {
            "setting": "read_receipts",
            "default": True,
            "reminder_seconds": 1800,
        }
    page = admin.get("/settings").text
    assert 'id="receipts-default" name="receipts_default" value="yes" checked' in page
    assert 'value="0.5"' in page
    # With the default on, compose and reply start ticked; unticking is the author's choice.
    assert 'name="receipt" value="yes" checked' in admin.get("/compose").text


def test_the_checkbox_decides_and_the_page_says_email_reading_does_not_count(
    client_for: Callable[[], Client],
    people: People,
    sessions: sessionmaker[Session],
    messaging: Messaging,
) -> None:
    staff = client_for()
    staff.login(people.staff)
    token = staff.csrf("/compose")
    page = staff.get("/compose").text
    assert 'name="receipt" value="yes">' in page  # the organisation's default: off
    message = {"csrf": token, "to": people.client1, "subject": "Hi", "body": "Text"}
    assert staff.post("/compose", {**message, "receipt": "yes"}).status == 303
    assert staff.post("/compose", {**message, "subject": "Again"}).status == 303
    with transaction(sessions) as s:
        rows = s.execute(select(Thread, Message.receipt_requested).join(Message))
        asked = {thread.subject: wanted for thread, wanted in rows}
        first = next(t.id for t in s.scalars(select(Thread)) if t.subject == "Hi")
    assert asked == {"Hi": True, "Again": False}
    reply = staff.post(f"/threads/{first}/reply", {"csrf": token, "body": "More", "receipt": "yes"})
    assert reply.status == 303
    with transaction(sessions) as s:
        assert s.scalars(select(Message.receipt_requested).order_by(Message.id.desc())).first()

    client = client_for()
    client.login(people.client1)
    assert "not counted as read" not in client.get(f"/threads/{first}").text
    messaging.set_convenience_mode(on=True, acknowledge_hipaa=True)
    assert "not counted as read" in client.get(f"/threads/{first}").text
    mine = staff.get(f"/threads/{first}").text
    assert f'data-read-by="{people.client1}"' in mine and "Read by Carol Client" in mine
