"""The driver contract (backend/systems/driver.py), the same tests over every kind:
start gives a running lab whose URL answers; stop is idempotent and leaves nothing
behind; a lab stopped before it launched is stopped cleanly; a running lab is
followed again after the backend restarts; a lab that dies by itself is reported
ended; a failure carries a sentence. The backend's metrics follow each of these
on every kind (the system's and kind's labels, the peer it calls)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.api import BackendFactory, RunningBackend, lab_request, wait_state
from tests.helpers.rigs import SYSTEM, Rig

pytestmark = [pytest.mark.contract, pytest.mark.integration]

# the peer the backend calls for each kind's labs (a local lab has none)
PEER = {"unicore": "unicore", "slurm": "slurmrestd", "kubernetes": "userlab_manager"}

TIMEOUT = 45  # seconds for a lab to reach a state: a queue, a scheduler cycle, a pod


def request(server: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    body = lab_request("alice", server, options={"system": SYSTEM})
    body["env"].update(env or {})
    return body


async def start(backend: RunningBackend, server: str, **env: str) -> dict[str, Any]:
    async with backend.client("alice") as alice:
        resp = await alice.post("/labs", json=request(server, env))
        assert resp.status_code == 202, resp.text
        return resp.json()  # type: ignore[no-any-return]


async def answers(lab: dict[str, Any]) -> bool:
    async with httpx.AsyncClient(trust_env=False, timeout=3) as http:
        try:
            resp = await http.get(f"{lab['url']}/user/alice/{lab['server_name']}/api")
        except httpx.TransportError:
            return False
    return resp.status_code == 200


async def stopped(backend: RunningBackend, lab_id: str) -> dict[str, Any]:
    async with backend.client("alice") as alice:
        first = await alice.delete(f"/labs/{lab_id}")
        assert first.status_code == 202, first.text
        lab = await wait_state(alice, lab_id, {"stopped", "failed"}, TIMEOUT)
        again = await alice.delete(f"/labs/{lab_id}")
        assert again.status_code == 202 and again.json()["state"] == lab["state"]
    return lab


async def nothing_left(rig: Rig, lab: dict[str, Any], timeout: float = 20) -> None:
    prefix = f"/user/alice/{lab['server_name']}/"
    for _ in range(int(timeout / 0.2)):
        left = await asyncio.to_thread(rig.left_behind, lab["id"], prefix)
        if not left:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"left behind by lab {lab['id']}: {left}")


async def test_start_gives_a_running_lab_whose_url_answers(
    rig: Rig, tmp_path: Path, start_backend: BackendFactory
) -> None:
    backend = await start_backend(rig.settings(tmp_path))
    lab = await start(backend, "contract")
    async with backend.client("alice") as alice:
        lab = await wait_state(alice, lab["id"], {"running", "failed"}, TIMEOUT)
        assert lab["state"] == "running", lab["message"]
        events = (await alice.get(f"/labs/{lab['id']}/events")).json()
    assert await answers(lab)
    states = [e["state"] for e in events]
    assert states[0] == "accepted" and states[-1] == "running" and "submitted" in states
    progress = [e["progress"] for e in events]
    assert progress == sorted(progress) and progress[-1] == 100
    ours = {"system": SYSTEM, "kind": rig.kind}
    running = await backend.metrics()
    assert running.value("lablink_labs", state="running", **ours) == 1
    assert running.value("lablink_lab_starts_total", **ours) == 1
    assert running.value("lablink_lab_start_duration_seconds_count", **ours) == 1
    if rig.kind in PEER:
        assert running.value("lablink_driver_call_duration_seconds_count", peer=PEER[rig.kind]) > 0
    await stopped(backend, lab["id"])
    done = await backend.metrics()
    assert done.value("lablink_labs") == 0
    assert done.value("lablink_lab_stops_total", how="requested", **ours) == 1


async def test_stop_is_idempotent_and_leaves_nothing_behind(
    rig: Rig, tmp_path: Path, start_backend: BackendFactory
) -> None:
    backend = await start_backend(rig.settings(tmp_path))
    lab = await start(backend, "stop")
    async with backend.client("alice") as alice:
        lab = await wait_state(alice, lab["id"], {"running"}, TIMEOUT)
    final = await stopped(backend, lab["id"])
    assert final["state"] == "stopped" and final["url"] is None
    if rig.kind == "kubernetes":
        # the emulator drops a deleted pod's object at once and the tests' node kills its
        # process at its next look (a real kubelet ends the container first): a moment
        deadline = time.monotonic() + 5
        for _look in range(100):
            if not await answers(lab) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
    assert not await answers(lab)
    await nothing_left(rig, lab)


async def test_a_lab_stopped_at_once_stops_cleanly(
    rig: Rig, tmp_path: Path, start_backend: BackendFactory
) -> None:
    """Stopped in the same breath as it was started, before (or while) its driver
    launches it: the start is called off, and nothing is left behind. (The lab
    manager's tests stop a start that has launched nothing, with fake drivers.)"""
    backend = await start_backend(rig.settings(tmp_path))
    async with backend.client("alice") as alice:
        resp = await alice.post("/labs", json=request("early"))
        lab = resp.json()
        await alice.delete(f"/labs/{lab['id']}")
    final = await stopped(backend, lab["id"])
    assert final["state"] == "stopped", final["message"]
    await nothing_left(rig, lab)


async def test_a_running_lab_is_followed_again_after_the_backend_restarts(
    rig: Rig, tmp_path: Path, start_backend: BackendFactory
) -> None:
    settings = rig.settings(tmp_path)
    backend = await start_backend(settings)
    lab = await start(backend, "restart")
    async with backend.client("alice") as alice:
        lab = await wait_state(alice, lab["id"], {"running"}, TIMEOUT)
    await backend.stop()
    assert await answers(lab), "the lab ended with the backend"
    backend = await start_backend(settings, port=int(backend.url.rsplit(":", 1)[1]))
    async with backend.client("alice") as alice:
        await asyncio.sleep(1)
        again = await wait_state(alice, lab["id"], {"running"}, TIMEOUT)
    assert again["url"] == lab["url"] and await answers(again)
    assert (await stopped(backend, lab["id"]))["state"] == "stopped"
    await nothing_left(rig, lab)


async def test_a_lab_that_dies_by_itself_is_reported_ended(
    rig: Rig, tmp_path: Path, start_backend: BackendFactory
) -> None:
    backend = await start_backend(rig.settings(tmp_path))
    lab = await start(backend, "dies")
    async with backend.client("alice") as alice:
        lab = await wait_state(alice, lab["id"], {"running"}, TIMEOUT)
        rig.kill(f"/user/alice/{lab['server_name']}/")
        ended = await wait_state(alice, lab["id"], {"stopped", "failed"}, TIMEOUT)
    assert ended["state"] == "stopped" and ended["exit_status"] == 0
    assert ended["message"].startswith("The lab ended by itself"), ended["message"]
    got = await backend.metrics()
    assert got.value("lablink_lab_stops_total", system=SYSTEM, kind=rig.kind, how="ended") == 1
    assert got.value("lablink_lab_stops_total", how="requested") == 0
    await nothing_left(rig, lab)


async def test_a_failure_carries_a_sentence(
    rig: Rig, tmp_path: Path, start_backend: BackendFactory
) -> None:
    backend = await start_backend(rig.settings(tmp_path))
    if rig.crash is not None:
        rig.crash()
        lab = await start(backend, "crash")
    else:
        lab = await start(backend, "crash", FAKELAB_MODE="crash")
    async with backend.client("alice") as alice:
        failed = await wait_state(alice, lab["id"], {"failed", "running"}, TIMEOUT)
        last = (await alice.get(f"/labs/{lab['id']}/events")).json()[-1]
    assert failed["state"] == "failed" and failed["exit_status"] == 1
    message = failed["message"]
    assert message.endswith(".") and "Traceback" not in message and "\n" not in message
    assert "exit code 3" in message, message
    if rig.crash_output:
        assert "no module named 'jupyterlab'" in last["detail"], last
    got = await backend.metrics()
    ours = {"system": SYSTEM, "kind": rig.kind}
    assert got.value("lablink_lab_failures_total", reason="ended", **ours) == 1
    assert got.value("lablink_lab_failures_total") == 1
    assert got.value("lablink_lab_start_duration_seconds_count") == 0
    await nothing_left(rig, lab)
