"""The admin page (/hub/lablink/admin, issue 18) in a real browser: an admin sees two
persons' labs with their system and handle, filters them, stops another person's lab
and sees it gone (the hub and the backend say stopped); the usage of the VOs and the
last failure with its sentence; a person who is no admin gets 403 at the page and at
the stop API; the page works at a phone's width.

One `lablink up` for the module: the embedded site plus a system whose labs fail at
once, with ``ada`` a JupyterHub admin (who logs in with the admins' own password).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

import backend
from backend.embedded import embedded_site
from tests.helpers import site
from tests.helpers.browser import Screenshots, assert_accessible, home_without_news, log_in, settle
from tests.helpers.hub import HubUser
from tests.helpers.stack import REPO, Stack

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

pytestmark = [
    pytest.mark.browser,
    pytest.mark.metrics,
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.asyncio(loop_scope="session"),  # the browser's loop (tests/plugins/browser.py)
]

PASSWORD = "browser-admin-password-0123"
ADMIN_PASSWORD = "browser-admin-the-admins-own-password-0123"  # 32 characters or more
ADMIN = "ada"
PEOPLE = ["paula", "rita"]
OUTSIDER = "nina"
USERS = [ADMIN, *PEOPLE, OUTSIDER, "felix", "otto"]
TEMPLATE = Path(backend.__file__).parent / "data" / "embedded.yaml"
BROKEN = (
    "import sys; print('loading the lab tools'); "
    "print('ModuleNotFoundError: no module named lab_tools'); sys.exit(3)"
)

NEVER_READY = "import time; time.sleep(300)"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("browser-admin")
    s = Stack(
        state_dir=root / "state",
        password=PASSWORD,
        users=USERS,
        extra_env={
            "LABLINK_POLL_INTERVAL": "1",
            "LABLINK_HUB_ADMINS": ADMIN,
            "LABLINK_DEMO_ADMIN_PASSWORD": ADMIN_PASSWORD,
        },
    )
    for user in USERS:
        home_without_news(s.state_dir / "users" / user)
    doc = embedded_site(TEMPLATE, s.ports["devsite"], s.local_tunnel())
    broken = dict(doc["systems"]["local"])
    broken.update(display_name="Broken machine", command=[sys.executable, "-c", BROKEN])
    broken["start_timeout"] = 20
    doc["systems"]["broken"] = broken
    never = dict(doc["systems"]["local"])  # a lab that never answers: its start waits
    never.update(display_name="Slow machine", command=[sys.executable, "-c", NEVER_READY])
    never["start_timeout"] = 120
    doc["systems"]["slow"] = never
    s.site = site.write(doc, root / "site.yaml")
    s.start()
    yield s
    s.stop_cleanly()


async def start_lab(stack: Stack, user: str, server: str, options: dict[str, Any]) -> None:
    """Start a lab through the hub's API, as the person, and wait until it answers."""
    async with HubUser(stack.url, user, PASSWORD) as person:
        await person.login()
        resp = await person.start(server, options)
        assert resp.status_code in (201, 202), resp.text
        await person.wait_lab(server, timeout=90)


def lab_state(stack: Stack, lab_id: str) -> str:
    """The lab's state as the backend's database holds it (`lablink inspect`)."""
    out = subprocess.run(
        [sys.executable, "-m", "backend.cli", "inspect", lab_id, "--json",
         "--state-dir", str(stack.state_dir), "--site", str(stack.site)],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return str(json.loads(out.stdout)["state"])


async def hub_servers(stack: Stack, user: str) -> dict[str, Any]:
    async with HubUser(stack.url, user, PASSWORD) as person:
        await person.login()
        return dict((await person.model()).get("servers") or {})


async def start_everything(stack: Stack) -> None:
    """paula: a lab on this machine; rita: one on the HPC system's login node; felix:
    one that fails. Once for the module, by the first test that needs them."""
    if getattr(stack, "_admin_labs", False):
        return
    await start_lab(stack, "paula", "analysis", {"system": "local"})
    await start_lab(stack, "rita", "", {"system": "hpc", "partition": "login"})
    async with HubUser(stack.url, "felix", PASSWORD) as felix:
        await felix.login()
        resp = await felix.start("tools", {"system": "broken"})
        # failed within the hub's wait (502 with the backend's sentence), or later
        assert resp.status_code in (201, 202, 502), resp.text
        await felix.wait_stopped("tools", timeout=60)
    stack._admin_labs = True  # type: ignore[attr-defined]


async def test_an_admin_sees_filters_and_stops_another_persons_lab(
    stack: Stack, page: Page, screenshots: Screenshots
) -> None:
    await start_everything(stack)
    await log_in(page, stack.url, ADMIN, ADMIN_PASSWORD)
    # the home page links the admin page for an admin
    await page.goto(f"{stack.url}/hub/home")
    await page.locator("#lablink-admin-link a").click()
    await page.wait_for_url(re.compile(r"/hub/lablink/admin$"))
    await settle(page)

    rows = page.locator("tr.lablink-admin-lab")
    assert await rows.count() == 2
    paula = page.locator("tr.lablink-admin-lab[data-user='paula']")
    rita = page.locator("tr.lablink-admin-lab[data-user='rita']")
    assert await paula.locator(".lablink-system").inner_text() == "This machine"
    assert await paula.locator(".lablink-server").inner_text() == "analysis"
    assert await paula.locator(".lablink-state").inner_text() == "running"
    assert re.search(r"pid \d+", await paula.locator(".lablink-handle").inner_text())
    assert "HPC (development site)" in await rita.locator(".lablink-system").inner_text()
    rita_handle = await rita.locator(".lablink-handle").inner_text()
    assert re.search(r"job \S+", rita_handle) and "node 127.0.0.1:" in rita_handle
    assert await paula.locator(".lablink-group").inner_text() == "Demo"
    # the VOs' usage against their quota, and the failure with its sentence
    demo = page.locator("tr.lablink-usage[data-kind='vo'][data-name='demo']")
    assert "2 of 20" in await demo.locator(".lablink-usage-text").inner_text()
    failure = page.locator("tr.lablink-admin-failure").first
    assert "felix" in await failure.inner_text()
    assert "Broken machine" in await failure.inner_text()
    await failure.locator("summary").click()
    assert "no module named lab_tools" in await failure.locator("pre").inner_text()
    await failure.locator("summary").click()
    await page.evaluate("window.scrollTo(0, 0)")
    await screenshots.take(page, "admin-page")
    await assert_accessible(page, "the admin page")

    # filters, without a reload
    await page.fill("#lablink-filter-person", "PAU")
    assert await paula.is_visible() and not await rita.is_visible()
    assert await page.locator("#lablink-admin-count").inner_text() == "1 of 2 active labs shown"
    await page.fill("#lablink-filter-person", "")
    await page.select_option("#lablink-filter-system", "hpc")
    assert await rita.is_visible() and not await paula.is_visible()
    await page.select_option("#lablink-filter-system", "")
    await page.select_option("#lablink-filter-state", "running")
    assert await rows.count() == 2 and await paula.is_visible() and await rita.is_visible()
    await page.select_option("#lablink-filter-state", "")

    # Stop paula's lab: the row goes, the hub and the backend say stopped
    paula_id = await paula.get_attribute("data-id")
    assert paula_id
    async with page.expect_response(re.compile(r"/admin/labs/[^/]+/stop$")) as stopping:
        await paula.locator(".lablink-admin-stop").click()
    answer = await (await stopping.value).json()
    assert answer["stopped_by"] == "hub"  # as JupyterHub's admin stops a server
    await paula.wait_for(state="detached", timeout=60_000)
    assert await rows.count() == 1
    assert await page.locator("#lablink-admin-error").inner_text() == ""
    assert "analysis" not in await hub_servers(stack, "paula")
    assert lab_state(stack, paula_id) == "stopped"


async def test_someone_who_is_no_admin_gets_403_and_a_stranger_the_login(
    stack: Stack, browser: Browser, page: Page
) -> None:
    # logged out: the login page
    await page.goto(f"{stack.url}/hub/lablink/admin")
    await page.wait_for_url(re.compile(r"/hub/login"))
    # a person who is no admin: JupyterHub's error page, and the API refuses too
    await log_in(page, stack.url, OUTSIDER, PASSWORD)
    answer = await page.goto(f"{stack.url}/hub/lablink/admin")
    assert answer is not None and answer.status == 403
    assert "403" in await page.locator("#error-container, body").first.inner_text()
    assert await page.locator("#lablink-admin").count() == 0
    await page.goto(f"{stack.url}/hub/home")
    assert await page.locator("#lablink-admin-link").count() == 0
    async with HubUser(stack.url, OUTSIDER, PASSWORD) as nina:
        await nina.login()
        stop = await nina.api("POST", "/lablink/admin/labs/0123abcd/stop")
        assert stop.status_code == 403, stop.text
        assert stop.json() == {"detail": "The admin page is for the hub's admins."}
        listed = await nina.api("GET", "/lablink/admin/overview")
        assert listed.status_code == 403
    # the admin's cookie without the XSRF token is refused as JupyterHub refuses it
    async with HubUser(stack.url, ADMIN, ADMIN_PASSWORD) as ada:
        await ada.login()
        forged = await ada.http.post("/hub/api/lablink/admin/labs/0123abcd/stop")
        assert forged.status_code == 403, forged.text
        missing = await ada.api("POST", "/lablink/admin/labs/0123abcd/stop")
        assert missing.status_code == 404 and "No lab" in missing.json()["detail"]


async def test_the_admin_page_at_a_phones_width(stack: Stack, browser: Browser) -> None:
    await start_everything(stack)
    context = await browser.new_context(viewport={"width": 390, "height": 844})
    context.set_default_timeout(15_000)
    try:
        page = await context.new_page()
        await log_in(page, stack.url, ADMIN, ADMIN_PASSWORD)
        await page.goto(f"{stack.url}/hub/lablink/admin")
        await settle(page)
        wide = await page.evaluate("document.documentElement.scrollWidth")
        assert wide <= 390, f"the page is {wide} px wide at a width of 390 px"
        rita = page.locator("tr.lablink-admin-lab[data-user='rita']")
        stop = rita.locator(".lablink-admin-stop")
        await stop.scroll_into_view_if_needed()
        box = await stop.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390
        await page.fill("#lablink-filter-person", "rit")
        assert await rita.is_visible()
        await stop.click()
        await rita.wait_for(state="detached", timeout=90_000)
        async with HubUser(stack.url, "rita", PASSWORD) as person:
            await person.login()
            await person.wait_stopped("", timeout=30)
    finally:
        await context.close()


async def test_a_start_the_hub_still_waits_for_is_stopped_at_the_backend(stack: Stack) -> None:
    async with HubUser(stack.url, "otto", PASSWORD) as otto:
        await otto.login()
        resp = await otto.start("waiting", {"system": "slow"})
        assert resp.status_code == 202, resp.text  # pending: the lab does not answer
        async with HubUser(stack.url, ADMIN, ADMIN_PASSWORD) as ada:
            await ada.login()
            found = (await ada.api("GET", "/lablink/admin/overview")).json()
            lab = next(lab for lab in found["labs"] if lab["user"] == "otto")
            assert lab["state"] in ("accepted", "submitted", "starting")
            stop = await ada.api("POST", f"/lablink/admin/labs/{lab['id']}/stop")
            assert stop.status_code == 200, stop.text
            assert stop.json()["stopped_by"] == "backend"
            assert stop.json()["lab"]["state"] in ("stopping", "stopped")
            # the hub's pending start ends with it
            await otto.wait_stopped("waiting", timeout=60)
            assert lab_state(stack, lab["id"]) == "stopped"
            again = await ada.api("POST", f"/lablink/admin/labs/{lab['id']}/stop")
            assert again.json()["stopped_by"] == "none"  # ended: nothing to stop
