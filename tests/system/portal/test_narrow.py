"""The portal on a phone: a 390 px wide viewport in a real headless Chromium.

The header takes at most two rows (brand, Compose and the account links on
one; the sections under them), the unread pill beside a subject cut short is
shown whole, the compose page's recipient list shows whole addresses, and
every page names its icon, which ``/favicon.ico`` serves.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect
from sqlalchemy.orm import Session, sessionmaker

from replygate.core.messaging import Messaging
from replygate.store import directory
from replygate.store.db import transaction
from tests.portal_support import PASSWORD, People, file_email_reply

pytestmark = pytest.mark.browser

PHONE = {"width": 390, "height": 844}
LONG_SUBJECT = "Your referral letter, the insurance pre-authorisation and next steps"
LONG_ADDRESS = "maximilian.featherstonehaugh@longest-family-practice-name.example.test"


def _phone(browser: Browser, base_url: str, email: str) -> tuple[BrowserContext, Page]:
    context = browser.new_context(base_url=base_url, viewport=PHONE, device_scale_factor=2)
    context.set_default_timeout(10_000)
    page = context.new_page()
    page.goto("/login")
    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]:has-text('Log in')")
    expect(page.locator("h1")).to_have_text("Inbox")
    return context, page


def _box(page: Page, selector: str) -> dict[str, float]:
    box = page.locator(selector).first.bounding_box()
    assert box is not None, f"{selector} is not shown"
    return box


def _rows(page: Page, selector: str) -> int:
    """How many distinct rows the visible children of ``selector`` sit on."""
    tops: list[float] = page.eval_on_selector(
        selector,
        """el => [...el.children]
            .filter(c => c.getClientRects().length)
            .map(c => Math.round(c.getBoundingClientRect().top))""",
    )
    rows: list[float] = []
    for top in sorted(tops):
        if not rows or top - rows[-1] > 8:
            rows.append(top)
    return len(rows)


def test_a_phone_shows_header_pill_and_addresses_whole(
    browser: Browser,
    live_portal: str,
    people: People,
    sessions: sessionmaker[Session],
    messaging: Messaging,
    tmp_path: Path,
) -> None:
    with transaction(sessions) as s:
        directory.add_user(s, LONG_ADDRESS, "Maximilian Featherstonehaugh", "client")
    sent = messaging.send(
        sender=people.admin, to=[people.client1], subject=LONG_SUBJECT, body="Hello Carol."
    )
    file_email_reply(
        sessions,
        messaging,
        thread_id=sent.threads[0].id,
        author=people.client1,
        body="Thank you, all received.",
    )

    # The admin sees every section: the widest header there is.
    context, page = _phone(browser, live_portal, people.admin)
    assert _rows(page, ".topbar") <= 2, "the header takes more than two rows"
    header = _box(page, ".topbar")
    assert header["height"] <= 110, f"the header is {header['height']} px tall"
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]

    row = ".thread-row.unread .thread-link"
    subject, pill = _box(page, f"{row} .subject"), _box(page, f"{row} .tag.new")
    assert pill["width"] >= 30, f"the unread pill is {pill['width']} px wide"
    assert pill["x"] + pill["width"] <= subject["x"] + subject["width"] + 0.5
    expect(page.locator(f"{row} .tag.new")).to_have_text("1 new")
    # The subject is cut short with an ellipsis, not the pill.
    assert page.eval_on_selector(f"{row} .subject-text", "e => e.scrollWidth > e.clientWidth")
    page.screenshot(path=str(tmp_path / "inbox-390.png"))

    page.goto("/compose")
    recipients = _box(page, "#to")
    assert recipients["x"] >= 0 and recipients["x"] + recipients["width"] <= PHONE["width"]
    long_one = page.locator("#to label", has_text=LONG_ADDRESS)
    expect(long_one).to_be_visible()
    label = _box(page, f"#to label:has-text('{LONG_ADDRESS}')")
    assert label["x"] + label["width"] <= recipients["x"] + recipients["width"]
    # Every recipient's line wraps inside the list: nothing cut, nothing to scroll sideways.
    cut: list[str] = page.eval_on_selector_all(
        "#to, #to label",
        "els => els.filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.textContent)",
    )
    assert cut == [], f"cut recipient lines: {cut}"
    long_one.click()
    expect(page.locator(f"#to input[value='{LONG_ADDRESS}']")).to_be_checked()
    page.screenshot(path=str(tmp_path / "compose-390.png"), full_page=True)

    icon = page.locator("link[rel=icon]")
    expect(icon).to_have_count(1)
    for href in (icon.get_attribute("href") or "", "/favicon.ico"):
        answer = context.request.get(href)
        assert answer.status == 200, href
        assert answer.headers["content-type"].startswith("image/svg+xml"), href
        assert b"<svg" in answer.body()
    context.close()
