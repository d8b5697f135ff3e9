"""A restart of the backend: labs keep running and are found again, on SQLite
and PostgreSQL. The backend is stopped and started again on the same port and
the same database, as a service manager would."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from backend.db import create_engine, migrate
from backend.labs import LabManager
from backend.settings import Settings
from backend.states import LabState
from backend.store import Lab, Store
from tests.helpers import site
from tests.helpers.api import BackendFactory, RunningBackend, lab_request, wait_state
from tests.helpers.labs import (
    alive,
    fakelab_processes,
    lab_process,
    spawn_fakelab,
    stored_lab,
)

pytestmark = pytest.mark.integration


async def restart(
    start_backend: BackendFactory, old: RunningBackend, settings: Settings
) -> RunningBackend:
    await old.stop()
    port = int(old.url.rsplit(":", 1)[1])
    return await start_backend(settings, port)


async def events_of(client: httpx.AsyncClient, lab_id: str) -> list[dict[str, Any]]:
    resp = await client.get(f"/labs/{lab_id}/events")
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


async def answers(url: str) -> int:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as web:
        return (await web.get(url)).status_code


async def running_lab(backend: RunningBackend, **extra: Any) -> dict[str, Any]:
    async with backend.client() as hub:
        resp = await hub.post("/labs", json=lab_request(**extra))
        assert resp.status_code == 202, resp.text
        lab = await wait_state(hub, resp.json()["id"], {"running", "failed", "stopped"})
    assert lab["state"] == "running", lab
    return lab


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[Store]:
    """The backend's database, opened by the test (schema made by the migrations)."""
    engine = create_engine(settings.resolved_database_url)
    await migrate(engine)
    yield Store(engine)
    await engine.dispose()


async def put_lab(store: Store, state: LabState, handle: dict[str, Any] | None = None) -> Lab:
    """A lab as a backend that stopped at that moment would have left it."""
    lab = await store.create_lab(
        user_name="alice",
        server_name="",
        system="local",
        vo=None,
        options={"system": "local"},
        message="Lab accepted for system local.",
    )
    if handle is not None:
        await store.save_handle(lab.id, handle)
    chain = [LabState.SUBMITTED, LabState.STARTING, LabState.RUNNING, LabState.STOPPING]
    for step in chain[: chain.index(state) + 1] if state in chain else []:
        url = f"http://127.0.0.1:{handle['port']}" if handle and step == LabState.RUNNING else None
        lab = await store.record(lab.id, step, f"Now {step}.", url=url)
    return lab


def reap(proc: subprocess.Popen[bytes]) -> int:
    """The test's own fakelab has ended (the backend stopped it); collect its status."""
    return proc.wait(timeout=15)


# -- labs that keep running ------------------------------------------------------------


async def test_running_lab_survives_a_restart(
    no_leftover_processes: None, start_backend: BackendFactory, settings: Settings
) -> None:
    first = await start_backend(settings)
    lab = await running_lab(first)
    lab_id, url = lab["id"], f"{lab['url']}/user/alice/"
    process = await lab_process(settings, lab_id)

    await first.stop()
    assert alive(process), "the lab must outlive the backend"
    assert await answers(url) == 200
    assert (await stored_lab(settings, lab_id)).state == LabState.RUNNING

    second = await start_backend(settings, int(first.url.rsplit(":", 1)[1]))
    async with second.client() as hub:
        again = (await hub.get(f"/labs/{lab_id}")).json()
        assert again["state"] == "running"
        assert again["url"] == lab["url"]
        assert await answers(url) == 200
        assert await lab_process(settings, lab_id) == process
        before = await events_of(hub, lab_id)
        assert [e["state"] for e in before] == ["accepted", "submitted", "starting", "running"]

        resp = await hub.delete(f"/labs/{lab_id}")
        assert resp.status_code == 202
        stopped = await wait_state(hub, lab_id, {"stopped", "failed"})
        assert stopped["state"] == "stopped"
        after = await events_of(hub, lab_id)
        # the events go on where they were
        assert after[: len(before)] == before
        assert [e["state"] for e in after[len(before) :]] == ["stopping", "stopped"]
        assert [e["seq"] for e in after] == list(range(1, len(after) + 1))
        assert "fakelab starting in mode serve" in after[-1]["detail"]
    assert not alive(process)
    assert fakelab_processes() == []


async def test_two_restarts_and_two_labs(
    no_leftover_processes: None, start_backend: BackendFactory, settings: Settings
) -> None:
    backend = await start_backend(settings)
    a = await running_lab(backend)
    b = await running_lab(backend, server_name="second")
    for _ in range(2):
        backend = await restart(start_backend, backend, settings)
    async with backend.client() as hub:
        labs = (await hub.get("/labs")).json()
        assert {(lab["id"], lab["state"]) for lab in labs} == {
            (a["id"], "running"),
            (b["id"], "running"),
        }
        for lab in (a, b):
            assert (await hub.delete(f"/labs/{lab['id']}")).status_code == 202
            assert (await wait_state(hub, lab["id"], {"stopped", "failed"}))["state"] == "stopped"
    assert fakelab_processes() == []


async def test_lab_that_ends_after_a_restart_is_noticed(
    no_leftover_processes: None, start_backend: BackendFactory, settings: Settings
) -> None:
    """The new backend follows a process that is not its child."""
    first = await start_backend(settings)
    lab = await running_lab(first, env={"FAKELAB_MODE": "exit-later", "FAKELAB_SECONDS": "3"})
    second = await restart(start_backend, first, settings)
    async with second.client() as hub:
        assert (await hub.get(f"/labs/{lab['id']}")).json()["state"] == "running", (
            "the lab ended before the backend was back; FAKELAB_SECONDS is too short here"
        )
        ended = await wait_state(hub, lab["id"], {"stopped", "failed"})
        assert ended["state"] == "stopped"
        assert ended["exit_status"] == 0
        last = (await events_of(hub, lab["id"]))[-1]
        assert last["state"] == "stopped"
        assert "ended by itself" in last["message"]
        assert "fakelab: done, exiting" in last["detail"]


# -- labs that ended or were never launched ------------------------------------------------


async def test_lab_killed_while_the_backend_was_down(
    no_leftover_processes: None, start_backend: BackendFactory, settings: Settings
) -> None:
    first = await start_backend(settings)
    lab = await running_lab(first)
    pid, started = await lab_process(settings, lab["id"])
    await first.stop()

    os.kill(pid, signal.SIGKILL)
    for _ in range(200):
        if not alive((pid, started)):
            break
        await asyncio.sleep(0.05)
    assert not alive((pid, started))

    second = await start_backend(settings)
    async with second.client() as hub:
        ended = await wait_state(hub, lab["id"], {"stopped", "failed"})
        assert ended["state"] == "stopped"
        assert ended["url"] is None
        events = await events_of(hub, lab["id"])
        assert [e["state"] for e in events] == [
            "accepted",
            "submitted",
            "starting",
            "running",
            "stopped",
        ]
        assert "ended while the backend was not running" in events[-1]["message"]
        assert "fakelab starting in mode serve" in events[-1]["detail"]
        # the server name is free again
        resp = await hub.post("/labs", json=lab_request())
        assert resp.status_code == 202
        new = await wait_state(hub, resp.json()["id"], {"running"})
        assert (await hub.delete(f"/labs/{new['id']}")).status_code == 202
        await wait_state(hub, new["id"], {"stopped"})


async def test_lab_accepted_but_never_launched(
    no_leftover_processes: None,
    start_backend: BackendFactory,
    settings: Settings,
    store: Store,
) -> None:
    lab = await put_lab(store, LabState.ACCEPTED)
    assert lab.handle == {}
    backend = await start_backend(settings)
    async with backend.client() as hub:
        failed = await wait_state(hub, lab.id, {"failed", "stopped", "running"})
        assert failed["state"] == "failed"
        assert failed["exit_status"] == 1
        events = await events_of(hub, lab.id)
        assert [e["state"] for e in events] == ["accepted", "failed"]
        message = events[-1]["message"]
        assert "start it again" in message
        assert message.endswith(".")
        assert "\n" not in message
        # and the person can do so
        resp = await hub.post("/labs", json=lab_request())
        assert resp.status_code == 202, resp.text
        new = await wait_state(hub, resp.json()["id"], {"running"})
        assert (await hub.delete(f"/labs/{new['id']}")).status_code == 202
        await wait_state(hub, new["id"], {"stopped"})


async def test_lab_submitted_without_a_handle(
    no_leftover_processes: None,
    start_backend: BackendFactory,
    settings: Settings,
    store: Store,
) -> None:
    lab = await put_lab(store, LabState.SUBMITTED)
    backend = await start_backend(settings)
    async with backend.client() as hub:
        failed = await wait_state(hub, lab.id, {"failed", "stopped", "running"})
        assert failed["state"] == "failed"
        assert "start it again" in (await events_of(hub, lab.id))[-1]["message"]


async def test_lab_caught_while_starting_is_followed_to_running(
    no_leftover_processes: None,
    start_backend: BackendFactory,
    settings: Settings,
    store: Store,
) -> None:
    proc, handle = spawn_fakelab(settings.state_dir / "labs" / "x" / "output.log", "/user/alice/")
    try:
        lab = await put_lab(store, LabState.STARTING, handle)
        backend = await start_backend(settings)
        async with backend.client() as hub:
            running = await wait_state(hub, lab.id, {"running", "failed", "stopped"})
            assert running["state"] == "running"
            assert running["url"] == f"http://127.0.0.1:{handle['port']}"
            assert await answers(f"{running['url']}/user/alice/") == 200
            assert (await hub.delete(f"/labs/{lab.id}")).status_code == 202
            assert (await wait_state(hub, lab.id, {"stopped", "failed"}))["state"] == "stopped"
        assert reap(proc) == -signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_lab_caught_while_stopping_is_stopped(
    no_leftover_processes: None,
    start_backend: BackendFactory,
    settings: Settings,
    store: Store,
) -> None:
    proc, handle = spawn_fakelab(settings.state_dir / "labs" / "y" / "output.log", "/user/alice/")
    try:
        lab = await put_lab(store, LabState.STOPPING, handle)
        backend = await start_backend(settings)
        async with backend.client() as hub:
            stopped = await wait_state(hub, lab.id, {"stopped", "failed"})
            assert stopped["state"] == "stopped"
            assert (await events_of(hub, lab.id))[-1]["message"] == "The lab was stopped."
        assert reap(proc) == -signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_lab_on_a_system_the_site_no_longer_offers(
    no_leftover_processes: None,
    start_backend: BackendFactory,
    tmp_path: Path,
    database_url: str,
    settings: Settings,
    store: Store,
) -> None:
    lab = await put_lab(store, LabState.ACCEPTED)
    doc = site.doc(tmp_path / "state", database_url, systems={"other": site.local_system()})
    backend = await start_backend(site.settings(doc))
    async with backend.client() as hub:
        failed = await wait_state(hub, lab.id, {"failed", "stopped", "running"})
        assert failed["state"] == "failed"
        assert "no longer offered" in (await events_of(hub, lab.id))[-1]["message"]


async def test_backend_stopped_before_the_handle_was_stored(
    no_leftover_processes: None,
    settings: Settings,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A process the database does not know about could never be found again:
    a backend that shuts down before storing it ends it instead of leaking it."""
    saving = asyncio.Event()

    async def save_that_never_ends(
        lab_id: str, handle: dict[str, Any], owner: str | None = None
    ) -> None:
        saving.set()
        await asyncio.Event().wait()  # the database does not answer before the shutdown

    async with httpx.AsyncClient(trust_env=False) as http:
        manager = LabManager(settings, store, http)
        with monkeypatch.context() as patch:
            patch.setattr(store, "save_handle", save_that_never_ends)
            lab = await manager.create(
                user_name="alice", server_name="", vo=None, options={}, env=lab_request()["env"]
            )
            await asyncio.wait_for(saving.wait(), 20)
            assert len(fakelab_processes()) == 1  # launched, not yet recorded
            await manager.close()

        again = LabManager(settings, store, http)
        await again.recover_all()
        for _ in range(400):
            current = await store.get_lab(lab.id)
            assert current is not None
            if current.state in (LabState.FAILED, LabState.STOPPED):
                break
            await asyncio.sleep(0.05)
        await again.close()
    assert current.state == LabState.FAILED
    assert "start it again" in current.message
    for _ in range(100):
        if not fakelab_processes():
            break
        await asyncio.sleep(0.05)
    assert fakelab_processes() == []
