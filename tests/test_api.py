"""The backend's v1 API over HTTP, against the real server, on SQLite and PostgreSQL.

Labs are fakelab processes (tests/fakelab.py) started by the local driver.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from backend.settings import Settings
from tests.helpers import site
from tests.helpers.api import (
    RunningBackend,
    lab_request,
    stop_and_wait,
    stop_everything,
    wait_state,
)
from tests.helpers.labs import (
    alive,
    assert_error,
    fakelab_processes,
    lab_process,
    process_environment,
    sse_events,
)

pytestmark = pytest.mark.integration


async def start_lab(client: httpx.AsyncClient, body: dict[str, Any] | None = None) -> str:
    resp = await client.post("/labs", json=body or lab_request())
    assert resp.status_code == 202, resp.text
    return str(resp.json()["id"])


async def events_of(client: httpx.AsyncClient, lab_id: str, after: int = 0) -> list[dict[str, Any]]:
    resp = await client.get(f"/labs/{lab_id}/events", params={"after": after})
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


async def assert_nothing_stored(backend: RunningBackend) -> None:
    async with backend.client(None, admin_token=True) as admin:
        resp = await admin.get("/labs")
    assert resp.status_code == 200
    assert resp.json() == []
    assert fakelab_processes() == []


def lab_url(lab: dict[str, Any]) -> str:
    """The address the hub's proxy would route to: the lab's url and its prefix."""
    server = f"{lab['server_name']}/" if lab["server_name"] else ""
    return f"{lab['url']}/user/{lab['user']}/{server}"


# -- authentication, health, documents ------------------------------------------------


async def test_health_with_a_token(backend: RunningBackend) -> None:
    async with backend.client(None) as hub:
        resp = await hub.get("/health")
    assert resp.status_code == 200
    body = resp.json()
    assert body["status"] == "ok"
    assert body["active_labs"] == 0
    assert isinstance(body["version"], str)
    async with backend.client(None, admin_token=True) as admin:
        assert (await admin.get("/health")).status_code == 200


NO_VALID_TOKEN = [
    ("none", {}, "needs a bearer token"),
    ("wrong-token", {"Authorization": "Bearer not-the-token-0123456789"}, "not valid"),
    ("no-value", {"Authorization": "Bearer"}, "'Bearer <token>'"),
    ("basic", {"Authorization": "Basic YWxpY2U6c2VjcmV0"}, "'Bearer <token>'"),
    ("token-scheme", {"Authorization": "Token abc"}, "'Bearer <token>'"),
]


async def test_health_refuses_without_a_valid_token(
    backend: RunningBackend, subtests: pytest.Subtests
) -> None:
    async with httpx.AsyncClient(base_url=f"{backend.url}/api/v1", trust_env=False) as anon:
        for case, headers, words in NO_VALID_TOKEN:
            with subtests.test(case):
                resp = await anon.get("/health", headers=headers)
                assert_error(resp, 401, words)
                assert resp.headers["www-authenticate"] == "Bearer"


async def test_a_token_one_character_off_is_refused(backend: RunningBackend) -> None:
    token = backend.tokens["hub"]
    forged = token[:-1] + ("A" if token[-1] != "A" else "B")
    async with httpx.AsyncClient(base_url=f"{backend.url}/api/v1", trust_env=False) as anon:
        resp = await anon.get("/health", headers={"Authorization": f"Bearer {forged}"})
    assert_error(resp, 401)


async def test_every_lab_route_needs_a_token(backend: RunningBackend) -> None:
    async with httpx.AsyncClient(base_url=f"{backend.url}/api/v1", trust_env=False) as anon:
        for method, path in [
            ("GET", "/catalog"),
            ("GET", "/labs"),
            ("POST", "/labs"),
            ("GET", "/labs/x"),
            ("DELETE", "/labs/x"),
            ("GET", "/labs/x/events"),
            ("GET", "/labs/x/events/stream"),
            ("POST", "/labs/x/notice"),
        ]:
            resp = await anon.request(method, path, json=lab_request())
            assert_error(resp, 401)
    await assert_nothing_stored(backend)


async def test_openapi_document_lists_the_lab_paths(backend: RunningBackend) -> None:
    async with httpx.AsyncClient(base_url=backend.url, trust_env=False) as anon:
        resp = await anon.get("/api/v1/openapi.json")
    assert resp.status_code == 200
    doc = resp.json()
    paths = doc["paths"]
    assert {"post", "get"} <= set(paths["/api/v1/labs"])
    assert {"get", "delete"} <= set(paths["/api/v1/labs/{lab_id}"])
    assert "get" in paths["/api/v1/labs/{lab_id}/events"]
    assert "get" in paths["/api/v1/labs/{lab_id}/events/stream"]
    assert "post" in paths["/api/v1/labs/{lab_id}/notice"]
    assert "get" in paths["/api/v1/health"]
    assert "get" in paths["/api/v1/catalog"]
    assert "202" in paths["/api/v1/labs"]["post"]["responses"]


async def test_unknown_path_and_method(backend: RunningBackend) -> None:
    async with backend.client() as hub:
        assert_error(await hub.get("/nothing-here"), 404, "/api/v1/nothing-here")
        assert_error(await hub.put("/labs"), 405, "PUT")


async def test_catalog_lists_the_system(backend: RunningBackend) -> None:
    async with backend.client() as hub:
        resp = await hub.get("/catalog")
    assert resp.status_code == 200
    body = resp.json()
    assert body["site_name"] == "Lablink tests"
    assert body["default_system"] == "local"
    assert [s["name"] for s in body["systems"]] == ["local"]
    local = body["systems"][0]
    assert local["kind"] == "local"
    assert local["display_name"] == "Test machine"
    assert "command" not in local  # how a lab is run is not the hub's business


# -- a lab's life ------------------------------------------------------------------------


async def test_lab_from_start_to_stop(
    no_leftover_processes: None, backend: RunningBackend, settings: Settings
) -> None:
    async with backend.client() as hub:
        resp = await hub.post("/labs", json=lab_request())
        assert resp.status_code == 202, resp.text
        created = resp.json()
        lab_id = created["id"]
        assert resp.headers["location"] == f"/api/v1/labs/{lab_id}"
        assert created["user"] == "alice"
        assert created["server_name"] == ""
        assert created["system"] == "local"
        assert created["options"] == {"system": "local"}
        assert created["state"] == "accepted"
        assert created["url"] is None
        assert created["exit_status"] is None

        lab = await wait_state(hub, lab_id, {"running", "failed", "stopped"})
        assert lab["state"] == "running", lab
        assert lab["progress"] == 100
        assert lab["exit_status"] is None
        assert lab["url"].startswith("http://127.0.0.1:")

        events = await events_of(hub, lab_id)
        assert [e["state"] for e in events] == ["accepted", "submitted", "starting", "running"]
        assert [e["seq"] for e in events] == [1, 2, 3, 4]
        progress = [e["progress"] for e in events]
        assert progress == sorted(progress)
        assert progress[0] < progress[-1] == 100
        assert all(e["message"] for e in events)
        times = [e["time"] for e in events]
        assert times == sorted(times)

        url = lab_url(lab)
        async with httpx.AsyncClient(trust_env=False, timeout=10) as web:
            answer = await web.get(url)
        assert answer.status_code == 200

        process = await lab_process(settings, lab_id)
        assert alive(process)
        async with backend.client(None) as hub_only:
            assert (await hub_only.get("/health")).json()["active_labs"] == 1

        resp = await hub.delete(f"/labs/{lab_id}")
        assert resp.status_code == 202, resp.text
        assert resp.json()["state"] in {"stopping", "stopped"}
        lab = await wait_state(hub, lab_id, {"stopped", "failed"})
        assert lab["state"] == "stopped"
        assert lab["url"] is None
        assert lab["exit_status"] == 0

        events = await events_of(hub, lab_id)
        assert [e["state"] for e in events[4:]] == ["stopping", "stopped"]
        assert [e["seq"] for e in events] == list(range(1, 7))
        last = events[-1]
        assert "fakelab starting in mode serve" in last["detail"]
        assert not alive(process)
        assert fakelab_processes() == []
        async with httpx.AsyncClient(trust_env=False, timeout=5) as web:
            with pytest.raises(httpx.TransportError):
                await web.get(url)


async def test_delete_is_idempotent(no_leftover_processes: None, backend: RunningBackend) -> None:
    async with backend.client() as hub:
        lab_id = await start_lab(hub)
        await wait_state(hub, lab_id, {"running"})
        await stop_and_wait(hub, lab_id)
        count = len(await events_of(hub, lab_id))
        for _ in range(2):
            resp = await hub.delete(f"/labs/{lab_id}")
            assert resp.status_code == 202
            assert resp.json()["state"] == "stopped"
        assert (await hub.get(f"/labs/{lab_id}")).json()["state"] == "stopped"
        assert len(await events_of(hub, lab_id)) == count


async def test_stop_while_starting(no_leftover_processes: None, backend: RunningBackend) -> None:
    """A stop right after the start wins: the lab ends stopped and leaves no process."""
    async with backend.client() as hub:
        lab_id = await start_lab(hub)
        resp = await hub.delete(f"/labs/{lab_id}")
        assert resp.status_code == 202
        lab = await wait_state(hub, lab_id, {"stopped", "failed"})
        assert lab["state"] == "stopped"
        states = [e["state"] for e in await events_of(hub, lab_id)]
        assert states[-2:] == ["stopping", "stopped"]
        await asyncio.sleep(0.5)  # a start that was not stopped would show by now
        assert fakelab_processes() == []
        assert (await hub.get(f"/labs/{lab_id}")).json()["state"] == "stopped"


async def test_events_after(no_leftover_processes: None, backend: RunningBackend) -> None:
    async with backend.client() as hub:
        lab_id = await start_lab(hub)
        await wait_state(hub, lab_id, {"running"})
        every = await events_of(hub, lab_id)
        assert len(every) == 4
        for after in range(len(every) + 2):
            later = await events_of(hub, lab_id, after)
            assert later == every[after:]
            assert all(e["seq"] > after for e in later)
        assert_error(
            await hub.get(f"/labs/{lab_id}/events", params={"after": -1}),
            422,
            "query parameter after",
        )
        assert_error(
            await hub.get(f"/labs/{lab_id}/events", params={"after": "x"}),
            422,
            "query parameter after",
        )
        await stop_and_wait(hub, lab_id)


async def test_events_after_a_huge_number(
    no_leftover_processes: None, backend: RunningBackend
) -> None:
    """Bad input, not an internal error; a huge Last-Event-ID means "after everything"."""
    async with backend.client() as hub:
        lab_id = await start_lab(hub, lab_request(env={"FAKELAB_MODE": "crash"}))
        await wait_state(hub, lab_id, {"failed"})
        for path in ("events", "events/stream"):
            resp = await hub.get(f"/labs/{lab_id}/{path}", params={"after": 10**20})
            assert_error(resp, 422, "query parameter after")
        for last in (b"99999999999999999999", b"\xb2", b"x"):
            async with hub.stream(
                "GET", f"/labs/{lab_id}/events/stream", headers={"Last-Event-ID": last}
            ) as resp:
                assert resp.status_code == 200
                events = sse_events([line async for line in resp.aiter_lines()])
            expected = [] if last.isdigit() else ["accepted", "submitted", "starting", "failed"]
            assert [e["state"] for e in events] == expected


async def test_event_stream_follows_a_lab_to_its_end(
    no_leftover_processes: None, backend: RunningBackend
) -> None:
    async with backend.client() as hub:
        lab_id = await start_lab(hub)
        lines: list[str] = []
        stopped = False

        async def read() -> None:
            nonlocal stopped
            async with hub.stream("GET", f"/labs/{lab_id}/events/stream") as resp:
                assert resp.status_code == 200
                assert resp.headers["content-type"].startswith("text/event-stream")
                async for line in resp.aiter_lines():
                    lines.append(line)
                    if line.startswith("data:") and '"state":"running"' in line and not stopped:
                        stopped = True
                        assert (await hub.delete(f"/labs/{lab_id}")).status_code == 202

        # bounded, not timed: a stream that never ends fails here instead of hanging
        await asyncio.wait_for(read(), 60)
        events = sse_events(lines)
        states = [e["state"] for e in events]
        assert states == [
            "accepted",
            "submitted",
            "starting",
            "running",
            "stopping",
            "stopped",
        ]
        assert [e["seq"] for e in events] == list(range(1, 7))
        assert [e["_id"] for e in events] == [str(i) for i in range(1, 7)]
        assert events == [{**e, "_id": str(e["seq"])} for e in await events_of(hub, lab_id)]

        # a stream opened after the end delivers what is left and ends at once
        async with hub.stream(
            "GET", f"/labs/{lab_id}/events/stream", headers={"Last-Event-ID": "4"}
        ) as resp:
            rest = sse_events([line async for line in resp.aiter_lines()])
        assert [e["state"] for e in rest] == ["stopping", "stopped"]


# -- bad input --------------------------------------------------------------------------


def without(body: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != key}


def with_user(user: dict[str, Any]) -> dict[str, Any]:
    return {**lab_request(), "user": user}


BAD_REQUESTS = [
    ("unknown-system", lab_request(options={"system": "juwels"}), 422, ["System: 'juwels'"]),
    ("unknown-option", lab_request(options={"gpus": 4}), 422, ["'gpus' is not an option"]),
    ("option-not-a-string", lab_request(options={"system": ["local"]}), 422, ["System: "]),
    ("missing-user", without(lab_request(), "user"), 422, ["user", "required"]),
    ("missing-user-name", with_user({"groups": []}), 422, ["user.name", "required"]),
    ("user-dotdot", with_user({"name": "../x"}), 422, ["user.name"]),
    ("user-slash", with_user({"name": "a/b"}), 422, ["user.name"]),
    ("user-newline", with_user({"name": "alice\n"}), 422, ["user.name"]),
    ("vo-nul", lab_request(vo="vo\x00x"), 422, ["vo"]),
    ("vo-newline", lab_request(vo="vo\nx"), 422, ["vo"]),
    ("unknown-field", lab_request(colour="red"), 422, ["colour"]),
    ("env-name-dash", lab_request(env={"BAD-NAME": "x"}), 422, ["env", "BAD-NAME"]),
    ("env-name-digit", lab_request(env={"1ABC": "x"}), 422, ["env", "1ABC"]),
    ("env-name-newline", lab_request(env={"ABC\n": "x"}), 422, ["env", "ABC"]),
    ("env-not-a-string", lab_request(env={"A": 1}), 422, ["env"]),
    ("env-nul", lab_request(env={"A": "x\x00y"}), 422, ["env", "NUL"]),
    ("server-name-slash", lab_request(server_name="a/b"), 422, ["server_name"]),
    ("server-name-space", lab_request(server_name="a b"), 422, ["server_name"]),
    ("server-name-long", lab_request(server_name="x" * 300), 422, ["server_name"]),
]


NOT_AN_OBJECT = [
    ("malformed", b"{not json", 400, "not valid JSON"),
    ("empty", b"", 422, "JSON body"),
    ("list", b"[1, 2]", 422, "JSON object"),
    ("string", b'"alice"', 422, "JSON object"),
    ("null", b"null", 422, "JSON"),
]


async def test_bad_start_requests(
    no_leftover_processes: None,
    backend: RunningBackend,
    settings: Settings,
    subtests: pytest.Subtests,
) -> None:
    """Each is refused with a sentence that names the field; nothing is stored or started."""
    async with backend.client() as hub:
        for case, body, status, words in BAD_REQUESTS:
            with subtests.test(case):
                resp = await hub.post("/labs", json=body)
                assert_error(resp, status, *words)
                assert "location" not in resp.headers
        for case, content, status, word in NOT_AN_OBJECT:
            with subtests.test(case):
                resp = await hub.post(
                    "/labs", content=content, headers={"Content-Type": "application/json"}
                )
                assert_error(resp, status, word)
    await assert_nothing_stored(backend)
    assert not (settings.state_dir / "labs").exists()  # no lab directory was made


async def test_bad_user_header(backend: RunningBackend) -> None:
    async with backend.client("../x") as hub:
        resp = await hub.post("/labs", json=lab_request())
    assert_error(resp, 400, "X-Lablink-User")
    await assert_nothing_stored(backend)


async def test_admin_cannot_start_a_lab_for_a_bad_user_name(backend: RunningBackend) -> None:
    async with backend.client(None, admin_token=True) as admin:
        for name in ("alice\n", "../alice", ""):
            resp = await admin.post("/labs", json=with_user({"name": name}))
            assert_error(resp, 422, "user.name")
    await assert_nothing_stored(backend)


async def test_odd_lab_ids_and_user_names_in_paths(backend: RunningBackend) -> None:
    """Whatever a path or query holds, the answer is a 4xx, never an internal error."""
    async with backend.client() as hub, backend.client(None, admin_token=True) as admin:
        for lab_id in ("a%00b", "x" * 65, "%E2%98%83", "a%0Ab", "..%2F..%2Fetc"):
            for method, path in [
                ("GET", f"/labs/{lab_id}"),
                ("DELETE", f"/labs/{lab_id}"),
                ("GET", f"/labs/{lab_id}/events"),
                ("GET", f"/labs/{lab_id}/events/stream"),
                ("POST", f"/labs/{lab_id}/notice"),
            ]:
                resp = await hub.request(method, path, json={"message": "m"})
                assert 400 <= resp.status_code < 500, (path, resp.status_code, resp.text)
                assert_error(resp, resp.status_code)
        for user in ("a\x00b", "a\nb", "../x", "x" * 200):
            resp = await admin.get("/labs", params={"user": user})
            assert_error(resp, 422, "query parameter user")


async def test_duplicate_active_server_name(
    no_leftover_processes: None, backend: RunningBackend
) -> None:
    async with backend.client() as hub:
        first = await start_lab(hub, lab_request(server_name="one"))
        resp = await hub.post("/labs", json=lab_request(server_name="one"))
        detail = assert_error(resp, 409, "'one'", first)
        assert "stop it first" in detail
        # the default server is another name: allowed at the same time
        other = await start_lab(hub, lab_request())
        await wait_state(hub, first, {"running"})
        await wait_state(hub, other, {"running"})
        assert_error(await hub.post("/labs", json=lab_request()), 409, "default server", other)
        async with backend.client(None, admin_token=True) as admin:
            assert len((await admin.get("/labs")).json()) == 2
        # once stopped, the name is free again
        await stop_and_wait(hub, first)
        again = await start_lab(hub, lab_request(server_name="one"))
        assert again != first
        await wait_state(hub, again, {"running"})
    await stop_everything(backend)


async def test_concurrent_starts_of_one_server_name(
    no_leftover_processes: None, backend: RunningBackend
) -> None:
    """Admission is atomic: of simultaneous starts, exactly one is accepted."""
    async with backend.client() as hub:
        answers = await asyncio.gather(
            *[hub.post("/labs", json=lab_request(server_name="same")) for _ in range(6)]
        )
        codes = sorted(r.status_code for r in answers)
        assert codes == [202, 409, 409, 409, 409, 409], [r.text for r in answers]
        winner = next(r for r in answers if r.status_code == 202).json()["id"]
        for resp in answers:
            if resp.status_code == 409:
                assert_error(resp, 409, winner)
        assert [lab["id"] for lab in (await hub.get("/labs")).json()] == [winner]
        await wait_state(hub, winner, {"running"})
        await stop_and_wait(hub, winner)


# -- who may see what -----------------------------------------------------------------


async def test_users_see_only_their_own_labs(
    no_leftover_processes: None, backend: RunningBackend
) -> None:
    async with backend.client("alice") as alice, backend.client("bob") as bob:
        lab_id = await start_lab(alice)
        bobs = await start_lab(bob, lab_request("bob"))
        await wait_state(alice, lab_id, {"running"})

        assert_error(await bob.get(f"/labs/{lab_id}"), 404, lab_id)
        assert_error(await bob.delete(f"/labs/{lab_id}"), 404, lab_id)
        assert_error(await bob.get(f"/labs/{lab_id}/events"), 404, lab_id)
        assert_error(await bob.get(f"/labs/{lab_id}/events/stream"), 404, lab_id)
        assert_error(await bob.get("/labs", params={"user": "alice"}), 403, "only your own")
        # a lab that does not exist looks the same as one that is not yours
        assert_error(await bob.get("/labs/00000000-0000-0000-0000-000000000000"), 404)

        # bob's DELETE did nothing
        assert (await alice.get(f"/labs/{lab_id}")).json()["state"] == "running"

        mine = (await bob.get("/labs")).json()
        assert [lab["id"] for lab in mine] == [bobs]
        assert [lab["id"] for lab in (await alice.get("/labs")).json()] == [lab_id]

        # the hub acts for bob but asks for a lab of alice
        resp = await bob.post("/labs", json=lab_request("alice", server_name="other"))
        assert_error(resp, 403, "'bob'")
        assert len((await alice.get("/labs")).json()) == 1
    await stop_everything(backend)


async def test_hub_token_without_a_user(backend: RunningBackend) -> None:
    async with backend.client(None) as hub:
        assert_error(await hub.get("/labs"), 400, "X-Lablink-User")


async def test_admin_token_sees_and_stops_every_lab(
    no_leftover_processes: None, backend: RunningBackend
) -> None:
    async with (
        backend.client("alice") as alice,
        backend.client("bob") as bob,
        backend.client(None, admin_token=True) as admin,
    ):
        a = await start_lab(alice)
        b = await start_lab(bob, lab_request("bob"))
        await wait_state(alice, a, {"running"})
        await wait_state(bob, b, {"running"})

        every = (await admin.get("/labs")).json()
        assert {(lab["id"], lab["user"]) for lab in every} == {(a, "alice"), (b, "bob")}
        only_bob = (await admin.get("/labs", params={"user": "bob"})).json()
        assert [lab["id"] for lab in only_bob] == [b]
        assert (await admin.get(f"/labs/{a}")).json()["user"] == "alice"
        assert (await admin.get(f"/labs/{b}/events")).status_code == 200

        # a hub token is no admin, whatever its request says, unless the site file
        # lets it be (tokens[].admin_header; tests/test_hardening.py)
        async with backend.client("carol") as carol:
            carol.headers["X-Lablink-Admin"] = "true"
            refused = await carol.get("/labs", params={"user": "alice"})
            assert refused.status_code == 403
            assert "admin_header" in refused.json()["detail"]

        assert (await stop_and_wait(admin, a))["state"] == "stopped"
        assert (await stop_and_wait(admin, b))["state"] == "stopped"
        assert (await admin.get("/labs", params={"active": "true"})).json() == []
        assert len((await admin.get("/labs")).json()) == 2


# -- notices ------------------------------------------------------------------------------

NOTICE = "Your login could not be renewed with Test AAI; log in to the hub again."


async def test_the_hub_puts_a_notice_on_a_lab(
    no_leftover_processes: None, backend: RunningBackend
) -> None:
    """The sentence becomes an event in the lab's state and progress, and its message: the
    progress stream and the lab show it; the lab itself goes on as it was."""
    async with backend.client() as hub:
        lab_id = await start_lab(hub)
        await wait_state(hub, lab_id, {"running"})
        before = await events_of(hub, lab_id)
        resp = await hub.post(f"/labs/{lab_id}/notice", json={"message": NOTICE})
        assert resp.status_code == 200, resp.text
        assert resp.json()["message"] == NOTICE and resp.json()["state"] == "running"
        lab = (await hub.get(f"/labs/{lab_id}")).json()
        assert (lab["state"], lab["message"], lab["exit_status"]) == ("running", NOTICE, None)
        assert lab["url"]  # still routed to
        events = await events_of(hub, lab_id)
        assert events[:-1] == before
        assert events[-1]["seq"] == before[-1]["seq"] + 1
        assert (events[-1]["state"], events[-1]["progress"]) == ("running", 100)
        assert (events[-1]["message"], events[-1]["detail"]) == (NOTICE, "")
        async with hub.stream(
            "GET", f"/labs/{lab_id}/events/stream", params={"after": before[-1]["seq"]}
        ) as stream:
            async for line in stream.aiter_lines():
                if line.startswith("data:"):
                    assert NOTICE in line
                    break
        dirty = "Renew\x00 your login\x1b[31m now.\r"
        resp = await hub.post(f"/labs/{lab_id}/notice", json={"message": dirty})
        assert resp.status_code == 200 and resp.json()["message"] == "Renew your login[31m now."
        await stop_and_wait(hub, lab_id)


async def test_a_notice_keeps_the_progress_of_a_lab_that_starts(
    no_leftover_processes: None, backend: RunningBackend
) -> None:
    async with backend.client() as hub:
        lab_id = await start_lab(hub, lab_request(env={"FAKELAB_MODE": "never-ready"}))
        lab = await wait_state(hub, lab_id, {"starting"})
        progress = (await events_of(hub, lab_id))[-1]["progress"]
        resp = await hub.post(f"/labs/{lab_id}/notice", json={"message": NOTICE})
        assert resp.status_code == 200 and resp.json()["state"] == lab["state"]
        last = (await events_of(hub, lab_id))[-1]
        assert (last["state"], last["progress"], last["message"]) == ("starting", progress, NOTICE)
        await stop_and_wait(hub, lab_id)


async def test_a_notice_is_only_for_the_labs_owner_and_an_active_lab(
    no_leftover_processes: None, backend: RunningBackend
) -> None:
    async with (
        backend.client("alice") as alice,
        backend.client("bob") as bob,
        backend.client(None, admin_token=True) as admin,
    ):
        lab_id = await start_lab(alice)
        await wait_state(alice, lab_id, {"running"})
        count = len(await events_of(alice, lab_id))
        # another person's lab looks like one that does not exist
        assert_error(await bob.post(f"/labs/{lab_id}/notice", json={"message": "x"}), 404)
        unknown = "/labs/00000000-0000-0000-0000-000000000000/notice"
        assert_error(await alice.post(unknown, json={"message": "x"}), 404)
        for body, words in [
            ({"message": ""}, "message"),
            ({"message": "x" * 1001}, "message"),
            ({}, "message"),
            ({"message": "x", "detail": "y"}, "detail"),
            ({"message": 5}, "message"),
        ]:
            assert_error(await alice.post(f"/labs/{lab_id}/notice", json=body), 422, *words)
        big = {"message": "x" * (2 * 1024 * 1024)}
        assert (await alice.post(f"/labs/{lab_id}/notice", json=big)).status_code == 413
        assert len(await events_of(alice, lab_id)) == count
        # an admin may, and so may a hub token acting for the owner
        resp = await admin.post(f"/labs/{lab_id}/notice", json={"message": "x" * 1000})
        assert resp.status_code == 200, resp.text
        await stop_and_wait(alice, lab_id)
        ended = len(await events_of(alice, lab_id))
        resp = await alice.post(f"/labs/{lab_id}/notice", json={"message": NOTICE})
        assert_error(resp, 409, lab_id, "ended")
        assert len(await events_of(alice, lab_id)) == ended
        assert (await alice.get(f"/labs/{lab_id}")).json()["message"] != NOTICE


# -- labs that go wrong ----------------------------------------------------------------


async def test_lab_that_crashes_during_start(
    no_leftover_processes: None, backend: RunningBackend, settings: Settings
) -> None:
    async with backend.client() as hub:
        lab_id = await start_lab(hub, lab_request(env={"FAKELAB_MODE": "crash"}))
        lab = await wait_state(hub, lab_id, {"failed", "running", "stopped"})
        assert lab["state"] == "failed"
        assert lab["exit_status"] == 1
        assert lab["url"] is None
        events = await events_of(hub, lab_id)
        assert [e["state"] for e in events] == ["accepted", "submitted", "starting", "failed"]
        failed = events[-1]
        assert "exit code 3" in failed["message"]
        lines = failed["detail"].splitlines()
        limit = settings.systems["local"].output_lines
        assert len(lines) <= limit
        assert "ModuleNotFoundError" in lines[-1]
        # the last lines, not the first
        assert "fakelab starting in mode crash" not in failed["detail"]
        assert lines[-2] == "fakelab line 29"
        assert not alive(await lab_process(settings, lab_id))


async def test_output_lines_setting_is_honoured(
    no_leftover_processes: None, tmp_path: Path, database_url: str, start_backend: Any
) -> None:
    system = site.local_system(output_lines=3)
    doc = site.doc(tmp_path / "state", database_url, systems={"local": system})
    backend = await start_backend(site.settings(doc))
    async with backend.client() as hub:
        lab_id = await start_lab(hub, lab_request(env={"FAKELAB_MODE": "crash"}))
        await wait_state(hub, lab_id, {"failed"})
        detail = (await events_of(hub, lab_id))[-1]["detail"]
    assert detail.splitlines() == [
        "fakelab line 28",
        "fakelab line 29",
        "fakelab: ModuleNotFoundError: no module named 'jupyterlab'",
    ]


async def test_lab_that_ends_by_itself(
    no_leftover_processes: None, backend: RunningBackend, settings: Settings
) -> None:
    env = {"FAKELAB_MODE": "exit-later", "FAKELAB_SECONDS": "1"}
    async with backend.client() as hub:
        lab_id = await start_lab(hub, lab_request(env=env))
        await wait_state(hub, lab_id, {"running", "failed", "stopped"})
        lab = await wait_state(hub, lab_id, {"stopped", "failed"})
        assert lab["state"] == "stopped"
        assert lab["exit_status"] == 0
        events = await events_of(hub, lab_id)
        assert [e["state"] for e in events] == [
            "accepted",
            "submitted",
            "starting",
            "running",
            "stopped",
        ]
        assert "ended by itself" in events[-1]["message"]
        assert "fakelab: done, exiting" in events[-1]["detail"]
        assert not alive(await lab_process(settings, lab_id))
        # a stop afterwards changes nothing
        assert (await hub.delete(f"/labs/{lab_id}")).json()["state"] == "stopped"


async def test_lab_that_never_answers(
    no_leftover_processes: None, tmp_path: Path, database_url: str, start_backend: Any
) -> None:
    system = site.local_system(start_timeout=1)
    settings = site.settings(site.doc(tmp_path / "state", database_url, systems={"local": system}))
    backend = await start_backend(settings)
    async with backend.client() as hub:
        lab_id = await start_lab(hub, lab_request(env={"FAKELAB_MODE": "never-ready"}))
        lab = await wait_state(hub, lab_id, {"failed", "running", "stopped"})
        assert lab["state"] == "failed"
        events = await events_of(hub, lab_id)
        assert [e["state"] for e in events] == ["accepted", "submitted", "starting", "failed"]
        assert "did not answer within 1 second" in events[-1]["message"]
        assert "fakelab starting in mode never-ready" in events[-1]["detail"]
        assert not alive(await lab_process(settings, lab_id))
        assert fakelab_processes() == []


async def test_lab_command_that_cannot_run(
    no_leftover_processes: None, tmp_path: Path, database_url: str, start_backend: Any
) -> None:
    system = site.local_system(command=[str(tmp_path / "no-such-program")])
    doc = site.doc(tmp_path / "state", database_url, systems={"local": system})
    backend = await start_backend(site.settings(doc))
    async with backend.client() as hub:
        lab_id = await start_lab(hub)
        lab = await wait_state(hub, lab_id, {"failed", "running", "stopped"})
        assert lab["state"] == "failed"
        message = (await events_of(hub, lab_id))[-1]["message"]
        assert "could not be run" in message
        assert str(tmp_path) in message


async def test_lab_output_with_a_nul_byte(
    no_leftover_processes: None, tmp_path: Path, database_url: str, start_backend: Any
) -> None:
    """Output is text for a person: a NUL byte in it does not keep the lab from failing."""
    script = "import sys; sys.stdout.write('before\\x00after\\n'); sys.exit(2)"
    system = site.local_system(command=[sys.executable, "-c", script])
    doc = site.doc(tmp_path / "state", database_url, systems={"local": system})
    backend = await start_backend(site.settings(doc))
    async with backend.client() as hub:
        lab_id = await start_lab(hub)
        lab = await wait_state(hub, lab_id, {"failed", "running", "stopped"})
        assert lab["state"] == "failed"
        last = (await events_of(hub, lab_id))[-1]
        assert "exit code 2" in last["message"]
        assert last["detail"].splitlines()[-1] == "before\ufffdafter"


# -- secrets ---------------------------------------------------------------------------


async def test_secrets_appear_in_no_answer_and_no_log(
    no_leftover_processes: None,
    backend: RunningBackend,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    # a secret of the backend's own environment is not passed on to labs
    backend_secret = "backend-own-secret-5a4b3c2d1e0f"
    monkeypatch.setenv("LABLINK_HUB_TOKEN", backend_secret)
    hub_api_token = "hub-api-token-9f8e7d6c5b4a39281706"
    access_token = "oidc-access-token-0a1b2c3d4e5f60718293"
    body = lab_request()
    body["env"]["JUPYTERHUB_API_TOKEN"] = hub_api_token
    body["user"]["access_token"] = access_token
    answers: list[str] = []
    async with backend.client() as hub, backend.client(None, admin_token=True) as admin:
        resp = await hub.post("/labs", json=body)
        assert resp.status_code == 202
        answers.append(resp.text)
        lab_id = resp.json()["id"]
        await wait_state(hub, lab_id, {"running"})
        pid, _ = await lab_process(settings, lab_id)
        lab_env = process_environment(pid)
        assert lab_env["JUPYTERHUB_API_TOKEN"] == hub_api_token  # the lab needs this one
        assert "LABLINK_HUB_TOKEN" not in lab_env
        assert not any(backend_secret in v or access_token in v for v in lab_env.values())
        for client, path in [
            (hub, f"/labs/{lab_id}"),
            (hub, "/labs"),
            (hub, f"/labs/{lab_id}/events"),
            (admin, "/labs"),
            (admin, f"/labs/{lab_id}"),
        ]:
            resp = await client.get(path)
            assert resp.status_code == 200
            answers.append(resp.text)
        # a refused request carrying the secrets does not echo them either
        bad = {**body, "server_name": "no/slash"}
        resp = await hub.post("/labs", json=bad)
        assert resp.status_code == 422
        answers.append(resp.text)
        resp = await hub.post("/labs", json=body)
        assert resp.status_code == 409
        answers.append(resp.text)
        answers.append((await hub.delete(f"/labs/{lab_id}")).text)
        await wait_state(hub, lab_id, {"stopped"})
        answers.append((await hub.get(f"/labs/{lab_id}/events")).text)
        async with hub.stream("GET", f"/labs/{lab_id}/events/stream") as stream:
            answers.append("".join([line async for line in stream.aiter_lines()]))

    assert any(lab_id[:8] in r.getMessage() for r in caplog.records), "nothing was logged"
    logged = "\n".join(r.getMessage() for r in caplog.records) + caplog.text
    for secret in (hub_api_token, access_token):
        for answer in answers:
            assert secret not in answer
        assert secret not in logged
