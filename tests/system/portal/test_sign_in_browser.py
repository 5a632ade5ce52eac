"""Signing in and out in a real headless Chromium: enrolling a second factor with a code
computed from the secret the page shows, logging in with a code, a reused code
refused, a recovery code used once; and the automatic logoff after the idle
limit, with its warning and "Stay signed in", with and without JavaScript.

Without Chromium these tests fail rather than skip: CI installs it.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Iterator

import pyotp
import pytest
from playwright.sync_api import Browser, Page, expect
from sqlalchemy.orm import Session, sessionmaker

from replygate.config import Settings
from replygate.store import directory
from replygate.store.db import transaction
from replygate.store.models import MfaRequirement
from tests.portal_support import PASSWORD, People, serve_in_thread

pytestmark = pytest.mark.browser

IDLE_SECONDS = 6  # the warning comes at 3 s, the logoff at 6 s


def _page(browser: Browser, base_url: str, *, js: bool = True) -> Page:
    context = browser.new_context(
        base_url=base_url, viewport={"width": 1180, "height": 760}, java_script_enabled=js
    )
    context.set_default_timeout(10_000)
    return context.new_page()


def _password(page: Page, email: str) -> None:
    page.goto("/login")
    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]:has-text('Log in')")


def _code(page: Page, code: str) -> None:
    expect(page).to_have_url(re.compile(r"/login/code$"))
    page.fill("#code", code)
    page.click("button[type=submit]:has-text('Continue')")


def test_enrol_then_log_in_with_codes_and_a_recovery_code(
    browser: Browser, live_portal: str, people: People, sessions: sessionmaker[Session]
) -> None:
    with transaction(sessions) as s:
        directory.organisation(s).mfa_required = MfaRequirement.STAFF
    page = _page(browser, live_portal)
    _password(page, people.staff)
    expect(page).to_have_url(re.compile(r"/login/enrol$"))
    expect(page.locator("#enrol-qr svg")).to_be_visible()
    secret = page.locator("#enrol-secret").inner_text()
    totp = pyotp.TOTP(secret)
    page.fill("#code", totp.now())
    page.click("button[type=submit]:has-text('Turn on')")
    codes = page.locator("#recovery-codes code").all_inner_texts()
    assert len(codes) == 10
    page.click("text=Continue")
    expect(page).to_have_url(re.compile(r"/inbox$"))

    # Another browser: the password, then the next code.
    laptop = _page(browser, live_portal)
    _password(laptop, people.staff)
    later = totp.at(time.time() + 30)  # one value: the third browser must give the same
    _code(laptop, later)
    expect(laptop).to_have_url(re.compile(r"/inbox$"))

    # The same code again, from a third browser: refused.
    third = _page(browser, live_portal)
    _password(third, people.staff)
    _code(third, later)
    expect(third.locator(".flash.error")).to_contain_text("used already")
    expect(third).to_have_url(re.compile(r"/login/code$"))

    # A recovery code works once.
    _code(third, codes[0])
    expect(third).to_have_url(re.compile(r"/inbox$"))
    fourth = _page(browser, live_portal)
    _password(fourth, people.staff)
    _code(fourth, codes[0])
    expect(fourth.locator(".flash.error")).to_be_visible()


@pytest.fixture
def idle_portal(settings: Settings, sessions: sessionmaker[Session]) -> Iterator[str]:
    short = dataclasses.replace(settings, session_idle_seconds=IDLE_SECONDS)
    yield from serve_in_thread(short, sessions)


def test_idle_logoff_warns_lets_one_stay_and_then_signs_out(
    browser: Browser, idle_portal: str, people: People
) -> None:
    page = _page(browser, idle_portal)
    _password(page, people.client1)
    expect(page).to_have_url(re.compile(r"/inbox$"))
    warning = page.locator("#idle-warning")
    expect(warning).to_be_visible(timeout=IDLE_SECONDS * 1000)
    page.click("#stay-signed-in")
    expect(warning).to_be_hidden()
    # The session lives on past the first limit, then ends at the next one.
    expect(page).to_have_url(re.compile(r"/login\?expired=1$"), timeout=IDLE_SECONDS * 3000)
    expect(page.locator("#signed-out-idle")).to_be_visible()
    page.goto("/inbox")
    expect(page).to_have_url(re.compile(r"/login\?next="))


def test_idle_logoff_without_javascript(browser: Browser, idle_portal: str, people: People) -> None:
    page = _page(browser, idle_portal, js=False)
    _password(page, people.client1)
    expect(page).to_have_url(re.compile(r"/inbox$"))
    # The page leaves by itself for the login page once the limit has passed …
    expect(page).to_have_url(re.compile(r"/login\?expired=1$"), timeout=IDLE_SECONDS * 3000)
    # … and the server has ended the session: the inbox asks for a login.
    page.goto("/inbox")
    expect(page).to_have_url(re.compile(r"/login\?next="))
