"""The hub's own pages in a real browser: the login page with the site's face, the
header (site name, VO link, VO switcher), and Home as a dashboard of labs (system,
time left, a failure's output, stop, restart, a named new lab, the VO's limits).

One `lablink up` for the module, with the embedded site made concrete for this
machine and changed a little: a system whose labs fail, a branding of its own,
and the demo VO's labs_per_user at 2 so that its limit can be reached.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from backend.cli import EMBEDDED_SITE
from backend.embedded import embedded_site
from tests.helpers.stack import Stack

if TYPE_CHECKING:
    from playwright.async_api import Page

pytestmark = [
    pytest.mark.browser,
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.asyncio(loop_scope="session"),  # the browser's loop (tests/plugins/browser.py)
]

PASSWORD = "pages-password-0123"
HINT = "Log in with any name and the workshop's password."
PER_USER = 2


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    state = tmp_path_factory.mktemp("pages") / "state"
    s = Stack(state, password=PASSWORD, users=["alice", "bob", "carol", "dave", "erin"])
    doc: dict[str, Any] = embedded_site(Path(str(EMBEDDED_SITE)), s.ports["devsite"])
    doc["branding"] = {
        "name": "Test Centre Labs",
        "login_hint": HINT,
        "support_url": "https://support.example.org/",
    }
    doc["systems"]["broken"] = {
        **{k: v for k, v in doc["systems"]["local"].items() if k not in ("command", "args")},
        "display_name": "Broken machine",
        "command": ["/bin/sh", "-c", "echo 'the lab cannot find its disk' >&2; exit 3"],
    }
    doc["vos"]["demo"]["quota"]["labs_per_user"] = PER_USER
    state.mkdir(parents=True)
    s.site = state / "site.yaml"
    s.site.write_text(yaml.safe_dump(doc))
    s.start()
    yield s
    s.stop_cleanly()


async def log_in(page: Page, stack: Stack, user: str) -> None:
    await page.goto(f"{stack.url}/hub/login")
    await page.fill("#username_input", user)
    await page.fill("#password_input", PASSWORD)
    await page.click("#login_submit")
    await page.wait_for_url(re.compile(r"/hub/(spawn|home)"))


async def hub_api(page: Page, method: str, path: str, body: Any = None) -> dict[str, Any]:
    """A call of the hub's REST API from a hub page of the logged-in person (its cookie
    and XSRF token)."""
    if "/hub/" not in page.url:
        await page.goto(page.url.split("/user/")[0] + "/hub/home")
    return await page.evaluate(
        """async ([method, url, body]) => {
             const resp = await fetch(url, {method, credentials: "same-origin",
               headers: {"X-XSRFToken": window.jhdata.xsrf_token,
                         "Content-Type": "application/json"},
               body: body === null ? undefined : JSON.stringify(body)});
             const text = await resp.text();
             let data = {};
             try { data = JSON.parse(text); } catch (e) {}
             return {status: resp.status, data};
           }""",
        [method, f"/hub/api{path}", body],
    )


async def start_failing(page: Page, stack: Stack, user: str, server: str) -> None:
    """Start a named lab on the system whose labs fail; wait until Home says failed."""
    started = await hub_api(page, "POST", f"/users/{user}/servers/{server}", {"system": "broken"})
    # the hub answers 502 with the failure when it comes within its slow-spawn wait
    assert started["status"] in (201, 202, 502), started
    await wait_state(page, stack, server, "failed", 60)


async def wait_state(page: Page, stack: Stack, server: str, state: str, timeout: float) -> None:
    """Reload Home until the lab's row says ``state``."""
    row = page.locator(f"tr.lablink-lab[data-server='{server}']")

    async def check() -> bool:
        await page.goto(f"{stack.url}/hub/home")
        return await row.get_attribute("data-state") == state

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"lab {server!r} is {await row.get_attribute('data-state')}, not {state}")


async def test_login_page_shows_the_sites_name_and_hint(stack: Stack, page: Page) -> None:
    await page.goto(f"{stack.url}/hub/login")
    assert await page.locator("#lablink-login-name").inner_text() == "Test Centre Labs"
    assert HINT in await page.locator("#lablink-login-hint").inner_text()
    support = page.locator("#lablink-login-support")
    assert await support.get_attribute("href") == "https://support.example.org/"
    assert await page.title() == "Test Centre Labs"


async def test_the_header_names_the_site_and_links_the_vo_page(stack: Stack, page: Page) -> None:
    await log_in(page, stack, "bob")
    await page.goto(f"{stack.url}/hub/home")
    assert await page.locator("#lablink-site-name").inner_text() == "Test Centre Labs"
    await page.locator("#lablink-vo-select").wait_for()  # shown once the VOs are known
    link = page.locator("#lablink-vo-link")
    assert await link.is_visible()
    await link.click()
    await page.wait_for_url("**/hub/lablink/vo")
    assert await page.locator("tr.lablink-vo").count() == 2


async def test_switching_the_vo_in_the_header_changes_the_form(stack: Stack, page: Page) -> None:
    await log_in(page, stack, "carol")
    await page.goto(f"{stack.url}/hub/spawn")
    assert "VO Demo" in await page.locator(".lablink-vo-summary").inner_text()
    select = page.locator("#lablink-vo-select")
    await select.wait_for()
    async with page.expect_navigation():
        await select.select_option("hpc-course")
    await page.goto(f"{stack.url}/hub/spawn")
    assert "VO HPC course" in await page.locator(".lablink-vo-summary").inner_text()
    systems = await page.eval_on_selector(
        "#lablink-system", "el => Array.from(el.options).map(o => o.value)"
    )
    assert systems == ["hpc"]
    await page.goto(f"{stack.url}/hub/home")
    assert "HPC course" in await page.locator("#lablink-home-quota").inner_text()


async def test_home_shows_labs_and_their_failures(stack: Stack, page: Page) -> None:
    await log_in(page, stack, "alice")
    # a named lab made with the new-lab control, on this machine
    await page.goto(f"{stack.url}/hub/home")
    await page.fill("#lablink-new-name", "Bad Name")
    await page.click("#lablink-new-submit")
    assert "cannot name a lab" in await page.locator("#lablink-new-error").inner_text()
    await page.fill("#lablink-new-name", "first")
    await page.click("#lablink-new-submit")
    await page.wait_for_url("**/hub/spawn/alice/first")
    assert await page.locator("h1").inner_text() == "Start the lab “first”"
    await page.select_option("#lablink-system", "local")
    await page.get_by_role("button", name="Start", exact=True).click()
    await page.wait_for_url(re.compile(r"/user/alice/first/lab"), timeout=60_000)
    await page.locator("#jp-main-dock-panel").wait_for(timeout=30_000)
    # JupyterLab does not ask about news (its news are off in every kind's lab args)
    await page.wait_for_timeout(3000)
    assert await page.get_by_text("official Jupyter news").count() == 0

    # a lab that fails, through the hub's API
    await start_failing(page, stack, "alice", "broken")

    await page.goto(f"{stack.url}/hub/home")
    first = page.locator("tr.lablink-lab[data-server='first']")
    assert await first.get_attribute("data-state") == "running"
    assert await first.locator(".lablink-system").inner_text() == "This machine"
    assert await first.locator(".lablink-vo").inner_text() == "Demo"
    assert await first.locator(".lablink-time-left").inner_text() == "no wall time"
    assert await first.locator(".lablink-open").is_visible()
    failure = page.locator("tr.lablink-failure[data-server='broken']")
    assert "the lab cannot find its disk" in await failure.locator(".lablink-output").inner_text()
    quota = await page.locator("#lablink-home-quota").inner_text()
    assert f"yours 1 of {PER_USER} active" in quota
    assert "additional" not in await page.locator("#lablink-home").inner_text()

    # restart: stopped and started again with the same choices
    await first.locator(".lablink-restart").click()
    await page.wait_for_url(re.compile(r"/user/alice/first/"), timeout=90_000)
    await wait_state(page, stack, "first", "running", 60)

    # stop
    await page.locator("tr.lablink-lab[data-server='first'] .lablink-stop").click()
    await wait_state(page, stack, "first", "stopped", 60)
    # a stopped named lab can be deleted
    await page.locator("tr.lablink-lab[data-server='broken'] .lablink-delete").click()
    await page.locator("tr.lablink-lab[data-server='broken']").wait_for(state="detached")


async def test_the_named_server_limit_follows_the_vo(stack: Stack, page: Page) -> None:
    await log_in(page, stack, "dave")
    for i in range(5):  # five named servers, each stopped (its lab failed)
        await start_failing(page, stack, "dave", f"old{i}")
    # a sixth: the VO admits it although JupyterHub counts five created ones
    sixth = await hub_api(page, "POST", "/users/dave/servers/sixth", {"system": "local"})
    assert sixth["status"] in (201, 202), sixth
    seventh = await hub_api(page, "POST", "/users/dave/servers/seventh", {"system": "local"})
    assert seventh["status"] in (201, 202), seventh
    await wait_state(page, stack, "seventh", "running", 60)
    await wait_state(page, stack, "sixth", "running", 60)
    # the VO is full now (labs_per_user 2): the VO's sentence, from the API and on Home
    eighth = await hub_api(page, "POST", "/users/dave/servers/eighth", {"system": "local"})
    assert eighth["status"] == 429, eighth
    assert "as many as it allows one person" in eighth["data"]["message"]
    await page.goto(f"{stack.url}/hub/home")
    assert "as many as it allows" in await page.locator("#lablink-home-full").inner_text()
    assert await page.locator("#lablink-new-submit").is_disabled()
    for name in ("sixth", "seventh"):
        await hub_api(page, "DELETE", f"/users/dave/servers/{name}")
    for name in ("sixth", "seventh"):
        await wait_state(page, stack, name, "stopped", 60)


async def test_home_counts_down_an_hpc_labs_wall_time(stack: Stack, page: Page) -> None:
    await log_in(page, stack, "erin")
    options = {"system": "hpc", "partition": "devel", "runtime": 30}
    started = await hub_api(page, "POST", "/users/erin/servers/job", options)
    assert started["status"] in (201, 202), started
    await wait_state(page, stack, "job", "running", 90)
    row = page.locator("tr.lablink-lab[data-server='job']")
    assert await row.locator(".lablink-system").inner_text() == "HPC (development site)"
    assert await row.locator(".lablink-choice").inner_text() == "Development"
    left = row.locator(".lablink-time-left")
    assert re.fullmatch(r"(29|30) min", (await left.inner_text()).strip())
    ends = await left.get_attribute("data-ends")
    # the page counts down from the backend's end: 25 minutes later it says 4 or 5
    await page.clock.install()
    await page.reload()
    await page.clock.fast_forward("25:00")
    assert re.fullmatch(r"[45] min", (await left.inner_text()).strip()), ends
    await hub_api(page, "DELETE", "/users/erin/servers/job")
    await wait_state(page, stack, "job", "stopped", 60)
