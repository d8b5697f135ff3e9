"""Events across replicas: two backends on one PostgreSQL database, a stream open on
one sees what the other writes; the listening connection comes back after it is
lost; /healthz and the 503s while the database cannot be reached."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.exc import OperationalError, ProgrammingError

from backend.bus import Bus
from backend.db import create_engine
from backend.health import UNHEALTHY, UNREACHABLE, db_unreachable
from tests.helpers import site
from tests.helpers.api import RunningBackend, lab_request, stop_and_wait, wait_state

pytestmark = pytest.mark.replicas

PAYLOAD = re.compile(r"^(event|stop|token|orphans):[A-Za-z0-9_.-]{1,200}$")


# -- helpers -----------------------------------------------------------------------------


class Stream:
    """A lab's event stream on one backend, read in the background."""

    def __init__(self, backend: RunningBackend, lab_id: str, last_event_id: int | None = None):
        self.backend = backend
        self.lab_id = lab_id
        self.headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.changed = asyncio.Event()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async with (
            self.backend.client("alice") as client,
            client.stream(
                "GET", f"/labs/{self.lab_id}/events/stream", headers=self.headers, timeout=60
            ) as resp,
        ):
            assert resp.status_code == 200, await resp.aread()
            async for line in resp.aiter_lines():
                if line.startswith("data: "):
                    self.events.append((time.monotonic(), json.loads(line[6:])))
                    self.changed.set()

    async def wait_for(self, message: str, timeout: float) -> float:
        """The time at which the event with ``message`` arrived."""
        deadline = time.monotonic() + timeout
        while True:
            for at, event in self.events:
                if event["message"] == message:
                    return at
            if self.task.done():
                await self.task
                raise AssertionError(f"the stream ended without {message!r}")
            left = deadline - time.monotonic()
            if left <= 0:
                seen = [e["message"] for _, e in self.events]
                raise AssertionError(f"no event {message!r} within {timeout} s; saw {seen}")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
            await self.task


class TcpProxy:
    """127.0.0.1:port -> PostgreSQL; ``down()`` drops every connection and refuses new
    ones, ``up()`` listens again on the same port."""

    def __init__(self, target_port: int = 5432):
        self.target_port = target_port
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.transport.abort()
        self.writers.clear()
        await self.server.wait_closed()
        self.server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.transport.abort()
                self.writers.discard(dst)

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


def settings_for(tmp_path: Path, name: str, url: str) -> Any:
    return site.settings(site.doc(tmp_path / name, url))


def bus_of(backend: RunningBackend) -> Bus:
    return backend.server.config.app.state.bus  # type: ignore[no-any-return]


async def notice(backend: RunningBackend, lab_id: str, message: str) -> None:
    async with backend.client("alice") as client:
        resp = await client.post(f"/labs/{lab_id}/notice", json={"message": message})
        assert resp.status_code == 200, resp.text


@pytest.fixture
async def two(
    start_backend: Any, postgres_url: str, tmp_path: Path
) -> AsyncIterator[tuple[RunningBackend, RunningBackend]]:
    a = await start_backend(settings_for(tmp_path, "a", postgres_url))
    b = await start_backend(settings_for(tmp_path, "b", postgres_url))
    yield a, b


async def running_lab(backend: RunningBackend) -> str:
    async with backend.client("alice") as client:
        resp = await client.post("/labs", json=lab_request("alice"))
        assert resp.status_code == 202, resp.text
        lab_id: str = resp.json()["id"]
        await wait_state(client, lab_id, {"running"})
    return lab_id


async def server_pid_of(bus: Bus) -> int:
    conn = bus._conn
    assert conn is not None, "the bus is not connected"
    return conn.get_server_pid()


# -- events across replicas --------------------------------------------------------------


@pytest.mark.postgres
async def test_a_stream_on_one_replica_sees_events_written_on_another_within_a_second(
    two: tuple[RunningBackend, RunningBackend], no_leftover_processes: None
) -> None:
    a, b = two
    lab_id = await running_lab(a)
    stream = Stream(b, lab_id)
    try:
        await stream.wait_for((await _message_of(a, lab_id)), timeout=5)
        delays = []
        for n in range(5):
            sent = time.monotonic()
            await notice(a, lab_id, f"note {n} from replica A")
            delays.append(await stream.wait_for(f"note {n} from replica A", timeout=5) - sent)
        assert max(delays) < 1.0, delays
        async with a.client("alice") as client:
            await stop_and_wait(client, lab_id)
        await asyncio.wait_for(stream.task, 5)  # the stream ends with the final state
        assert stream.events[-1][1]["state"] == "stopped"
    finally:
        await stream.close()


async def _message_of(backend: RunningBackend, lab_id: str) -> str:
    async with backend.client("alice") as client:
        return str((await client.get(f"/labs/{lab_id}")).json()["message"])


@pytest.mark.postgres
async def test_a_stream_resumes_with_last_event_id_on_the_other_replica(
    two: tuple[RunningBackend, RunningBackend], no_leftover_processes: None
) -> None:
    a, b = two
    lab_id = await running_lab(a)
    for n in range(3):
        await notice(a, lab_id, f"before {n}")
    async with a.client("alice") as client:
        seqs = [e["seq"] for e in (await client.get(f"/labs/{lab_id}/events")).json()]
    middle = seqs[len(seqs) // 2]
    on_a = Stream(a, lab_id)
    on_b = Stream(b, lab_id, last_event_id=middle)
    try:
        await on_a.wait_for("before 2", timeout=5)
        await on_b.wait_for("before 2", timeout=5)
        assert [e["seq"] for _, e in on_b.events] == [s for s in seqs if s > middle]
        await notice(a, lab_id, "after the resume")
        await on_b.wait_for("after the resume", timeout=2)
        assert [e["seq"] for _, e in on_b.events] == sorted({e["seq"] for _, e in on_b.events})
    finally:
        await on_a.close()
        await on_b.close()
        async with a.client("alice") as client:
            await stop_and_wait(client, lab_id)


@pytest.mark.postgres
async def test_the_listener_comes_back_after_its_connection_is_terminated(
    two: tuple[RunningBackend, RunningBackend],
    postgres_admin_url: str,
    no_leftover_processes: None,
) -> None:
    a, b = two
    lab_id = await running_lab(a)
    stream = Stream(b, lab_id)
    bus = bus_of(b)
    try:
        await stream.wait_for(await _message_of(a, lab_id), timeout=5)
        before = await server_pid_of(bus)
        admin = await asyncpg.connect(postgres_admin_url)
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", before)
        finally:
            await admin.close()
        # written while B may not listen: B reads the table again when it is back
        await notice(a, lab_id, "while B reconnects")
        await stream.wait_for("while B reconnects", timeout=5)
        deadline = time.monotonic() + 10
        while not bus.connected or await server_pid_of(bus) == before:
            assert time.monotonic() < deadline, "the bus did not connect again"
            await asyncio.sleep(0.05)
        sent = time.monotonic()
        await notice(a, lab_id, "after B is back")
        assert await stream.wait_for("after B is back", timeout=5) - sent < 1.0
    finally:
        await stream.close()
        async with a.client("alice") as client:
            await stop_and_wait(client, lab_id)


@pytest.mark.postgres
async def test_notifications_carry_no_secrets(
    two: tuple[RunningBackend, RunningBackend], postgres_url: str, no_leftover_processes: None
) -> None:
    a, b = two
    heard: list[str] = []
    listener = await asyncpg.connect(postgres_url)
    await listener.add_listener("lablink", lambda _c, _p, _ch, message: heard.append(message))
    try:
        lab_id = await running_lab(a)
        await notice(a, lab_id, "a notice")
        async with b.client("alice") as client:  # stopped through the other replica
            await client.delete(f"/labs/{lab_id}")
            await wait_state(client, lab_id, {"stopped", "failed"})
        await asyncio.sleep(0.3)
    finally:
        await listener.close()
    assert f"event:{lab_id}" in heard
    secrets = [lab_request("alice")["env"]["JUPYTERHUB_API_TOKEN"], *a.tokens.values()]
    for message in heard:
        assert PAYLOAD.fullmatch(message), message
        assert not any(s in message for s in secrets)


# -- the bus itself ----------------------------------------------------------------------


@pytest.mark.postgres
async def test_the_bus_delivers_between_processes_and_keeps_its_lock(postgres_url: str) -> None:
    engine = create_engine(postgres_url.replace("postgresql://", "postgresql+asyncpg://"))
    one, other = Bus(engine), Bus(engine)
    got: list[tuple[str, str]] = []
    resynced = asyncio.Event()
    other.on("stop", lambda lab: got.append(("stop", lab)))

    async def token(lab: str) -> None:
        got.append(("token", lab))

    other.on("token", token)
    other.on("resync", lambda _: resynced.set())
    key = 4242
    try:
        await one.start()
        await other.start()
        assert one.connected and other.connected
        assert await other.hold_lock(key)
        await one.send("stop", "lab-1")
        await one.send("token", "lab-2")
        async with engine.begin() as conn:  # a notification in a rolled back write
            await one.in_transaction(conn, "stop", "lab-3")
            await conn.rollback()
        async with engine.begin() as conn:  # an unknown kind: ignored
            await conn.exec_driver_sql("SELECT pg_notify('lablink', 'launch:lab-4')")
        await _until(lambda: len(got) >= 2)
        await asyncio.sleep(0.2)
        assert got == [("stop", "lab-1"), ("token", "lab-2")]

        admin = await asyncpg.connect(postgres_url)  # advisory locks are per database
        try:
            assert not await admin.fetchval("SELECT pg_try_advisory_lock($1)", key)
            pid = await server_pid_of(other)
            await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
            await asyncio.wait_for(resynced.wait(), 5)
            assert other.connected
            # taken again on the new connection: still not free for anybody else
            assert not await admin.fetchval("SELECT pg_try_advisory_lock($1)", key)
            await one.send("stop", "lab-5")
            await _until(lambda: ("stop", "lab-5") in got)
            await other.close()
            await _until_async(lambda: admin.fetchval("SELECT pg_try_advisory_lock($1)", key))
        finally:
            await admin.close()
    finally:
        await one.close()
        await other.close()
        await engine.dispose()


async def test_the_bus_on_sqlite_dispatches_in_process(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    bus = Bus(engine)
    got: list[str] = []
    bus.on("orphans", got.append)
    await bus.start()
    try:
        assert bus.connected
        assert await bus.hold_lock(1)
        await bus.send("orphans", "replica-1")
        assert got == ["replica-1"]
        with pytest.raises(ValueError, match="unknown notification kind"):
            await bus.send("launch", "lab-1")
        with pytest.raises(ValueError, match="needs an id"):
            await bus.send("stop", "a:b")
    finally:
        await bus.close()
        await engine.dispose()


async def _until(check: Any, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def _until_async(check: Any, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


# -- health and 503 ----------------------------------------------------------------------


async def test_healthz_needs_no_token_and_says_ok(backend: RunningBackend) -> None:
    async with httpx.AsyncClient(base_url=backend.url, trust_env=False) as anon:
        resp = await anon.get("/healthz")
        paths = (await anon.get("/api/v1/openapi.json")).json()["paths"]
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok"}
    assert "get" in paths["/healthz"]
    assert "security" not in paths["/healthz"]["get"]


async def test_an_unhealthy_replica_answers_503(backend: RunningBackend) -> None:
    state = backend.server.config.app.state
    state.healthy = False
    try:
        async with httpx.AsyncClient(base_url=backend.url, trust_env=False) as anon:
            resp = await anon.get("/healthz")
            assert resp.status_code == 503
            assert resp.json() == {"status": "unavailable", "detail": UNHEALTHY}
            assert (await anon.get("/api/v1/openapi.json")).status_code == 200
        async with backend.client("alice") as client:
            for method, path in (("GET", "/labs"), ("POST", "/labs"), ("GET", "/health")):
                resp = await client.request(method, path, json=lab_request("alice"))
                assert resp.status_code == 503, (method, path, resp.text)
                assert resp.json() == {"detail": UNHEALTHY}
                assert resp.headers["retry-after"] == "5"
    finally:
        state.healthy = True
    async with backend.client("alice") as client:
        assert (await client.get("/labs")).status_code == 200


@pytest.mark.postgres
async def test_a_lost_database_is_a_503_then_all_is_well_again(
    start_backend: Any,
    postgres_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    no_leftover_processes: None,
) -> None:
    """B reaches PostgreSQL through a proxy that the test takes down: 503 (not 500,
    no stack in the log), /healthz 503; back up: 200, and B's open stream has the
    event A wrote meanwhile."""
    proxy = TcpProxy()
    await proxy.up()
    a = await start_backend(settings_for(tmp_path, "a", postgres_url))
    via_proxy = re.sub(r"@[^/]+/", f"@127.0.0.1:{proxy.port}/", postgres_url)
    b = await start_backend(settings_for(tmp_path, "b", via_proxy))
    lab_id = await running_lab(a)
    stream = Stream(b, lab_id)
    try:
        await stream.wait_for(await _message_of(a, lab_id), timeout=5)
        await proxy.down()
        caplog.clear()
        async with httpx.AsyncClient(base_url=b.url, trust_env=False) as anon:
            resp = await anon.get("/healthz")
            assert resp.status_code == 503, resp.text
            assert resp.json()["status"] == "unavailable"
        async with b.client("alice") as client:
            for path in ("/labs", f"/labs/{lab_id}", f"/labs/{lab_id}/events"):
                resp = await client.get(path)
                assert resp.status_code == 503, (path, resp.text)
                assert resp.json() == {"detail": UNREACHABLE}
                assert resp.headers["retry-after"] == "5"
        logged = [r for r in caplog.records if r.name.startswith("lablink")]
        assert logged and not any(r.exc_info for r in logged), [r.getMessage() for r in logged]
        assert not any(r.levelname == "ERROR" for r in caplog.records)

        await notice(a, lab_id, "while B was cut off")
        await proxy.up()
        deadline = time.monotonic() + 15
        async with httpx.AsyncClient(base_url=b.url, trust_env=False) as anon:
            while (await anon.get("/healthz")).status_code != 200:
                assert time.monotonic() < deadline, "B did not become healthy again"
                await asyncio.sleep(0.1)
        async with b.client("alice") as client:
            assert (await client.get(f"/labs/{lab_id}")).json()["message"] == "while B was cut off"
        await stream.wait_for("while B was cut off", timeout=10)
    finally:
        await stream.close()
        async with a.client("alice") as client:
            await stop_and_wait(client, lab_id)
        if proxy.server is not None:
            await proxy.down()


def test_what_counts_as_a_lost_database() -> None:
    def caused_by(cause: BaseException) -> RuntimeError:
        error = RuntimeError("the admission failed")
        error.__cause__ = cause
        return error

    assert db_unreachable(OperationalError("SELECT 1", {}, Exception("server closed")))
    assert db_unreachable(caused_by(asyncpg.ConnectionDoesNotExistError("closed")))
    assert not db_unreachable(ProgrammingError("SELEC 1", {}, Exception("syntax error")))
    assert not db_unreachable(OSError("a lab's log file is missing"))  # not the driver's
    assert not db_unreachable(caused_by(ValueError("bad")))
