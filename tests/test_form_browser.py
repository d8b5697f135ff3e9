"""The spawn form in a real browser: its JavaScript on the rendered form, and the
form on the hub's own pages, from login to a running JupyterLab (the flows on
every kind of system, and the pages' screenshots, are in tests/test_browser_flows.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
import pytest_asyncio

from backend.catalog import catalog, validate_options
from backend.settings import Settings
from backend.store import Usage
from spawner.form import options_form_html, options_from_form
from tests.helpers import site
from tests.helpers.browser import home_without_news, log_in, wait_for_jupyterlab
from tests.helpers.stack import Stack
from tests.helpers.waiting import wait_until

if TYPE_CHECKING:
    from playwright.async_api import Page

pytestmark = [
    pytest.mark.browser,
    pytest.mark.integration,
    pytest.mark.asyncio(loop_scope="session"),  # the browser's loop (tests/plugins/browser.py)
]

SYSTEMS = {
    "local": {"kind": "local", "display_name": "This machine"},
    "hpc": {
        "kind": "unicore",
        "display_name": "HPC",
        "url": "https://unicore.example.org/X/rest/core",
        "partitions": {
            "batch": {
                "display_name": "Batch",
                "nodes": {"max": 4},
                "runtime": {"min": 10, "max": 120, "default": 60},
            },
            "gpu": {
                "display_name": "GPU",
                "nodes": {"max": 2},
                "runtime": {"min": 5, "max": 30},
                "gpus": {"min": 1, "max": 2},
            },
        },
        "reservations": {"workshop": {"partitions": ["batch"]}},
        "access": [{"users": ["*"], "accounts": ["{user}"], "projects": ["p1"]}],
    },
    "cloud": {
        "kind": "kubernetes",
        "display_name": "Cloud",
        "flavors": {"small": {"cpu": 1, "memory": 2}, "large": {"cpu": 8, "memory": 32}},
        "images": [{"image": "quay.io/jupyter/scipy-notebook:2025-01-06", "display_name": "SciPy"}],
        "image_patterns": ["quay.io/jupyter/*"],
    },
}

# What the form sends when Start is pressed (the browser checks min and max first;
# a form it finds invalid is not sent, and `sent` stays unset).
PAGE = """<!doctype html>
<html><body>
<form id="spawn">{form}<button type="submit">Start</button></form>
<script>
document.getElementById("spawn").addEventListener("submit", function (event) {{
  event.preventDefault();
  window.sent = Array.from(new FormData(event.target));
}});
</script>
</body></html>"""


@pytest.fixture(scope="module")
def form_site() -> Settings:
    return site.settings(site.doc(None, systems=SYSTEMS, tokens=site.hub_token("T")))


@pytest_asyncio.fixture(loop_scope="session")  # on the browser's loop, as the tests
async def form(page: Page, form_site: Settings) -> Page:
    """The form the hub renders for alice, in a page of its own."""
    await page.set_content(PAGE.format(form=options_form_html(catalog(form_site, "alice"))))
    return page


async def submit(page: Page) -> dict[str, list[str]]:
    """Press Start; what the form sent, as the hub's handler gets it."""
    await page.evaluate("window.sent = undefined")
    await page.click("button[type=submit]")
    sent = await page.evaluate("window.sent")
    if sent is None:
        invalid = await page.eval_on_selector_all(
            "#spawn :invalid", "els => els.map(e => e.name + ': ' + e.validationMessage)"
        )
        raise AssertionError(f"the browser did not send the form: {invalid}")
    data: dict[str, list[str]] = {}
    for name, value in sent:
        data.setdefault(name, []).append(value)
    return data


async def number(page: Page, name: str) -> dict[str, Any]:
    """A number field as a person sees it: limits, value, placeholder, shown or not."""
    return await page.eval_on_selector(
        f"[name='{name}']",
        """el => ({min: el.min, max: el.max, value: el.value, placeholder: el.placeholder,
                   shown: el.checkVisibility()})""",
    )


async def offered(page: Page, name: str) -> list[str]:
    """The choices of a select a person can pick."""
    return await page.eval_on_selector(
        f"select[name='{name}']",
        "el => Array.from(el.options).filter(o => !o.disabled && !o.hidden).map(o => o.value)",
    )


async def shown_systems(page: Page) -> list[str]:
    return await page.eval_on_selector_all(
        "fieldset[data-system]", "els => els.filter(e => !e.hidden).map(e => e.dataset.system)"
    )


@pytest.mark.parametrize(
    ("system", "fields"),
    [
        ("local", set()),
        ("hpc", {"account", "project", "partition", "nodes", "runtime", "gpus", "reservation"}),
        ("cloud", {"flavor", "image", "image.other", "cpu", "memory"}),
    ],
)
async def test_only_the_chosen_systems_fields_are_shown_and_sent(
    form: Page, system: str, fields: set[str]
) -> None:
    await form.select_option("#lablink-system", "cloud")  # away from the default first
    await form.select_option("#lablink-system", system)
    assert await shown_systems(form) == [system]
    sent = await submit(form)
    assert set(sent) == {"system"} | {f"{system}.{key}" for key in fields}
    assert sent["system"] == [system]


async def test_a_partition_sets_nodes_run_time_and_gpus(form: Page) -> None:
    await form.select_option("#lablink-system", "hpc")
    assert await number(form, "hpc.nodes") == {
        "min": "1", "max": "4", "value": "1", "placeholder": "", "shown": True
    }  # fmt: skip
    assert (await number(form, "hpc.runtime"))["value"] == "60"
    assert not (await number(form, "hpc.gpus"))["shown"]  # batch has none

    await form.select_option("[name='hpc.partition']", "gpu")
    assert await number(form, "hpc.nodes") == {
        "min": "1", "max": "2", "value": "1", "placeholder": "", "shown": True
    }  # fmt: skip
    runtime = await number(form, "hpc.runtime")
    assert (runtime["min"], runtime["max"], runtime["value"]) == ("5", "30", "5")
    gpus = await number(form, "hpc.gpus")
    assert (gpus["min"], gpus["max"], gpus["value"], gpus["shown"]) == ("1", "2", "1", True)

    await form.select_option("[name='hpc.partition']", "batch")
    runtime = await number(form, "hpc.runtime")
    assert (runtime["min"], runtime["max"], runtime["value"]) == ("10", "120", "60")
    assert not (await number(form, "hpc.gpus"))["shown"]


async def test_a_reservation_is_offered_only_with_its_partitions(form: Page) -> None:
    await form.select_option("#lablink-system", "hpc")
    assert await offered(form, "hpc.reservation") == ["", "workshop"]
    await form.select_option("[name='hpc.reservation']", "workshop")

    await form.select_option("[name='hpc.partition']", "gpu")
    assert await offered(form, "hpc.reservation") == [""]
    assert await form.input_value("[name='hpc.reservation']") == ""  # "none"
    assert (await submit(form))["hpc.reservation"] == [""]

    await form.select_option("[name='hpc.partition']", "batch")
    assert await offered(form, "hpc.reservation") == ["", "workshop"]
    assert await form.input_value("[name='hpc.reservation']") == ""


async def test_a_flavor_sets_the_most_cpu_and_memory(form: Page) -> None:
    await form.select_option("#lablink-system", "cloud")
    cpu = await number(form, "cloud.cpu")
    assert (cpu["max"], cpu["value"], cpu["placeholder"]) == ("1", "", "up to 1")

    await form.select_option("[name='cloud.flavor']", "large")
    cpu, memory = await number(form, "cloud.cpu"), await number(form, "cloud.memory")
    assert (cpu["max"], cpu["placeholder"]) == ("8", "up to 8")
    assert (memory["max"], memory["placeholder"]) == ("32", "up to 32")
    await form.fill("[name='cloud.cpu']", "6")
    await form.fill("[name='cloud.memory']", "1.5")

    await form.select_option("[name='cloud.flavor']", "small")
    assert await form.input_value("[name='cloud.cpu']") == ""  # 6 is above the new most
    assert await form.input_value("[name='cloud.memory']") == "1.5"  # still allowed


async def test_an_image_may_be_typed_when_the_system_has_patterns(form: Page) -> None:
    await form.select_option("#lablink-system", "cloud")
    other = form.locator("[name='cloud.image.other']")
    assert await other.is_visible()
    assert await other.get_attribute("placeholder") == "quay.io/jupyter/*"
    assert await offered(form, "cloud.image") == ["quay.io/jupyter/scipy-notebook:2025-01-06"]
    await other.fill("quay.io/jupyter/pytorch-notebook:cuda12")
    sent = await submit(form)
    assert sent["cloud.image.other"] == ["quay.io/jupyter/pytorch-notebook:cuda12"]


@pytest.mark.parametrize(
    ("choices", "typed", "expected"),
    [
        ({"system": "local"}, {}, {"system": "local"}),
        (
            {"system": "hpc", "hpc.partition": "gpu"},
            {"hpc.nodes": "2", "hpc.gpus": "2", "hpc.runtime": "30"},
            {"partition": "gpu", "nodes": 2, "gpus": 2, "runtime": 30, "account": "alice"},
        ),
        (
            {"system": "hpc", "hpc.reservation": "workshop"},
            {},
            {"partition": "batch", "reservation": "workshop", "runtime": 60, "gpus": 0},
        ),
        (
            {"system": "cloud", "cloud.flavor": "large"},
            {"cloud.image.other": "quay.io/jupyter/pytorch-notebook:cuda12", "cloud.cpu": "4"},
            {"image": "quay.io/jupyter/pytorch-notebook:cuda12", "cpu": 4, "memory": 32},
        ),
    ],
)
async def test_what_the_form_sends_the_backend_accepts(
    form: Page,
    form_site: Settings,
    choices: dict[str, str],
    typed: dict[str, str],
    expected: dict[str, Any],
) -> None:
    for name, value in choices.items():
        await form.select_option(f"[name='{name}']", value)
    for name, value in typed.items():
        await form.fill(f"[name='{name}']", value)
    options = options_from_form(await submit(form))
    system, clean = validate_options(form_site, options, "alice")
    assert system == choices["system"]
    assert {key: clean.get(key) for key in expected} == expected


# -- a form that explains itself ------------------------------------------------------

EXPLAINED = {
    "hpc": {
        "kind": "unicore",
        "display_name": "HPC",
        "description": "JupyterLab as a job on the cluster",
        "url": "https://unicore.example.org/X/rest/core",
        "partitions": {
            "batch": {
                "display_name": "Batch",
                "description": "a compute node, for up to two hours",
                "nodes": {"max": 4},
                "runtime": {"min": 10, "max": 120, "default": 60},
            },
            "login": {
                "display_name": "Login node",
                "description": "no queue; for light work",
                "interactive": True,
                "runtime": {"min": 5, "max": 30, "default": 30},
            },
        },
        "access": [
            {"users": ["carol"], "accounts": ["carol"], "projects": ["chem"]},
            {"users": ["carol"], "accounts": ["carol-ext"], "projects": ["ext", "shared"]},
            {"users": ["carol"], "accounts": ["carol"], "projects": ["shared"]},
            {"users": ["dave"], "accounts": ["dave"], "projects": ["p1"]},
        ],
    },
    "local": {"kind": "local", "display_name": "This machine", "description": "a process here"},
}
DEMO_VO = {
    "display_name": "Demo",
    "members": {"users": ["*"]},
    "quota": {"labs": 10, "labs_per_user": 2, "runtime": 90},
}


async def show_form(page: Page, html: str) -> Page:
    await page.set_content(PAGE.format(form=html))
    return page


def explained_catalog(user: str, usage: Usage | None = None) -> dict[str, Any]:
    settings = site.settings(
        site.doc(None, systems=EXPLAINED, vos={"demo": DEMO_VO}, tokens=site.hub_token("T"))
    )
    return catalog(settings, user, vo="demo", vos=["demo"], usage={"demo": usage or Usage(0, 0)})


async def text_of(page: Page, selector: str) -> str:
    return (await page.locator(selector).inner_text()).strip()


async def test_descriptions_and_ranges_are_shown_and_follow_the_partition(page: Page) -> None:
    form = await show_form(page, options_form_html(explained_catalog("dave")))
    await form.select_option("#lablink-system", "hpc")
    option = await text_of(form, "#lablink-system option[value=hpc]")
    assert option == "HPC"  # the short name; the description beneath the select
    assert (
        await text_of(form, "#lablink-system-description") == "JupyterLab as a job on the cluster"
    )
    partition = "#lablink-hpc-partition-description"
    assert await text_of(form, partition) == "a compute node, for up to two hours"
    # the tighter of the partition (120) and the VO (90)
    assert await text_of(form, "#lablink-hpc-runtime-range") == "10 to 90 minutes"
    assert await text_of(form, "#lablink-hpc-nodes-range") == "1 to 4"

    await form.select_option("[name='hpc.partition']", "login")
    assert await text_of(form, partition) == "no queue; for light work"
    assert await text_of(form, "#lablink-hpc-runtime-range") == "5 to 30 minutes"
    assert "(login node)" not in await text_of(form, "[name='hpc.partition']")
    await form.select_option("#lablink-system", "local")
    assert await text_of(form, "#lablink-system-description") == "a process here"
    # the VO's banner claims nothing per lab that a system does not allow
    assert "minutes" not in await text_of(form, ".lablink-vo-summary")


async def test_a_field_with_one_value_is_shown_as_text_and_still_sent(page: Page) -> None:
    form = await show_form(page, options_form_html(explained_catalog("dave")))
    await form.select_option("#lablink-system", "hpc")
    # one account, one project: text, not a select
    assert not await form.locator("[name='hpc.account']").is_visible()
    assert await text_of(form, "#lablink-hpc-account-fixed") == "dave"
    assert await text_of(form, "#lablink-hpc-project-fixed") == "p1"
    assert await form.locator("[name='hpc.nodes']").is_visible()  # batch: 1 to 4
    await form.select_option("[name='hpc.partition']", "login")  # a login node: one node
    assert not await form.locator("[name='hpc.nodes']").is_visible()
    assert await text_of(form, "#lablink-hpc-nodes-fixed") == "1"
    assert not await form.locator("[data-field=reservation]").count()  # there is none
    sent = await submit(form)
    assert (sent["hpc.account"], sent["hpc.project"], sent["hpc.nodes"]) == (
        ["dave"],
        ["p1"],
        ["1"],
    )


async def test_an_account_offers_only_the_projects_granted_with_it(page: Page) -> None:
    form = await show_form(page, options_form_html(explained_catalog("carol")))
    await form.select_option("#lablink-system", "hpc")
    assert await offered(form, "hpc.account") == ["carol", "carol-ext"]
    assert await offered(form, "hpc.project") == ["chem", "shared"]
    await form.select_option("[name='hpc.account']", "carol-ext")
    assert sorted(await offered(form, "hpc.project")) == ["ext", "shared"]
    assert await form.input_value("[name='hpc.project']") in ("ext", "shared")
    await form.select_option("[name='hpc.project']", "shared")
    await form.select_option("[name='hpc.account']", "carol")
    assert await form.input_value("[name='hpc.project']") == "shared"  # granted with both
    sent = await submit(form)
    assert (sent["hpc.account"], sent["hpc.project"]) == (["carol"], ["shared"])


async def test_start_is_off_with_the_reason_when_the_vo_is_full(page: Page) -> None:
    form = await show_form(page, options_form_html(explained_catalog("dave", Usage(3, 2))))
    button = form.locator("button[type=submit]")
    assert await button.is_disabled()
    reason = await text_of(form, ".lablink-full")
    assert reason == (
        "You have 2 active labs in VO Demo, its limit per person; "
        "stop one of them on Home to start another."
    )
    assert await button.get_attribute("title") == reason
    form = await show_form(page, options_form_html(explained_catalog("dave", Usage(1, 1))))
    assert not await form.locator("button[type=submit]").is_disabled()
    assert not await form.locator(".lablink-full").count()


async def test_a_refused_starts_choices_are_shown_again_with_the_field_marked(page: Page) -> None:
    chosen = {"system": "hpc", "partition": "login", "runtime": "999", "vo": "demo"}
    html = options_form_html(
        explained_catalog("dave"), chosen=chosen, error_field="runtime", user="dave"
    )
    form = await show_form(page, html)
    assert await form.input_value("#lablink-system") == "hpc"
    assert await form.input_value("[name='hpc.partition']") == "login"
    runtime = form.locator("[name='hpc.runtime']")
    assert await runtime.input_value() == "999"
    assert await runtime.get_attribute("aria-invalid") == "true"
    assert await text_of(form, "#lablink-hpc-runtime-range") == "5 to 30 minutes"


async def test_the_last_choices_per_system_are_remembered(page: Page) -> None:
    await page.goto("about:blank")  # localStorage needs an origin: the form on a data page
    html = options_form_html(explained_catalog("carol"), user="carol")
    await page.route(
        "http://form.test/",
        lambda route: route.fulfill(body=PAGE.format(form=html), content_type="text/html"),
    )
    await page.goto("http://form.test/")
    await page.select_option("#lablink-system", "hpc")
    await page.select_option("[name='hpc.account']", "carol-ext")
    await page.select_option("[name='hpc.partition']", "login")
    await page.fill("[name='hpc.runtime']", "20")
    await submit(page)
    await page.reload()
    await page.select_option("#lablink-system", "hpc")
    assert await page.input_value("[name='hpc.account']") == "carol-ext"
    assert await page.input_value("[name='hpc.partition']") == "login"
    assert await page.input_value("[name='hpc.runtime']") == "20"
    assert await text_of(page, "#lablink-hpc-runtime-range") == "5 to 30 minutes"


# -- the form on the hub's own pages ------------------------------------------------

PASSWORD = "browser-password-0123"
USER = "alice"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`lablink up` with the embedded site: systems local, hpc (and cluster when
    slurmrestd runs)."""
    s = Stack(tmp_path_factory.mktemp("browser") / "state", password=PASSWORD, users=[USER])
    home_without_news(s.state_dir / "users" / USER)  # the lab's home is <state>/users/<name>
    s.start()
    yield s
    s.stop_cleanly()


@pytest.mark.e2e
@pytest.mark.slow
async def test_log_in_start_a_lab_from_the_form_and_stop_it(stack: Stack, page: Page) -> None:
    await log_in(page, stack.url, USER, PASSWORD)
    await page.wait_for_url("**/hub/spawn")

    assert "VO Demo" in await page.locator(".lablink-vo-summary").inner_text()
    systems = await page.eval_on_selector(
        "#lablink-system", "el => Array.from(el.options).map(o => o.value)"
    )
    assert {"local", "hpc"} <= set(systems), systems
    await page.select_option("#lablink-system", "local")
    await page.get_by_role("button", name="Start", exact=True).click()
    await wait_for_jupyterlab(page, f"/user/{USER}/lab")
    assert len(stack.lab_pids(USER)) == 1

    # another lab beside it, on the HPC system: its form, without starting it
    await page.goto(f"{stack.url}/hub/home")
    await page.fill("#lablink-new-name", "big")
    await page.get_by_role("button", name="New lab").click()
    await page.wait_for_url(f"**/hub/spawn/{USER}/big")
    await page.select_option("#lablink-system", "hpc")
    assert await offered(page, "hpc.partition") == ["batch", "devel", "login"]
    runtime = await number(page, "hpc.runtime")
    assert (runtime["max"], runtime["value"]) == ("240", "60")
    await page.select_option("[name='hpc.partition']", "devel")
    runtime = await number(page, "hpc.runtime")
    assert (runtime["max"], runtime["value"]) == ("60", "30")
    await page.go_back()

    await page.wait_for_url("**/hub/home")
    default = page.locator("tr.lablink-lab[data-server='']")
    await default.get_by_role("button", name="Stop").click()
    await default.get_by_role("link", name="Start").wait_for(timeout=30_000)
    await wait_until(lambda: not stack.lab_pids(USER), 15, "the lab process to end")


@pytest.mark.e2e
@pytest.mark.slow
async def test_a_refused_start_shows_the_form_again_and_the_next_start_works(
    stack: Stack, page: Page
) -> None:
    hub_log = stack.state_dir / "logs" / "hub.log"
    await log_in(page, stack.url, USER, PASSWORD)
    await page.wait_for_url("**/hub/spawn")
    assert await page.locator("h1").inner_text() == "Start a lab"
    await page.select_option("#lablink-system", "hpc")
    await page.select_option("[name='hpc.partition']", "devel")
    # a value the browser would not send: as from a form of before the site changed
    await page.eval_on_selector("[name='hpc.runtime']", "el => el.removeAttribute('max')")
    await page.fill("[name='hpc.runtime']", "9999")
    logged = len(hub_log.read_text(errors="replace"))
    await page.get_by_role("button", name="Start", exact=True).click()

    error = page.locator(".spawn-error-msg")
    await error.wait_for(timeout=30_000)
    sentence = (
        "Run time: 9999 minutes is more than partition Development allows in VO Demo; "
        "choose 10 to 60 minutes."
    )
    assert sentence in await error.inner_text()
    assert "options." not in await error.inner_text()
    # the person's choices, with the refused field marked
    assert await page.input_value("#lablink-system") == "hpc"
    assert await page.input_value("[name='hpc.partition']") == "devel"
    runtime = page.locator("[name='hpc.runtime']")
    assert await runtime.input_value() == "9999"
    assert await runtime.get_attribute("aria-invalid") == "true"

    # one line in the hub's log, no traceback
    await wait_until(lambda: sentence in hub_log.read_text(errors="replace")[logged:], 10, "log")
    added = hub_log.read_text(errors="replace")[logged:]
    assert "Traceback" not in added, added
    assert [line for line in added.splitlines() if "Run time: 9999" in line] == [
        line for line in added.splitlines() if "start refused" in line
    ], added
    assert len([line for line in added.splitlines() if "Run time: 9999" in line]) == 1, added

    # no stale "Spawn failed": the lab's address and Home lead to the form
    await page.goto(f"{stack.url}/user/{USER}/lab")
    assert "Spawn failed" not in await page.content()
    await page.goto(f"{stack.url}/hub/spawn")
    assert await page.locator("#lablink-system").count() == 1
    assert not await page.locator(".spawn-error-msg").count()

    # a start refused while the person was not on the form (the spawn page had taken
    # over, or a program started it): the form of that server says so, once
    xsrf = next(c["value"] for c in await page.context.cookies() if c["name"] == "_xsrf")
    refused = await page.request.post(
        f"{stack.url}/hub/api/users/{USER}/servers/other",
        data={"system": "hpc", "partition": "devel", "nodes": 3},
        headers={"X-XSRFToken": xsrf},
    )
    assert refused.status == 422, await refused.text()
    await page.goto(f"{stack.url}/hub/spawn/{USER}/other")
    assert (
        "Nodes: 3 is more than partition Development"
        in await page.locator(".spawn-error-msg").inner_text()
    )
    assert await page.input_value("[name='hpc.partition']") == "devel"
    await page.reload()
    assert not await page.locator(".spawn-error-msg").count()

    # the next start works
    await page.goto(f"{stack.url}/hub/spawn")
    await page.select_option("#lablink-system", "local")
    await page.get_by_role("button", name="Start", exact=True).click()
    await wait_for_jupyterlab(page, f"/user/{USER}/lab")
    await page.goto(f"{stack.url}/hub/home")
    default = page.locator("tr.lablink-lab[data-server='']")
    await default.get_by_role("button", name="Stop").click()
    await default.get_by_role("link", name="Start").wait_for(timeout=30_000)
    await wait_until(lambda: not stack.lab_pids(USER), 15, "the lab process to end")
