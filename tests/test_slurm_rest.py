"""Kind ``slurm``: labs as Slurm batch jobs through the real slurmrestd (from Debian's
package, started by .ci/peers.sh next to the one-node cluster), with a JWT per
account minted from the cluster's key. The backend runs for real (uvicorn); the
lab is tests/fakelab.py, run as the person's account by the start script."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import pwd
import subprocess
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from backend.db import create_engine
from backend.settings import Settings
from backend.store import Store
from backend.systems.slurm import jobs
from backend.systems.slurm.client import SlurmClient, SlurmRefused, SlurmUnavailable
from backend.systems.slurm.tokens import Tokens, mint
from tests.helpers import site
from tests.helpers.api import BackendFactory, RunningBackend, lab_request, wait_state
from tests.helpers.labs import fakelab_processes, process_environment, stored_lab
from tests.helpers.slurm import SlurmCluster, SlurmRest, block_the_node, scancel

pytestmark = [pytest.mark.slurm_rest, pytest.mark.slurm, pytest.mark.integration]

SCRIPT = "#!/bin/bash\n"


def claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))  # type: ignore[no-any-return]


async def until(
    look: Callable[[], Awaitable[Any]], ok: Callable[[Any], bool], timeout: float
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await look()
        if ok(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still {value!r} after {timeout} s")
        await asyncio.sleep(0.1)


def job_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "lablink-test",
        "partition": "batch",
        "time_limit": 5,
        "current_working_directory": "/tmp",
        "standard_output": "/dev/null",
        "environment": {"PATH": "/usr/bin:/bin"},
    }
    body.update(changes)
    return body


# -- the peer, the tokens and the client -------------------------------------------


def test_a_minted_token_has_the_claims_scontrol_gives(
    slurm: SlurmCluster, slurmrest: SlurmRest
) -> None:
    out = subprocess.run(
        ["scontrol", "token", "username=lablink-alice", "lifespan=300"],
        env=slurm.env, capture_output=True, text=True, check=True, timeout=10,
    ).stdout  # fmt: skip
    theirs = claims(out.strip().split("=", 1)[1])
    ours = claims(slurmrest.token("lablink-alice", 300))
    assert set(theirs) == set(ours) == {"iat", "exp", "sun"}
    assert ours["sun"] == theirs["sun"] == "lablink-alice"
    assert ours["exp"] - ours["iat"] == 300
    tokens = Tokens(slurmrest.key_file.read_bytes(), 600)
    assert tokens.token("a") == tokens.token("a") != tokens.token("b")
    assert repr(tokens) == "Tokens(lifespan=600, users=2)"


async def test_a_job_runs_as_the_account_with_its_environment(
    slurmrest: SlurmRest, slurm_http: httpx.AsyncClient, tmp_path: Path
) -> None:
    out = Path("/tmp") / f"lablink-test-{tmp_path.name}.out"  # lablink-alice may write there
    client = slurmrest.client(slurm_http, "lablink-alice")
    job_id = await client.submit(
        SCRIPT + 'id -un; echo "colour=$COLOUR"; exit 3',
        job_body(environment={"COLOUR": "it's $(red)", "PATH": "/usr/bin:/bin"},
                 standard_output=str(out)),
    )  # fmt: skip
    job = await until(lambda: client.job(job_id), lambda j: jobs.job_state(j) == "FAILED", 20)
    assert jobs.exit_code(job) == 3 and job["user_name"] == "lablink-alice"
    assert (await asyncio.to_thread(out.read_text)).split() == [
        "lablink-alice",
        "colour=it's",
        "$(red)",
    ]
    out.unlink()


async def test_cancel_ends_a_running_job_and_may_be_repeated(
    slurmrest: SlurmRest, slurm_http: httpx.AsyncClient
) -> None:
    client = slurmrest.client(slurm_http, "lablink-bob")
    job_id = await client.submit(SCRIPT + "sleep 300", job_body())
    await until(lambda: client.job(job_id), lambda j: jobs.job_state(j) == "RUNNING", 20)
    await client.cancel(job_id)
    await client.cancel(job_id)
    job = await until(
        lambda: client.job(job_id), lambda j: jobs.lab_state_for(jobs.job_state(j)) is None, 20
    )
    assert jobs.job_state(job) in ("CANCELLED", "COMPLETING")


async def test_refusals_and_unknown_jobs(
    slurmrest: SlurmRest, slurm_http: httpx.AsyncClient
) -> None:
    client = slurmrest.client(slurm_http, "lablink-alice")
    assert await client.job("999999") is None
    await client.cancel("999999")  # idempotent: nothing to cancel is fine
    with pytest.raises(SlurmRefused, match="Invalid partition name specified") as err:
        await client.submit(SCRIPT + "true", job_body(partition="nope"))
    assert err.value.status == 500 and err.value.number == 2000
    with pytest.raises(SlurmRefused, match="Unknown key") as err:
        await client.submit(SCRIPT + "true", job_body(colour="red"))
    assert err.value.status == 400


async def test_a_token_for_someone_else_or_expired_is_not_taken(
    slurmrest: SlurmRest, slurm_http: httpx.AsyncClient
) -> None:
    key = slurmrest.key_file.read_bytes()
    for user, token in (
        ("lablink-bob", slurmrest.token("lablink-alice")),
        ("lablink-alice", mint(key, "lablink-alice", 60, now=time.time() - 120)),
        ("lablink-alice", mint(b"x" * 32, "lablink-alice", 60)),
    ):
        client = SlurmClient(slurm_http, slurmrest.url, user, token, retry_for=0)
        with pytest.raises(SlurmUnavailable):
            await client.jobs()
        assert token not in repr(client)


async def test_an_unreachable_slurmrestd_is_unavailable_after_the_budget(
    slurmrest: SlurmRest, slurm_http: httpx.AsyncClient
) -> None:
    from backend.procs import free_port

    client = SlurmClient(
        slurm_http, f"http://127.0.0.1:{free_port()}", "lablink-alice", "t", retry_for=1
    )
    started = time.monotonic()
    with pytest.raises(SlurmUnavailable, match="ConnectError"):
        await client.job("1")
    assert 0.9 < time.monotonic() - started < 5


async def test_a_job_sees_and_sets_its_own_comment(
    slurmrest: SlurmRest, slurm_http: httpx.AsyncClient
) -> None:
    client = slurmrest.client(slurm_http, "lablink-alice")
    script = (
        SCRIPT
        + 'scontrol update JobId="$SLURM_JOB_ID" Comment=\'{"host": "n1", "port": 4242}\'; sleep 30'
    )
    job_id = await client.submit(script, job_body(environment={"PATH": "/usr/bin:/bin"}))
    job = await until(lambda: client.job(job_id), lambda j: j.get("comment"), 20)
    assert jobs.parse_comment(job["comment"]).address == b'{"host": "n1", "port": 4242}'
    await client.cancel(job_id)


# -- labs through the backend ---------------------------------------------------------


def lab_pids(lab_id: str) -> list[int]:
    """The lab processes (fakelab) of the lab ``lab_id`` on this machine."""
    return [
        pid
        for pid in fakelab_processes()
        if process_environment(pid).get("LABLINK_LAB_ID") == lab_id
    ]


async def save_handle(settings: Settings, lab_id: str, handle: dict[str, Any]) -> None:
    engine = create_engine(settings.resolved_database_url)
    try:
        await Store(engine).save_handle(lab_id, handle)
    finally:
        await engine.dispose()


SlurmBackend = Callable[..., Awaitable[tuple[Settings, RunningBackend]]]


@pytest.fixture
def slurm_backend(
    tmp_path: Path, slurm: SlurmCluster, slurmrest: SlurmRest, start_backend: BackendFactory
) -> SlurmBackend:
    async def start(**overrides: Any) -> tuple[Settings, RunningBackend]:
        cluster = site.slurm_system(slurmrest.url, slurmrest.key_file, **overrides)
        doc = site.doc(
            tmp_path / "state",
            f"sqlite+aiosqlite:///{tmp_path}/b.sqlite",
            systems={"cluster": cluster},
        )
        settings = site.settings(doc)
        return settings, await start_backend(settings)

    return start


def cluster_request(
    user: str = "alice", env: dict[str, str] | None = None, **options: Any
) -> dict[str, Any]:
    body = lab_request(user, options={"system": "cluster", **options})
    body["env"].update(env or {})
    return body


async def events(client: httpx.AsyncClient, lab_id: str) -> list[dict[str, Any]]:
    return (await client.get(f"/labs/{lab_id}/events")).json()  # type: ignore[no-any-return]


async def test_a_lab_runs_as_a_slurm_job_of_the_persons_account_and_stops(
    slurm_backend: SlurmBackend, slurmrest: SlurmRest, slurm_http: httpx.AsyncClient
) -> None:
    settings, backend = await slurm_backend()
    async with backend.client("alice") as alice:
        resp = await alice.post("/labs", json=cluster_request(gpus=2))
        assert resp.status_code == 202, resp.text
        lab = await wait_state(alice, resp.json()["id"], {"running"})
        answer = await slurm_http.get(lab["url"] + "/user/alice/api", timeout=5)
        assert answer.status_code == 200
        handle = (await stored_lab(settings, lab["id"])).handle
        client = slurmrest.client(slurm_http, "lablink-alice")
        job = await client.job(handle["job"])
        assert job is not None and job["name"] == "lablink"  # alice's default lab
        assert job["user_name"] == "lablink-alice" and job["account"] == "p1"
        assert job["partition"] == "batch" and job["time_limit"] == 10
        comment = jobs.parse_comment(job["comment"])
        assert comment.address is not None and comment.lab == lab["id"]
        # the lab runs in alice's home, with her login shell for its terminals
        account = pwd.getpwnam("lablink-alice")
        [pid] = lab_pids(lab["id"])
        assert os.readlink(f"/proc/{pid}/cwd") == account.pw_dir
        assert process_environment(pid)["SHELL"] == account.pw_shell
        said = [e["message"] for e in await events(alice, lab["id"])]
        assert any(f"Batch job {handle['job']} runs on" in m for m in said), said
        await alice.delete(f"/labs/{lab['id']}")
        await wait_state(alice, lab["id"], {"stopped"})
    job = await client.job(handle["job"])
    assert job is None or jobs.job_state(job) in ("CANCELLED", "COMPLETING", "COMPLETED")
    with pytest.raises(httpx.TransportError):
        await slurm_http.get(lab["url"] + "/user/alice/api", timeout=2)


async def test_a_job_that_fails_to_start_shows_the_end_of_its_output(
    slurm_backend: SlurmBackend,
) -> None:
    _, backend = await slurm_backend()
    async with backend.client("bob") as bob:
        lab_id = (
            await bob.post("/labs", json=cluster_request("bob", {"FAKELAB_MODE": "crash"}))
        ).json()["id"]
        lab = await wait_state(bob, lab_id, {"failed"})
        last = (await events(bob, lab_id))[-1]
    assert lab["message"].startswith(
        "The job ended (FAILED, exit code 3) before JupyterLab was ready"
    )
    assert "no module named 'jupyterlab'" in last["detail"] and last["detail"].startswith(
        "[output]"
    )


async def test_a_lab_waits_in_the_queue_and_events_follow_slurm_within_a_second(
    slurm_backend: SlurmBackend,
    slurm: SlurmCluster,
    slurmrest: SlurmRest,
    slurm_http: httpx.AsyncClient,
) -> None:
    _, backend = await slurm_backend()
    blocker = block_the_node(slurm)
    try:
        async with backend.client("alice") as alice:
            lab_id = (await alice.post("/labs", json=cluster_request())).json()["id"]
            lab = await wait_state(alice, lab_id, {"queued"})
            assert "Waiting in the queue of partition batch" in lab["message"]
            client = slurmrest.client(slurm_http, "lablink-alice")
            tagged = [j for j in await client.jobs() if jobs.finds(j, lab_id)]
            scancel(slurm, blocker)
            seen_running = None
            while seen_running is None:
                job = await client.job(str(tagged[0]["job_id"]))
                if job and jobs.job_state(job) == "RUNNING":
                    seen_running = time.time()
                await asyncio.sleep(0.05)
            await wait_state(alice, lab_id, {"running"})
            starting = next(e for e in await events(alice, lab_id) if e["state"] == "starting")
            reported = starting["time"]
    finally:
        scancel(slurm, blocker)
    lag = datetime.fromisoformat(reported).timestamp() - seen_running
    assert lag < 1.0, f"the starting event came {lag:.2f} s after slurmrestd showed RUNNING"
    async with backend.client("alice") as alice:
        await alice.delete(f"/labs/{lab_id}")
        await wait_state(alice, lab_id, {"stopped"})


async def test_a_lab_whose_job_ends_by_itself_is_stopped(slurm_backend: SlurmBackend) -> None:
    _, backend = await slurm_backend()
    async with backend.client("alice") as alice:
        env = {"FAKELAB_MODE": "exit-later", "FAKELAB_SECONDS": "3"}
        lab_id = (await alice.post("/labs", json=cluster_request(env=env))).json()["id"]
        await wait_state(alice, lab_id, {"running"})
        lab = await wait_state(alice, lab_id, {"stopped"}, timeout=30)
    assert lab["message"].startswith("The lab ended by itself")


async def test_a_running_lab_is_followed_again_after_a_restart_of_the_backend(
    slurm_backend: SlurmBackend, start_backend: BackendFactory
) -> None:
    settings, backend = await slurm_backend()
    async with backend.client("alice") as alice:
        lab_id = (await alice.post("/labs", json=cluster_request())).json()["id"]
        lab = await wait_state(alice, lab_id, {"running"})
    port = int(backend.url.rsplit(":", 1)[1])
    await backend.stop()
    backend = await start_backend(settings, port=port)
    async with backend.client("alice") as alice:
        await asyncio.sleep(1)
        again = (await alice.get(f"/labs/{lab_id}")).json()
        assert again["state"] == "running" and again["url"] == lab["url"]
        await alice.delete(f"/labs/{lab_id}")
        await wait_state(alice, lab_id, {"stopped"})


async def test_a_lab_whose_job_id_was_never_stored_finds_its_job_by_its_comment(
    slurm_backend: SlurmBackend,
    start_backend: BackendFactory,
    slurmrest: SlurmRest,
    slurm_http: httpx.AsyncClient,
) -> None:
    """A backend that stopped between submitting and storing the job's id: after its
    restart the lab's job is found by the lab id in its comment (its name is the lab's,
    shared by other labs of that name), followed, and not submitted a second time."""
    settings, backend = await slurm_backend()
    async with backend.client("alice") as alice:
        body = lab_request("alice", "my~notes", options={"system": "cluster"})
        lab_id = (await alice.post("/labs", json=body)).json()["id"]
        lab = await wait_state(alice, lab_id, {"running"})
    port = int(backend.url.rsplit(":", 1)[1])
    await backend.stop()
    handle = (await stored_lab(settings, lab_id)).handle
    await save_handle(settings, lab_id, {k: v for k, v in handle.items() if k != "job"})
    client = slurmrest.client(slurm_http, "lablink-alice")
    # another lab's job of the same name does not confuse it
    decoy = await client.submit(
        SCRIPT + "sleep 60", job_body(name="lablink-my-notes", comment=jobs.tag_comment("x"))
    )
    try:
        backend = await start_backend(settings, port=port)
        async with backend.client("alice") as alice:
            again = await wait_state(alice, lab_id, {"running", "failed", "stopped"})
            assert again["state"] == "running" and again["url"] == lab["url"], again
            assert (await stored_lab(settings, lab_id)).handle["job"] == handle["job"]
            ours = [j for j in await client.jobs() if jobs.finds(j, lab_id)]
            assert [str(j["job_id"]) for j in ours] == [handle["job"]]  # not submitted twice
            assert ours[0]["name"] == "lablink-my-notes"  # as squeue shows it
            await alice.delete(f"/labs/{lab_id}")
            await wait_state(alice, lab_id, {"stopped"})
        decoy_job = await client.job(decoy)
        assert decoy_job is not None and jobs.job_state(decoy_job) in ("RUNNING", "PENDING")
    finally:
        await client.cancel(decoy)


async def test_options_are_checked_against_the_partitions(slurm_backend: SlurmBackend) -> None:
    _, backend = await slurm_backend()
    async with backend.client("alice") as alice:
        for options, words in (
            ({"partition": "huge"}, "Partition: 'huge' is not offered"),
            ({"gpus": 3}, "GPUs per node: 3 is more than partition "),
            ({"account": "lablink-bob"}, "Account: 'lablink-bob' is not offered"),
            ({"image": "x"}, "'image' is not an option of system "),
        ):
            resp = await alice.post("/labs", json=cluster_request(**options))
            assert resp.status_code == 422 and words in resp.json()["detail"], resp.text
            assert resp.json()["field"] == next(iter(options)), resp.text
        catalog = (await alice.get("/catalog")).json()
    [cluster] = catalog["systems"]
    assert cluster["kind"] == "slurm" and cluster["accounts"] == ["lablink-alice"]
    assert [f["key"] for f in cluster["fields"]][:3] == ["account", "project", "partition"]


async def test_a_job_seen_while_slurm_cleans_up_is_named_by_how_it_ended() -> None:
    """A failed job can be seen as COMPLETING (its processes have ended, Slurm cleans
    up): people read how it ended, FAILED or COMPLETED, not Slurm's interim state."""
    from backend.systems.batch.session import JobView
    from backend.systems.slurm.driver import SlurmDriver

    async with httpx.AsyncClient() as http:
        driver = SlurmDriver(http)
        for code, name in ((3, "FAILED"), (0, "COMPLETED")):
            view = JobView("7", None, "", exit_code=code, raw={"job_state": "COMPLETING"})
            assert driver.status_name(view) == name
        unknown = JobView("7", None, "", exit_code=None, raw={"job_state": "COMPLETING"})
        assert driver.status_name(unknown) == "COMPLETING"
        failed = JobView("7", None, "", exit_code=3, raw={"job_state": "FAILED"})
        assert driver.status_name(failed) == "FAILED"
