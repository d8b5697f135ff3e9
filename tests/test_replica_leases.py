"""Replicas of the backend on one database (backend/replicas.py): one owner per active
lab, takeover after a replica dies without a goodbye, the graceful hand-back, fencing
when a replica loses its database, and SQLite refusing a second backend.

The backends run in this process (the ``start_backend`` fixture) on one PostgreSQL
database. A replica "dies" as SIGKILL would leave it: its heartbeat and scans stop,
its listening connection (and with it its advisory lock) is gone, and it hands
nothing back (tests/test_replicas.py kills real processes behind HAProxy).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from backend.db import create_engine, labs, migrate, replicas, utcnow
from backend.procs import free_port
from backend.settings import Settings
from backend.workshops import WorkshopEnder, WorkshopStore
from tests.helpers import site
from tests.helpers.api import BackendFactory, RunningBackend, lab_request, wait_state
from tests.helpers.labs import alive, assert_error, fakelab_processes, lab_process

pytestmark = [pytest.mark.integration, pytest.mark.replicas]

LEASE = 3.0


def replica_settings(tmp_path: Path, database_url: str) -> Settings:
    return site.settings(site.doc(tmp_path / "state", database_url, replicas={"lease": LEASE}))


async def owners(database_url: str) -> dict[str, str | None]:
    """Each lab's owner, from the database."""
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(select(labs.c.id, labs.c.owner))).all()
    finally:
        await engine.dispose()
    return {r[0]: r[1] for r in rows}


async def replica_rows(database_url: str) -> set[str]:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            return {r[0] for r in (await conn.execute(select(replicas.c.id))).all()}
    finally:
        await engine.dispose()


def replica_id(backend: RunningBackend) -> str:
    return str(backend.server.config.app.state.replica.id)


async def crash(backend: RunningBackend) -> None:
    """End a backend as SIGKILL would: no heartbeat, no scan, its listening connection
    (its advisory lock) gone, nothing handed back, no lab stopped."""
    state = backend.server.config.app.state
    replica = state.replica
    for task in replica._tasks:
        task.cancel()
    replica.healthy = False  # so that its shutdown below hands nothing back
    await state.bus.close()
    await state.manager.release_all()
    await backend.stop()


async def start_labs(backend: RunningBackend, count: int, prefix: str) -> list[str]:
    ids = []
    async with backend.client() as hub:
        for i in range(count):
            resp = await hub.post("/labs", json=lab_request(server_name=f"{prefix}{i}"))
            assert resp.status_code == 202, resp.text
            ids.append(resp.json()["id"])
        for lab_id in ids:
            lab = await wait_state(hub, lab_id, {"running", "failed", "stopped"})
            assert lab["state"] == "running", lab
    return ids


async def wait_owned(database_url: str, lab_ids: list[str], owner: str, timeout: float) -> float:
    """Seconds until every lab of ``lab_ids`` is owned by ``owner``."""
    began = time.monotonic()
    while True:
        now = await owners(database_url)
        if all(now[i] == owner for i in lab_ids):
            return time.monotonic() - began
        if time.monotonic() - began > timeout:
            raise AssertionError(f"owners after {timeout} s: {now}, wanted {owner}")
        await asyncio.sleep(0.1)


@pytest.fixture
def pg_settings(tmp_path: Path, postgres_url: str) -> Settings:
    return replica_settings(tmp_path, postgres_url)


@pytest.mark.postgres
async def test_every_active_lab_has_one_owner_the_replica_that_admitted_it(
    no_leftover_processes: None, start_backend: BackendFactory, pg_settings: Settings
) -> None:
    a = await start_backend(pg_settings)
    b = await start_backend(pg_settings)
    on_a = await start_labs(a, 3, "a")
    on_b = await start_labs(b, 3, "b")
    url = pg_settings.resolved_database_url
    assert await replica_rows(url) == {replica_id(a), replica_id(b)}
    found = await owners(url)
    assert {found[i] for i in on_a} == {replica_id(a)}
    assert {found[i] for i in on_b} == {replica_id(b)}
    # a scan of either claims nothing: every lab has a live owner
    assert await b.server.config.app.state.replica.scan() == []
    assert await a.server.config.app.state.replica.scan() == []
    async with a.client() as hub:
        for lab_id in on_a + on_b:
            assert (await hub.delete(f"/labs/{lab_id}")).status_code == 202
        for lab_id in on_a + on_b:
            assert (await wait_state(hub, lab_id, {"stopped", "failed"}))["state"] == "stopped"


@pytest.mark.postgres
async def test_a_replica_killed_without_goodbye_has_its_labs_taken_over_within_the_lease(
    no_leftover_processes: None, start_backend: BackendFactory, pg_settings: Settings
) -> None:
    a = await start_backend(pg_settings)
    b = await start_backend(pg_settings)
    ids = await start_labs(a, 4, "k")
    processes = {i: await lab_process(pg_settings, i) for i in ids}
    before = set(fakelab_processes())
    dead = replica_id(a)
    await crash(a)
    url = pg_settings.resolved_database_url
    took = await wait_owned(url, ids, replica_id(b), timeout=LEASE + 2)
    # its advisory lock was free at B's next scan (every lease/3): no wait for the lease
    assert took < LEASE * 2 / 3, took
    assert dead not in await replica_rows(url)
    # the labs ran on: the same processes, none started twice
    assert all(alive(p) for p in processes.values())
    assert set(fakelab_processes()) == before
    async with b.client() as hub:
        for lab_id in ids:
            lab = await wait_state(hub, lab_id, {"running"})
            assert lab["state"] == "running"
        # B follows them: a stop ends each lab's process
        for lab_id in ids:
            assert (await hub.delete(f"/labs/{lab_id}")).status_code == 202
        for lab_id in ids:
            assert (await wait_state(hub, lab_id, {"stopped", "failed"}))["state"] == "stopped"
    assert not any(alive(p) for p in processes.values())


@pytest.mark.postgres
async def test_a_replica_that_shuts_down_hands_its_labs_back_at_once(
    no_leftover_processes: None, start_backend: BackendFactory, pg_settings: Settings
) -> None:
    a = await start_backend(pg_settings)
    b = await start_backend(pg_settings)
    ids = await start_labs(a, 3, "g")
    gone = replica_id(a)
    began = time.monotonic()
    await a.stop()  # SIGTERM: the lifespan's exit
    url = pg_settings.resolved_database_url
    await wait_owned(url, ids, replica_id(b), timeout=LEASE)
    # told by NOTIFY orphans: well before the lease would have lapsed
    assert time.monotonic() - began < LEASE
    assert gone not in await replica_rows(url)
    async with b.client() as hub:
        for lab_id in ids:
            assert (await hub.delete(f"/labs/{lab_id}")).status_code == 202
        for lab_id in ids:
            assert (await wait_state(hub, lab_id, {"stopped", "failed"}))["state"] == "stopped"


@pytest.mark.postgres
async def test_a_stop_asked_on_another_replica_is_carried_out_by_the_owner(
    no_leftover_processes: None, start_backend: BackendFactory, pg_settings: Settings
) -> None:
    a = await start_backend(pg_settings)
    b = await start_backend(pg_settings)
    [lab_id] = await start_labs(a, 1, "s")
    process = await lab_process(pg_settings, lab_id)
    async with b.client() as hub:
        resp = await hub.delete(f"/labs/{lab_id}")
        assert resp.status_code == 202, resp.text
        assert resp.json()["state"] == "stopping"
        lab = await wait_state(hub, lab_id, {"stopped", "failed"}, timeout=15)
    assert lab["state"] == "stopped", lab
    assert not alive(process)
    found = await owners(pg_settings.resolved_database_url)
    assert found[lab_id] == replica_id(a)  # A stopped it; B did not take it


@pytest.mark.postgres
async def test_a_new_access_token_reaches_the_owner(
    start_backend: BackendFactory, pg_settings: Settings
) -> None:
    a = await start_backend(pg_settings)
    b = await start_backend(pg_settings)
    [lab_id] = await start_labs(a, 1, "t")
    manager_a = a.server.config.app.state.manager
    async with b.client() as hub:
        resp = await hub.get(f"/labs/{lab_id}", headers={"X-Lablink-Access-Token": "tok-2"})
        assert resp.status_code == 200, resp.text
    for _ in range(100):
        if manager_a._access_tokens.get(lab_id) == "tok-2":
            break
        await asyncio.sleep(0.05)
    assert manager_a._access_tokens.get(lab_id) == "tok-2"
    async with a.client() as hub:
        assert (await hub.delete(f"/labs/{lab_id}")).status_code == 202
        await wait_state(hub, lab_id, {"stopped", "failed"})


class Cut:
    """A TCP forwarder to PostgreSQL that a test can cut (every connection dropped,
    nothing accepted) and mend."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def open(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def cut(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for writer in list(self.writers):
            writer.transport.abort()
        self.writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@pytest.fixture
async def cut_postgres(postgres_url: str) -> AsyncIterator[tuple[Cut, str]]:
    """A forwarder and the test database's URL through it."""
    from urllib.parse import urlsplit

    parts = urlsplit(postgres_url)
    forward = Cut((parts.hostname or "127.0.0.1", parts.port or 5432))
    await forward.open()
    through = postgres_url.replace(f"{parts.hostname}:{parts.port}", f"127.0.0.1:{forward.port}")
    yield forward, through
    await forward.cut()


@pytest.mark.postgres
async def test_a_replica_that_loses_its_database_fences_itself_and_its_labs_move(
    no_leftover_processes: None,
    start_backend: BackendFactory,
    pg_settings: Settings,
    tmp_path: Path,
    cut_postgres: tuple[Cut, str],
) -> None:
    forward, through = cut_postgres
    a = await start_backend(replica_settings(tmp_path, through))
    b = await start_backend(pg_settings)
    ids = await start_labs(a, 2, "f")
    processes = [await lab_process(pg_settings, i) for i in ids]
    state_a = a.server.config.app.state
    first_id = replica_id(a)
    await forward.cut()
    began = time.monotonic()
    while state_a.healthy:
        assert time.monotonic() - began < LEASE, "A did not fence itself within the lease"
        await asyncio.sleep(0.05)
    fenced_after = time.monotonic() - began
    assert not state_a.manager._runs and not state_a.manager._stops  # follows nothing
    async with httpx.AsyncClient(trust_env=False, timeout=10) as web:
        resp = await web.get(f"{a.url}/healthz")
        assert resp.status_code == 503
    async with a.client() as hub:
        assert_error(await hub.get("/labs"), 503, "database")
    # B takes them once A's lease lapses (A's lock lives in a connection that is cut
    # too: so at once); A fenced itself first
    await wait_owned(pg_settings.resolved_database_url, ids, replica_id(b), LEASE + 3)
    assert fenced_after < LEASE
    assert all(alive(p) for p in processes)
    # the database comes back: A registers anew (a fresh id) and serves again
    await forward.open()
    began = time.monotonic()
    while not state_a.healthy:
        assert time.monotonic() - began < 15, "A did not come back"
        await asyncio.sleep(0.1)
    assert replica_id(a) != first_id
    async with httpx.AsyncClient(trust_env=False, timeout=10) as web:
        for _ in range(50):
            if (await web.get(f"{a.url}/healthz")).status_code == 200:
                break
            await asyncio.sleep(0.1)
        assert (await web.get(f"{a.url}/healthz")).status_code == 200
    async with b.client() as hub:
        for lab_id in ids:
            assert (await hub.delete(f"/labs/{lab_id}")).status_code == 202
        for lab_id in ids:
            assert (await wait_state(hub, lab_id, {"stopped", "failed"}))["state"] == "stopped"


async def test_a_second_backend_on_one_sqlite_database_refuses_to_start(
    start_backend: BackendFactory, tmp_path: Path, token_env: dict[str, str]
) -> None:
    database = (tmp_path / "backend.sqlite").resolve()
    document = site.doc(tmp_path / "state", f"sqlite+aiosqlite:///{database}")
    await start_backend(site.settings(document))
    site_file = site.write(document, tmp_path / "site.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABLINK_")}
    second = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "backend.cli", "backend", "--site", str(site_file)),
        *("--port", str(free_port())),
        env={**env, **token_env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(second.communicate(), 60)
    message = stderr.decode()
    assert second.returncode == 2, (second.returncode, message[-2000:])
    assert message.strip() == (
        f"lablink backend: another backend (pid {os.getpid()}) already uses the SQLite "
        f"database {database}; SQLite allows one backend - set database_url to a "
        "PostgreSQL database to run several."
    )


async def test_sqlite_the_lock_is_given_back_with_the_backend(
    start_backend: BackendFactory, tmp_path: Path
) -> None:
    """A restarted backend (the same process, as lablink up's tests do) starts again."""
    document = site.doc(tmp_path / "state", f"sqlite+aiosqlite:///{tmp_path / 'b.sqlite'}")
    first = await start_backend(site.settings(document))
    [lab_id] = await start_labs(first, 1, "r")
    await first.stop()
    lock = tmp_path / "b.sqlite.lock"
    assert lock.exists()
    again = await start_backend(site.settings(document))
    found: dict[str, Any] = await owners(site.settings(document).resolved_database_url)
    assert found[lab_id] == replica_id(again)  # the one replica took it at start
    async with again.client() as hub:
        assert (await hub.delete(f"/labs/{lab_id}")).status_code == 202
        await wait_state(hub, lab_id, {"stopped", "failed"})


@pytest.mark.postgres
async def test_of_two_replicas_ending_a_workshop_one_stops_its_labs(
    pg_settings: Settings,
) -> None:
    """Both replicas' enders find the workshop due at once; the one whose conditional
    update marks it ended stops its labs, the other passes."""
    engine = create_engine(pg_settings.resolved_database_url)
    await migrate(engine)
    try:
        store = WorkshopStore(engine)
        now = utcnow()
        await store.create(
            {
                "id": "ws-due",
                "title": "Due",
                "description": "",
                "owner": "carol",
                "tutors": [],
                "start": now - timedelta(hours=2),
                "end": now - timedelta(hours=1),
                "system": "local",
                "options": {},
                "max_participants": 5,
                "allow": None,
                "code": "c" * 16,
            }
        )
        stopped: list[str] = []

        async def stop_labs(workshop_id: str) -> int:
            stopped.append(workshop_id)
            return 0

        enders = [WorkshopEnder(WorkshopStore(engine), 0, stop_labs) for _ in range(2)]
        await asyncio.gather(*(ender.end_due() for ender in enders))
        assert stopped == ["ws-due"]
        ended = await store.get("ws-due")
        assert ended is not None and ended.ended is not None
    finally:
        await engine.dispose()


async def test_a_lab_whose_task_the_database_fails_is_handed_back_and_finished(
    no_leftover_processes: None,
    start_backend: BackendFactory,
    tmp_path: Path,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The database refuses the write that records a stopped lab (PostgreSQL at its
    connection limit did so in a burst): the lab is not left 'stopping' with its process
    gone; it goes back to be claimed, and the stop is recorded."""
    from sqlalchemy.exc import OperationalError

    settings = replica_settings(tmp_path, database_url)
    a = await start_backend(settings)
    [lab_id] = await start_labs(a, 1, "d")
    process = await lab_process(settings, lab_id)
    store = a.server.config.app.state.store
    real = store.record
    refused = []

    async def record(lab: str, state: Any, message: str, **kw: Any) -> Any:
        if state.value == "stopped" and not refused:
            refused.append(lab)
            raise OperationalError("INSERT", {}, Exception("sorry, too many clients already"))
        return await real(lab, state, message, **kw)

    store.record = record
    async with a.client() as hub:
        assert (await hub.delete(f"/labs/{lab_id}")).status_code == 202
        lab = await wait_state(hub, lab_id, {"stopped", "failed"}, timeout=20)
    assert lab["state"] == "stopped", lab
    assert refused == [lab_id]
    assert not alive(process)
    lines = [r for r in caplog.records if "handed back" in r.getMessage()]
    assert len(lines) == 1 and lines[0].exc_info is None
    # claimed again (here: the only replica), then stopped there
    assert (await owners(settings.resolved_database_url))[lab_id] == replica_id(a)
