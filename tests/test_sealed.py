"""What a lab's start needs, sealed in the database (issue 16, point 4), and the start
request that may safely be sent twice (``Idempotency-Key``).

The sealed row is checked in the raw database (the SQLite file's bytes, PostgreSQL's
rows as text): the hub token and the access token are not there in the clear.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import select

import spawner.client
from backend.app import create_app
from backend.db import create_engine, lab_secrets, migrate
from backend.procs import free_port
from backend.sealed import SealBroken, Sealer, sealer_from
from backend.settings import Settings, SettingsError
from backend.store import Store
from spawner.client import BackendClient, BackendError
from tests.helpers import site
from tests.helpers.api import RunningBackend, lab_request, stop_and_wait, wait_state
from tests.helpers.labs import assert_error

HUB_TOKEN = "secret-hub-api-token-alice"  # lab_request's JUPYTERHUB_API_TOKEN
ACCESS_TOKEN = "access-token-" + secrets.token_hex(16)


# -- the sealer ----------------------------------------------------------------------


def test_seal_opens_with_its_key_and_not_another() -> None:
    key, other = secrets.token_hex(32), secrets.token_hex(32)
    sealed = Sealer([key]).seal(HUB_TOKEN)
    assert HUB_TOKEN not in sealed
    assert Sealer([key]).open(sealed) == HUB_TOKEN
    assert Sealer([key]).seal(HUB_TOKEN) != sealed  # a fresh nonce each time
    with pytest.raises(SealBroken, match="key"):
        Sealer([other]).open(sealed)
    with pytest.raises(SealBroken):
        Sealer([key]).open("not a sealed value")


def test_a_new_key_first_seals_and_the_old_one_still_opens() -> None:
    old, new = "o" * 32, "n" * 40
    by_old = Sealer([old]).seal("before")
    rotated = Sealer([new, old])
    assert rotated.open(by_old) == "before"
    by_new = rotated.seal("after")
    assert Sealer([new]).open(by_new) == "after"
    with pytest.raises(SealBroken):
        Sealer([old]).open(by_new)  # the first key sealed it


def test_a_short_key_is_refused() -> None:
    with pytest.raises(ValueError, match="32 characters"):
        Sealer(["x" * 31])


def _settings(tmp_path: Path, database_url: str | None = None) -> Settings:
    return site.settings(site.doc(tmp_path / "state", database_url))


def test_sqlite_without_a_key_keeps_the_start_in_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="lablink.backend.sealed"):
        assert sealer_from(_settings(tmp_path), {}) is None
    assert [r.getMessage() for r in caplog.records if "LABLINK_STATE_KEY" in r.getMessage()]


def test_postgresql_without_a_key_refuses_to_start(tmp_path: Path) -> None:
    settings = _settings(tmp_path, "postgresql://lablink@db.example/lablink")
    with pytest.raises(SettingsError) as refused:
        sealer_from(settings, {})
    sentence = str(refused.value)
    assert sentence.startswith("replicas.key_env: the environment variable LABLINK_STATE_KEY")
    assert "PostgreSQL" in sentence
    tokens = {site.HUB_TOKEN_ENV: "h" * 24, site.ADMIN_TOKEN_ENV: "a" * 24}
    with pytest.raises(SettingsError, match="LABLINK_STATE_KEY"):
        create_app(settings, tokens)
    assert create_app(settings, {**tokens, "LABLINK_STATE_KEY": "k" * 32}) is not None


def test_keys_come_newest_first_and_each_must_be_long(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    old, new = "o" * 32, "n" * 32
    sealer = sealer_from(settings, {"LABLINK_STATE_KEY": f" {new} , {old} "})
    assert sealer is not None
    with pytest.raises(SealBroken):
        Sealer([old]).open(sealer.seal("x"))
    assert sealer.open(Sealer([old]).seal("y")) == "y"
    with pytest.raises(SettingsError, match=r"key 2 .* fewer than 32"):
        sealer_from(settings, {"LABLINK_STATE_KEY": f"{new},short"})


# -- sealed in the database ------------------------------------------------------------


async def raw_database(settings: Settings) -> bytes:
    """Everything the database holds, as bytes: the SQLite files, or every row of every
    table of the PostgreSQL database as text."""
    url = settings.resolved_database_url
    if url.startswith("sqlite"):
        path = Path(url.split(":///", 1)[1])
        return b"".join(
            p.read_bytes() for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()
        )
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        tables = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
        )
        out = []
        for table in tables:
            rows = await conn.fetch(f'SELECT row_to_json(t)::text AS r FROM "{table[0]}" t')
            out.extend(r["r"] for r in rows)
    finally:
        await conn.close()
    return "\n".join(out).encode()


async def sealed_row(settings: Settings, lab_id: str) -> dict[str, Any] | None:
    engine = create_engine(settings.resolved_database_url)
    try:
        async with engine.connect() as conn:
            row = (
                await conn.execute(select(lab_secrets).where(lab_secrets.c.lab_id == lab_id))
            ).first()
    finally:
        await engine.dispose()
    return dict(row._mapping) if row is not None else None


def with_access_token(body: dict[str, Any]) -> dict[str, Any]:
    body["user"]["access_token"] = ACCESS_TOKEN
    return body


@pytest.mark.integration
async def test_a_start_is_stored_sealed_until_it_runs(
    backend: RunningBackend, settings: Settings
) -> None:
    sealer = Sealer([site.STATE_KEY])
    async with backend.client("alice") as hub:
        # a lab that never gets ready: its start's environment stays stored
        body = with_access_token(lab_request(env={"FAKELAB_MODE": "never-ready"}))
        body["env"]["JUPYTERHUB_API_TOKEN"] = HUB_TOKEN
        resp = await hub.post("/labs", json=body)
        assert resp.status_code == 202, resp.text
        waiting = resp.json()["id"]
        assert HUB_TOKEN not in resp.text and ACCESS_TOKEN not in resp.text
        row = await sealed_row(settings, waiting)
        assert row is not None and row["env"] and row["access_token"]
        assert json.loads(sealer.open(row["env"]))["JUPYTERHUB_API_TOKEN"] == HUB_TOKEN
        assert sealer.open(row["access_token"]) == ACCESS_TOKEN

        # a lab that runs: its environment is forgotten, its access token kept
        resp = await hub.post("/labs", json=with_access_token(lab_request(server_name="two")))
        assert resp.status_code == 202, resp.text
        running = resp.json()["id"]
        await wait_state(hub, running, {"running"})
        for _ in range(100):
            row = await sealed_row(settings, running)
            if row is not None and row["env"] is None:
                break
            await asyncio.sleep(0.05)
        assert row is not None and row["env"] is None, "the env is still stored"
        assert sealer.open(row["access_token"]) == ACCESS_TOKEN

        raw = await raw_database(settings)
        assert raw, "the database read nothing"
        assert HUB_TOKEN.encode() not in raw
        assert b"secret-hub-api-token" not in raw
        assert ACCESS_TOKEN.encode() not in raw

        # ended: nothing sealed of it stays
        for lab_id in (waiting, running):
            await stop_and_wait(hub, lab_id)
            assert await sealed_row(settings, lab_id) is None


@pytest.mark.integration
async def test_lab_secrets_write_a_token_only_when_it_changed(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    engine = create_engine(settings.resolved_database_url)
    try:
        await migrate(engine)
        store = Store(engine, sealer=Sealer([site.STATE_KEY]))
        lab = await store.create_lab(
            user_name="alice",
            server_name="",
            system="local",
            vo=None,
            options={},
            message="Lab accepted.",
            env={"JUPYTERHUB_API_TOKEN": HUB_TOKEN},
            access_token="first",
        )
        kept = store.secrets
        assert await kept.env(lab.id) == {"JUPYTERHUB_API_TOKEN": HUB_TOKEN}
        assert await kept.token(lab.id) == "first"
        assert await kept.put_token(lab.id, "first") is False  # the same: no write
        assert await kept.put_token(lab.id, "second") is True
        assert await kept.token(lab.id) == "second"
        await kept.drop_env(lab.id)
        assert await kept.env(lab.id) is None
        assert await kept.token(lab.id) == "second"

        # another key: nothing opens, one line without the secret, read as missing
        other = Store(engine, sealer=Sealer([secrets.token_hex(32)])).secrets
        with caplog.at_level(logging.WARNING, logger="lablink.backend.lab_secrets"):
            assert await other.token(lab.id) is None
        assert [r.getMessage() for r in caplog.records] == [
            f"lab {lab.id}: its sealed access token opens with none of the site's keys"
        ]

        await kept.drop(lab.id)
        assert await kept.token(lab.id) is None
        assert await kept.put_token(lab.id, "third") is False  # ended: nothing to update

        # without a key: nothing stored, nothing read
        unsealed = Store(engine)
        bare = await unsealed.create_lab(
            user_name="bob",
            server_name="",
            system="local",
            vo=None,
            options={},
            message="Lab accepted.",
            env={"JUPYTERHUB_API_TOKEN": HUB_TOKEN},
            access_token="token",
        )
        assert await sealed_row_in(engine, bare.id) is None
        assert await unsealed.secrets.env(bare.id) is None
    finally:
        await engine.dispose()


async def sealed_row_in(engine: Any, lab_id: str) -> Any:
    async with engine.connect() as conn:
        return (
            await conn.execute(select(lab_secrets).where(lab_secrets.c.lab_id == lab_id))
        ).first()


# -- Idempotency-Key -------------------------------------------------------------------


@pytest.mark.integration
async def test_the_same_start_sent_twice_stores_one_lab(backend: RunningBackend) -> None:
    key = {"Idempotency-Key": "9b2f0c1e-retry:1"}
    async with backend.client("alice") as hub:
        first = await hub.post("/labs", json=lab_request(), headers=key)
        again = await hub.post("/labs", json=lab_request(), headers=key)
        assert first.status_code == again.status_code == 202, (first.text, again.text)
        assert first.json()["id"] == again.json()["id"]
        assert again.headers["Location"] == f"/api/v1/labs/{first.json()['id']}"
        # the key with another server name: a mistake of the caller
        other = await hub.post("/labs", json=lab_request(server_name="other"), headers=key)
        assert_error(other, 409, "Idempotency-Key", first.json()["id"])
        # another person may use the same key for their own start
        async with backend.client("bob") as bob:
            theirs = await bob.post("/labs", json=lab_request("bob"), headers=key)
        assert theirs.status_code == 202, theirs.text
        assert theirs.json()["id"] != first.json()["id"]
        # without the key, as before: the server name is taken
        plain = await hub.post("/labs", json=lab_request())
        assert_error(plain, 409, "already has an active lab")
        # both at once (a balancer's retry racing the first): one lab
        race = {"Idempotency-Key": "k-race"}
        both = await asyncio.gather(
            *(
                hub.post("/labs", json=lab_request(server_name="race"), headers=race)
                for _ in range(2)
            )
        )
        assert [r.status_code for r in both] == [202, 202], [r.text for r in both]
        assert both[0].json()["id"] == both[1].json()["id"]
        mine = (await hub.get("/labs", params={"user": "alice"})).json()
        assert sorted(lab["server_name"] for lab in mine) == ["", "race"]
        # ended: the key starts a new lab
        await stop_and_wait(hub, first.json()["id"])
        anew = await hub.post("/labs", json=lab_request(), headers=key)
        assert anew.status_code == 202 and anew.json()["id"] != first.json()["id"]
        for lab in (await hub.get("/labs", params={"active": "true"})).json():
            await stop_and_wait(hub, lab["id"])
    async with backend.client("bob") as bob:
        await stop_and_wait(bob, theirs.json()["id"])


@pytest.mark.integration
@pytest.mark.parametrize("key", ["", "x" * 65, "has space", "semi;colon", "ünï"])
async def test_a_bad_idempotency_key_is_refused(backend: RunningBackend, key: str) -> None:
    async with backend.client("alice") as hub:
        resp = await hub.post(
            "/labs", json=lab_request(), headers={"Idempotency-Key": key.encode()}
        )
        assert_error(resp, 422, "Idempotency-Key")
        assert (await hub.get("/labs", params={"user": "alice"})).json() == []


# -- the spawner's retries -------------------------------------------------------------


class FakeBackend:
    """A backend that answers the first ``failures`` starts with ``status``, then 202."""

    def __init__(self, failures: int, status: int = 503):
        self.failures = failures
        self.status = status
        self.keys: list[str | None] = []
        self.app = FastAPI()

        @self.app.post("/api/v1/labs")
        async def create(request: Request) -> JSONResponse:
            self.keys.append(request.headers.get("Idempotency-Key"))
            if len(self.keys) <= self.failures:
                return JSONResponse({"detail": "A replica went away."}, status_code=self.status)
            return JSONResponse({"id": "lab-1", "state": "accepted"}, status_code=202)


@pytest.fixture
async def serve() -> AsyncIterator[Any]:
    servers: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []

    async def start(app: FastAPI) -> str:
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
        )
        task = asyncio.create_task(server.serve())
        while not server.started:
            assert not task.done(), "the fake backend did not start"
            await asyncio.sleep(0.01)
        servers.append((server, task))
        return f"http://127.0.0.1:{port}"

    yield start
    for server, task in servers:
        server.should_exit = True
        await task


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spawner.client, "START_RETRY_FIRST", 0.02)


async def test_the_spawner_sends_a_start_again_after_a_503(
    serve: Any, quick_retries: None, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeBackend(failures=2)
    client = BackendClient(await serve(fake.app), "t" * 24)
    try:
        with caplog.at_level(logging.WARNING, logger="lablink.spawner"):
            lab = await client.create(lab_request(), "alice", "key-1", "alice: lab")
    finally:
        await client.aclose()
    assert lab["id"] == "lab-1"
    assert fake.keys == ["key-1"] * 3
    retries = [r.getMessage() for r in caplog.records]
    assert len(retries) == 2, retries
    assert all(
        m.startswith("alice: lab: the start was not answered (503: A replica went away.)")
        for m in retries
    )


@pytest.mark.parametrize(("status", "tries"), [(502, 3), (504, 3), (500, 1), (409, 1), (422, 1)])
async def test_the_spawner_gives_up_after_three_tries_and_never_retries_a_refusal(
    serve: Any, quick_retries: None, status: int, tries: int
) -> None:
    fake = FakeBackend(failures=10, status=status)
    client = BackendClient(await serve(fake.app), "t" * 24)
    try:
        with pytest.raises(BackendError) as failed:
            await client.create(lab_request(), "alice", "key-2")
    finally:
        await client.aclose()
    assert failed.value.status == status
    assert len(fake.keys) == tries


async def test_without_a_key_a_start_is_sent_once(serve: Any, quick_retries: None) -> None:
    fake = FakeBackend(failures=1)
    client = BackendClient(await serve(fake.app), "t" * 24)
    try:
        with pytest.raises(BackendError):
            await client.create(lab_request(), "alice")
    finally:
        await client.aclose()
    assert fake.keys == [None]


async def test_an_unreachable_backend_is_tried_three_times(
    quick_retries: None, caplog: pytest.LogCaptureFixture
) -> None:
    client = BackendClient(f"http://127.0.0.1:{free_port()}", "t" * 24)
    try:
        with caplog.at_level(logging.WARNING, logger="lablink.spawner"):
            with pytest.raises(BackendError) as failed:
                await client.create(lab_request(), "alice", "key-3")
    finally:
        await client.aclose()
    assert failed.value.status == 503
    assert "cannot be reached" in failed.value.detail
    assert len(caplog.records) == 2
    assert all(
        "(503: The Lablink backend cannot be reached" in r.getMessage() for r in caplog.records
    )


async def test_a_start_is_not_sent_again_past_the_time_allowed(
    serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spawner.client, "START_RETRY_FIRST", 0.2)
    monkeypatch.setattr(spawner.client, "START_RETRY_WITHIN", 0.3)
    fake = FakeBackend(failures=10)
    client = BackendClient(await serve(fake.app), "t" * 24)
    try:
        with pytest.raises(BackendError):
            await client.create(lab_request(), "alice", "key-4")
    finally:
        await client.aclose()
    assert len(fake.keys) == 2  # the third would begin after 0.3 s
