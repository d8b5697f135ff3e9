"""End to end on an HPC system: hub → backend → UNICORE development site → Slurm, and
hub → backend → slurmrestd → Slurm, with the lab reached through the SSH tunnel.

`lablink up` runs the stack with the embedded site (plus one broken HPC
system), starts the development site, a login node (sshd) and the tunnel
service itself, and the development site runs BATCH jobs through `sbatch` on
the one-node cluster of .ci/peers.sh. The proxy reaches each lab through the
tunnel service's forward, and the lab reaches the hub's API through the login
node's reverse forward. People act through the hub's public port only.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import pwd
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import backend
from backend.embedded import LocalSlurm, embedded_site
from tests.helpers import site
from tests.helpers.hub import HubUser
from tests.helpers.labs import jupyterlab_processes
from tests.helpers.metrics import scrape
from tests.helpers.slurm import SlurmRest, block_the_node, scancel, squeue_ids
from tests.helpers.sshd import http_get_async
from tests.helpers.stack import Stack
from tests.helpers.waiting import wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.unicore,
    pytest.mark.slurm,
]

PASSWORD = "e2e-hpc-password-0123"
USERS = ["demo", "alice", "bob"]
TEMPLATE = Path(backend.__file__).parent / "data" / "embedded.yaml"


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, slurm: Any, slurmrest: SlurmRest
) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("hpc-stack")
    s = Stack(
        state_dir=root / "state",
        password=PASSWORD,
        users=USERS,
        extra_env={"SLURM_CONF": slurm.conf, "LABLINK_POLL_INTERVAL": "1"},
    )
    local_slurm = LocalSlurm(slurmrest.url, str(slurmrest.key_file))
    doc = embedded_site(TEMPLATE, s.ports["devsite"], s.local_tunnel(), local_slurm)
    broken = dict(doc["systems"]["hpc"], display_name="Broken HPC")
    broken["setup"] = [
        "echo 'lmod: module JupyterLab/4.2 is not available on this system' >&2",
        "exit 3",
    ]
    doc["systems"]["hpc-broken"] = broken
    s.site = site.write(doc, root / "site.yaml")
    s.start()
    yield s
    s.stop_cleanly()


def squeue(slurm: Any) -> list[dict[str, str]]:
    out = subprocess.run(
        ["squeue", "-h", "-o", "%i|%T|%j|%P|%u|%Z"],
        env=slurm.env, capture_output=True, text=True, check=True, timeout=10,
    ).stdout  # fmt: skip
    rows = [line.split("|", 5) for line in out.splitlines() if line.strip()]
    keys = ("id", "state", "name", "partition", "user", "workdir")
    return [dict(zip(keys, r, strict=True)) for r in rows if len(r) == 6]


def jobs_named(slurm: Any, name: str, stack: Stack) -> list[dict[str, str]]:
    """The jobs of ``stack``'s development site (its job directories are in the stack's
    state directory) named ``name`` in ``squeue``; other stacks may share the cluster."""
    state = str(stack.state_dir.resolve())
    return [j for j in squeue(slurm) if j["name"] == name and j["workdir"].startswith(state)]


def devsite_home(stack: Stack, uid: str) -> Path:
    """The home the development site gives ``uid``'s jobs."""
    return (stack.state_dir / "devsite" / "homes" / uid).resolve()


HPC = {"system": "hpc", "partition": "batch", "runtime": "30"}


async def test_a_lab_queues_runs_on_slurm_and_stops(stack: Stack, slurm: Any) -> None:
    blocker = block_the_node(slurm)
    try:
        async with HubUser(stack.url, "alice", PASSWORD) as alice:
            await alice.login()
            # a notebook of an earlier job in alice's home on the site
            home = devsite_home(stack, "alice")
            home.mkdir(parents=True, mode=0o700, exist_ok=True)
            (home / "yesterday.ipynb").write_text('{"cells": [], "metadata": {}}')
            starting = asyncio.create_task(alice.start(options=HPC))
            # the job has the lab's name: alice's default lab is "lablink"
            await wait_until(lambda: jobs_named(slurm, "lablink", stack), 30, "alice's job")
            [job] = jobs_named(slurm, "lablink", stack)
            assert job["state"] == "PENDING" and job["partition"] == "batch"
            progress = asyncio.create_task(alice.progress())
            await asyncio.sleep(1.5)  # the person watches the queue for a moment
            scancel(slurm, blocker)
            events = await progress
            response = await starting
            assert response.status_code in (201, 202), response.text

            messages = [e.get("message", "") for e in events]
            queued = f"Waiting in the queue of partition batch (batch job {job['id']})."
            runs = f"Batch job {job['id']} runs on partition batch; JupyterLab is starting."
            assert queued in messages and runs in messages, messages
            assert messages.index(queued) < messages.index(runs)
            assert events[-1].get("ready") is True, events

            await alice.wait_lab(timeout=30)  # JupyterLab, after OAuth with the hub's API
            assert [j["state"] for j in jobs_named(slurm, "lablink", stack)] == ["RUNNING"]
            # the proxy reaches the lab through the tunnel service's forward, and the lab
            # reaches the hub's API through the login node's reverse forward
            [tunnel] = json.loads((stack.state_dir / "tunnels.json").read_text())
            lab = await alice.api("GET", "/users/alice")
            status, _ = await http_get_async("127.0.0.1", tunnel["local_port"], "/user/alice/api")
            assert status == 200, lab.text
            [(pid, env)] = jupyterlab_processes("alice").items()
            hub_forward = stack.ports["hub_forward"]
            # over TLS the lab checks against the hub forward's CA (its OAuth went so)
            assert env["JUPYTERHUB_API_URL"] == f"https://127.0.0.1:{hub_forward}/hub/api"
            assert Path(env["SSL_CERT_FILE"]).name.startswith("lablink-hub-ca.")
            # the lab opens in alice's home, not in the job directory, and its terminals
            # run the login shell (of the site's Unix user, that all jobs run as)
            assert os.readlink(f"/proc/{pid}/cwd") == str(home) == env["HOME"]
            assert env["SHELL"] == pwd.getpwuid(os.getuid()).pw_shell
            contents = await alice.http.get("/user/alice/api/contents")
            assert contents.status_code == 200, contents.text
            names = {item["name"] for item in contents.json()["content"]}
            assert "yesterday.ipynb" in names and not names & {"lab.json", "start.sh"}
            model = await alice.model()
            assert model["servers"][""]["user_options"]["partition"] == "batch"
            await the_metrics_show_the_lab(stack)

            async with HubUser(stack.url, "bob", PASSWORD) as bob:
                await bob.login()
                assert (await bob.api("GET", "/users/alice")).status_code in (403, 404)
                stop = await bob.api("DELETE", "/users/alice/server")
                assert stop.status_code in (403, 404)
            assert job["id"] in squeue_ids(slurm)

            response = await alice.stop()
            assert response.status_code in (202, 204), response.text
            await alice.wait_stopped()
            await wait_until(lambda: job["id"] not in squeue_ids(slurm), 10, "scancel")
            response = await alice.open_lab()
            assert response.url.path != "/user/alice/lab", "a stopped lab still answers"
    finally:
        scancel(slurm, blocker)


async def the_metrics_show_the_lab(stack: Stack) -> None:
    """What an admin's `curl` of each service's /metrics shows while alice's lab runs
    (`lablink up` prints the command, with the token it keeps in the state directory)."""
    token = (stack.state_dir / "secrets" / "metrics_token").read_text().strip()
    said = stack.log.read_text()
    assert f'metrics: curl -H "Authorization: Bearer $(cat {stack.state_dir}' in said
    backend_url = f"http://127.0.0.1:{stack.ports['backend']}/metrics"
    got = await scrape(backend_url, token)
    running = {"state": "running", "system": "hpc", "kind": "unicore", "choice": "batch"}
    assert got.value("lablink_labs", vo="demo", **running) == 1, got.find("lablink_labs")
    assert got.value("lablink_lab_start_duration_seconds_count", system="hpc") >= 1
    assert got.value("lablink_driver_call_duration_seconds_count", peer="unicore") > 0
    assert got.value("lablink_driver_call_duration_seconds_count", peer="tunnel") > 0
    tunnel = await scrape(f"http://127.0.0.1:{stack.ports['tunnel']}/metrics", token)
    assert tunnel.value("lablink_tunnel_forwards", system="hpc") == 1
    assert tunnel.value("lablink_tunnel_link_up", system="hpc") >= 1
    assert tunnel.value("lablink_tunnel_bytes_total", system="hpc", direction="from_lab") > 0


async def test_a_job_that_fails_shows_its_stderr(stack: Stack) -> None:
    async with HubUser(stack.url, "bob", PASSWORD) as bob:
        await bob.login()
        response = await bob.start("broken", {"system": "hpc-broken", "partition": "devel"})
        # 502 when it fails within the hub's slow_spawn_timeout, 202 if later
        assert response.status_code in (202, 502), response.text
        events = await bob.progress("broken")
        failed = events[-1]
        assert failed.get("failed") is True, events
        assert "exit code 3" in failed["message"], failed
        assert "module JupyterLab/4.2 is not available" in failed["html_message"]


async def test_the_backend_restarted_mid_spawn_still_brings_the_lab_up(
    stack: Stack, slurm: Any
) -> None:
    blocker = block_the_node(slurm)
    try:
        async with HubUser(stack.url, "demo", PASSWORD) as demo:
            await demo.login()
            starting = asyncio.create_task(demo.start("restart", HPC))
            await wait_until(lambda: jobs_named(slurm, "lablink-restart", stack), 30, "the job")
            old = stack.backend_pid()
            assert old is not None
            os.kill(old, signal.SIGKILL)
            await wait_until(lambda: (stack.backend_pid() or old) != old, 30, "a new backend")
            scancel(slurm, blocker)
            response = await starting
            assert response.status_code in (201, 202), response.text
            await demo.wait_lab("restart", timeout=60)
            assert len(jobs_named(slurm, "lablink-restart", stack)) == 1  # not submitted twice
            await demo.stop("restart")
            await demo.wait_stopped("restart")
            await wait_until(
                lambda: not jobs_named(slurm, "lablink-restart", stack), 10, "the job to end"
            )
    finally:
        scancel(slurm, blocker)


@pytest.mark.slurm_rest
async def test_a_lab_runs_as_a_slurm_job_through_slurmrestd(stack: Stack, slurm: Any) -> None:
    """Kind slurm from the hub: the form's system 'cluster', a batch job of the local
    cluster submitted through slurmrestd, JupyterLab through the tunnel, then stopped."""
    options = {"system": "cluster", "partition": "devel", "runtime": "20"}
    before = {j["id"] for j in squeue(slurm)}
    async with HubUser(stack.url, "bob", PASSWORD) as bob:
        await bob.login()
        response = await bob.start("slurm", options)
        assert response.status_code in (201, 202), response.text
        events = await bob.progress("slurm")
        assert events[-1].get("ready") is True, events
        await bob.wait_lab("slurm", timeout=30)
        model = await bob.model()
        assert model["servers"]["slurm"]["user_options"]["partition"] == "devel"
        # named after the lab, as squeue shows it
        [job] = [j for j in squeue(slurm) if j["id"] not in before and j["name"] == "lablink-slurm"]
        assert job["user"] == getpass.getuser()
        # reached as a UNICORE lab is: through the login node, by the tunnel service
        tunnels = json.loads((stack.state_dir / "tunnels.json").read_text())
        [tunnel] = [t for t in tunnels if t["system"] == "cluster"]
        status, _ = await http_get_async("127.0.0.1", tunnel["local_port"], "/user/bob/slurm/api")
        assert status == 200
        response = await bob.stop("slurm")
        assert response.status_code in (202, 204), response.text
        await bob.wait_stopped("slurm")
        await wait_until(
            lambda: job["id"] not in {j["id"] for j in squeue(slurm)}, 15, "the job to end"
        )
