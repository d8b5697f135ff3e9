"""The backend's peers and the backend itself: PostgreSQL (a fresh database per test),
the site settings and tokens of a test, the backend as a real HTTP server, and the
check that no lab process outlives its test.

A peer that cannot be had fails the test in CI (CI=true) and skips it on a
developer machine.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import uvicorn

from backend.app import create_app
from backend.procs import free_port
from backend.settings import Settings
from tests.helpers import site
from tests.helpers.api import BackendFactory, RunningBackend
from tests.helpers.labs import fakelab_processes, kill_fakelabs
from tests.helpers.peers import peer_missing

PG_ADMIN_URL = os.environ.get("LABLINK_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")

# -- PostgreSQL ------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    async def probe() -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
        await conn.close()

    try:
        asyncio.run(probe())
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        peer_missing("PostgreSQL at 127.0.0.1:5432", repr(exc))
    return PG_ADMIN_URL


@pytest.fixture
async def postgres_url(postgres_admin_url: str) -> AsyncIterator[str]:
    """A fresh, empty database for one test, dropped afterwards."""
    name = f"lablink_test_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(postgres_admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base = postgres_admin_url.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    conn = await asyncpg.connect(postgres_admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Every backend test runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'backend.sqlite'}"
    return str(request.getfixturevalue("postgres_url"))


# -- site settings ---------------------------------------------------------------


@pytest.fixture
def tokens() -> dict[str, str]:
    return {
        "hub": secrets.token_urlsafe(24),
        "admin": secrets.token_urlsafe(24),
        "metrics": secrets.token_urlsafe(24),
    }


@pytest.fixture
def token_env(tokens: dict[str, str]) -> dict[str, str]:
    # the state key too, so that every backend a test starts seals what a start needs
    return {
        site.HUB_TOKEN_ENV: tokens["hub"],
        site.ADMIN_TOKEN_ENV: tokens["admin"],
        site.STATE_KEY_ENV: site.STATE_KEY,
        "LABLINK_METRICS_TOKEN": tokens["metrics"],  # the site's metrics.token_env
    }


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return site.settings(site.doc(tmp_path / "state", database_url))


# -- the backend as a real HTTP server ---------------------------------------------


@pytest.fixture
async def start_backend(
    token_env: dict[str, str], tokens: dict[str, str]
) -> AsyncIterator[BackendFactory]:
    """Start (and, at the end, stop) backends; call again to restart on the same database."""
    running: list[RunningBackend] = []

    async def start(settings: Settings, port: int | None = None) -> RunningBackend:
        app = create_app(settings, token_env)
        port = port or free_port()
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=1,
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        for _ in range(300):
            if server.started or task.done():
                break
            await asyncio.sleep(0.02)
        if not server.started:
            await task  # raises what broke it
            raise RuntimeError("the backend did not start")
        backend = RunningBackend(f"http://127.0.0.1:{port}", server, task, tokens)
        running.append(backend)
        return backend

    yield start
    for backend in running:
        if not backend.task.done():
            await backend.stop()


@pytest.fixture
async def backend(start_backend: BackendFactory, settings: Settings) -> RunningBackend:
    return await start_backend(settings)


@pytest.fixture(autouse=True)
def _kill_leftover_fakelabs() -> Iterator[None]:
    """Set up first, torn down last: after no_leftover_processes has had its say, so
    one failing test cannot make the next ones fail too."""
    yield
    kill_fakelabs()


@pytest.fixture
def no_leftover_processes() -> Iterator[None]:
    """Fail a test that leaves a fakelab or lab process behind."""
    yield
    leftovers = fakelab_processes()
    assert not leftovers, f"processes left behind: {leftovers}"
