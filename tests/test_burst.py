"""What a burst of starts (a workshop's first minute) relies on, without timing
anything: the workshop bench's figures and log parsing (benchmarks/workshop.py),
the ports the local kind hands to labs that start together (and what it does when
another process takes one first), a start taken over from a replica that died after
launching its process, and the spawner's one
reading of start limits for many starts at once."""

from __future__ import annotations

import asyncio
import http.server
import math
import os
import subprocess
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from backend import procs
from backend.store import WriteTurns
from backend.systems.driver import LabContext, LabFailed
from backend.systems.local.config import LocalSystem
from backend.systems.local.driver import LocalDriver, launched_elsewhere
from benchmarks.workshop import accepted_ms, backend_own_ms, hub_requests, percentile
from spawner import spawner as spawner_module
from spawner.spawner import LablinkSpawner, _backend_decides
from tests.helpers import site
from tests.helpers.fakes import FakeHubUser
from tests.helpers.labs import FAKELAB

HUB_LOG = """\
[I 2026-12-04 06:59:44.842 JupyterHub spawner:281] p050: lab 2f71d65b-e8be-4ab6-b89b-1dda6d8452aa accepted in 1061 ms
[I 2026-12-04 06:59:44.876 JupyterHub spawner:281] p090: lab 2e2befcc-d30e-49a8-83a2-605dbf2b2495 accepted in 13 ms
[I 2026-12-04 06:59:44.900 JupyterHub spawner:281] p091: lab 2e2befcc-d30e-49a8-83a2-605dbf2b2496 accepted
[I 2026-12-04 06:59:51.194 JupyterHub log:192] 202 POST /hub/api/users/p050/server (p050@127.0.0.1) 10539.46ms
[I 2026-12-04 06:59:51.300 JupyterHub log:192] 201 POST /hub/api/users/p051/servers/pandas-101 (p051@127.0.0.1) 812.50ms
[I 2026-12-04 06:59:52.933 JupyterHub log:192] 200 GET /hub/api/users/p050/server/progress (p050@127.0.0.1) 1250.04ms
[I 2026-12-04 06:59:57.086 JupyterHub log:192] 204 DELETE /hub/api/users/p050/server (p050@127.0.0.1) 3750.28ms
"""  # noqa: E501


def test_percentiles_interpolate_between_the_closest_ranks() -> None:
    values = [float(v) for v in range(1, 101)]  # 1 .. 100
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 100.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0  # unsorted input
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))


def test_the_backends_answer_is_read_from_the_spawners_lines() -> None:
    found = accepted_ms(HUB_LOG)
    assert found == {
        "2f71d65b-e8be-4ab6-b89b-1dda6d8452aa": 1061.0,
        "2e2befcc-d30e-49a8-83a2-605dbf2b2495": 13.0,
    }  # a line without its milliseconds (an older spawner) is not a figure
    only = accepted_ms(HUB_LOG, ["2e2befcc-d30e-49a8-83a2-605dbf2b2495"])
    assert only == {"2e2befcc-d30e-49a8-83a2-605dbf2b2495": 13.0}


def test_the_backends_own_time_is_read_from_its_log() -> None:
    log = (
        "[2026-12-04 07:20:01,100 INFO lablink.backend.labs] p001/burst-bench lab 2f71d65b: "
        "accepted on system local in 41 ms\n"
        "[2026-12-04 07:20:01,200 INFO lablink.backend.labs] p002 lab 2e2befcc: "
        "accepted on system local\n"
        "[2026-12-04 07:20:01,300 INFO lablink.backend.labs] p003 lab 0e2befcc: "
        "accepted on system hpc in 7 ms\n"
    )
    assert backend_own_ms(log) == [41.0, 7.0]


def test_the_hubs_start_requests_are_read_from_its_request_log() -> None:
    assert hub_requests(HUB_LOG, "POST", "/server") == [
        (202, "/hub/api/users/p050/server", 10539.46)
    ]
    assert hub_requests(HUB_LOG, "POST", "/pandas-101") == [
        (201, "/hub/api/users/p051/servers/pandas-101", 812.5)
    ]
    assert [r[0] for r in hub_requests(HUB_LOG, "DELETE", "/server")] == [204]


async def test_labs_starting_together_never_get_one_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The kernel may hand the same free port out twice before the first lab binds it;
    in a burst two labs got one port and one start failed."""
    handed = iter([40001, 40001, 40001, 40002, 40001, 40003])
    monkeypatch.setattr(procs, "free_port", lambda host="127.0.0.1": next(handed))
    async with httpx.AsyncClient() as http:
        driver = LocalDriver(http)
        assert [driver._free_port(lab) for lab in ("a", "b", "c")] == [40001, 40002, 40003]
        driver._ports.pop("a")  # a's lab stopped: its port may be handed out again
        monkeypatch.setattr(procs, "free_port", lambda host="127.0.0.1": 40001)
        assert driver._free_port("d") == 40001


class CountingBackend:
    """A backend client that counts catalog reads (and answers after a moment)."""

    def __init__(self) -> None:
        self.reads = 0
        self.workshop_reads = 0

    async def workshop(self, workshop_id: str, user: str) -> dict[str, Any]:
        self.workshop_reads += 1
        await asyncio.sleep(0.05)
        return {"id": workshop_id, "system": "hpc"}

    async def catalog(self, user: str, groups: list[str] | None = None) -> dict[str, Any]:
        self.reads += 1
        await asyncio.sleep(0.05)
        return {
            "default_system": "local",
            "systems": [
                {"name": "local", "start_limit": 150},
                {"name": "hpc", "start_limit": 900},
                {"name": "cloud"},
            ],
        }


async def test_starts_at_once_read_the_start_limits_once(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = CountingBackend()
    monkeypatch.setattr(LablinkSpawner, "backend", property(lambda self: backend))
    monkeypatch.setattr(spawner_module, "_start_limits", {})
    spawners = [
        LablinkSpawner(user=FakeHubUser(f"p{i}"), backend_url="http://127.0.0.1:9")
        for i in range(50)
    ]
    await asyncio.gather(*(_backend_decides(s, {}) for s in spawners))
    assert backend.reads == 1
    assert {s.start_timeout for s in spawners} == {int(150 + spawners[0].start_timeout_margin)}
    # a system the last catalog did not give a limit for is asked about again
    await _backend_decides(spawners[0], {"system": "cloud"})
    assert backend.reads == 2


async def test_a_workshops_starts_at_once_ask_its_system_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each start of a workshop's lab waits as long as the workshop's system allows; a
    burst of them asks the backend for the workshop (and the catalog) once."""
    backend = CountingBackend()
    monkeypatch.setattr(LablinkSpawner, "backend", property(lambda self: backend))
    monkeypatch.setattr(spawner_module, "_start_limits", {})
    monkeypatch.setattr(spawner_module, "_workshop_systems", {})
    spawners = [
        LablinkSpawner(user=FakeHubUser(f"p{i}"), backend_url="http://127.0.0.1:9")
        for i in range(50)
    ]
    await asyncio.gather(*(_backend_decides(s, {"workshop": "pandas-101"}) for s in spawners))
    assert (backend.workshop_reads, backend.reads) == (1, 1)
    assert {s.start_timeout for s in spawners} == {int(900 + spawners[0].start_timeout_margin)}


async def test_a_persons_write_goes_before_the_background_writes_that_wait() -> None:
    """The backend's SQLite writers take turns; a start's admission (a person waits for
    its answer) goes before the events of labs already starting, in order among its
    kind, and a writer cancelled while it waits does not hold up the others."""
    turns = WriteTurns()
    order: list[str] = []
    gate = asyncio.Event()

    async def write(name: str, urgent: bool = False) -> None:
        async with turns.turn(urgent):
            order.append(name)
            if name == "first":
                await gate.wait()

    first = asyncio.create_task(write("first"))
    await asyncio.sleep(0)
    waiting = [asyncio.create_task(write(f"event{i}")) for i in range(3)]
    gone = asyncio.create_task(write("cancelled", urgent=True))
    waiting += [asyncio.create_task(write(f"start{i}", urgent=True)) for i in range(2)]
    await asyncio.sleep(0.01)
    gone.cancel()
    gate.set()
    await asyncio.gather(first, *waiting)
    assert order == ["first", "start0", "start1", "event0", "event1", "event2"]
    async with turns.turn():  # free again
        pass


class Squatter(http.server.ThreadingHTTPServer):
    """Another program at a port: it answers 200 to everything, as a lab would."""

    def __init__(self) -> None:
        class Answer(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Answer)
        self.port = int(self.server_address[1])
        threading.Thread(target=self.serve_forever, daemon=True).start()


def local_context(tmp_path: Path, **system: Any) -> LabContext[LocalSystem]:
    async def report(state: Any, message: str, detail: str = "") -> None:
        return None

    async def save(handle: dict[str, Any]) -> None:
        return None

    return LabContext(
        lab_id="5e1f0000-0000-4000-8000-000000000001",
        user_name="alice",
        server_name="",
        system_name="local",
        system=LocalSystem.model_validate(site.local_system(**system)),
        options={},
        handle={},
        state_dir=tmp_path,
        report=report,
        save_handle=save,
    )


@pytest.mark.parametrize("delay", [0, 1])
async def test_a_lab_whose_port_another_process_took_starts_again_on_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, delay: int
) -> None:
    """Until the lab binds the port it was handed, any process here may take it (on CI a
    second replica's lab did). That process answered the probe, the lab counted as
    running at its address and then "ended by itself (exit code 1)" when it could not
    bind. Now only the lab's own listener makes it ready, and a lab that could not bind
    starts again on another port."""
    squatter = Squatter()
    free = procs.free_ports(1)[0]
    handed = iter([squatter.port, free])
    monkeypatch.setattr(procs, "free_port", lambda host="127.0.0.1": next(handed))
    ctx = local_context(tmp_path, args=[f"--start-delay={delay}"])
    try:
        async with httpx.AsyncClient(trust_env=False) as http_client:
            driver = LocalDriver(http_client)
            url = await driver.start(ctx)
            try:
                assert url == f"http://127.0.0.1:{free}"
                assert ctx.handle["port"] == free
                assert procs.listens(ctx.handle["pid"], free) is True
                assert procs.listens(ctx.handle["pid"], squatter.port) is False
                output = (tmp_path / "labs" / ctx.lab_id / "output.log").read_text()
                assert output.count("fakelab starting") == 2, output
                assert "Address already in use" in output
            finally:
                await driver.stop(ctx)
    finally:
        squatter.shutdown()
        squatter.server_close()
    assert not procs.is_alive(ctx.handle["pid"], ctx.handle["started"])


async def test_a_lab_that_cannot_bind_three_times_fails_with_its_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    squatter = Squatter()
    monkeypatch.setattr(procs, "free_port", lambda host="127.0.0.1": squatter.port)
    ctx = local_context(tmp_path)
    try:
        async with httpx.AsyncClient(trust_env=False) as http_client:
            with pytest.raises(LabFailed) as failed:
                await LocalDriver(http_client).start(ctx)
    finally:
        squatter.shutdown()
        squatter.server_close()
    assert failed.value.message.startswith("The lab process ended during start with exit code 1")
    assert "Address already in use" in failed.value.detail
    output = (tmp_path / "labs" / ctx.lab_id / "output.log").read_text()
    assert output.count("fakelab starting") == 3, output


async def test_a_resumed_start_follows_the_process_a_dead_replica_launched(
    tmp_path: Path,
) -> None:
    """A replica killed between launching a lab's process and storing its handle (CI: a
    burst of fifty starts, one replica SIGKILLed) left a process nobody knew; the replica
    that took the start over launched a second one. Now a resumed start finds the first
    by the lab's id in its environment and follows it (each replica has its own state
    directory, so the run directory's record is not there)."""
    ctx = local_context(tmp_path / "taker")
    ctx.resumed = True
    port = procs.free_ports(1)[0]
    prefix = "/user/alice/"
    env = {
        **os.environ,
        "JUPYTERHUB_SERVICE_URL": f"http://127.0.0.1:{port}{prefix}",
        "LABLINK_LAB_ID": ctx.lab_id,
    }
    earlier = subprocess.Popen(  # noqa: ASYNC220 (a process a dead replica launched)
        [*FAKELAB, "--start-delay=0.5"], env=env, start_new_session=True
    )
    try:
        async with httpx.AsyncClient(trust_env=False) as http_client:
            driver = LocalDriver(http_client)
            url = await driver.start(ctx)
            assert url == f"http://127.0.0.1:{port}"
            assert ctx.handle["pid"] == earlier.pid and ctx.handle["port"] == port
            assert not (tmp_path / "taker" / "labs" / ctx.lab_id / "output.log").exists()
            await driver.stop(ctx)
        assert earlier.wait(5) is not None
    finally:
        earlier.kill()
        earlier.wait(5)


async def test_a_first_start_carries_the_lab_id_and_looks_for_no_earlier_launch(
    tmp_path: Path,
) -> None:
    ctx = local_context(tmp_path)
    async with httpx.AsyncClient(trust_env=False) as http_client:
        driver = LocalDriver(http_client)
        await driver.start(ctx)
        try:
            proc_environ = Path(f"/proc/{ctx.handle['pid']}/environ")
            environ = (await asyncio.to_thread(proc_environ.read_bytes)).split(b"\0")
            assert f"LABLINK_LAB_ID={ctx.lab_id}".encode() in environ
            found = launched_elsewhere(ctx.lab_id, tmp_path / "x.log")
            assert found is not None and found["pid"] == ctx.handle["pid"]
            assert found["port"] == ctx.handle["port"]
        finally:
            await driver.stop(ctx)
    assert launched_elsewhere(ctx.lab_id, tmp_path / "x.log") is None
