"""The portal in a real headless Chromium (Debian's ``chromium``, driven by
Playwright): the staff-to-Circle conversation end to end, keyboard shortcuts,
and the Convenience Mode acknowledgement. Takes the README's screenshots.

Without Chromium these tests fail rather than skip: CI installs it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from replygate.core.messaging import Messaging
from replygate.store.db import transaction
from replygate.store.models import Thread
from tests.portal_support import CIRCLE, PASSWORD, People, file_email_reply

pytestmark = pytest.mark.browser

# The README's screenshots: refreshed when REPLYGATE_SCREENSHOTS=1, else written to a temp dir
# (every run would otherwise rewrite them, since they show the time).
README_SCREENSHOTS = Path(__file__).resolve().parents[3] / "docs" / "screenshots"
CANNED_NAME = "Welcome"
CANNED_SUBJECT = "Welcome to the Tuesday group"
CANNED_BODY = (
    "Hello,\n\nWelcome to the Tuesday group. Our first session is next Tuesday at 6 pm.\n"
    "Reply here with any questions.\n\nSam"
)


def _context(browser: Browser, base_url: str) -> BrowserContext:
    context = browser.new_context(base_url=base_url, viewport={"width": 1180, "height": 760})
    context.set_default_timeout(10_000)
    return context


def _login(context: BrowserContext, email: str) -> Page:
    page = context.new_page()
    page.goto("/login")
    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]:has-text('Log in')")
    expect(page).to_have_url(re.compile(r"/inbox$"))
    return page


def test_staff_writes_to_a_circle_and_a_client_replies(
    browser: Browser,
    live_portal: str,
    people: People,
    sessions: sessionmaker[Session],
    messaging: Messaging,
    tmp_path: Path,
) -> None:
    """Canned response to a Circle; each client sees only their own thread; a reply
    shows as unread for staff; the shortcut reference opens and closes."""
    staff = _login(_context(browser, live_portal), people.staff)

    staff.click("nav >> text=Canned responses")
    staff.click("text=New canned response")
    staff.fill("#name", CANNED_NAME)
    staff.fill("#subject", CANNED_SUBJECT)
    staff.fill("#body", CANNED_BODY)
    staff.click("button:has-text('Save')")
    expect(staff.locator(".flash")).to_contain_text("saved")

    staff.goto("/inbox")
    staff.keyboard.press("c")
    expect(staff).to_have_url(re.compile(r"/compose$"))
    staff.check(f"#to input[value='circle:{CIRCLE}']")
    staff.select_option("#canned", label=CANNED_NAME)
    expect(staff.locator("#subject")).to_have_value(CANNED_SUBJECT)
    expect(staff.locator("#body")).to_have_value(CANNED_BODY)
    staff.locator("#body").press("Control+Enter")
    expect(staff).to_have_url(re.compile(r"/sent$"))
    expect(staff.locator(".flash")).to_contain_text("sent to 2 people")

    with transaction(sessions) as s:
        thread_ids = list(s.scalars(select(Thread.id).order_by(Thread.id)))
    assert len(thread_ids) == 2

    carol = _login(_context(browser, live_portal), people.client1)
    expect(carol.locator("[data-thread-row]")).to_have_count(1)
    expect(carol.locator(".thread-row.unread")).to_contain_text(CANNED_SUBJECT)
    carol.keyboard.press("j")
    carol.keyboard.press("Enter")
    expect(carol.locator("h1")).to_have_text(CANNED_SUBJECT)
    carol_thread = int(carol.url.rsplit("/", 1)[1])
    carol.keyboard.press("r")
    expect(carol.locator("#reply")).to_be_focused()
    carol.keyboard.type("Thank you, I'll be there. Is there parking nearby?")
    carol.keyboard.press("Control+Enter")
    expect(carol.locator(".flash")).to_have_text("Reply sent.")
    expect(carol.locator(".message")).to_have_count(2)

    dan = _login(_context(browser, live_portal), people.client2)
    expect(dan.locator("[data-thread-row]")).to_have_count(1)
    dan.click(".thread-link")
    expect(dan.locator(".message")).to_have_count(1)
    expect(dan.locator("main")).not_to_contain_text("parking")
    dan_thread = int(dan.url.rsplit("/", 1)[1])
    assert {carol_thread, dan_thread} == set(thread_ids)
    dan.goto(f"/threads/{carol_thread}")
    expect(dan.locator("h1")).to_have_text("Not found")
    expect(dan.locator("main")).not_to_contain_text("parking")

    # Carol also answers by email (quoted text and signature filed apart).
    file_email_reply(
        sessions,
        messaging,
        thread_id=carol_thread,
        author=people.client1,
        body="One more thing: may I bring my partner?",
        quote="> Hello,\n>\n> Welcome to the Tuesday group.",
        signature="Carol\nSent from my phone",
    )

    staff.goto("/inbox")
    unread = staff.locator(".thread-row.unread")
    expect(unread).to_have_count(1)
    expect(unread).to_contain_text("Carol Client")
    expect(unread).to_contain_text("2 new")
    expect(staff.locator("#unread-count")).to_have_text("1")
    expect(staff.locator(".thread-row:not(.unread)")).to_contain_text("Dan Client")
    shots = README_SCREENSHOTS if os.environ.get("REPLYGATE_SCREENSHOTS") == "1" else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    staff.screenshot(path=str(shots / "inbox.png"))

    staff.keyboard.press("j")
    staff.keyboard.press("Enter")
    expect(staff).to_have_url(re.compile(rf"/threads/{carol_thread}$"))
    expect(staff.locator(".message.new")).to_have_count(2)
    expect(staff.locator(".message").nth(2)).to_contain_text("by email")
    quoted = staff.locator("details.quote")
    expect(quoted.locator(".quoted")).to_be_hidden()
    staff.click("details.signature summary")
    expect(staff.locator("details.signature .body")).to_contain_text("Sent from my phone")
    staff.screenshot(path=str(shots / "thread.png"), full_page=True)
    for shot in ("inbox.png", "thread.png"):
        assert (shots / shot).read_bytes().startswith(b"\x89PNG")

    shortcuts = staff.locator("#shortcuts")
    staff.keyboard.press("Control+/")
    expect(shortcuts).to_be_visible()
    expect(shortcuts).to_contain_text("Compose a new message")
    staff.keyboard.press("Escape")
    expect(shortcuts).to_be_hidden()
    staff.click("#open-shortcuts")
    expect(shortcuts).to_be_visible()
    staff.keyboard.press("Escape")
    expect(shortcuts).to_be_hidden()

    # While typing, letters are text and Ctrl+/ is not a shortcut.
    staff.click("#reply")
    staff.keyboard.type("c")
    staff.keyboard.press("Control+/")
    expect(shortcuts).to_be_hidden()
    expect(staff.locator("#reply")).to_have_value("c")
    expect(staff).to_have_url(re.compile(rf"/threads/{carol_thread}$"))

    # Esc leaves the field; then j/k step through conversations in inbox order.
    staff.keyboard.press("Escape")
    staff.keyboard.press("j")
    expect(staff).to_have_url(re.compile(rf"/threads/{dan_thread}$"))
    staff.keyboard.press("k")
    expect(staff).to_have_url(re.compile(rf"/threads/{carol_thread}$"))

    staff.goto("/inbox")
    expect(staff.locator(".thread-row.unread")).to_have_count(0)


def test_admin_turns_convenience_mode_on_only_after_acknowledging(
    browser: Browser, live_portal: str, people: People
) -> None:
    """The switch stays off until the HIPAA acknowledgement is ticked; who and when is shown."""
    admin = _login(_context(browser, live_portal), people.admin)
    admin.click("nav >> text=Settings")
    status = admin.locator("#convenience-status")
    expect(status).to_have_text("Off (Secure Mode)")
    expect(admin.locator(".warning")).to_contain_text("protected health information")

    admin.click("#turn-on")
    # The browser refuses to submit: the acknowledgement is a required checkbox.
    assert admin.locator("#acknowledge").evaluate("box => box.validity.valueMissing") is True
    expect(status).to_have_text("Off (Secure Mode)")

    admin.check("#acknowledge")
    admin.click("#turn-on")
    expect(status).to_have_text("On")
    expect(admin.locator("#acknowledgement")).to_contain_text(people.admin)

    admin.click("text=Turn Convenience Mode off")
    expect(status).to_have_text("Off (Secure Mode)")
    expect(admin.locator(".flash")).to_contain_text("reply addresses were voided")
