"""Fixtures shared by the suite: peers (PostgreSQL), the backend as a real
HTTP server, and site settings for tests.

A peer that cannot be had fails the test in CI (CI=true) and skips it on a
developer machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn
import yaml

from backend.app import create_app
from backend.procs import free_port
from backend.settings import Settings, parse_settings
from tests.helpers.peers import IN_CI, peer_missing  # noqa: F401 (tests import it from here)
from tests.helpers.waiting import wait_until  # noqa: F401 (tests import it from here)

pytest_plugins = ["tests.plugins.slurmrest", "tests.plugins.contract", "tests.plugins.browser"]
PG_ADMIN_URL = os.environ.get("LABLINK_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
from tests.helpers.labs import FAKELAB  # noqa: E402

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
    return {"hub": secrets.token_urlsafe(24), "admin": secrets.token_urlsafe(24)}


@pytest.fixture
def token_env(tokens: dict[str, str]) -> dict[str, str]:
    return {"LABLINK_TEST_HUB_TOKEN": tokens["hub"], "LABLINK_TEST_ADMIN_TOKEN": tokens["admin"]}


def site_dict(state_dir: Path, database_url: str, **systems: dict[str, Any]) -> dict[str, Any]:
    return {
        "site_name": "Lablink tests",
        "state_dir": str(state_dir),
        "database_url": database_url,
        "tokens": [
            {"name": "hub", "secret_env": "LABLINK_TEST_HUB_TOKEN", "role": "hub"},
            {"name": "admin", "secret_env": "LABLINK_TEST_ADMIN_TOKEN", "role": "admin"},
        ],
        "default_system": "local",
        "systems": systems
        or {
            "local": {
                "kind": "local",
                "display_name": "Test machine",
                "command": FAKELAB,
                "start_timeout": 20,
                "stop_grace": 3,
            }
        },
    }


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return parse_settings(yaml.safe_dump(site_dict(tmp_path / "state", database_url)), "test")


# -- the backend as a real HTTP server ---------------------------------------------


@dataclass
class RunningBackend:
    url: str
    server: uvicorn.Server
    task: asyncio.Task[None]
    tokens: dict[str, str]

    def client(self, user: str | None = "alice", *, admin_token: bool = False) -> httpx.AsyncClient:
        token = self.tokens["admin" if admin_token else "hub"]
        headers = {"Authorization": f"Bearer {token}"}
        if user is not None:
            headers["X-Lablink-User"] = user
        return httpx.AsyncClient(
            base_url=f"{self.url}/api/v1", headers=headers, timeout=30, trust_env=False
        )

    async def stop(self) -> None:
        self.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


BackendFactory = Callable[..., Awaitable[RunningBackend]]


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


async def wait_state(
    client: httpx.AsyncClient, lab_id: str, states: set[str], timeout: float = 30
) -> dict[str, Any]:
    """Poll a lab until it is in one of ``states``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        lab = (await client.get(f"/labs/{lab_id}")).json()
        if lab["state"] in states:
            return lab  # type: ignore[no-any-return]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"lab {lab_id} stayed {lab['state']}, wanted {states}")
        await asyncio.sleep(0.05)


def lab_request(user: str = "alice", server_name: str = "", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "user": {"name": user, "groups": [], "admin": False},
        "server_name": server_name,
        "options": {},
        "env": {
            "JUPYTERHUB_API_TOKEN": "secret-hub-api-token-" + user,
            "JUPYTERHUB_SERVICE_PREFIX": f"/user/{user}/{server_name + '/' if server_name else ''}",
        },
    }
    body.update(extra)
    return body


@pytest.fixture(autouse=True)
def _kill_leftover_fakelabs() -> Iterator[None]:
    """Set up first, torn down last: after no_leftover_processes has had its say, so
    one failing test cannot make the next ones fail too."""
    from tests.helpers.labs import kill_fakelabs

    yield
    kill_fakelabs()


@pytest.fixture
def no_leftover_processes() -> Iterator[None]:
    """Fail a test that leaves a fakelab or lab process behind."""
    from tests.helpers.labs import fakelab_processes

    yield
    leftovers = fakelab_processes()
    assert not leftovers, f"processes left behind: {leftovers}"


# -- Slurm: the one-node cluster that .ci/peers.sh starts -------------------------

SLURM_DIR = Path(os.environ.get("LABLINK_SLURM_DIR", "/tmp/lablink-slurm"))


@dataclass(frozen=True)
class SlurmCluster:
    """Where the cluster is: run Slurm commands with ``env`` (it sets SLURM_CONF)."""

    conf: str
    env: dict[str, str]


@pytest.fixture(scope="session")
def slurm() -> SlurmCluster:
    what = "Slurm (one-node cluster from .ci/peers.sh)"
    conf = SLURM_DIR / "slurm.conf"
    env = {**os.environ, "SLURM_CONF": str(conf)}
    why = ""
    if not conf.is_file():
        why = f"no {conf} (run `make slurm-up`)"
    else:
        try:
            result = subprocess.run(
                ["sinfo", "--noheader", "--format=%T"],
                env=env,
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            why = f"sinfo: {exc!r}"
        else:
            if result.returncode != 0 or not result.stdout.strip():
                why = f"sinfo exited {result.returncode}: {result.stderr.strip()[-300:]}"
    if why:
        peer_missing(what, why)
    return SlurmCluster(str(conf), env)


def squeue_ids(slurm: SlurmCluster) -> set[str]:
    """The ids of the jobs squeue knows now (pending, running, completing)."""
    result = subprocess.run(
        ["squeue", "--noheader", "--format=%i"],
        env=slurm.env,
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    return {line.strip() for line in result.stdout.splitlines() if line.strip()}


def block_the_node(slurm: SlurmCluster) -> str:
    """Submit a job that takes the whole node, so that the next job waits in the queue;
    return its id (end it with ``scancel``)."""
    out = subprocess.run(
        ["sbatch", "--parsable", "--exclusive", "--partition=batch", "--time=5",
         "--job-name=blocker", "--output=/dev/null", "--wrap", "sleep 300"],
        env=slurm.env, capture_output=True, text=True, check=True, timeout=10,
    )  # fmt: skip
    return out.stdout.strip().split(";")[0]


def scancel(slurm: SlurmCluster, job_id: str) -> None:
    subprocess.run(["scancel", job_id], env=slurm.env, check=False, timeout=10)
