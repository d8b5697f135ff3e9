"""The admin's overview (``GET /api/v1/admin/overview``, issue 18), against the real
backend on SQLite and PostgreSQL: every active lab with its handle, VO and workshop
usage against the limits, the last failures; only for admins; bounded queries."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.settings import Settings
from tests.helpers import site
from tests.helpers.api import (
    BackendFactory,
    RunningBackend,
    lab_request,
    stop_everything,
    wait_state,
)
from tests.helpers.labs import assert_error

pytestmark = [pytest.mark.metrics, pytest.mark.integration]

# the hub's token may say X-Lablink-Admin (as lablink up's and the chart's do)
TOKENS = [{**site.TOKENS[0], "admin_header": True}, site.TOKENS[1]]
PHYSICS = {
    "display_name": "Physics",
    "members": {"users": ["*"]},
    "quota": {"labs": 5, "labs_per_user": 3},
}


def admin_site(tmp_path: Path, database_url: str) -> Settings:
    doc = site.doc(
        tmp_path / "state",
        database_url,
        tokens=TOKENS,
        vos={"physics": PHYSICS, "chemistry": {"members": {"users": ["nobody"]}}},
        workshops={"instructors": {"users": ["demo"]}, "grace": 0, "limits": {"labs": 4}},
    )
    return site.settings(doc)


async def start(backend: RunningBackend, user: str, server: str = "", **extra: Any) -> str:
    async with backend.client(user) as client:
        body = lab_request(user, server, **extra)
        body.setdefault("vo", None if "workshop" in extra else "physics")
        resp = await client.post("/labs", json=body)
        assert resp.status_code == 202, resp.text
        lab_id = str(resp.json()["id"])
        await wait_state(client, lab_id, {"running", "failed"})
    return lab_id


async def workshop(backend: RunningBackend, workshop_id: str, *people: str) -> None:
    now = datetime.now(UTC)
    body = {
        "id": workshop_id,
        "title": f"Course {workshop_id}",
        "start": (now - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "end": (now + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "system": "local",
        "options": {},
        "max_participants": 10,
    }
    async with backend.client("demo") as demo:
        made = await demo.post("/workshops", json=body)
    assert made.status_code == 201, made.text
    for person in people:
        async with backend.client(person) as client:
            joined = await client.post(
                f"/workshops/{workshop_id}/join", json={"code": made.json()["code"]}
            )
        assert joined.status_code == 200, joined.text


async def overview(backend: RunningBackend) -> dict[str, Any]:
    async with backend.client(None, admin_token=True) as admin:
        resp = await admin.get("/admin/overview")
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


async def test_the_overview_shows_every_lab_the_usage_and_the_failures(
    start_backend: BackendFactory, tmp_path: Path, database_url: str
) -> None:
    backend = await start_backend(admin_site(tmp_path, database_url))
    await workshop(backend, "python-101", "bob")
    alice = await start(backend, "alice")
    bob = await start(backend, "bob", "second")
    course = await start(backend, "bob", "python-101", workshop="python-101")
    crashed = await start(backend, "carol", env={"FAKELAB_MODE": "crash"})
    crashed_later = await start(backend, "dora", env={"FAKELAB_MODE": "crash"})

    found = await overview(backend)
    labs = {lab["id"]: lab for lab in found["labs"]}
    assert set(labs) == {alice, bob, course}
    assert [lab["id"] for lab in found["labs"]] == [alice, bob, course]  # oldest first
    assert labs[alice]["user"] == "alice" and labs[alice]["state"] == "running"
    assert labs[alice]["system"] == "local"
    assert labs[alice]["system_display_name"] == "Test machine"
    assert labs[alice]["handle"]["pid"] > 0  # the admin sees what finds the lab
    assert labs[alice]["vo"] == "physics" and labs[alice]["workshop"] is None
    assert labs[bob]["server_name"] == "second"
    assert labs[course]["workshop"] == "python-101" and labs[course]["vo"] is None
    assert labs[course]["vo_display_name"] == "Course python-101"
    assert found["vos"] == [
        {"name": "physics", "display_name": "Physics", "labs": 2, "limit": 5, "labs_per_user": 3},
        {
            "name": "chemistry",
            "display_name": "chemistry",
            "labs": 0,
            "limit": None,
            "labs_per_user": None,
        },
    ]
    assert found["workshops"] == [
        {"id": "python-101", "title": "Course python-101", "state": "open", "labs": 1, "limit": 4}
    ]
    failures = found["failures"]
    assert [f["id"] for f in failures] == [crashed_later, crashed]  # newest first
    assert failures[1]["user"] == "carol" and failures[1]["system_display_name"] == "Test machine"
    assert "exit code 3" in failures[1]["message"]
    assert "ModuleNotFoundError" in failures[1]["failure_detail"]

    # a stopped lab leaves the overview and the VO's usage
    async with backend.client(None, admin_token=True) as admin:
        await admin.delete(f"/labs/{bob}")
        await wait_state(admin, bob, {"stopped"})
    again = await overview(backend)
    assert {lab["id"] for lab in again["labs"]} == {alice, course}
    assert again["vos"][0]["labs"] == 1
    await stop_everything(backend)


async def test_only_admins_may_read_the_overview(
    start_backend: BackendFactory, tmp_path: Path, database_url: str
) -> None:
    backend = await start_backend(admin_site(tmp_path, database_url))
    async with backend.client("alice") as hub:
        assert_error(await hub.get("/admin/overview"), 403, "for the site's admins")
        # the hub's token for a hub admin: X-Lablink-Admin, which this token may send
        as_admin = await hub.get("/admin/overview", headers={"X-Lablink-Admin": "true"})
        assert as_admin.status_code == 200, as_admin.text
        assert as_admin.json()["labs"] == []
        nobody = await hub.get("/admin/overview", headers={"Authorization": ""})
        assert nobody.status_code == 401


async def test_a_hub_token_without_admin_header_cannot_claim_an_admin(
    start_backend: BackendFactory, tmp_path: Path, database_url: str
) -> None:
    doc = site.doc(tmp_path / "state", database_url)  # the hub's token without admin_header
    backend = await start_backend(site.settings(doc))
    async with backend.client("alice") as hub:
        resp = await hub.get("/admin/overview", headers={"X-Lablink-Admin": "true"})
    assert_error(resp, 403, "admin_header")


@contextmanager
def counted(engine: AsyncEngine) -> Iterator[list[str]]:
    """The SQL statements the engine runs meanwhile."""
    seen: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", note)


async def test_the_overview_asks_the_database_the_same_number_of_times_for_more_labs(
    start_backend: BackendFactory, tmp_path: Path, database_url: str
) -> None:
    backend = await start_backend(admin_site(tmp_path, database_url))
    engine = backend.server.config.app.state.store.engine
    await workshop(backend, "python-101", "bob")
    await start(backend, "alice")
    await start(backend, "carol", env={"FAKELAB_MODE": "crash"})
    with counted(engine) as few:
        await overview(backend)
    for person in ("bob", "erin", "finn"):
        await start(backend, person)
        await start(backend, person, "crash", env={"FAKELAB_MODE": "crash"})
    await start(backend, "bob", "python-101", workshop="python-101")
    with counted(engine) as many:
        found = await overview(backend)
    assert len(found["labs"]) == 5 and len(found["failures"]) == 4
    assert len(many) == len(few), many
    await stop_everything(backend)
