"""End to end: the real stack (`lablink up`: hub, proxy, backend) and real labs
(jupyterhub-singleuser), driven over HTTP as a person with a browser would."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from backend import embedded, procs
from tests.helpers import site
from tests.helpers.hub import HubUser
from tests.helpers.labs import process_environment
from tests.helpers.stack import Stack
from tests.helpers.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]

PASSWORD = "e2e-password-0123"
USERS = ["demo", "alice", "bob", "carol"]


def write_site(path: Path) -> Path:
    """The embedded site plus a system whose lab command fails at once."""
    doc = yaml.safe_load((Path("backend/data/embedded.yaml")).read_text())
    for hpc in ("hpc", "cluster"):  # HPC labs have their own end-to-end tests
        del doc["systems"][hpc]
    del doc["vos"]["hpc-course"]  # the VO for the HPC system only
    doc["systems"]["broken"] = {
        "kind": "local",
        "display_name": "A broken system",
        "command": [
            sys.executable,
            "-c",
            "import sys; [print(f'starting step {i}') for i in range(40)]; "
            "print('ImportError: the lab image lacks jupyterlab', flush=True); sys.exit(4)",
        ],
        "run_as": "",
    }
    for system in doc["systems"].values():
        embedded.demo_local(system)  # as `lablink up` does without --site
    return site.write(doc, path)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("stack")
    s = Stack(
        state_dir=root / "state",
        password=PASSWORD,
        users=USERS,
        site=write_site(root / "site.yaml"),
        extra_env={"LABLINK_POLL_INTERVAL": "1"},
    )
    s.start()
    yield s
    s.stop_cleanly()


def alive(pid: int) -> bool:
    return procs.is_alive(pid, None)


async def test_demo_starts_a_lab_sees_progress_and_stops_it(stack: Stack) -> None:
    async with HubUser(stack.url, "demo", PASSWORD) as demo:
        await demo.login()
        # an empty start request uses the site's default system, as the API allows
        starting = asyncio.create_task(demo.start())
        await wait_until(lambda: bool(stack.lab_pids("demo")) or starting.done(), 30, "a lab")
        events = await demo.progress()
        response = await starting
        assert response.status_code in (201, 202), response.text
        messages = [e.get("message", "") for e in events]
        assert any("waiting for JupyterLab" in m for m in messages), messages
        assert events[-1].get("ready") is True, events
        progress = [e["progress"] for e in events if "progress" in e]
        assert progress == sorted(progress), progress

        took = await demo.wait_lab()
        assert took < 30
        model = await demo.model()
        assert model["servers"][""]["ready"] is True
        assert model["servers"][""]["user_options"] == {}
        pids = stack.lab_pids("demo")
        assert len(pids) == 1, pids

        response = await demo.stop()
        assert response.status_code in (202, 204), response.text
        await demo.wait_stopped()
        await wait_until(lambda: not alive(pids[0]), 10, "the lab process to end")
        assert stack.lab_pids("demo") == []
        response = await demo.open_lab()
        assert response.url.path != "/user/demo/lab", "a stopped lab still answers"


async def test_named_servers_run_side_by_side(stack: Stack) -> None:
    async with HubUser(stack.url, "carol", PASSWORD) as carol:
        await carol.login()
        first, second = await asyncio.gather(
            carol.start("first", {"system": "local"}), carol.start("second", {"system": "local"})
        )
        assert first.status_code in (201, 202), first.text
        assert second.status_code in (201, 202), second.text
        await carol.wait_lab("first")
        await carol.wait_lab("second")
        assert len(stack.lab_pids("carol")) == 2
        await asyncio.gather(carol.stop("first"), carol.stop("second"))
        await carol.wait_stopped("first")
        await carol.wait_stopped("second")
        await wait_until(lambda: not stack.lab_pids("carol"), 10, "carol's labs to end")


def test_the_state_key_is_the_backends_alone(stack: Stack) -> None:
    """`lablink up` keeps the key that seals lab_secrets in secrets/state_key (0600) and
    hands it to the backend, not to the hub."""
    key_file = stack.state_dir / "secrets" / "state_key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text().strip()
    assert len(key) >= 32
    backend, hub = stack.backend_pid(), stack.hub_pid()
    assert backend is not None and hub is not None
    assert process_environment(backend).get("LABLINK_STATE_KEY") == key
    assert "LABLINK_STATE_KEY" not in process_environment(hub)


async def test_backend_killed_and_restarted_while_a_lab_runs(stack: Stack) -> None:
    async with HubUser(stack.url, "alice", PASSWORD) as alice:
        await alice.login()
        response = await alice.start()
        assert response.status_code in (201, 202), response.text
        await alice.wait_lab()
        lab_pid = stack.lab_pids("alice")[0]
        old_backend = stack.backend_pid()
        assert old_backend is not None

        os.kill(old_backend, signal.SIGKILL)
        await wait_until(
            lambda: (stack.backend_pid() or old_backend) != old_backend, 30, "a new backend"
        )
        backend_log = stack.state_dir / "logs" / "backend.log"
        await wait_until(
            lambda: "re-attached" in backend_log.read_text(), 30, "the backend to re-attach"
        )
        # the hub polls every second: a few polls later the lab is still its server
        await asyncio.sleep(3)
        model = await alice.model()
        assert model["servers"][""]["ready"] is True, model
        assert alive(lab_pid)
        response = await alice.open_lab()
        assert response.status_code == 200
        assert response.url.path == "/user/alice/lab"

        response = await alice.stop()
        assert response.status_code in (202, 204), response.text
        await alice.wait_stopped()
        await wait_until(lambda: not alive(lab_pid), 10, "the lab process to end")


async def test_hub_killed_and_restarted_keeps_the_lab(stack: Stack) -> None:
    async with HubUser(stack.url, "carol", PASSWORD) as carol:
        await carol.login()
        response = await carol.start("kept", {"system": "local"})
        assert response.status_code in (201, 202), response.text
        await carol.wait_lab("kept")
        (lab_pid,) = stack.lab_pids("carol")
        old_hub = stack.hub_pid()
        assert old_hub is not None

        os.kill(old_hub, signal.SIGKILL)
        await wait_until(lambda: (stack.hub_pid() or old_hub) != old_hub, 30, "a new hub")
        await wait_until(stack.hub_answers, 60, "the new hub to answer")
        # the restarted hub loaded the lab id from its database and polled the backend
        await asyncio.sleep(2)
        model = await carol.model()
        assert model["servers"]["kept"]["ready"] is True, model
        assert alive(lab_pid)
        response = await carol.open_lab("kept")
        assert response.status_code == 200
        assert response.url.path == "/user/carol/kept/lab"

        response = await carol.stop("kept")
        assert response.status_code in (202, 204), response.text
        await carol.wait_stopped("kept")
        await wait_until(lambda: not alive(lab_pid), 10, "the lab process to end")


async def test_lab_that_dies_is_noticed_by_poll(stack: Stack) -> None:
    async with HubUser(stack.url, "bob", PASSWORD) as bob:
        await bob.login()
        response = await bob.start("short", {"system": "local"})
        assert response.status_code in (201, 202), response.text
        await bob.wait_lab("short")
        (pid,) = stack.lab_pids("bob")
        os.kill(pid, signal.SIGKILL)
        # the backend sees the process end, and the hub's next poll drops the server
        await bob.wait_stopped("short", timeout=15)


async def test_failed_start_shows_the_lab_output_on_the_spawn_page(stack: Stack) -> None:
    async with HubUser(stack.url, "bob", PASSWORD) as bob:
        await bob.login()
        response = await bob.start("broken", {"system": "broken"})
        assert response.status_code == 502, response.text
        assert "ended during start" in response.json()["message"]
        events = await bob.progress("broken")
        failed = events[-1]
        assert failed.get("failed") is True, events
        assert "exit code 4" in failed["message"]
        assert "ImportError: the lab image lacks jupyterlab" in failed["html_message"]
        assert "starting step 39" in failed["html_message"]
        assert "starting step 0<" not in failed["html_message"]  # only the last lines
        assert stack.lab_pids("bob") == []


@pytest.mark.parametrize(
    ("options", "sentence"),
    [
        ({"system": "nope"}, "System: 'nope' is not a system of this site; choose "),
        ({"system": "local", "partition": "batch"}, "'partition' is not an option of system "),
    ],
)
async def test_bad_options_are_refused_with_a_sentence(
    stack: Stack, options: dict[str, str], sentence: str
) -> None:
    hub_log = stack.state_dir / "logs" / "hub.log"
    logged = len(hub_log.read_text(errors="replace"))
    async with HubUser(stack.url, "bob", PASSWORD) as bob:
        await bob.login()
        response = await bob.start("bad", options)
        assert response.status_code == 422, response.text
        message = response.json()["message"]
        assert message.startswith(sentence), message
        # one line in the hub's log, the spawner's, without a traceback
        added = hub_log.read_text(errors="replace")[logged:]
        assert "Traceback" not in added, added
        about = [line for line in added.splitlines() if sentence in line]
        assert len(about) == 1 and "start refused" in about[0], added
        assert "Traceback" not in response.text
        assert stack.lab_pids("bob") == []
        model = await bob.model()
        assert "bad" not in model["servers"] or not model["servers"]["bad"]["ready"]


async def test_an_empty_start_after_a_refused_one_uses_the_sites_defaults(stack: Stack) -> None:
    """JupyterHub replays a server's last options for a start that names none; refused
    options are not replayed (the README: an empty start uses the site's default)."""
    async with HubUser(stack.url, "bob", PASSWORD) as bob:
        await bob.login()
        refused = await bob.start("again", {"system": "nope"})
        assert refused.status_code == 422, refused.text
        response = await bob.start("again")
        assert response.status_code in (201, 202), response.text
        await bob.wait_lab("again")
        model = await bob.model()
        assert model["servers"]["again"]["user_options"] in ({}, None)
        assert (await bob.stop("again")).status_code in (202, 204)
        await bob.wait_stopped("again")


async def test_wrong_password_is_refused(stack: Stack) -> None:
    async with HubUser(stack.url, "demo", "not-the-password") as intruder:
        with pytest.raises(AssertionError, match="login of demo failed"):
            await intruder.login()


@pytest.mark.slow
async def test_ctrl_c_while_starting_stops_at_once_and_leaves_nothing(tmp_path: Path) -> None:
    """Ctrl-C before the hub is up (a person who started the wrong thing, or a port that
    keeps the hub from coming up) stops what has started instead of being ignored."""
    quick = Stack(tmp_path / "state", password=PASSWORD, users=["demo"])
    quick.launch()
    await wait_until(lambda: "state in" in quick.log.read_text(errors="replace"), 30, "up")
    code = quick.stop(signal.SIGINT, timeout=60)
    said = quick.log.read_text(errors="replace")
    assert code == 0, said[-3000:]
    assert "stopping while starting" in said, said[-3000:]
    assert "JupyterHub is at" not in said, said[-3000:]
    assert not quick.processes(), said[-3000:]


@pytest.mark.slow
async def test_an_idle_lab_is_stopped_by_the_hubs_culler(tmp_path: Path) -> None:
    """jupyterhub-idle-culler runs as a hub service with the site's idle_culler (here
    from the environment, which overrides it): a lab nobody uses is stopped."""
    idle = Stack(
        tmp_path / "state",
        password=PASSWORD,
        users=["demo"],
        extra_env={"LABLINK_IDLE_TIMEOUT": "4", "LABLINK_IDLE_CULL_EVERY": "1"},
    )
    idle.start()
    try:
        async with HubUser(idle.url, "demo", PASSWORD) as demo:
            await demo.login()
            response = await demo.start(options={"system": "local"})
            assert response.status_code in (201, 202), response.text
            await demo.wait_lab()
            [pid] = idle.lab_pids("demo")
            await demo.wait_stopped(timeout=60)  # nobody asked it anything since
            await wait_until(lambda: not alive(pid), 15, "the idle lab's process to end")
        culler_log = (idle.state_dir / "logs" / "hub.log").read_text(errors="replace")
        assert "idle-culler" in culler_log, culler_log[-2000:]
    finally:
        idle.stop_cleanly()
