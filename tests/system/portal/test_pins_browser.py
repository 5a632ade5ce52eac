"""Pin and archive in a real headless Chromium, at a desktop width and at 390 px
(a phone): through the buttons, through the ``p`` and ``e`` shortcuts on the
inbox and on a thread, the inbox filters, a reply by email bringing an
archived thread back, and the buttons working with JavaScript switched off.

Without Chromium these tests fail rather than skip: CI installs it.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Browser, BrowserContext, Locator, Page, expect
from sqlalchemy.orm import Session, sessionmaker

from replygate.core.messaging import Messaging
from tests.portal_support import PASSWORD, People, file_email_reply

pytestmark = pytest.mark.browser

WIDTHS = {"desktop": (1180, 760), "phone": (390, 844)}
SUBJECTS = ("Intake forms", "Invoice for March", "Parking next Tuesday")


def _login(browser: Browser, base_url: str, email: str, width: str, *, js: bool = True) -> Page:
    w, h = WIDTHS[width]
    context: BrowserContext = browser.new_context(
        base_url=base_url, viewport={"width": w, "height": h}, java_script_enabled=js
    )
    context.set_default_timeout(10_000)
    page = context.new_page()
    page.goto("/login")
    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]:has-text('Log in')")
    expect(page).to_have_url(re.compile(r"/inbox$"))
    return page


def _threads(messaging: Messaging, people: People) -> dict[str, int]:
    """Three threads from Sam to Carol, the last written on top."""
    return {
        s: messaging.send(sender=people.staff, to=[people.client1], subject=s, body="Hello")
        .threads[0]
        .id
        for s in SUBJECTS
    }


def _order(page: Page) -> list[str]:
    return [s.strip() for s in page.locator("[data-thread-row] .subject").all_inner_texts()]


def _row(page: Page, subject: str) -> Locator:
    return page.locator("[data-thread-row]", has_text=subject)


def _usable(button: Locator, width: int) -> None:
    """On screen, inside the page's width, big enough to tap, and nothing covers it."""
    expect(button).to_be_visible()
    box = button.bounding_box()
    assert box is not None
    assert box["x"] >= 0 and box["x"] + box["width"] <= width, box
    assert box["height"] >= (40 if width <= 400 else 24), box
    button.click(trial=True)  # fails if another element would receive the click


@pytest.mark.parametrize("width", list(WIDTHS))
def test_pin_and_archive_with_the_buttons(
    browser: Browser,
    live_portal: str,
    people: People,
    messaging: Messaging,
    sessions: sessionmaker[Session],
    width: str,
) -> None:
    ids = _threads(messaging, people)
    intake, invoice, parking = SUBJECTS
    sam = _login(browser, live_portal, people.staff, width)
    assert not sam.evaluate("document.documentElement.scrollWidth > window.innerWidth")
    assert _order(sam) == [parking, invoice, intake]

    pin = _row(sam, intake).get_by_role("button", name=f"Pin: {intake}", exact=True)
    _usable(pin, WIDTHS[width][0])
    pin.click()
    expect(sam.locator(".flash")).to_have_text("Pinned to the top of your inbox.")
    expect(sam.locator(".thread-row").first).to_contain_text(intake)
    expect(_row(sam, intake)).to_have_class(re.compile(r"\bpinned\b"))
    expect(
        _row(sam, intake).get_by_role("button", name=f"Unpin: {intake}", exact=True)
    ).to_be_visible()

    archive = _row(sam, invoice).get_by_role("button", name=f"Archive: {invoice}", exact=True)
    _usable(archive, WIDTHS[width][0])
    archive.click()
    expect(sam.locator("[data-thread-row]")).to_have_count(2)
    assert not any(invoice in s for s in _order(sam))

    sam.click("nav.filters >> text=Archived")
    expect(sam).to_have_url(re.compile(r"/inbox\?show=archived$"))
    expect(sam.locator("[data-thread-row]")).to_have_count(1)
    expect(_row(sam, invoice)).to_be_visible()
    sam.click("nav.filters >> text=Pinned")
    expect(sam.locator("[data-thread-row]")).to_have_count(1)
    expect(_row(sam, intake)).to_be_visible()

    # Carol answers the archived thread by email: it is back, on top of the unpinned ones.
    file_email_reply(
        sessions, messaging, thread_id=ids[invoice], author=people.client1, body="Paid, thanks"
    )
    sam.click("nav.filters >> text=All")
    expect(sam.locator("[data-thread-row]")).to_have_count(3)
    expect(sam.locator(".thread-row").nth(1)).to_contain_text(invoice)
    expect(_row(sam, invoice)).to_have_class(re.compile(r"\bunread\b"))
    sam.click("nav.filters >> text=Unread")
    expect(sam.locator("[data-thread-row]")).to_have_count(1)
    sam.click("nav.filters >> text=Archived")
    expect(sam.locator("[data-thread-row]")).to_have_count(0)
    expect(sam.locator("main")).to_contain_text("No archived conversations.")

    # On a thread page: the buttons sit beside the subject and archive goes back to the inbox.
    sam.goto(f"/threads/{ids[parking]}")
    thread_pin = sam.get_by_role("button", name=f"Pin: {parking}", exact=True)
    _usable(thread_pin, WIDTHS[width][0])
    thread_pin.click()
    expect(sam).to_have_url(re.compile(rf"/threads/{ids[parking]}$"))
    expect(sam.get_by_role("button", name=f"Unpin: {parking}", exact=True)).to_be_visible()
    sam.get_by_role("button", name=f"Archive: {parking}", exact=True).click()
    expect(sam).to_have_url(re.compile(r"/inbox$"))
    assert not any(parking in s for s in _order(sam))


@pytest.mark.parametrize("width", list(WIDTHS))
def test_pin_and_archive_with_the_shortcuts(
    browser: Browser, live_portal: str, people: People, messaging: Messaging, width: str
) -> None:
    ids = _threads(messaging, people)
    intake, invoice, parking = SUBJECTS
    sam = _login(browser, live_portal, people.staff, width)

    sam.keyboard.press("?")
    shortcuts = sam.locator("#shortcuts")
    expect(shortcuts).to_be_visible()
    expect(shortcuts.locator("tr", has_text="Pin the selected")).to_contain_text("p")
    expect(shortcuts.locator("tr", has_text="Archive the selected")).to_contain_text("e")
    sam.keyboard.press("Escape")
    expect(shortcuts).to_be_hidden()

    # Nothing selected: p does nothing.
    sam.keyboard.press("p")
    expect(sam.locator(".thread-row.pinned")).to_have_count(0)
    # j j selects the second row (invoice); p pins it to the top.
    sam.keyboard.press("j")
    sam.keyboard.press("j")
    expect(sam.locator(".thread-row.selected")).to_contain_text(invoice)
    sam.keyboard.press("p")
    expect(sam.locator(".flash")).to_have_text("Pinned to the top of your inbox.")
    expect(sam.locator(".thread-row").first).to_contain_text(invoice)
    expect(sam.locator(".thread-row.pinned")).to_have_count(1)
    # j selects the first row again; e archives it (unpinning it).
    sam.keyboard.press("j")
    sam.keyboard.press("e")
    expect(sam.locator(".flash")).to_contain_text("Archived")
    expect(sam.locator("[data-thread-row]")).to_have_count(2)
    assert not any(invoice in s for s in _order(sam))

    # In a field, p and e are text.
    sam.goto(f"/threads/{ids[intake]}")
    sam.click("#reply")
    sam.keyboard.type("pe")
    expect(sam.locator("#reply")).to_have_value("pe")
    expect(sam.get_by_role("button", name=f"Pin: {intake}", exact=True)).to_be_visible()
    sam.keyboard.press("Escape")
    # On the open thread: p pins it, p again unpins, e archives and returns to the inbox.
    sam.keyboard.press("p")
    expect(sam.get_by_role("button", name=f"Unpin: {intake}", exact=True)).to_be_visible()
    sam.keyboard.press("p")
    expect(sam.get_by_role("button", name=f"Pin: {intake}", exact=True)).to_be_visible()
    sam.keyboard.press("e")
    expect(sam).to_have_url(re.compile(r"/inbox$"))
    expect(sam.locator("[data-thread-row]")).to_have_count(1)
    expect(sam.locator("[data-thread-row]")).to_contain_text(parking)

    # In the archive, e moves the selected thread back to the inbox.
    sam.goto("/inbox?show=archived")
    expect(sam.locator("[data-thread-row]")).to_have_count(2)
    sam.keyboard.press("j")
    sam.keyboard.press("e")
    expect(sam.locator(".flash")).to_have_text("Back in your inbox.")
    expect(sam).to_have_url(re.compile(r"/inbox\?show=archived$"))
    expect(sam.locator("[data-thread-row]")).to_have_count(1)


def test_the_buttons_work_without_javascript(
    browser: Browser, live_portal: str, people: People, messaging: Messaging
) -> None:
    _threads(messaging, people)
    intake = SUBJECTS[0]
    sam = _login(browser, live_portal, people.staff, "desktop", js=False)
    _row(sam, intake).get_by_role("button", name=f"Pin: {intake}", exact=True).click()
    expect(sam.locator(".thread-row").first).to_contain_text(intake)
    _row(sam, intake).get_by_role("button", name=f"Archive: {intake}", exact=True).click()
    expect(sam.locator("[data-thread-row]")).to_have_count(2)
    sam.click("nav.filters >> text=Archived")
    _row(sam, intake).get_by_role("button", name=f"Move to inbox: {intake}", exact=True).click()
    expect(sam.locator("main")).to_contain_text("No archived conversations.")
