"""HPC labs through the backend: the unicore driver against the development site.

The backend runs for real (uvicorn), the UNICORE development site runs as the
`lablink unicore-devsite` command, jobs run as local processes or on the
one-node Slurm cluster, and the lab is tests/fakelab.py started by the real
start script.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from backend.db import create_engine, migrate
from backend.settings import Settings
from backend.store import Store
from spawner.spawner import LablinkSpawner
from tests.helpers import site
from tests.helpers.api import BackendFactory, RunningBackend, lab_request, wait_state
from tests.helpers.devsite import (
    PASSWORD,
    PASSWORD_ENV,
    Devsite,
    job_processes,
    run_devsite,
    site_jobs,
)
from tests.helpers.labs import assert_error, stored_lab
from tests.helpers.slurm import block_the_node, scancel, squeue_ids
from tests.helpers.waiting import wait_until

pytestmark = [pytest.mark.unicore, pytest.mark.integration]


@pytest.fixture
def devsite(tmp_path: Path) -> Iterator[Devsite]:
    devsite = run_devsite(tmp_path, dict(os.environ), "--queues", "batch,devel")
    yield devsite
    devsite.stop()


@pytest.fixture
def backend_env(token_env: dict[str, str]) -> dict[str, str]:
    token_env[PASSWORD_ENV] = PASSWORD  # the backend reads the system's password from here
    return token_env


def hpc_request(user: str = "alice", **options: Any) -> dict[str, Any]:
    return lab_request(user, options={"system": "hpc", **options})


HpcBackend = Callable[..., Awaitable[tuple[Settings, RunningBackend]]]


@pytest.fixture
def hpc_backend(
    tmp_path: Path, devsite: Devsite, start_backend: BackendFactory, backend_env: dict[str, str]
) -> HpcBackend:
    """Start a backend (SQLite) whose system ``hpc`` submits to the development site."""

    async def start(
        url: str | None = None,
        lab_env: dict[str, str] | None = None,
        site_extra: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> tuple[Settings, RunningBackend]:
        system = site.unicore_system(url or devsite.url, **overrides)
        system["environment"].update(lab_env or {})
        db = f"sqlite+aiosqlite:///{tmp_path}/b.sqlite"
        doc = site.doc(tmp_path / "state", db, systems={"hpc": system}, **(site_extra or {}))
        settings = site.settings(doc)
        return settings, await start_backend(settings)

    return start


async def events(client: httpx.AsyncClient, lab_id: str) -> list[dict[str, Any]]:
    return (await client.get(f"/labs/{lab_id}/events")).json()  # type: ignore[no-any-return]


async def job_of(
    settings: Settings, lab_id: str, devsite: Devsite, owner: str = "lablink"
) -> dict[str, Any]:
    """The lab's job as the development site shows it to ``owner`` (who submitted it)."""
    handle = (await stored_lab(settings, lab_id)).handle
    with devsite.http(owner) as http:
        return http.get(handle["job"]).json()  # type: ignore[no-any-return]


# -- local processes -------------------------------------------------------------------


async def test_a_lab_runs_as_a_job_and_stops(hpc_backend: HpcBackend, devsite: Devsite) -> None:
    settings, backend = await hpc_backend()
    async with backend.client("alice") as alice:
        resp = await alice.post("/labs", json=hpc_request(runtime=5))
        assert resp.status_code == 202, resp.text
        lab = await wait_state(alice, resp.json()["id"], {"running", "failed"})
        assert lab["state"] == "running", (await events(alice, lab["id"]))[-1]
        assert (await httpx.AsyncClient().get(lab["url"] + "/user/alice/api")).status_code == 200
        job = await job_of(settings, lab["id"], devsite)
        assert job["status"] == "RUNNING"
        assert "lablink-" + lab["id"] in job["tags"]
        states = [e["state"] for e in await events(alice, lab["id"])]
        assert states[:2] == ["accepted", "submitted"] and states[-1] == "running"
        assert "starting" in states

        await alice.delete(f"/labs/{lab['id']}")
        lab = await wait_state(alice, lab["id"], {"stopped", "failed"})
        assert lab["state"] == "stopped"
        last = (await events(alice, lab["id"]))[-1]
        assert "[stdout]" in last["detail"] and "fakelab" in last["detail"]
        job = await job_of(settings, lab["id"], devsite)
        assert job["status"] == "FAILED"  # aborted
        assert job_processes(devsite) == []


async def test_a_job_that_fails_to_start_shows_its_output(hpc_backend: HpcBackend) -> None:
    _, backend = await hpc_backend(lab_env={"FAKELAB_MODE": "crash"})
    async with backend.client("alice") as alice:
        lab_id = (await alice.post("/labs", json=hpc_request())).json()["id"]
        lab = await wait_state(alice, lab_id, {"running", "failed"})
        assert lab["state"] == "failed"
        last = (await events(alice, lab_id))[-1]
        assert "exit code 3" in last["message"], last
        assert "before JupyterLab was ready" in last["message"]
        assert "ModuleNotFoundError" in last["detail"]


async def test_a_lab_whose_job_ends_by_itself_is_stopped(hpc_backend: HpcBackend) -> None:
    lab_env = {"FAKELAB_MODE": "exit-later", "FAKELAB_SECONDS": "2"}
    _, backend = await hpc_backend(lab_env=lab_env)
    async with backend.client("alice") as alice:
        lab_id = (await alice.post("/labs", json=hpc_request())).json()["id"]
        assert (await wait_state(alice, lab_id, {"running", "failed"}))["state"] == "running"
        lab = await wait_state(alice, lab_id, {"stopped", "failed"}, timeout=20)
        assert lab["state"] == "stopped" and lab["exit_status"] == 0
        assert "ended by itself" in lab["message"]


async def test_an_unreachable_site_fails_the_lab_with_a_sentence(hpc_backend: HpcBackend) -> None:
    from backend.procs import free_port

    url = f"http://127.0.0.1:{free_port()}/NOWHERE/rest/core"
    _, backend = await hpc_backend(url=url)
    async with backend.client("alice") as alice:
        lab_id = (await alice.post("/labs", json=hpc_request())).json()["id"]
        lab = await wait_state(alice, lab_id, {"running", "failed"}, timeout=15)
        assert lab["state"] == "failed"
        assert "cannot be reached through UNICORE right now" in lab["message"]


async def test_a_wrong_password_fails_the_lab_with_a_sentence(
    hpc_backend: HpcBackend, backend_env: dict[str, str]
) -> None:
    backend_env[PASSWORD_ENV] = "not-the-password-at-all"
    _, backend = await hpc_backend()
    async with backend.client("alice") as alice:
        lab_id = (await alice.post("/labs", json=hpc_request())).json()["id"]
        lab = await wait_state(alice, lab_id, {"running", "failed"})
        assert lab["state"] == "failed"
        assert "did not accept your login or account" in lab["message"]
        assert "not-the-password" not in lab["message"]


async def test_a_lab_address_outside_the_allowed_hosts_is_refused(
    hpc_backend: HpcBackend, devsite: Devsite
) -> None:
    settings, backend = await hpc_backend(lab_hosts=["node*"])
    async with backend.client("alice") as alice:
        lab_id = (await alice.post("/labs", json=hpc_request())).json()["id"]
        lab = await wait_state(alice, lab_id, {"running", "failed"})
        assert lab["state"] == "failed"
        assert "address this site does not allow" in lab["message"]
        job = await job_of(settings, lab_id, devsite)
        assert job["status"] == "FAILED"
        assert job_processes(devsite) == []


async def test_other_users_cannot_see_or_stop_an_hpc_lab(hpc_backend: HpcBackend) -> None:
    _, backend = await hpc_backend()
    async with backend.client("alice") as alice, backend.client("bob") as bob:
        lab_id = (await alice.post("/labs", json=hpc_request())).json()["id"]
        await wait_state(alice, lab_id, {"running"})
        assert_error(await bob.get(f"/labs/{lab_id}"), 404, lab_id)
        assert_error(await bob.delete(f"/labs/{lab_id}"), 404, lab_id)
        assert_error(await bob.get(f"/labs/{lab_id}/events"), 404)
        assert (await bob.get("/labs")).json() == []
        forged = hpc_request("alice")
        assert_error(await bob.post("/labs", json=forged), 403, "another user")
        assert (await alice.get(f"/labs/{lab_id}")).json()["state"] == "running"
        await alice.delete(f"/labs/{lab_id}")
        await wait_state(alice, lab_id, {"stopped"})


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"partition": "huge"}, ["Partition: 'huge'", "choose batch or devel"]),
        ({"account": "bob"}, ["Account: 'bob'", "choose alice"]),
        ({"runtime": 61}, ["Run time: 61 minutes", "choose 1 to 60 minutes"]),
        ({"nodes": 2}, ["Nodes: 2 is more than partition batch allows; choose 1."]),
    ],
)
async def test_options_not_offered_change_nothing(
    hpc_backend: HpcBackend, devsite: Devsite, options: dict[str, Any], words: list[str]
) -> None:
    _, backend = await hpc_backend()
    async with backend.client("alice") as alice:
        assert_error(await alice.post("/labs", json=hpc_request(**options)), 422, *words)
        assert (await alice.get("/labs")).json() == []
    assert site_jobs(devsite) == []


async def test_the_catalog_shows_the_users_accounts(hpc_backend: HpcBackend) -> None:
    _, backend = await hpc_backend()
    async with backend.client("alice") as alice, backend.client("mallory") as mallory:
        [system] = (await alice.get("/catalog")).json()["systems"]
        assert system["accounts"] == ["alice"] and system["projects"] == ["p1"]
        assert [p["name"] for p in system["partitions"]] == ["batch", "devel"]
        assert (await mallory.get("/catalog")).json()["systems"] == []


# -- Slurm -------------------------------------------------------------------------------


@pytest.fixture
def slurm_devsite(tmp_path: Path, slurm: Any) -> Iterator[Devsite]:
    devsite = run_devsite(tmp_path, slurm.env, "--slurm")
    yield devsite
    devsite.stop()


@pytest.mark.slurm
@pytest.mark.parametrize("restart", [False, True], ids=["plain", "backend-restart"])
async def test_a_slurm_lab_waits_in_the_queue_then_runs(
    tmp_path: Path,
    slurm: Any,
    slurm_devsite: Devsite,
    start_backend: BackendFactory,
    backend_env: dict[str, str],
    database_url: str,
    restart: bool,
) -> None:
    system = site.unicore_system(slurm_devsite.url)
    settings = site.settings(site.doc(tmp_path / "state", database_url, systems={"hpc": system}))
    backend = await start_backend(settings)
    blocker = block_the_node(slurm)
    try:
        async with backend.client("alice") as alice:
            lab_id = (await alice.post("/labs", json=hpc_request(partition="batch"))).json()["id"]
            lab = await wait_state(alice, lab_id, {"queued", "failed"}, timeout=20)
            assert lab["state"] == "queued", lab
            for _ in range(100):  # sbatch's job id follows the QUEUED status shortly
                lab = (await alice.get(f"/labs/{lab_id}")).json()
                if "batch job" in lab["message"]:
                    break
                await asyncio.sleep(0.05)
            job = await job_of(settings, lab_id, slurm_devsite)
            batch_id = job["batchSystemID"]
            assert batch_id in squeue_ids(slurm)
            assert (
                lab["message"] == f"Waiting in the queue of partition batch (batch job {batch_id})."
            )
        if restart:
            await backend.stop()
        scancel(slurm, blocker)
        if restart:
            backend = await start_backend(settings)
        async with backend.client("alice") as alice:
            lab = await wait_state(alice, lab_id, {"running", "failed"}, timeout=30)
            assert lab["state"] == "running", (await events(alice, lab_id))[-1]
            assert (
                await httpx.AsyncClient().get(lab["url"] + "/user/alice/api")
            ).status_code == 200
            await alice.delete(f"/labs/{lab_id}")
            lab = await wait_state(alice, lab_id, {"stopped", "failed"}, timeout=30)
            assert lab["state"] == "stopped"
        for _ in range(50):
            if batch_id not in squeue_ids(slurm):
                break
            await asyncio.sleep(0.1)
        assert batch_id not in squeue_ids(slurm)
    finally:
        scancel(slurm, blocker)


async def test_a_job_whose_url_was_never_stored_is_found_by_its_tag(
    hpc_backend: HpcBackend, devsite: Devsite, start_backend: BackendFactory
) -> None:
    """The backend died after UNICORE created the job but before it stored the job's
    URL: the restarted backend finds the job by the tag it stored first."""
    settings, backend = await hpc_backend()
    async with backend.client("alice") as alice:
        lab_id = (await alice.post("/labs", json=hpc_request())).json()["id"]
        await wait_state(alice, lab_id, {"running"})
    await backend.stop()
    handle = (await stored_lab(settings, lab_id)).handle
    engine = create_engine(settings.resolved_database_url)
    try:
        await Store(engine).save_handle(lab_id, {"tag": handle["tag"], "prefix": handle["prefix"]})
    finally:
        await engine.dispose()

    backend = await start_backend(settings)
    async with backend.client("alice") as alice:
        lab = await wait_state(alice, lab_id, {"running", "failed", "stopped"})
        assert lab["state"] == "running", lab
        assert (await stored_lab(settings, lab_id)).handle["job"] == handle["job"]
        assert len(site_jobs(devsite)) == 1
        await alice.delete(f"/labs/{lab_id}")
        await wait_state(alice, lab_id, {"stopped"})
    assert job_processes(devsite) == []


async def test_a_lab_accepted_but_never_submitted_fails_cleanly_after_a_restart(
    tmp_path: Path, devsite: Devsite, start_backend: BackendFactory, backend_env: dict[str, str]
) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path}/b.sqlite"
    system = site.unicore_system(devsite.url)
    settings = site.settings(site.doc(tmp_path / "state", db, systems={"hpc": system}))
    engine = create_engine(settings.resolved_database_url)
    await migrate(engine)
    try:
        lab = await Store(engine).create_lab(
            user_name="alice", server_name="", system="hpc", vo=None,
            options={"system": "hpc", "account": "alice", "project": "p1", "partition": "batch",
                     "nodes": 1, "runtime": 10, "gpus": 0},
            message="Lab accepted for system hpc.",
        )  # fmt: skip
        await Store(engine).save_handle(lab.id, {"tag": f"lablink-{lab.id}", "prefix": "/u/"})
    finally:
        await engine.dispose()
    backend = await start_backend(settings)
    async with backend.client("alice") as alice:
        failed = await wait_state(alice, lab.id, {"failed", "running"})
        assert failed["state"] == "failed"
        assert "please start it again" in failed["message"]
    assert site_jobs(devsite) == []


async def test_bearer_systems_use_the_persons_token(
    hpc_backend: HpcBackend, tmp_path: Path, devsite: Devsite
) -> None:
    _, backend = await hpc_backend(auth={"method": "bearer"})
    async with backend.client("alice") as alice:
        body = hpc_request()
        body["user"]["access_token"] = devsite.token  # what the hub hands over from auth_state
        lab_id = (await alice.post("/labs", json=body)).json()["id"]
        lab = await wait_state(alice, lab_id, {"running", "failed"})
        assert lab["state"] == "running", lab
        with devsite.http("alice") as http:  # the job is alice's own at the site
            assert len(http.get("/jobs").json()["jobs"]) == 1
        await alice.delete(f"/labs/{lab_id}")
        assert (await wait_state(alice, lab_id, {"stopped", "failed"}))["state"] == "stopped"

        without = (await alice.post("/labs", json=hpc_request())).json()["id"]
        lab = await wait_state(alice, without, {"running", "failed"})
        assert lab["state"] == "failed" and "needs your login token" in lab["message"]
    assert devsite.token not in (tmp_path / "devsite.log").read_text()


@pytest.mark.slurm
async def test_a_job_given_up_in_the_queue_is_cancelled(
    tmp_path: Path,
    slurm: Any,
    slurm_devsite: Devsite,
    start_backend: BackendFactory,
    backend_env: dict[str, str],
) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path}/b.sqlite"
    system = site.unicore_system(slurm_devsite.url, queue_timeout=1.5)
    settings = site.settings(site.doc(tmp_path / "state", db, systems={"hpc": system}))
    backend = await start_backend(settings)
    blocker = block_the_node(slurm)
    try:
        async with backend.client("alice") as alice:
            lab_id = (await alice.post("/labs", json=hpc_request())).json()["id"]
            await wait_state(alice, lab_id, {"queued"})
            lab = await wait_state(alice, lab_id, {"failed", "running"}, timeout=20)
            assert lab["state"] == "failed"
            assert "waited in the queue" in lab["message"]
        batch_id = (await job_of(settings, lab_id, slurm_devsite))["batchSystemID"]
        await wait_until(lambda: batch_id not in squeue_ids(slurm), 10, "the job to go")
    finally:
        scancel(slurm, blocker)


class HubUserWithToken:
    """What the spawner needs of JupyterHub's user: a name and an auth_state."""

    admin = False
    groups: list[Any] = []

    def __init__(self, name: str, token: str | None):
        self.name = name
        self.token = token

    async def get_auth_state(self) -> dict[str, Any]:
        return {"access_token": self.token} if self.token else {}


# without the site's key (SQLite allows it) the access token lives in memory only
UNSEALED = {"replicas": {"key_env": "LABLINK_TEST_NO_SUCH_KEY"}}


@pytest.mark.parametrize("hub_polls", [True, False], ids=["hub-hands-token", "no-token"])
async def test_a_bearer_lab_is_followed_after_a_restart_once_the_hub_polls(
    hpc_backend: HpcBackend,
    devsite: Devsite,
    start_backend: BackendFactory,
    hub_polls: bool,
) -> None:
    settings, backend = await hpc_backend(
        auth={"method": "bearer"}, token_wait=4, site_extra=UNSEALED
    )
    spawner = LablinkSpawner(
        user=HubUserWithToken("alice", devsite.token),
        backend_url=backend.url,
        backend_token=backend.tokens["hub"],
    )
    async with backend.client("alice") as alice:
        body = hpc_request()
        body["user"]["access_token"] = devsite.token
        lab_id = (await alice.post("/labs", json=body)).json()["id"]
        await wait_state(alice, lab_id, {"running"})
    await backend.stop()  # the token held in memory is gone with it
    backend = await start_backend(settings, port=int(backend.url.rsplit(":", 1)[1]))
    spawner.lab_id = lab_id
    async with backend.client("alice") as alice:
        await asyncio.sleep(0.5)
        assert (await alice.get(f"/labs/{lab_id}")).json()["state"] == "running"
        if not hub_polls:
            lab = await wait_state(alice, lab_id, {"failed"}, timeout=10)
            assert "without your login token" in lab["message"]
            return
        assert await spawner.poll() is None  # the poll hands the token over
        await asyncio.sleep(4.5)  # past token_wait: the lab is followed, not given up
        assert (await alice.get(f"/labs/{lab_id}")).json()["state"] == "running"
        await spawner.stop()
        assert (await alice.get(f"/labs/{lab_id}")).json()["state"] == "stopped"
    assert (await job_of(settings, lab_id, devsite, "alice"))["status"] == "FAILED"  # aborted
    assert job_processes(devsite) == []


async def test_a_bearer_lab_is_followed_after_a_restart_with_its_sealed_token(
    hpc_backend: HpcBackend, devsite: Devsite, start_backend: BackendFactory
) -> None:
    """With the site's key the access token is stored sealed: a restarted backend (or
    another replica) follows the lab's job without waiting for the hub's next poll."""
    settings, backend = await hpc_backend(auth={"method": "bearer"}, token_wait=1)
    async with backend.client("alice") as alice:
        body = hpc_request()
        body["user"]["access_token"] = devsite.token
        lab_id = (await alice.post("/labs", json=body)).json()["id"]
        await wait_state(alice, lab_id, {"running"})
    await backend.stop()
    backend = await start_backend(settings, port=int(backend.url.rsplit(":", 1)[1]))
    async with backend.client("alice") as alice:
        await asyncio.sleep(2.5)  # past token_wait, and no poll handed a token
        assert (await alice.get(f"/labs/{lab_id}")).json()["state"] == "running"
        assert (await alice.delete(f"/labs/{lab_id}")).status_code == 202
        lab = await wait_state(alice, lab_id, {"stopped", "failed"})
    assert lab["state"] == "stopped", lab
    assert (await job_of(settings, lab_id, devsite, "alice"))["status"] == "FAILED"  # aborted
    assert job_processes(devsite) == []
