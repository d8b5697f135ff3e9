"""Workshops in the hub, over HTTP against the real stack (`lablink up`): an organizer
creates a workshop through the hub's API, people join through the page and the API,
start with one click, the organizer reads the roster, exports it and stops all labs;
refusals are sentences with the backend's 4xx status; titles are escaped."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from spawner.workshops import csv_cell, roster_csv
from tests.helpers.hub import HubUser
from tests.helpers.stack import Stack
from tests.helpers.waiting import wait_until

pytestmark = [pytest.mark.workshop, pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]

PASSWORD = "workshop-password-0123"
PEOPLE = ["demo", "alice", "bob", "carol", "dave", "erin", "frank", "grace"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("workshop-hub")
    s = Stack(
        state_dir=root / "state",
        password=PASSWORD,
        users=PEOPLE,
        extra_env={"LABLINK_POLL_INTERVAL": "30"},  # the stops must not wait for a poll
    )
    s.start()
    yield s
    s.stop_cleanly()


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def workshop_body(workshop_id: str, **changes: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    body: dict[str, Any] = {
        "id": workshop_id,
        "title": f"Workshop {workshop_id}",
        "description": "Pandas for beginners.\nBring questions.",
        "start": iso(now - timedelta(minutes=5)),
        "end": iso(now + timedelta(hours=2)),
        "system": "local",
        "options": {},
        "max_participants": 5,
    }
    body.update(changes)
    return body


async def person(stack: Stack, name: str) -> HubUser:
    user = HubUser(stack.url, name, PASSWORD)
    await user.login()
    return user


@pytest.fixture
async def demo(stack: Stack) -> AsyncIterator[HubUser]:
    user = await person(stack, "demo")
    yield user
    await user.http.aclose()


async def create(demo: HubUser, workshop_id: str, **changes: Any) -> dict[str, Any]:
    resp = await demo.api("POST", "/lablink/workshops", json=workshop_body(workshop_id, **changes))
    assert resp.status_code == 201, resp.text
    return resp.json()  # type: ignore[no-any-return]


async def join_api(user: HubUser, workshop: dict[str, Any]) -> dict[str, Any]:
    resp = await user.api(
        "POST", f"/lablink/workshops/{workshop['id']}/join", json={"code": workshop["code"]}
    )
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def form_xsrf(page: str) -> str:
    match = re.search(r'name="_xsrf" value="([^"]+)"', page)
    assert match, "the page has no form with an XSRF token"
    return match.group(1)


async def post_form(user: HubUser, path: str, **fields: str) -> Any:
    """Press a button of the page's forms. A done action answers 303 back to the page (a
    reload then shows it, not presses it again): the page it leads to is returned; any
    other answer (Start's 303 to the progress page, a refusal) as it is."""
    page = await user.http.get(path)
    resp = await user.http.post(path, data={"_xsrf": form_xsrf(page.text), **fields})
    if resp.status_code != 303 or resp.headers["location"] != path:
        return resp
    return await user.http.get(path)


async def test_an_organizer_creates_a_workshop_through_the_api_and_gets_its_invite_url(
    stack: Stack, demo: HubUser
) -> None:
    created = await create(demo, "create-api")
    assert created["role"] == "organizer"
    assert created["owner"] == "demo"
    url = created["invite_url"]
    assert url.startswith(f"{stack.url}/hub/workshops/create-api?code="), url
    assert url.endswith(created["code"])
    listed = (await demo.api("GET", "/lablink/workshops")).json()["workshops"]
    assert [w["invite_url"] for w in listed if w["id"] == "create-api"] == [url]
    # the organizer's page shows the invite link with its Copy button
    page = await demo.http.get("/hub/workshops/create-api")
    assert page.status_code == 200
    assert 'id="lablink-invite-url"' in page.text and 'id="lablink-copy-invite"' in page.text
    assert url.replace("&", "&amp;") in page.text
    # the list page lists it, and offers the create form
    listing = await demo.http.get("/hub/workshops")
    assert 'data-id="create-api"' in listing.text and 'id="lablink-create-workshop"' in listing.text


async def test_a_participant_joins_through_the_pages_form_and_then_sees_start(
    stack: Stack, demo: HubUser
) -> None:
    workshop = await create(demo, "join-page")
    async with await person(stack, "alice") as alice:
        invite = workshop["invite_url"].removeprefix(stack.url)
        page = await alice.http.get(invite)
        assert page.status_code == 200, page.text
        assert 'id="lablink-join"' in page.text and "Workshop join-page" in page.text
        assert "This machine" in page.text  # what they get
        resp = await alice.http.post(
            invite, data={"_xsrf": form_xsrf(page.text), "action": "join", "code": workshop["code"]}
        )
        assert resp.status_code == 303, resp.text
        page = await alice.http.get("/hub/workshops/join-page")  # no code needed now
        assert page.status_code == 200
        assert 'id="lablink-start"' in page.text and 'id="lablink-join"' not in page.text
        # the workshops page lists the joined workshop; the API says member
        listing = await alice.http.get("/hub/workshops")
        assert 'data-id="join-page"' in listing.text
        view = (await alice.api("GET", "/lablink/workshops/join-page")).json()
        assert view["member"] is True and view["role"] == "participant"
    roster = (await demo.api("GET", "/lablink/workshops/join-page/participants")).json()
    assert [p["name"] for p in roster["participants"]] == ["alice"]


async def test_a_participant_joins_through_the_api_once(stack: Stack, demo: HubUser) -> None:
    workshop = await create(demo, "join-api")
    async with await person(stack, "bob") as bob:
        joined = await join_api(bob, workshop)
        assert joined["role"] == "participant" and joined["member"] is True
        for hidden in ("participants", "code", "invite_path", "invite_url", "owner", "tutors"):
            assert hidden not in joined, hidden
        again = await bob.api(
            "POST", "/lablink/workshops/join-api/join", json={"code": workshop["code"]}
        )
        assert again.status_code == 409, again.text
        assert again.json() == {"detail": "You have already joined the workshop Workshop join-api."}


async def test_one_click_start_through_the_hubs_api_runs_the_presets(
    stack: Stack, demo: HubUser
) -> None:
    workshop = await create(
        demo, "presets", system="hpc", options={"partition": "devel", "runtime": 30}
    )
    async with await person(stack, "carol") as carol:
        await join_api(carol, workshop)
        resp = await carol.start("presets", {"workshop": "presets"})
        assert resp.status_code in (201, 202), resp.text
        await carol.wait_lab("presets", timeout=120)
        model = await carol.model()
        assert model["servers"]["presets"]["user_options"] == {"workshop": "presets"}
        # the lab runs with the presets: the HPC system's Development partition, 30 minutes
        home = await carol.http.get("/hub/home")
        assert "HPC (development site)" in home.text and "Development" in home.text
        roster = (await demo.api("GET", "/lablink/workshops/presets/participants")).json()
        (entry,) = roster["participants"]
        assert entry["name"] == "carol"
        assert entry["lab"]["state"] == "running"
        assert entry["lab"]["server_name"] == "presets"
        assert entry["lab"]["system"] == "hpc"
        # the participant's page offers Open
        page = await carol.http.get("/hub/workshops/presets")
        assert 'id="lablink-open-lab"' in page.text
        await carol.stop("presets")
        await carol.wait_stopped("presets")


async def test_the_start_button_spawns_and_goes_to_the_progress_page(
    stack: Stack, demo: HubUser
) -> None:
    workshop = await create(demo, "start-button")
    async with await person(stack, "dave") as dave:
        await join_api(dave, workshop)
        resp = await post_form(dave, "/hub/workshops/start-button", action="start")
        assert resp.status_code == 303, resp.text
        assert resp.headers["location"] == "/hub/spawn-pending/dave/start-button"
        await dave.wait_lab("start-button")
        # the roster page lists the participant and their lab's state
        page = await demo.http.get("/hub/workshops/start-button")
        assert re.search(r'data-name="dave" data-state="running"', page.text), page.text
        assert re.search(r"1 of 5 places taken;\s+1 lab running\.", page.text), page.text
        # the organizer's Stop in dave's row stops his lab and his hub server at once
        resp = await post_form(demo, "/hub/workshops/start-button", action="stop", name="dave")
        assert resp.status_code == 200, resp.text
        assert "Stopping 1 lab of dave." in resp.text
        assert "start-button" not in (await dave.model())["servers"]


async def test_stop_all_stops_the_hubs_servers_at_once(stack: Stack, demo: HubUser) -> None:
    workshop = await create(demo, "stop-all")
    async with await person(stack, "erin") as erin, await person(stack, "frank") as frank:
        for user in (erin, frank):
            await join_api(user, workshop)
            resp = await user.start("stop-all", {"workshop": "stop-all"})
            assert resp.status_code in (201, 202), resp.text
        for user in (erin, frank):
            await user.wait_lab("stop-all")
        pids = stack.lab_pids("erin") + stack.lab_pids("frank")
        assert len(pids) == 2, pids
        resp = await demo.api("POST", "/lablink/workshops/stop-all/stop")
        assert resp.status_code == 200, resp.text
        assert resp.json()["stopping"] == 2
        # at once: the hub no longer has the servers when the answer comes (the poll
        # interval is 30 s)
        for user in (erin, frank):
            assert "stop-all" not in (await user.model())["servers"]
            page = await user.http.get("/hub/workshops/stop-all")
            assert 'id="lablink-start"' in page.text
        await wait_until(
            lambda: not stack.lab_pids("erin") and not stack.lab_pids("frank"), 30, "labs to end"
        )


async def test_the_roster_exports_as_csv(stack: Stack, demo: HubUser) -> None:
    workshop = await create(demo, "roster-csv")
    async with await person(stack, "grace") as grace, await person(stack, "alice") as alice:
        await join_api(grace, workshop)
        await join_api(alice, workshop)
    resp = await demo.http.get("/hub/workshops/roster-csv/roster.csv")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(resp.text)))
    assert rows[0] == ["participant", "joined", "lab state", "system", "lab started", "lab id"]
    assert sorted(r[0] for r in rows[1:]) == ["alice", "grace"]
    assert all(r[2] == "no lab" for r in rows[1:]), rows


def test_csv_cells_that_look_like_formulas_are_text() -> None:
    roster = {
        "participants": [
            {"name": "=HYPERLINK(\"http://x\")", "joined": "2026-12-04T09:00:00Z", "lab": None},
            {"name": "+1", "joined": "-2", "lab": {"state": "running", "system": "@sys",
                                                   "started": "", "id": "lab-1"}},
        ]
    }  # fmt: skip
    rows = list(csv.reader(io.StringIO(roster_csv(roster))))
    assert len(rows) == 3
    assert rows[1][0] == '\'=HYPERLINK("http://x")'
    assert rows[2][:4] == ["'+1", "'-2", "running", "'@sys"]
    assert csv_cell("plain") == "plain" and csv_cell(None) == ""


async def test_someone_not_organizing_gets_403_and_no_names(stack: Stack, demo: HubUser) -> None:
    workshop = await create(demo, "private")
    async with await person(stack, "bob") as bob, await person(stack, "erin") as erin:
        await join_api(bob, workshop)
        for path in ("/hub/workshops/private/roster.csv",):
            resp = await erin.http.get(path)
            assert resp.status_code == 403, resp.text
            assert "bob" not in resp.text
        resp = await erin.api("GET", "/lablink/workshops/private/participants")
        assert resp.status_code == 403
        assert resp.json() == {
            "detail": "Only the organizers of this workshop can see its participants."
        }
        resp = await bob.api("POST", "/lablink/workshops/private/stop")
        assert resp.status_code == 403, resp.text
        # the invited and the participant's views name nobody
        invited = await erin.http.get(workshop["invite_url"].removeprefix(stack.url))
        assert invited.status_code == 200 and 'id="lablink-join"' in invited.text
        mine = await bob.http.get("/hub/workshops/private")
        for page in (invited.text, mine.text):
            assert 'id="lablink-roster"' not in page and 'id="lablink-invite-url"' not in page
        assert workshop["code"] not in mine.text  # (the invited page keeps the one they came with)
        assert "bob" not in invited.text
        listed = (await erin.api("GET", "/lablink/workshops")).json()["workshops"]
        assert all(w["id"] != "private" for w in listed)


async def test_a_wrong_code_is_a_sentence_with_404(stack: Stack, demo: HubUser) -> None:
    await create(demo, "wrong-code")
    async with await person(stack, "carol") as carol:
        page = await carol.http.get("/hub/workshops/wrong-code?code=not-the-code")
        assert page.status_code == 404
        sentence = (
            "No workshop 'wrong-code', or the invitation's code is wrong; ask its organizers "
            "for the link."
        )
        assert 'id="lablink-workshop-error"' in page.text
        assert sentence.replace("'", "&#39;") in page.text
        assert "lablink-site-name" in page.text  # the site's page, not JupyterHub's error page
        resp = await carol.api(
            "POST", "/lablink/workshops/wrong-code/join", json={"code": "not-the-code"}
        )
        assert resp.status_code == 404 and resp.json() == {"detail": sentence}


async def test_a_full_workshop_says_so_on_the_page(stack: Stack, demo: HubUser) -> None:
    workshop = await create(demo, "one-place", max_participants=1)
    async with await person(stack, "alice") as alice, await person(stack, "dave") as dave:
        await join_api(alice, workshop)
        invite = workshop["invite_url"].removeprefix(stack.url)
        page = await dave.http.get(invite)
        resp = await dave.http.post(
            invite,
            data={"_xsrf": form_xsrf(page.text), "action": "join", "code": workshop["code"]},
        )
        assert resp.status_code == 409, resp.text
        assert "has all of its 1 places taken" in resp.text
        assert 'id="lablink-workshop-error"' in resp.text


async def test_a_title_with_html_is_shown_as_text(stack: Stack, demo: HubUser) -> None:
    title = "<script>alert('x')</script> <b>Intro</b>"
    workshop = await create(demo, "escaped", title=title, description="<img src=x onerror=1>")
    assert workshop["title"] == title
    for path in ("/hub/workshops/escaped", "/hub/workshops"):
        page = await demo.http.get(path)
        assert "<script>alert(" not in page.text and "<b>Intro" not in page.text
        assert (
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &lt;b&gt;Intro&lt;/b&gt;" in page.text
        )
    page = await demo.http.get("/hub/workshops/escaped")
    assert "<img src=x" not in page.text and "&lt;img src=x onerror=1&gt;" in page.text


async def test_a_non_instructor_cannot_create(stack: Stack) -> None:
    async with await person(stack, "erin") as erin:
        resp = await erin.api("POST", "/lablink/workshops", json=workshop_body("not-mine"))
        assert resp.status_code == 403
        assert resp.json()["detail"].startswith("Only the site's workshop instructors")
        page = await erin.http.get("/hub/workshops")
        assert page.status_code == 200 and 'id="lablink-create-workshop"' not in page.text


async def test_the_organizers_buttons_renew_the_code_and_remove_a_participant(
    stack: Stack, demo: HubUser
) -> None:
    workshop = await create(demo, "buttons")
    async with await person(stack, "grace") as grace:
        await join_api(grace, workshop)
        resp = await post_form(demo, "/hub/workshops/buttons", action="renew")
        assert resp.status_code == 200, resp.text
        assert 'id="lablink-workshop-notice"' in resp.text
        renewed = (await demo.api("GET", "/lablink/workshops/buttons")).json()
        assert renewed["code"] != workshop["code"]
        assert renewed["invite_url"].replace("&", "&amp;") in resp.text
        again = await demo.http.get("/hub/workshops/buttons")  # a reload: no second renewal
        assert 'id="lablink-workshop-notice"' not in again.text
        now = (await demo.api("GET", "/lablink/workshops/buttons")).json()
        assert now["code"] == renewed["code"]
        old = await grace.http.get(workshop["invite_url"].removeprefix(stack.url))
        assert old.status_code == 200  # grace has joined: the page needs no code
        resp = await post_form(demo, "/hub/workshops/buttons", action="remove", name="grace")
        assert resp.status_code == 200, resp.text
        assert 'data-name="grace"' not in resp.text
        assert 'id="lablink-roster-empty"' in resp.text
        gone = await grace.http.get(workshop["invite_url"].removeprefix(stack.url))
        assert gone.status_code == 404  # no longer a member, and the old code is void


async def test_before_the_start_a_participant_reads_when_it_opens(
    stack: Stack, demo: HubUser
) -> None:
    soon = datetime.now(UTC) + timedelta(hours=1)
    workshop = await create(demo, "not-yet", start=iso(soon), end=iso(soon + timedelta(hours=2)))
    async with await person(stack, "frank") as frank:
        await join_api(frank, workshop)  # joining is allowed before the start
        page = await frank.http.get("/hub/workshops/not-yet")
        assert 'id="lablink-opens-at"' in page.text
        assert re.search(r'id="lablink-start"\s+disabled', page.text), page.text
        # a start anyway (a page left open, or the API) gets the backend's sentence
        resp = await frank.http.post(
            "/hub/workshops/not-yet", data={"_xsrf": form_xsrf(page.text), "action": "start"}
        )
        assert resp.status_code == 403, resp.text
        assert "opens at" in resp.text and 'id="lablink-workshop-error"' in resp.text
        resp = await frank.start("not-yet", {"workshop": "not-yet"})
        assert resp.status_code == 403, resp.text
        assert "opens at" in resp.json()["message"]


async def test_the_api_takes_a_users_token_with_the_servers_scope(
    stack: Stack, demo: HubUser
) -> None:
    workshop = await create(demo, "tokens")
    async with await person(stack, "alice") as alice:
        made = await alice.api("POST", "/users/alice/tokens", json={"note": "workshops"})
        assert made.status_code == 201, made.text
        narrow = await alice.api(
            "POST", "/users/alice/tokens", json={"scopes": ["read:users:activity!user=alice"]}
        )
        assert narrow.status_code == 201, narrow.text
    url = f"{stack.url}/hub/api/lablink/workshops/tokens/join"
    async with httpx.AsyncClient(trust_env=False) as http:
        resp = await http.post(
            url,
            json={"code": workshop["code"]},
            headers={"Authorization": f"token {narrow.json()['token']}"},
        )
        assert resp.status_code == 403, resp.text
        assert "servers" in resp.json()["detail"]
        resp = await http.post(
            url,
            json={"code": workshop["code"]},
            headers={"Authorization": f"token {made.json()['token']}"},
        )
        assert resp.status_code == 200, resp.text
        assert resp.json()["member"] is True


async def test_an_organizer_creates_through_the_pages_form(stack: Stack, demo: HubUser) -> None:
    page = await demo.http.get("/hub/workshops")
    assert page.status_code == 200
    # the form offers the systems the limits allow, with their partitions
    assert '<option value="hpc|partition|devel"' in page.text, page.text
    assert '<option value="local"' in page.text
    now = datetime.now(UTC)
    fields = {
        "_xsrf": form_xsrf(page.text),
        "id": "by-form",
        "title": "Made in the form",
        "description": "",
        "start": (now - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M"),
        "end": (now - timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M"),  # before the start
        "max_participants": "12",
        "preset": "hpc|partition|devel",
        "runtime": "30",
    }
    refused = await demo.http.post("/hub/workshops", data=fields)
    assert refused.status_code == 422, refused.text
    assert 'id="lablink-workshop-error"' in refused.text
    assert 'value="Made in the form"' in refused.text  # the person's values stay
    fields["end"] = (now + timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M")
    resp = await demo.http.post("/hub/workshops", data=fields)
    assert resp.status_code == 303, resp.text
    assert resp.headers["location"] == "/hub/workshops/by-form"
    made = (await demo.api("GET", "/lablink/workshops/by-form")).json()
    assert made["system"] == "hpc" and made["max_participants"] == 12
    assert made["options"]["partition"] == "devel" and made["options"]["runtime"] == 30


async def test_the_named_server_limit_follows_the_workshop_of_the_server(
    stack: Stack, demo: HubUser
) -> None:
    first, second = await create(demo, "limit-one"), await create(demo, "limit-two")
    async with await person(stack, "bob") as bob:
        await join_api(bob, first)
        await join_api(bob, second)  # now the active VO: its one lab per person
        resp = await bob.start("limit-two", {"workshop": "limit-two"})
        assert resp.status_code in (201, 202), resp.text
        await bob.wait_lab("limit-two")
        # the active VO admits no more for bob, but the first workshop's server is
        # accounted to the first workshop, which does
        resp = await bob.start("limit-one", {"workshop": "limit-one"})
        assert resp.status_code in (201, 202), resp.text
        await bob.wait_lab("limit-one")
        # a server of no workshop is still held to the active VO
        resp = await bob.start("other", {"system": "local"})
        assert resp.status_code == 429, resp.text
        for name in ("limit-one", "limit-two"):
            await bob.stop(name)
            await bob.wait_stopped(name)
