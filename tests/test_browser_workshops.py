"""A workshop in a real browser: the instructor creates it on the page and copies the
invitation; a participant opens the link, logs in, joins and starts with one click and
gets JupyterLab; the instructor sees them running on the roster and presses Stop all;
one person too many reads why they cannot join.

One `lablink up` for the module: the embedded site, where `demo` is an instructor.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio

import backend
from backend.embedded import embedded_site
from tests.helpers import site
from tests.helpers.browser import (
    Screenshots,
    assert_accessible,
    home_without_news,
    log_in,
    settle,
    wait_for_jupyterlab,
)
from tests.helpers.hub import HubUser
from tests.helpers.stack import Stack

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

pytestmark = [
    pytest.mark.browser,
    pytest.mark.workshop,
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.asyncio(loop_scope="session"),  # the browser's loop (tests/plugins/browser.py)
]

PASSWORD = "browser-workshop-password-0123"
INSTRUCTOR = "demo"
PARTICIPANT = "paula"
LATECOMER = "lukas"
USERS = [INSTRUCTOR, PARTICIPANT, LATECOMER, "nina"]
TEMPLATE = Path(backend.__file__).parent / "data" / "embedded.yaml"
WORKSHOP_ID = "python-101"
TITLE = "Python for <b>physicists</b>"  # markup in a title is text on every page


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("browser-workshops")
    s = Stack(
        state_dir=root / "state",
        password=PASSWORD,
        users=USERS,
        extra_env={"LABLINK_POLL_INTERVAL": "1"},
    )
    for user in USERS:
        home_without_news(s.state_dir / "users" / user)
    doc = embedded_site(TEMPLATE, s.ports["devsite"], s.local_tunnel())
    s.site = site.write(doc, root / "site.yaml")
    s.start()
    yield s
    s.stop_cleanly()


@pytest_asyncio.fixture(loop_scope="session")
async def second(browser: Browser) -> AsyncIterator[Page]:
    """A page in a browser context of its own: a second person at another computer."""
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(15_000)
    try:
        yield await context.new_page()
    finally:
        await context.close()


def local_input(moment: datetime) -> str:
    """A time as a datetime-local field takes it (the form reads it as UTC)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M")


async def open_invitation(page: Page, link: str, user: str) -> None:
    """Open an invitation link logged out: the hub asks to log in, then shows the
    workshop's page with the code."""
    await page.goto(link)
    await page.wait_for_url(re.compile(r"/hub/login"))
    await page.fill("#username_input", user)
    await page.fill("#password_input", PASSWORD)
    await page.click("#login_submit")
    await page.wait_for_url(re.compile(rf"/hub/workshops/{WORKSHOP_ID}\?code="))


async def test_a_workshop_from_the_instructors_form_to_a_participants_lab_and_stop_all(
    stack: Stack, page: Page, second: Page, screenshots: Screenshots
) -> None:
    # the instructor creates the workshop on /hub/workshops
    await page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    await log_in(page, stack.url, INSTRUCTOR, PASSWORD)
    await page.goto(f"{stack.url}/hub/workshops")
    now = datetime.now(UTC)
    await page.fill("#ws-id", WORKSHOP_ID)
    await page.fill("#ws-title", TITLE)
    await page.fill("#ws-description", "Notebooks on this machine, one each.")
    await page.fill("#ws-start", local_input(now - timedelta(minutes=5)))
    await page.fill("#ws-end", local_input(now + timedelta(hours=3)))
    await page.fill("#ws-places", "1")
    await page.select_option("#ws-preset", "local")
    await settle(page)
    await screenshots.take(page, "workshop-create")
    await assert_accessible(page, "the workshops page with its create form")
    await page.click("#lablink-create")
    await page.wait_for_url(re.compile(rf"/hub/workshops/{WORKSHOP_ID}$"))
    assert "physicists</b>" in await page.locator("#lablink-workshop-title").inner_text()
    assert await page.locator("b", has_text="physicists").count() == 0  # shown as text

    # ... and copies the invitation with the Copy button
    shown = await page.locator("#lablink-invite-url").input_value()
    assert re.fullmatch(rf"{re.escape(stack.url)}/hub/workshops/{WORKSHOP_ID}\?code=\S+", shown)
    await page.click("#lablink-copy-invite")
    copied = await page.evaluate("navigator.clipboard.readText()")
    assert copied == shown

    # a participant opens the link, logs in, joins and starts with one click
    await open_invitation(second, copied, PARTICIPANT)
    await second.locator("#lablink-join").click()
    await second.locator("#lablink-start").wait_for()
    await settle(second)
    await screenshots.take(second, "workshop-participant")
    await assert_accessible(second, "the workshop page of a participant")
    assert await second.locator("#lablink-roster").count() == 0  # no roster for participants
    await second.locator("#lablink-start").click()
    await wait_for_jupyterlab(second, f"/user/{PARTICIPANT}/{WORKSHOP_ID}/lab", 90_000)

    # the instructor sees them running and presses Stop all
    row = page.locator(f"tr.lablink-participant[data-name='{PARTICIPANT}']")

    async def roster_says(state: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            await page.goto(f"{stack.url}/hub/workshops/{WORKSHOP_ID}")
            now_state = await row.get_attribute("data-state")
            if now_state == state:
                return
            assert time.monotonic() < deadline, f"the roster says {now_state}, not {state}"
            await asyncio.sleep(0.5)

    await roster_says("running")
    await settle(page)
    await screenshots.take(page, "workshop-organizer")
    await assert_accessible(page, "the workshop page of its organizer, with a running lab")
    await page.click("#lablink-stop-all")
    them = HubUser(stack.url, PARTICIPANT, PASSWORD)
    await them.login()
    try:
        await them.wait_stopped(WORKSHOP_ID, timeout=30)
    finally:
        await them.http.aclose()
    await roster_says("stopped")

    # one person too many reads why they cannot join
    await second.goto(f"{stack.url}/hub/logout")  # a new person at that computer
    await open_invitation(second, copied, LATECOMER)
    full = second.locator("#lablink-workshop-full")
    await full.wait_for()
    assert "places of this workshop are taken" in await full.inner_text()
    assert await second.locator("#lablink-join").count() == 0
    await screenshots.take(second, "workshop-full")
