"""Read receipts and unread reminders in a real Chromium: an admin sets a short
reminder delay, staff write to a Circle of two asking to be told when it is
read, one client opens it; the staff sees "Read by" for that client only (under
either private copy) and gets one content-free receipt; the worker's sweeper
then reminds the other client once, content-free in Secure Mode."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import threading
from collections.abc import Iterator
from email.message import EmailMessage

import pytest
from playwright.sync_api import Browser, expect
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.mail.compose import SECURE_RECEIPT_SUBJECT, SECURE_REMINDER_SUBJECT
from replygate.store.db import transaction
from replygate.store.models import Organisation, OutboxMessage, Thread
from replygate.workers.drain import outbound_worker
from replygate.workers.reminders import ReminderSweeper
from tests.helpers import read_maildir, wait_for
from tests.portal_support import CIRCLE, People
from tests.system.portal.test_browser import _context, _login

pytestmark = pytest.mark.browser

SUBJECT = "Your lab results are ready"
BODY = "Quokka thermometer: all values are within range."


def _rows(sessions: sessionmaker[Session], kind: str) -> list[OutboxMessage]:
    with sessions() as s:
        return list(s.scalars(select(OutboxMessage).where(OutboxMessage.kind == kind)))


def _delivered(settings: Settings, sessions: sessionmaker[Session]) -> list[EmailMessage]:
    """Deliver the outbox to the Maildir (as the outbound worker does) and read it all.

    In a thread of its own: Playwright's sync API holds this thread's event loop.
    """
    worker = outbound_worker(settings, sessions)

    async def deliver() -> None:
        while await worker.run_once():
            pass

    delivery = threading.Thread(target=lambda: asyncio.run(deliver()))
    try:
        delivery.start()
        delivery.join(60)
    finally:
        worker.close()
    assert not delivery.is_alive(), "delivery did not finish"
    return read_maildir(settings.outbox_maildir)


@dataclasses.dataclass
class Sweeping:
    """A worker's reminder sweeper (every 0.2 s), in a thread, once ``begin`` is set."""

    sweeper: ReminderSweeper
    begin: threading.Event


@pytest.fixture
def sweeping(settings: Settings, sessions: sessionmaker[Session]) -> Iterator[Sweeping]:
    sweeper = ReminderSweeper(sessions, dataclasses.replace(settings, reminder_sweep_seconds=0.2))
    begin, done = threading.Event(), asyncio.Event()
    loop = asyncio.new_event_loop()

    def run() -> None:
        if begin.wait(300):
            loop.run_until_complete(sweeper.run(done))
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield Sweeping(sweeper, begin)
    if begin.is_set():
        loop.call_soon_threadsafe(done.set)
    else:
        begin.set()
        sweeper.close()
    thread.join(15)


def test_a_circle_message_is_read_by_one_client_and_the_other_is_reminded_once(
    browser: Browser,
    live_portal: str,
    people: People,
    sessions: sessionmaker[Session],
    settings: Settings,
    sweeping: Sweeping,
) -> None:
    admin = _login(_context(browser, live_portal), people.admin)
    admin.goto("/settings")
    admin.fill("#reminder-hours", "0.001")  # 3.6 s, kept as 4 s
    admin.click("#receipts button[type=submit]")
    expect(admin.locator(".flash")).to_contain_text("reminders of unread messages on")
    expect(admin.locator("#reminder-hours")).to_have_value("0.0011")
    with sessions() as s:
        assert s.scalar(select(Organisation.reminder_delay_seconds)) == 4

    staff = _login(_context(browser, live_portal), people.staff)
    staff.goto("/compose")
    expect(staff.locator("#receipt")).not_to_be_checked()  # the organisation's default: off
    staff.check(f"#to input[value='circle:{CIRCLE}']")
    staff.fill("#subject", SUBJECT)
    staff.fill("#body", BODY)
    staff.check("#receipt")
    staff.click("button:has-text('Send')")
    expect(staff.locator(".flash")).to_contain_text("sent to 2 people")
    with transaction(sessions) as s:
        carol_thread, dan_thread = s.scalars(select(Thread.id).order_by(Thread.id)).all()

    staff.goto(f"/threads/{carol_thread}")
    expect(staff.locator(".read-by")).to_have_count(0)
    expect(staff.locator(".not-read")).to_have_count(2)

    carol = _login(_context(browser, live_portal), people.client1)
    carol.click(".thread-link")
    expect(carol.locator("h1")).to_have_text(SUBJECT)
    expect(carol.locator(".read-marks")).to_have_count(0)  # marks are for the author alone
    carol.reload()  # a second opening sends no second receipt

    for thread_id in (carol_thread, dan_thread):
        staff.goto(f"/threads/{thread_id}")
        expect(staff.locator(".read-by")).to_have_count(1)
        expect(staff.locator(".read-by")).to_contain_text(
            re.compile(r"^Read by Carol Client, .*\d")
        )
        expect(staff.locator(f"[data-read-by='{people.client2}']")).to_have_count(0)
        expect(staff.locator(f"[data-not-read='{people.client2}']")).to_have_text(
            "Not yet read by Dan Client"
        )
    (receipt,) = _rows(sessions, "receipt")
    assert receipt.recipient == people.staff

    # The workers start only now, long after Carol read it and the delay passed for Dan.
    sweeping.begin.set()
    (reminder,) = wait_for(lambda: _rows(sessions, "reminder"), timeout=30, what="a reminder")
    assert reminder.recipient == people.client2 and reminder.thread_id == dan_thread
    # Three sweeps later: still that one, and none for Carol.
    swept = sweeping.sweeper.sweeps
    wait_for(lambda: sweeping.sweeper.sweeps >= swept + 3, timeout=30, what="three more sweeps")
    mails = _delivered(settings, sessions)
    reminders = [m for m in mails if m["Subject"] == SECURE_REMINDER_SUBJECT]
    receipts = [m for m in mails if m["Subject"] == SECURE_RECEIPT_SUBJECT]
    assert [m["To"].addresses[0].addr_spec for m in reminders] == [people.client2]
    assert [m["To"].addresses[0].addr_spec for m in receipts] == [people.staff]
    # Neither names the message nor its author (the reminder) nor its reader (the receipt).
    for mail, person in ((reminders[0], "Sam Staff"), (receipts[0], "Carol")):
        text = str(mail) + mail.get_content()
        for secret in (SUBJECT, "Quokka", person, "Reply-To:"):
            assert secret not in text
    assert len(_rows(sessions, "reminder")) == 1

    dan = _login(_context(browser, live_portal), people.client2)
    dan.goto(f"/threads/{dan_thread}")
    expect(dan.locator("h1")).to_have_text(SUBJECT)
    staff.goto(f"/threads/{dan_thread}")
    expect(staff.locator(".read-by")).to_have_count(2)
