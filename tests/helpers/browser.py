"""What browser tests do with a page: log in, choose in the spawn form, wait for
JupyterLab, check a page with axe-core, keep a screenshot. The fixtures (``browser``,
``page``, ``screenshots``) are in tests/plugins/browser.py.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from playwright.async_api import Page

# -- JupyterLab ------------------------------------------------------------------------

# JupyterLab asks every new person whether it may fetch Jupyter's news, in a toast over
# the lab; a person who answered "No" has this in their user settings
NO_NEWS = {"fetchNews": "false", "checkForUpdates": False}
NOTIFICATION_SETTINGS = Path("@jupyterlab/apputils-extension/notification.jupyterlab-settings")


def lab_settings_without_news(settings_dir: Path) -> Path:
    """Write JupyterLab user settings (``JUPYTERLAB_SETTINGS_DIR``, by default
    ``~/.jupyter/lab/user-settings``) that say no to the news toast; return the directory.
    A lab that switches the toast off by itself is unchanged by them."""
    path = settings_dir / NOTIFICATION_SETTINGS
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(NO_NEWS), encoding="utf-8")
    return settings_dir


def home_without_news(home: Path) -> None:
    """The same settings in a lab's home directory (a lab whose HOME is ``home``)."""
    lab_settings_without_news(home / ".jupyter" / "lab" / "user-settings")


async def wait_for_jupyterlab(page: Page, lab_path: str, timeout_ms: float = 60_000) -> None:
    """Wait until the page is JupyterLab at ``lab_path`` (e.g. /user/alice/lab) with its
    shell rendered and its splash screen gone."""
    await page.wait_for_url(re.compile(re.escape(lab_path)), timeout=timeout_ms)
    await page.locator("#jp-main-dock-panel").wait_for(timeout=timeout_ms)
    await page.locator("#jupyterlab-splash").wait_for(state="detached", timeout=timeout_ms)


# -- the hub's pages -------------------------------------------------------------------


async def log_in(page: Page, url: str, user: str, password: str) -> None:
    """Log in on the hub's login page at ``url`` (the hub's public URL); the hub then
    shows the spawn form, or the lab when one runs."""
    await page.goto(f"{url}/hub/login")
    await page.fill("#username_input", user)
    await page.fill("#password_input", password)
    await page.click("#login_submit")
    await page.wait_for_url(lambda address: "/hub/login" not in address)


async def settle(page: Page) -> None:
    """Wait until the page has loaded what its scripts fetch (the header's VO switcher):
    no request for half a second. Not for a page that streams (the progress page)."""
    await page.wait_for_load_state("networkidle")


async def choose(page: Page, name: str, value: str) -> None:
    """Choose ``value`` for the form field ``name`` (e.g. ``system``, ``hpc.partition``),
    whether the form shows it as a select or as radio buttons."""
    field = page.locator(f"[name='{name}']")
    if await field.first.evaluate("el => el.tagName") == "SELECT":
        await field.first.select_option(value)
    else:
        await page.locator(f"[name='{name}'][value='{value}']").check()


async def press_start(page: Page) -> None:
    """Press the spawn form's Start button."""
    await page.get_by_role("button", name="Start", exact=True).click()


# -- accessibility: axe-core -----------------------------------------------------------

FAILING_IMPACTS = ("serious", "critical")


@dataclass(frozen=True)
class Violation:
    """One rule of axe-core that a page breaks, with the elements that break it."""

    rule: str
    impact: str
    help: str
    help_url: str
    elements: list[tuple[str, str]]  # (CSS selector, what to fix there)

    @classmethod
    def from_axe(cls, found: dict[str, Any]) -> Violation:
        elements = []
        for node in found.get("nodes", []):
            # a target is a selector, or a list of them through iframes and shadow roots
            target = " >>> ".join(
                t if isinstance(t, str) else " ".join(t) for t in node.get("target", [])
            )
            summary = " ".join(str(node.get("failureSummary", "")).split())
            elements.append((target, summary))
        return cls(
            rule=str(found["id"]),
            impact=str(found.get("impact") or ""),
            help=str(found.get("help", "")),
            help_url=str(found.get("helpUrl", "")),
            elements=elements,
        )

    def describe(self) -> str:
        lines = [f"- {self.rule} ({self.impact}): {self.help} <{self.help_url}>"]
        lines += [f"    {target}: {summary}" for target, summary in self.elements]
        return "\n".join(lines)


async def axe_violations(page: Page) -> list[Violation]:
    """Every violation axe-core finds on the page as it is now."""
    from axe_playwright_python.async_playwright import Axe

    results = await Axe().run(page)
    return [Violation.from_axe(v) for v in results.response["violations"]]


async def assert_accessible(page: Page, what: str, known: Collection[str] = ()) -> None:
    """Fail with a readable list when axe-core finds a serious or critical violation on
    the page (``what`` names the page in the message).

    ``known``: rules a test expects to break until their fix lands (the test is marked
    ``pytest.mark.xfail(strict=True, raises=AssertionError)``): only they raise
    AssertionError; any other rule fails the test with ``pytest.fail``, which that mark
    does not excuse."""
    found = [v for v in await axe_violations(page) if v.impact in FAILING_IMPACTS]
    if not found:
        return
    where = page.url.partition("?")[0]  # the query may carry the _xsrf token
    listing = "\n".join(v.describe() for v in found)
    message = (
        f"{what} ({where}) breaks {len(found)} accessibility rule(s) of impact serious or "
        f"critical (axe-core):\n{listing}"
    )
    if any(v.rule not in known for v in found):
        pytest.fail(message, pytrace=False)
    raise AssertionError(message)


# -- screenshots -----------------------------------------------------------------------

SCREENSHOTS_ENV = "LABLINK_SCREENSHOTS"


@dataclass(frozen=True)
class Screenshots:
    """Where a test keeps its screenshots: ``$LABLINK_SCREENSHOTS`` when set (`make
    screenshots` sets docs/images), else a temporary directory. Each page has one stable
    name, so that docs/images keeps one file per page."""

    directory: Path

    @classmethod
    def from_environment(cls, fallback: Path) -> Screenshots:
        return cls(Path(os.environ.get(SCREENSHOTS_ENV) or fallback))

    async def take(self, page: Page, name: str) -> Path:
        path = self.directory / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=path)
        return path
