"""Pages in a real browser: Debian's Chromium, driven by Playwright.

One Chromium for the whole test session (launching it takes about a second), a
fresh browser context (cookies, storage) and page for every test. Chromium is
installed by `.ci/peers.sh start`, Playwright by `make test-deps`; never by
`playwright install`. Without them the fixtures fail in CI and skip elsewhere.

Playwright's objects belong to the event loop they were made on, and the browser
lives on the session's loop: a test that uses ``page`` runs on it too, with
``pytest.mark.asyncio(loop_scope="session")`` (the fixture says so when it is
missing), and so does an async fixture that uses it
(``@pytest_asyncio.fixture(loop_scope="session")``).

``screenshots`` is where a test keeps pictures of its pages: $LABLINK_SCREENSHOTS
(`make screenshots`: docs/images) or the test's temporary directory. What tests do
with a page (log in, axe-core, JupyterLab) is in tests/helpers/browser.py.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio

from tests.helpers.browser import Screenshots
from tests.helpers.peers import peer_missing

if TYPE_CHECKING:
    from pathlib import Path

    from playwright.async_api import Browser, Page, ViewportSize

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]
VIEWPORT: ViewportSize = {"width": 1280, "height": 800}
TIMEOUT_MS = 15_000  # every Playwright action and wait of a test, unless it says otherwise


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser() -> AsyncIterator[Browser]:
    what = f"Chromium ({CHROMIUM}) driven by Playwright"
    try:
        from playwright.async_api import Error, async_playwright
    except ImportError as exc:
        peer_missing(what, f"{exc} (`make test-deps` installs it)")
    if not os.access(CHROMIUM, os.X_OK):
        peer_missing(what, f"no {CHROMIUM} (`.ci/peers.sh start` installs Debian's chromium)")
    async with async_playwright() as playwright:
        try:
            chromium = await playwright.chromium.launch(
                executable_path=CHROMIUM, args=FLAGS, timeout=30_000
            )
        except Error as exc:
            peer_missing(what, f"it did not start: {exc.message}")
        yield chromium
        await chromium.close()


def loop_scope_of(request: pytest.FixtureRequest) -> str:
    """The event loop a test runs on: its asyncio marker's, else the suite's default."""
    marker = request.node.get_closest_marker("asyncio")
    default = request.config.getini("asyncio_default_test_loop_scope") or "function"
    return str((marker.kwargs.get("loop_scope") if marker else None) or default)


@pytest_asyncio.fixture(loop_scope="session")
async def page(browser: Browser, request: pytest.FixtureRequest) -> AsyncIterator[Page]:
    """A new page (1280x800) in a context of its own, closed after the test."""
    if loop_scope_of(request) != "session":
        pytest.fail(
            "a test that uses the browser runs on the session's event loop: mark it "
            'pytest.mark.asyncio(loop_scope="session")',
            pytrace=False,
        )
    context = await browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(TIMEOUT_MS)
    try:
        yield await context.new_page()
    finally:
        await context.close()


@pytest.fixture
def screenshots(tmp_path: Path) -> Screenshots:
    """Where the test keeps its screenshots: $LABLINK_SCREENSHOTS, else ``tmp_path``."""
    return Screenshots.from_environment(tmp_path)
