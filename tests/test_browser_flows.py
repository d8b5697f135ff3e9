"""Lablink's pages in a real browser, as a scientist uses them.

One stack for the module (`lablink up` with the embedded site, plus a cloud system on
the Kubernetes API emulator and a second VO): its ``hpc`` system is the UNICORE
development site, whose batch partitions run jobs on the one-node Slurm cluster of
.ci/peers.sh and whose login-node partition runs them on the login node; labs on it
are reached through the login node's SSH tunnel. The cloud system's pods are run by
``jupyter_node`` (tests/helpers/kubelet.py) while a test asks for it.

- The flows: log in, choose in the form, the progress page, JupyterLab rendered, stop
  on Home; for each kind of system.
- Every Lablink page passes axe-core without a serious or critical violation.

With LABLINK_SCREENSHOTS=<dir> (`make screenshots`: docs/images) the tests keep one
picture of each page there: login, hub-home, spawn-form, spawn-pending, jupyterlab, vo.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import backend
from backend.embedded import embedded_site
from backend.procs import free_port
from tests.helpers import site
from tests.helpers.browser import (
    Screenshots,
    assert_accessible,
    choose,
    home_without_news,
    lab_settings_without_news,
    log_in,
    press_start,
    settle,
    wait_for_jupyterlab,
)
from tests.helpers.hub import HubUser
from tests.helpers.kube import KubeApi
from tests.helpers.labs import jupyterlab_processes
from tests.helpers.slurm import SlurmCluster, squeue_ids
from tests.helpers.stack import Stack
from tests.helpers.userlabs import NAMESPACE
from tests.helpers.waiting import wait_until

if TYPE_CHECKING:
    from playwright.async_api import Page

    from tests.helpers.kubelet import JupyterNode

pytestmark = [
    pytest.mark.browser,
    pytest.mark.e2e,
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.asyncio(loop_scope="session"),  # the browser's loop (tests/plugins/browser.py)
]

PASSWORD = "browser-flows-password-0123"
# one person per test, so that a lab one test leaves behind does not change another's
USERS = ["lena", "hanna", "lorenz", "clara", "ada", "hugo", "paula", "rita", "vera"]
TEMPLATE = Path(backend.__file__).parent / "data" / "embedded.yaml"
WORKSHOP = {
    "display_name": "Workshop",
    "description": "a course's VO: the HPC system only, one lab each",
    "members": {"users": ["*"]},
    "systems": ["hpc"],
    "quota": {"labs": 10, "labs_per_user": 1, "runtime": 120},
}


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, slurm: SlurmCluster, module_kube: KubeApi
) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("browser-flows")
    s = Stack(
        state_dir=root / "state",
        password=PASSWORD,
        users=USERS,
        extra_env={"SLURM_CONF": slurm.conf, "LABLINK_POLL_INTERVAL": "1"},
    )
    # JupyterLab without its news toast, in every lab: local labs read it from their
    # home (<state>/users/<name>), the others from JUPYTERLAB_SETTINGS_DIR
    for user in USERS:
        home_without_news(s.state_dir / "users" / user)
    no_news = {"JUPYTERLAB_SETTINGS_DIR": str(lab_settings_without_news(root / "lab-settings"))}
    doc = embedded_site(TEMPLATE, s.ports["devsite"], s.local_tunnel())
    doc["systems"]["hpc"]["environment"].update(no_news)
    doc["systems"]["cloud"] = site.kubernetes_system(
        display_name="Cloud (emulated Kubernetes)",
        description="JupyterLab in a pod of a Kubernetes cluster",
        start_timeout=120,
        environment=no_news,
    )
    doc["userlab_manager"] = {
        "url": f"http://127.0.0.1:{free_port()}",
        "kubeconfig": str(module_kube.kubeconfig(root / "kubeconfig")),
    }
    doc["vos"]["workshop"] = WORKSHOP
    s.site = site.write(doc, root / "site.yaml")
    s.start()
    yield s
    s.stop_cleanly()


async def person(stack: Stack, user: str) -> HubUser:
    """The person ``user``, logged in over HTTP (close it with ``aclose``)."""
    them = HubUser(stack.url, user, PASSWORD)
    await them.login()
    return them


# -- the flows: from the form to JupyterLab and back -----------------------------------


async def start_from_the_form(
    page: Page,
    stack: Stack,
    user: str,
    choices: dict[str, str],
    screenshots: Screenshots | None = None,
) -> None:
    """Log in, choose in the spawn form, press Start, see the progress page, and wait
    for JupyterLab."""
    await log_in(page, stack.url, user, PASSWORD)
    await page.wait_for_url(re.compile(r"/hub/spawn"))
    for name, value in choices.items():
        await choose(page, name, value)
    if screenshots is not None:
        await settle(page)
        await screenshots.take(page, "spawn-form")
    async with page.expect_response(re.compile(rf"/hub/spawn-pending/{user}")) as pending:
        await press_start(page)
    assert (await pending.value).status == 200  # the progress page, while the lab starts
    await wait_for_jupyterlab(page, f"/user/{user}/lab", timeout_ms=90_000)


async def stop_on_home(page: Page, stack: Stack, user: str) -> None:
    """Stop the person's lab with Home's Stop button; wait until the hub has no server."""
    await page.goto(f"{stack.url}/hub/home")
    await page.get_by_role("button", name=re.compile(r"^Stop", re.IGNORECASE)).first.click()
    them = await person(stack, user)
    try:
        await them.wait_stopped(timeout=60)
    finally:
        await them.http.aclose()


async def test_a_local_lab_from_the_form_to_jupyterlab_and_stopped(
    stack: Stack, page: Page
) -> None:
    await start_from_the_form(page, stack, "lena", {"system": "local"})
    assert len(stack.lab_pids("lena")) == 1
    await stop_on_home(page, stack, "lena")
    await wait_until(lambda: not stack.lab_pids("lena"), 15, "the lab process to end")


async def test_an_hpc_batch_lab_runs_as_a_slurm_job_through_unicore(
    stack: Stack, page: Page, slurm: SlurmCluster, screenshots: Screenshots
) -> None:
    choices = {"system": "hpc", "hpc.partition": "batch"}
    await start_from_the_form(page, stack, "hanna", choices, screenshots)
    await page.locator(".jp-Launcher").wait_for()  # JupyterLab opens its launcher
    assert not await page.get_by_text("official Jupyter news").count()  # the toast is off
    await screenshots.take(page, "jupyterlab")
    [env] = jupyterlab_processes("hanna").values()
    job = env.get("SLURM_JOB_ID")
    assert job, "the lab does not run in a Slurm job"
    assert job in squeue_ids(slurm)
    await page.goto(f"{stack.url}/hub/home")
    await settle(page)
    await screenshots.take(page, "hub-home")
    await stop_on_home(page, stack, "hanna")
    await wait_until(lambda: job not in squeue_ids(slurm), 15, f"Slurm job {job} to end")
    await wait_until(lambda: not jupyterlab_processes("hanna"), 15, "the lab to end")


async def test_an_hpc_lab_on_the_login_node_runs_without_a_batch_job(
    stack: Stack, page: Page
) -> None:
    await start_from_the_form(page, stack, "lorenz", {"system": "hpc", "hpc.partition": "login"})
    [env] = jupyterlab_processes("lorenz").values()
    assert "SLURM_JOB_ID" not in env  # interactive: no queue, no job
    await stop_on_home(page, stack, "lorenz")
    await wait_until(lambda: not jupyterlab_processes("lorenz"), 15, "the lab to end")


async def test_a_cloud_lab_runs_in_a_pod(
    stack: Stack, page: Page, module_kube: KubeApi, jupyter_node: JupyterNode
) -> None:
    await start_from_the_form(page, stack, "clara", {"system": "cloud", "cloud.flavor": "small"})
    [pod] = module_kube.pods(NAMESPACE)
    assert pod["metadata"]["annotations"]["lablink.io/user"] == "clara"
    await stop_on_home(page, stack, "clara")
    await wait_until(lambda: not module_kube.pods(NAMESPACE), 15, "the pod to go")


# -- every page passes axe-core --------------------------------------------------------


async def test_axe_names_the_rule_the_element_and_the_fix(page: Page) -> None:
    """The check itself: a page with an image without a text alternative fails it."""
    await page.set_content(
        '<html lang="en"><head><title>t</title></head>'
        '<body><main><h1>t</h1><img id="plot" src="data:,"></main></body></html>'
    )
    with pytest.raises(pytest.fail.Exception) as failed:
        await assert_accessible(page, "a page")
    message = str(failed.value)
    assert "- image-alt (critical): Images must have alternative text" in message, message
    assert "    #plot: Fix any of the following:" in message, message
    with pytest.raises(AssertionError):  # a known rule: what an xfail mark excuses
        await assert_accessible(page, "a page", known=("image-alt",))
    await page.eval_on_selector("#plot", "el => el.alt = 'a plot'")
    await assert_accessible(page, "a page")


async def test_the_login_page_is_accessible(
    stack: Stack, page: Page, screenshots: Screenshots
) -> None:
    await page.goto(f"{stack.url}/hub/login")
    await settle(page)
    await screenshots.take(page, "login")
    await assert_accessible(page, "the login page")


async def test_the_login_page_after_a_wrong_password_is_accessible(
    stack: Stack, page: Page
) -> None:
    await page.goto(f"{stack.url}/hub/login")
    await page.fill("#username_input", "ada")
    await page.fill("#password_input", "not-the-password")
    await page.click("#login_submit")
    await page.locator(".login_error").wait_for()
    await settle(page)
    await assert_accessible(page, "the login page after a wrong password")


async def test_home_is_accessible(stack: Stack, page: Page) -> None:
    await log_in(page, stack.url, "ada", PASSWORD)
    await page.goto(f"{stack.url}/hub/home")
    await settle(page)
    await assert_accessible(page, "Home without a lab")


async def test_home_with_a_running_lab_is_accessible(stack: Stack, page: Page) -> None:
    await log_in(page, stack.url, "hugo", PASSWORD)  # before the lab: to the form, not it
    hugo = await person(stack, "hugo")
    try:
        response = await hugo.start(options={"system": "local"})
        assert response.status_code in (201, 202), response.text
        await hugo.wait_lab(timeout=60)
        await page.goto(f"{stack.url}/hub/home")
        await settle(page)
        await assert_accessible(page, "Home with a running lab")
    finally:
        await hugo.stop()
        await hugo.wait_stopped()
        await hugo.http.aclose()


@pytest.mark.parametrize("system", ["local", "hpc", "cloud"])
async def test_the_spawn_form_is_accessible(stack: Stack, page: Page, system: str) -> None:
    await log_in(page, stack.url, "ada", PASSWORD)
    await page.goto(f"{stack.url}/hub/spawn")
    await settle(page)
    await choose(page, "system", system)
    await assert_accessible(page, f"the spawn form with system {system!r} chosen")


async def test_the_progress_page_is_accessible(
    stack: Stack, page: Page, module_kube: KubeApi, screenshots: Screenshots
) -> None:
    """A cloud lab waits on the progress page while no node runs its pod."""
    await log_in(page, stack.url, "paula", PASSWORD)
    await page.wait_for_url(re.compile(r"/hub/spawn"))
    await choose(page, "system", "cloud")
    await press_start(page)
    try:
        await page.wait_for_url(re.compile(r"/hub/spawn-pending/paula"))
        await wait_until(lambda: bool(module_kube.pods(NAMESPACE)), 30, "paula's pod")
        await page.locator("#progress-message").filter(has_text="Waiting for a node").wait_for()
        await page.locator("#progress-details summary").click()  # the event log
        await screenshots.take(page, "spawn-pending")
        await assert_accessible(page, "the progress page")
        await page.get_by_role("button", name="Stop Server").click()
    finally:
        paula = await person(stack, "paula")
        try:
            await paula.wait_stopped()
        finally:
            await paula.http.aclose()
    await wait_until(lambda: not module_kube.pods(NAMESPACE), 15, "the pod to go")


async def test_the_vo_page_is_accessible_and_switches_the_vo_by_a_click(
    stack: Stack, page: Page, screenshots: Screenshots
) -> None:
    await log_in(page, stack.url, "vera", PASSWORD)
    await page.goto(f"{stack.url}/hub/lablink/vo")
    await settle(page)
    await screenshots.take(page, "vo")
    await assert_accessible(page, "the VO page")

    active = page.locator("tr.lablink-vo.table-active")
    assert await active.get_attribute("data-vo") == "demo"
    row = page.locator("tr.lablink-vo[data-vo='workshop']")
    await row.get_by_role("button", name="Make active").click()
    await page.wait_for_load_state()
    assert await active.get_attribute("data-vo") == "workshop"
    # the form now offers what the workshop's VO allows: the HPC system only
    await page.goto(f"{stack.url}/hub/spawn")
    systems = await page.eval_on_selector_all(
        "[name='system']",
        "els => els.flatMap(e => e.options ? Array.from(e.options) : [e]).map(o => o.value)",
    )
    assert systems == ["hpc"], systems


async def test_a_refused_start_shows_the_form_accessibly(stack: Stack, page: Page) -> None:
    """A start the backend refuses (a run time above the partition's most, sent by a
    form the browser did not check) comes back as the form with the reason."""
    await log_in(page, stack.url, "rita", PASSWORD)
    await page.wait_for_url(re.compile(r"/hub/spawn"))
    await choose(page, "system", "hpc")
    await choose(page, "hpc.partition", "devel")
    await page.eval_on_selector("[name='hpc.runtime']", "el => el.form.noValidate = true")
    await page.fill("[name='hpc.runtime']", "9999")
    await press_start(page)
    await settle(page)
    assert "/hub/spawn" in page.url and "spawn-pending" not in page.url, page.url
    await page.get_by_text(re.compile("9999|run time|runtime", re.IGNORECASE)).first.wait_for()
    await assert_accessible(page, "the spawn form after a refused start")
