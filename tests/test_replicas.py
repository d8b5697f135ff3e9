"""Several backend replicas on one PostgreSQL database behind HAProxy (issue 16).

Three ``lablink backend`` processes share a fresh database; HAProxy (Debian's, run by
the test) balances them round robin and checks them. Each test goes through HAProxy
unless it says otherwise, kills replicas as an operator or a crash would (SIGKILL,
SIGTERM) and checks what a person sees (every lab reaches running, nothing is lost,
nothing runs twice) and what the database says (``labs.owner``: exactly one live
replica follows each lab).

Labs are tests/fakelab.py processes; each start puts ``LABLINK_TEST_TAG`` in the lab's
environment so that a test counts the processes of one lab. The shared ``replicas``
set is restarted where a test killed one of its replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from backend.embedded import default_proxy_command
from backend.procs import free_ports
from backend.systems.slurm import jobs
from tests.helpers import site
from tests.helpers.api import lab_request
from tests.helpers.hub import HubUser
from tests.helpers.labs import (
    FAKELAB,
    assert_error,
    fakelab_processes,
    kill_fakelabs,
    process_environment,
    sse_events,
)
from tests.helpers.peers import peer_missing
from tests.helpers.replicas import (
    TAG_ENV,
    ReplicaSet,
    haproxy_program,
    run_coroutine,
    tagged_processes,
)
from tests.helpers.slurm import SlurmCluster, SlurmRest, block_the_node, scancel
from tests.helpers.stack import REPO, end_process, launch

pytestmark = [pytest.mark.replicas, pytest.mark.postgres, pytest.mark.integration]

LEASE = 3.0  # the site's replicas.lease (the production default): takeover within 5 s
SLOW = 4  # seconds the "slow" system's labs take before they answer
TINY = 10  # active labs the VO "tiny" allows
VOS = {
    "everyone": {"display_name": "Everyone", "members": {"users": ["*"]}},
    "tiny": {
        "display_name": "Tiny",
        "members": {"groups": ["tiny"]},
        "quota": {"labs": TINY},
    },
}


def systems() -> dict[str, dict[str, Any]]:
    """``local``: labs that answer at once; ``slow``: labs that answer after SLOW s."""
    return {
        "local": site.local_system(),
        "slow": site.local_system(
            display_name="Slow test machine", command=[*FAKELAB, f"--start-delay={SLOW}"]
        ),
    }


def need_haproxy() -> None:
    if haproxy_program() is None:
        peer_missing("HAProxy (Debian's haproxy)", "not installed (bash .ci/peers.sh haproxy)")


def new_set(root: Path, admin_url: str, **kw: Any) -> ReplicaSet:
    need_haproxy()
    rs = ReplicaSet(root, admin_url, **kw)
    try:
        rs.start_all()
    except BaseException:
        rs.close()
        raise
    return rs


@pytest.fixture(scope="module")
def replica_set(
    tmp_path_factory: pytest.TempPathFactory, postgres_admin_url: str
) -> Iterator[ReplicaSet]:
    rs = new_set(
        tmp_path_factory.mktemp("replicas"),
        postgres_admin_url,
        lease=LEASE,
        systems=systems(),
        extra={"vos": VOS},
    )
    yield rs
    rs.close()


@pytest.fixture
def replicas(replica_set: ReplicaSet) -> Iterator[ReplicaSet]:
    """The shared set, every replica running; afterwards the dead are started again and
    the test's labs stopped (their processes killed), so the next test begins clean."""
    for replica in replica_set.replicas:
        if not replica.running:
            replica_set.start(replica.index, wait=False)
    for replica in replica_set.replicas:
        replica_set.wait_healthy(replica.index)
    yield replica_set
    run_coroutine(stop_all(replica_set))
    kill_fakelabs()


async def stop_all(rs: ReplicaSet, timeout: float = 20) -> None:
    """Ask for every active lab to stop (best effort: a broken set may not manage)."""
    try:
        async with rs.client(None, admin=True, timeout=10) as admin:
            active = (await admin.get("/labs", params={"active": "true"})).json()
            await asyncio.gather(*(admin.delete(f"/labs/{lab['id']}") for lab in active))
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if not (await admin.get("/labs", params={"active": "true"})).json():
                    return
                await asyncio.sleep(0.2)
    except (httpx.HTTPError, ValueError):
        pass


# -- a start as the spawner makes it ------------------------------------------------------


def tagged_request(
    user: str, system: str = "local", tag: str | None = None, **extra: Any
) -> dict[str, Any]:
    """The body of a start for ``user`` on ``system``; the lab's processes carry ``tag``
    (the user name unless given) in LABLINK_TEST_TAG."""
    body = lab_request(user, options={"system": system}, **extra)
    body["env"][TAG_ENV] = tag or user
    return body


async def start_lab(
    client: httpx.AsyncClient, body: dict[str, Any], attempts: int = 4
) -> httpx.Response:
    """POST a start as the spawner does: one Idempotency-Key for the start, the same
    POST sent again after a connection error, 502 or 503 (up to ``attempts`` in ~10 s)."""
    headers = {"Idempotency-Key": str(uuid.uuid4()), "X-Lablink-User": body["user"]["name"]}
    for attempt in range(attempts):
        try:
            resp = await client.post("/labs", json=body, headers=headers)
        except httpx.TransportError:
            if attempt == attempts - 1:
                raise
        else:
            if resp.status_code not in (502, 503) or attempt == attempts - 1:
                return resp
        await asyncio.sleep(0.5 * 2**attempt)
    raise AssertionError("not reached")


async def lab_state(client: httpx.AsyncClient, lab_id: str) -> dict[str, Any]:
    """The lab as the API answers it, asked again through a failing replica (a request
    HAProxy sent to a replica that died answers 502/503)."""
    for _ in range(20):
        try:
            resp = await client.get(f"/labs/{lab_id}")
        except httpx.TransportError:
            await asyncio.sleep(0.2)
            continue
        if resp.status_code == 200:
            return resp.json()  # type: ignore[no-any-return]
        if resp.status_code not in (502, 503, 504):
            raise AssertionError(f"GET lab {lab_id}: {resp.status_code} {resp.text}")
        await asyncio.sleep(0.2)
    raise AssertionError(f"GET lab {lab_id} kept failing")


async def wait_states(
    rs: ReplicaSet,
    client: httpx.AsyncClient,
    lab_ids: list[str],
    states: set[str],
    timeout: float = 40,
) -> dict[str, dict[str, Any]]:
    """Until every lab is in one of ``states``; fails naming the others (and the logs)."""
    deadline = time.monotonic() + timeout
    seen: dict[str, dict[str, Any]] = {}
    while True:
        left = [i for i in lab_ids if seen.get(i, {}).get("state") not in states]
        for lab_id in left:
            seen[lab_id] = await lab_state(client, lab_id)
        left = [i for i in lab_ids if seen[i]["state"] not in states]
        if not left:
            return seen
        if time.monotonic() > deadline:
            shown = {i[:8]: (seen[i]["state"], seen[i]["message"]) for i in left[:10]}
            raise AssertionError(
                f"{len(left)} labs not {states} after {timeout:g} s: {shown}\n{rs.all_logs(3000)}"
            )
        await asyncio.sleep(0.2)


async def wait_owned_by_live(
    rs: ReplicaSet, lab_ids: list[str], timeout: float, not_by: str | None = None
) -> float:
    """Until every lab's owner is a live replica (other than ``not_by``); the seconds."""
    began = time.monotonic()
    while True:
        live = await rs.live_replica_ids()
        owners = await rs.owners(lab_ids)
        orphans = {i: o for i, o in owners.items() if o not in live or (not_by and o == not_by)}
        if not orphans:
            return time.monotonic() - began
        if time.monotonic() - began > timeout:
            raise AssertionError(
                f"{len(orphans)} labs not owned by a live replica after {timeout:g} s: "
                f"{ {i[:8]: o for i, o in list(orphans.items())[:10]} }, live {live}\n"
                f"{rs.all_logs(3000)}"
            )
        await asyncio.sleep(0.05)


def assert_one_process_each(tags: list[str]) -> None:
    counts = {tag: len(tagged_processes(tag)) for tag in tags}
    wrong = {tag: n for tag, n in counts.items() if n != 1}
    assert not wrong, f"labs without exactly one process: {wrong}"


async def owner_index(rs: ReplicaSet, lab_id: str) -> int:
    owner = (await rs.owners([lab_id]))[lab_id]
    live = await rs.live_replica_ids()
    assert owner in live, f"lab {lab_id} is owned by {owner}, no live replica ({live})"
    return live[owner]


# -- any replica answers --------------------------------------------------------------------


async def test_a_lab_started_on_one_replica_is_seen_and_stopped_on_the_others(
    replicas: ReplicaSet,
) -> None:
    """Each replica starts a lab (directly, not through HAProxy); every other replica
    sees it and lists it, and the next one stops it; each lab has exactly one owner,
    the replica that took its start."""
    rs = replicas
    lab_ids: dict[int, str] = {}
    for i in range(3):
        async with rs.client(f"any{i}", replica=i) as client:
            resp = await start_lab(client, tagged_request(f"any{i}"))
            assert resp.status_code == 202, resp.text
            lab_ids[i] = resp.json()["id"]
    async with rs.client(None, admin=True) as admin:
        await wait_states(rs, admin, list(lab_ids.values()), {"running"})
    ids = {i: await rs.replica_id(i) for i in range(3)}
    owners = await rs.owners(list(lab_ids.values()))
    assert owners == {lab_ids[i]: ids[i] for i in range(3)}, (owners, ids)
    for i, lab_id in lab_ids.items():
        for j in range(3):
            async with rs.client(f"any{i}", replica=j) as client:
                lab = (await client.get(f"/labs/{lab_id}")).json()
                assert lab["state"] == "running", (j, lab)
                listed = (await client.get("/labs")).json()
                assert [x["id"] for x in listed] == [lab_id], (j, listed)
        stopper = (i + 1) % 3
        async with rs.client(f"any{i}", replica=stopper) as client:
            assert (await client.delete(f"/labs/{lab_id}")).status_code == 202
        async with rs.client(f"any{i}", replica=(i + 2) % 3) as client:
            await wait_states(rs, client, [lab_id], {"stopped"}, timeout=20)
        assert tagged_processes(f"any{i}") == [], f"lab {lab_id}'s process outlived its stop"


async def test_a_starts_secrets_are_sealed_in_the_database_and_never_logged(
    replicas: ReplicaSet,
) -> None:
    """What another replica needs to launch a lab (its hub token, the person's access
    token) is in the database sealed only, until the lab runs; no log holds it."""
    rs = replicas
    hub_token = f"hub-token-{uuid.uuid4().hex}"
    access_token = f"access-token-{uuid.uuid4().hex}"
    body = tagged_request("sealer", "slow")
    body["env"]["JUPYTERHUB_API_TOKEN"] = hub_token
    body["user"]["access_token"] = access_token
    async with rs.client("sealer") as client:
        resp = await start_lab(client, body)
        assert resp.status_code == 202, resp.text
        lab_id = resp.json()["id"]
        await wait_states(rs, client, [lab_id], {"starting"}, timeout=10)
        [kept] = await rs.rows(
            "SELECT env, access_token FROM lab_secrets WHERE lab_id = $1", lab_id
        )
        assert kept["env"] and kept["access_token"], "the start's secrets are kept for a takeover"
        dump = await rs.database_text()
        assert hub_token not in dump and access_token not in dump, "a secret in the clear"
        await wait_states(rs, client, [lab_id], {"running"}, timeout=SLOW + 10)
        [kept] = await rs.rows("SELECT env FROM lab_secrets WHERE lab_id = $1", lab_id)
        assert kept["env"] is None, "the start's environment outlived the start"
        assert (await client.delete(f"/labs/{lab_id}")).status_code == 202
        await wait_states(rs, client, [lab_id], {"stopped"}, timeout=20)
    assert await rs.rows("SELECT lab_id FROM lab_secrets WHERE lab_id = $1", lab_id) == []
    logs = [rs.logs(i, 10**7, requests=True) for i in range(3)] + [rs.haproxy_log.read_text()]
    assert not [log for log in logs if hub_token in log or access_token in log]


# -- events cross replicas -----------------------------------------------------------------


async def read_stream(
    client: httpx.AsyncClient,
    lab_id: str,
    until: set[str],
    last_id: str | None = None,
    timeout: float = 30,
) -> tuple[float, list[tuple[float, dict[str, Any]]]]:
    """Read a lab's event stream until an event in ``until``: (when it was opened, the
    events with the time each arrived)."""
    headers = {"Last-Event-ID": last_id} if last_id else {}
    got: list[tuple[float, dict[str, Any]]] = []
    opened = time.time()
    async with client.stream(
        "GET", f"/labs/{lab_id}/events/stream", headers=headers, timeout=timeout
    ) as resp:
        assert resp.status_code == 200, await resp.aread()
        lines: list[str] = []
        async for line in resp.aiter_lines():
            lines.append(line)
            if line == "":
                for event in sse_events(lines):
                    got.append((time.time(), event))
                lines = []
                if got and got[-1][1]["state"] in until:
                    break
    return opened, got


def lags(opened: float, got: list[tuple[float, dict[str, Any]]]) -> list[float]:
    """For each event stored after the stream was opened: seconds from its storing to
    its arrival."""
    out = []
    for arrived, event in got:
        stored = datetime.fromisoformat(event["time"]).timestamp()
        if stored > opened:
            out.append(arrived - stored)
    return out


async def test_a_stream_on_one_replica_sees_another_replicas_events_within_a_second(
    replicas: ReplicaSet,
) -> None:
    rs = replicas
    async with rs.client("streamer", replica=0) as a:
        resp = await start_lab(a, tagged_request("streamer", "slow"))
        assert resp.status_code == 202, resp.text
        lab_id = resp.json()["id"]
    async with rs.client("streamer", replica=1) as b:
        opened_b, on_b = await read_stream(b, lab_id, {"running"}, timeout=SLOW + 20)
    running_id = on_b[-1][1]["_id"]
    async with rs.client("streamer", replica=2) as c, rs.client("streamer", replica=0) as a:
        reader = asyncio.create_task(read_stream(c, lab_id, {"stopped"}, last_id=running_id))
        await asyncio.sleep(1)  # the stream on C waits
        assert (await a.delete(f"/labs/{lab_id}")).status_code == 202
        opened_c, on_c = await reader
        stored = (await a.get(f"/labs/{lab_id}/events")).json()
    seqs = [int(e["_id"]) for _, e in on_b + on_c]
    assert seqs == [e["seq"] for e in stored], "the two streams together are every event once"
    assert int(on_c[0][1]["_id"]) == int(running_id) + 1, "C resumed after the last id B gave"
    late_b, late_c = lags(opened_b, on_b), lags(opened_c, on_c)
    print(f"event lag on B: {[round(x, 3) for x in late_b]}, on C: {[round(x, 3) for x in late_c]}")
    assert late_b and late_c, "events written while the streams were open"
    assert max(late_b + late_c) < 1.0, (late_b, late_c, rs.all_logs(2000))


# -- SIGKILL ----------------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_replica_killed_in_a_burst_of_fifty_starts_fails_none(
    replicas: ReplicaSet,
) -> None:
    rs = replicas
    users = [f"burst{i:02d}" for i in range(50)]
    victim = await rs.replica_id(1)
    async with rs.client(None, connections=60) as client:

        async def one(i: int) -> httpx.Response:
            await asyncio.sleep(i * 0.04)  # 50 starts in two seconds
            return await start_lab(client, tagged_request(users[i]))

        starts = [asyncio.create_task(one(i)) for i in range(50)]
        # killed once it follows a few of the burst's labs, while the burst goes on
        sql = "SELECT count(*) AS n FROM labs WHERE owner = $1 AND user_name LIKE 'burst%'"
        deadline = time.monotonic() + 1.5
        owned = 0
        while owned < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            owned = (await rs.rows(sql, victim))[0]["n"]
        rs.kill(1)
        answers = await asyncio.gather(*starts)
        print(f"replica 1 was killed following {owned} of the burst's labs")
        assert owned > 0, "the replica died before it took any start: nothing was tested"
        failed = [
            (users[i], r.status_code, r.text) for i, r in enumerate(answers) if r.status_code != 202
        ]
        assert not failed, f"{len(failed)} starts failed: {failed[:5]}\n{rs.all_logs(3000)}"
        lab_ids = [r.json()["id"] for r in answers]
        assert len(set(lab_ids)) == 50
    async with rs.client(None, admin=True) as admin:
        await wait_states(rs, admin, lab_ids, {"running"}, timeout=60)
    await wait_owned_by_live(rs, lab_ids, 10)
    assert_one_process_each(users)
    assert await rs.active_count() == 50


async def test_killing_the_owner_of_a_starting_lab_hands_the_start_to_another(
    replicas: ReplicaSet,
) -> None:
    rs = replicas
    async with rs.client("starter", replica=0) as a:
        resp = await start_lab(a, tagged_request("starter", "slow"))
        assert resp.status_code == 202, resp.text
        lab_id = resp.json()["id"]
        await wait_states(rs, a, [lab_id], {"starting"}, timeout=10)
    dead = await rs.replica_id(0)
    rs.kill(0)
    async with rs.client("starter") as client:
        lab = (await wait_states(rs, client, [lab_id], {"running", "failed"}, SLOW + 15))[lab_id]
    assert lab["state"] == "running", lab
    await wait_owned_by_live(rs, [lab_id], 5, not_by=dead)
    assert_one_process_each(["starter"])


async def test_killing_the_owner_of_a_stopping_lab_still_stops_it(replicas: ReplicaSet) -> None:
    """The lab ignores SIGTERM (stop_grace: 3 s), so its stop is under way when the owner
    dies; another replica finishes it."""
    rs = replicas
    body = tagged_request("stopper")
    body["env"]["FAKELAB_IGNORE_TERM"] = "1"
    async with rs.client("stopper", replica=2) as owner:
        resp = await start_lab(owner, body)
        assert resp.status_code == 202, resp.text
        lab_id = resp.json()["id"]
        await wait_states(rs, owner, [lab_id], {"running"})
        [pid] = tagged_processes("stopper")
        assert (await owner.delete(f"/labs/{lab_id}")).status_code == 202
        await asyncio.sleep(0.5)
        assert (await lab_state(owner, lab_id))["state"] == "stopping"
    rs.kill(2)
    async with rs.client("stopper") as client:
        lab = (await wait_states(rs, client, [lab_id], {"stopped", "failed"}, timeout=20))[lab_id]
    assert lab["state"] == "stopped", lab
    assert tagged_processes("stopper") == [], f"process {pid} outlived the stop"


async def test_a_dead_replicas_running_labs_are_owned_by_others_within_five_seconds(
    replicas: ReplicaSet,
) -> None:
    rs = replicas
    users = [f"taken{i}" for i in range(6)]
    async with rs.client(None, replica=1) as direct, rs.client(None, admin=True) as admin:
        answers = [await start_lab(direct, tagged_request(u)) for u in users]
        lab_ids = [r.json()["id"] for r in answers]
        await wait_states(rs, admin, lab_ids, {"running"})
    dead = await rs.replica_id(1)
    assert set((await rs.owners(lab_ids)).values()) == {dead}
    rs.kill(1)
    took = await wait_owned_by_live(rs, lab_ids, 15, not_by=dead)
    print(f"takeover after SIGKILL (lease {LEASE:g} s): {took:.2f} s for {len(lab_ids)} labs")
    assert took <= 5.0, f"takeover took {took:.2f} s"
    async with rs.client(None, admin=True) as admin:
        states = await wait_states(rs, admin, lab_ids, {"running"}, timeout=5)
    assert {lab["state"] for lab in states.values()} == {"running"}
    assert_one_process_each(users)


# -- rolling restart -----------------------------------------------------------------------


@pytest.mark.slow
async def test_a_rolling_restart_loses_no_lab_and_starts_none_twice(
    replicas: ReplicaSet,
) -> None:
    rs = replicas
    running = [f"roll{i:02d}" for i in range(20)]
    starting = [f"rollslow{i}" for i in range(5)]
    async with rs.client(None, connections=30) as client, rs.client(None, admin=True) as admin:
        answers = await asyncio.gather(*(start_lab(client, tagged_request(u)) for u in running))
        assert [r.status_code for r in answers] == [202] * 20, [r.text for r in answers]
        run_ids = [r.json()["id"] for r in answers]
        await wait_states(rs, admin, run_ids, {"running"})
        answers = await asyncio.gather(
            *(start_lab(client, tagged_request(u, "slow")) for u in starting)
        )
        assert [r.status_code for r in answers] == [202] * 5, [r.text for r in answers]
        slow_ids = [r.json()["id"] for r in answers]
        for i in range(3):
            began = time.monotonic()
            code = rs.stop(i)
            said = rs.logs(i, 3000).rsplit("---- ", 2)[-2]  # this process's last lines
            # uvicorn ends by its signal again once it has shut down cleanly
            assert code in (0, -signal.SIGTERM) and "Application shutdown complete" in said, (
                f"replica {i} did not shut down cleanly on SIGTERM (exit code {code}):\n{said}"
            )
            rs.start(i)
            print(f"replica {i} restarted in {time.monotonic() - began:.1f} s")
        states = await wait_states(rs, admin, run_ids + slow_ids, {"running"}, timeout=30)
    assert {lab["state"] for lab in states.values()} == {"running"}
    await wait_owned_by_live(rs, run_ids + slow_ids, 10)
    assert_one_process_each(running + starting)


# -- quota -----------------------------------------------------------------------------------


@pytest.mark.quota
async def test_fifty_starts_across_replicas_admit_exactly_the_room_left(
    replicas: ReplicaSet,
) -> None:
    rs = replicas
    users = [f"quota{i:02d}" for i in range(50)]

    def body(user: str) -> dict[str, Any]:
        b = tagged_request(user, vo="tiny")
        b["user"]["groups"] = ["tiny"]
        return b

    async with rs.client(None, connections=60) as client:
        answers = await asyncio.gather(*(start_lab(client, body(u)) for u in users))
    statuses = sorted(r.status_code for r in answers)
    assert statuses.count(202) == TINY and statuses.count(429) == 50 - TINY, statuses
    for refused in (r for r in answers if r.status_code == 429):
        assert_error(refused, 429, "VO Tiny", f"limit of {TINY} active labs")
    assert await rs.active_count("tiny") == TINY


# -- SQLite: one backend only -----------------------------------------------------------------


def backend_argv(site_file: Path, port: int, state_dir: Path) -> list[str]:
    return [sys.executable, "-m", "backend.cli", "backend", "--site", str(site_file),
            "--port", str(port), "--state-dir", str(state_dir)]  # fmt: skip


def test_a_second_backend_on_one_sqlite_database_refuses_to_start(tmp_path: Path) -> None:
    """Not through HAProxy: two backends on one SQLite site file."""
    database = tmp_path / "backend.sqlite"
    site_file = site.write(
        site.doc(tmp_path / "state", f"sqlite+aiosqlite:///{database}"), tmp_path / "site.yaml"
    )
    tokens = {site.HUB_TOKEN_ENV: "h" * 32, site.ADMIN_TOKEN_ENV: "a" * 32}
    env = {k: v for k, v in os.environ.items() if k != "LABLINK_DATABASE_URL"} | tokens
    first_port, second_port = free_ports(2)
    headers = {"Authorization": f"Bearer {tokens[site.HUB_TOKEN_ENV]}", "X-Lablink-User": "solo"}
    solo = httpx.Client(
        base_url=f"http://127.0.0.1:{first_port}/api/v1", headers=headers, trust_env=False
    )

    def answers() -> bool:
        return solo.get("/health").status_code == 200

    def wait_state(lab_id: str, state: str) -> None:
        deadline = time.monotonic() + 20
        while (lab := solo.get(f"/labs/{lab_id}").json())["state"] != state:
            assert time.monotonic() < deadline, lab
            time.sleep(0.1)

    first = launch(
        backend_argv(site_file, first_port, tmp_path / "state"),
        env, tmp_path / "first.log", answers, "the first backend",
    )  # fmt: skip
    try:
        second = subprocess.run(
            backend_argv(site_file, second_port, tmp_path / "state"),
            cwd=REPO, env=env, capture_output=True, text=True, timeout=20,
        )  # fmt: skip
        assert second.returncode == 2, (second.returncode, second.stderr[-2000:])
        said = second.stderr.strip().splitlines()
        assert said[-1] == (
            f"lablink backend: another backend (pid {first.pid}) already uses the SQLite "
            f"database {database}; SQLite allows one backend - set database_url to a "
            "PostgreSQL database to run several."
        ), said[-3:]
        assert "Traceback" not in second.stderr
        assert first.poll() is None and answers()
        resp = solo.post("/labs", json=tagged_request("solo"))
        assert resp.status_code == 202, resp.text
        lab_id = resp.json()["id"]
        wait_state(lab_id, "running")
        solo.delete(f"/labs/{lab_id}")
        wait_state(lab_id, "stopped")
    finally:
        solo.close()
        end_process(first, signal.SIGTERM, 20)


# -- losing the database ------------------------------------------------------------------------


async def test_a_replica_that_loses_its_database_answers_503_and_its_labs_move(
    replicas: ReplicaSet,
) -> None:
    rs = replicas
    users = [f"cut{i}" for i in range(3)]
    async with rs.client(None, replica=2) as direct, rs.client(None, admin=True) as admin:
        answers = [await start_lab(direct, tagged_request(u)) for u in users]
        lab_ids = [r.json()["id"] for r in answers]
        await wait_states(rs, admin, lab_ids, {"running"})
    cut = await rs.replica_id(2)
    rs.cut_database(2)
    try:
        healthz = f"{rs.replica_url(2)}/healthz"
        deadline = time.monotonic() + LEASE + 5
        async with httpx.AsyncClient(trust_env=False, timeout=5) as http:
            while (resp := await http.get(healthz)).status_code != 503:
                assert time.monotonic() < deadline, (resp.status_code, resp.text, rs.logs(2))
                await asyncio.sleep(0.2)
            assert resp.json()["status"] == "unavailable", resp.text
        async with rs.client("cut0", replica=2) as direct:
            refused = await direct.get("/labs")
        assert_error(refused, 503, "database")
        assert refused.headers.get("retry-after") == "5"
        await wait_owned_by_live(rs, lab_ids, LEASE + 10, not_by=cut)
        async with rs.client(None, admin=True) as admin:  # HAProxy: the others answer
            states = await wait_states(rs, admin, lab_ids, {"running"}, timeout=5)
            assert {lab["state"] for lab in states.values()} == {"running"}
        assert_one_process_each(users)
        rs.wait_haproxy_status(2, "DOWN")
    finally:
        rs.restore_database(2)
    deadline = time.monotonic() + 20
    while not rs.answers(2):
        assert time.monotonic() < deadline, f"replica 2 did not recover:\n{rs.logs(2, 4000)}"
        await asyncio.sleep(0.2)
    rs.wait_healthy(2, 10)


# -- HPC: a lab waiting in Slurm's queue -------------------------------------------------------


@pytest.fixture
def slurm_replicas(
    tmp_path: Path, postgres_admin_url: str, slurm: SlurmCluster, slurmrest: SlurmRest
) -> Iterator[ReplicaSet]:
    cluster = site.slurm_system(slurmrest.url, slurmrest.key_file)
    rs = new_set(tmp_path / "set", postgres_admin_url, count=2, lease=LEASE,
                 systems={"cluster": cluster})  # fmt: skip
    yield rs
    run_coroutine(stop_all(rs, 30))
    rs.close()


@pytest.mark.slow
async def test_killing_the_owner_of_a_queued_hpc_lab_follows_the_same_job(
    slurm_replicas: ReplicaSet,
    slurm: SlurmCluster,
    slurmrest: SlurmRest,
) -> None:
    rs = slurm_replicas
    blocker = block_the_node(slurm)
    try:
        async with rs.client("alice", replica=0) as owner:
            resp = await start_lab(owner, tagged_request("alice", "cluster"))
            assert resp.status_code == 202, resp.text
            lab_id = resp.json()["id"]
            lab = (await wait_states(rs, owner, [lab_id], {"queued"}, timeout=30))[lab_id]
        [row] = await rs.rows("SELECT handle, owner FROM labs WHERE id = $1", lab_id)
        job_id = str(row_handle(row)["job"])
        dead = row["owner"]
        rs.kill(0)
        await wait_owned_by_live(rs, [lab_id], 10, not_by=dead)
        assert await owner_index(rs, lab_id) == 1
        async with rs.client("alice") as client:
            lab = await lab_state(client, lab_id)
            assert lab["state"] == "queued", lab
            scancel(slurm, blocker)
            lab = (await wait_states(rs, client, [lab_id], {"running"}, timeout=40))[lab_id]
        [row] = await rs.rows("SELECT handle FROM labs WHERE id = $1", lab_id)
        assert str(row_handle(row)["job"]) == job_id, "the new owner followed another job"
        async with httpx.AsyncClient(trust_env=False) as http:
            client = slurmrest.client(http, "lablink-alice")
            tagged = [j for j in await client.jobs() if jobs.finds(j, lab_id)]
        assert [str(j["job_id"]) for j in tagged] == [job_id], tagged
        assert_one_process_each(["alice"])
    finally:
        scancel(slurm, blocker)


def row_handle(row: dict[str, Any]) -> dict[str, Any]:
    handle = row["handle"]
    if isinstance(handle, str):
        handle = json.loads(handle)
    assert isinstance(handle, dict)
    return handle


# -- the hub's spawner pointed at HAProxy ---------------------------------------------------------

PASSWORD = "replicas-password-0123"


class PortTaken(Exception):
    """A port chosen for the hub was taken by another process before the hub bound it."""


@pytest.fixture
def hub(replicas: ReplicaSet, tmp_path: Path) -> Iterator[str]:
    """JupyterHub (``lablink hub``) whose spawner talks to HAProxy; its URL."""
    for attempt in range(3):
        hub_port, api_port, proxy_port = free_ports(3)
        env = {
            **os.environ,
            "LABLINK_STATE_DIR": str(tmp_path / f"hub-state-{attempt}"),
            "LABLINK_PROXY_COMMAND": os.environ.get("LABLINK_PROXY_COMMAND")
            or default_proxy_command(),
            "LABLINK_BACKEND_URL": replicas.url,
            "LABLINK_BACKEND_TOKEN": replicas.tokens["hub"],
            "LABLINK_HUB_URL": f"http://127.0.0.1:{hub_port}",
            "LABLINK_HUB_API_PORT": str(api_port),
            "LABLINK_PROXY_API_PORT": str(proxy_port),
            "LABLINK_DEMO_PASSWORD": PASSWORD,
            "LABLINK_POLL_INTERVAL": "2",
        }
        url = f"http://127.0.0.1:{hub_port}"
        log = tmp_path / f"hub-{attempt}.log"

        def ready(url: str = url, log: Path = log) -> bool:
            # the ports were free when chosen; another process may have bound one since
            if "EADDRINUSE" in log.read_text(errors="replace"):
                raise PortTaken(log.read_text(errors="replace")[-2000:])
            return httpx.get(f"{url}/hub/api/", timeout=2, trust_env=False).status_code == 200

        argv = [sys.executable, "-m", "backend.cli", "hub", "--", "--log-level=INFO"]
        try:
            proc = launch(argv, env, log, ready, "JupyterHub", timeout=60)
        except PortTaken:
            kill_stack_of(tmp_path / f"hub-state-{attempt}")
            continue
        yield url
        end_process(proc, signal.SIGTERM, 30)
        return
    raise AssertionError("JupyterHub found a port taken three times")


def kill_stack_of(state_dir: Path) -> None:
    """End the hub (and its proxy) started with ``state_dir`` (after a failed start)."""
    mark = str(state_dir).encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if mark in (entry / "environ").read_bytes():
                    os.kill(int(entry.name), signal.SIGKILL)


@pytest.mark.slow
async def test_a_start_through_the_hub_survives_the_death_of_its_replica(
    replicas: ReplicaSet, hub: str, tmp_path: Path
) -> None:
    rs = replicas
    async with HubUser(hub, "hubperson", PASSWORD) as person:
        await person.login()
        starting = asyncio.create_task(person.start(options={"system": "slow"}))
        deadline = time.monotonic() + 20
        while not (found := await rs.rows("SELECT id, owner FROM labs WHERE user_name = $1",
                                          "hubperson")):  # fmt: skip
            assert time.monotonic() < deadline, "the hub's start did not reach the backend"
            await asyncio.sleep(0.1)
        lab_id = found[0]["id"]
        victim = await owner_index(rs, lab_id)
        rs.kill(victim)
        response = await starting
        assert response.status_code in (201, 202), response.text
        waited = 0.0
        while not (model := await person.model())["servers"].get("", {}).get("ready"):
            assert waited < SLOW + 30, model
            await asyncio.sleep(0.2)
            waited += 0.2
        async with rs.client("hubperson") as client:
            lab = await lab_state(client, lab_id)
        assert lab["state"] == "running", lab
        labs = await rs.rows("SELECT id FROM labs WHERE user_name = $1", "hubperson")
        assert [r["id"] for r in labs] == [lab_id], "the hub's start made one lab"
        pids = tagged_processes_of_prefix("/user/hubperson/")
        assert len(pids) == 1, pids
        assert (await person.stop()).status_code in (202, 204)
        await person.wait_stopped()


def tagged_processes_of_prefix(prefix: str) -> list[int]:
    """The fakelab processes whose JUPYTERHUB_SERVICE_PREFIX is ``prefix`` (labs the
    hub started carry no test tag)."""
    return [
        pid
        for pid in fakelab_processes()
        if process_environment(pid).get("JUPYTERHUB_SERVICE_PREFIX") == prefix
    ]
