"""Replicas of the backend: start throughput, takeover, re-attach, the cost of following.

    make bench-replicas ARGS="--parts follow --labs 1000"

Parts (``--parts``, comma-separated; all by default):

``follow``
    The cost of following: ONE ``lablink backend`` process follows ``--labs``
    running labs while nothing changes; its CPU (user + system, from
    ``/proc/<pid>/stat``, what psutil's ``cpu_times`` reads) over ``--seconds``
    seconds once all run, its resident memory, threads and open files. Two
    kinds, one after the other (``--kinds``):

    - ``local``: each lab is a process on this machine;
    - ``unicore``: each lab is a job of the UNICORE development site
      (``lablink unicore-devsite``, jobs as local processes), followed through
      its REST API with the system's default ``watch_interval`` (10 s).

    A thousand JupyterLabs (or tests/fakelab.py, ~25 MiB each) would not fit
    beside the backend on a 2-core machine, so every lab is
    ``benchmarks/tinylab.c`` (built here with ``cc``): it listens at the port of
    ``JUPYTERHUB_SERVICE_URL`` and answers every request 200, ~1.4 MiB each —
    to the backend it is a lab like any other (its probe of ``<url><prefix>api``
    answers). For ``local`` the measure is taken twice: with the labs the
    backend started (its children), and again after a restart of the backend
    (the labs are no longer its children: it re-attaches by pid).

``throughput``
    Start throughput: ``--starts`` start requests (``POST /api/v1/labs``, 50 at a
    time) against 1, 2 and 3 replicas (``--replicas``) behind HAProxy on a fresh
    PostgreSQL database (tests/helpers/replicas.py), and against one replica
    directly (no HAProxy) in the same run; labs/s and p50/p99 of the POST.

Takeover after SIGKILL and a restarted replica re-attaching its labs wait for the
ownership work (``backend/replicas.py``); a single backend's re-attach is the
``follow`` part's second measure ("re-attached ... in N s").

HAProxy and PostgreSQL are the tests' peers (``.ci/peers.sh``); labs the bench
started and a failed backend left behind are ended at the end (only processes of
this run's own ``tinylab`` build).

The last line is machine-readable (``key=value`` pairs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from backend.procs import free_port  # noqa: E402
from benchmarks.workshop import cpu_seconds, percentile  # noqa: E402
from tests.helpers import site  # noqa: E402
from tests.helpers.devsite import PASSWORD, PASSWORD_ENV, Devsite, run_devsite  # noqa: E402
from tests.helpers.stack import end_process, launch  # noqa: E402

TINYLAB_SOURCE = REPO / "benchmarks" / "tinylab.c"
CONCURRENCY = 50  # start and stop requests in flight at once
PAGE = 4096


# -- processes (pure reads of /proc) --------------------------------------------------


def memory(pid: int) -> dict[str, float]:
    """Resident memory (MiB), threads and open files of a process."""
    out = {"rss_mib": 0.0, "threads": 0.0, "fds": 0.0}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                out["rss_mib"] = int(line.split()[1]) / 1024
            elif line.startswith("Threads:"):
                out["threads"] = float(line.split()[1])
        out["fds"] = float(len(os.listdir(f"/proc/{pid}/fd")))
    return out


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


@dataclass
class Follow:
    """What one measure of following gave."""

    kind: str
    labs: int
    seconds: float
    cpu_s: float
    rss_mib: float
    threads: float
    fds: float
    peer_cpu_s: float | None = None  # the development site's CPU over the same time
    load: str = ""
    note: str = ""

    @property
    def core_percent(self) -> float:
        return 100 * self.cpu_s / self.seconds

    def line(self) -> str:
        peer = (
            f", the development site {100 * self.peer_cpu_s / self.seconds:.1f} % of a core"
            if self.peer_cpu_s is not None
            else ""
        )
        return (
            f"{self.kind}{self.note}: {self.labs} labs, "
            f"backend {self.core_percent:.2f} % of a core "
            f"({self.cpu_s:.2f} CPU s in {self.seconds:.0f} s), RSS {self.rss_mib:.0f} MiB, "
            f"{self.threads:.0f} threads, {self.fds:.0f} open files{peer} (load {self.load})"
        )


# -- a backend of our own --------------------------------------------------------------


@dataclass
class Backend:
    """One ``lablink backend`` process on a free port."""

    workdir: Path
    document: dict[str, Any]
    environ: dict[str, str]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        site_file = site.write(self.document, self.workdir / "site.yaml")
        argv = [sys.executable, "-m", "backend.cli", "backend", "--site", str(site_file),
                "--port", str(self.port)]  # fmt: skip
        token = self.environ[site.HUB_TOKEN_ENV]

        def ready() -> bool:
            resp = httpx.get(
                f"{self.url}/api/v1/health",
                headers={"Authorization": f"Bearer {token}"},
                timeout=2,
                trust_env=False,
            )
            return resp.status_code == 200

        self.proc = launch(argv, self.environ, self.workdir / "backend.log", ready, "backend", 60)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        end_process(self.proc, sig, 30)

    def client(self, user: str | None = "alice") -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self.environ[site.HUB_TOKEN_ENV]}"}
        if user is None:
            headers = {"Authorization": f"Bearer {self.environ[site.ADMIN_TOKEN_ENV]}"}
        else:
            headers["X-Lablink-User"] = user
        limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
        return httpx.AsyncClient(
            base_url=f"{self.url}/api/v1",
            headers=headers,
            timeout=60,
            trust_env=False,
            limits=limits,
        )


def token_environ() -> dict[str, str]:
    env = dict(os.environ)
    env[site.HUB_TOKEN_ENV] = secrets.token_urlsafe(24)
    env[site.ADMIN_TOKEN_ENV] = secrets.token_urlsafe(24)
    env.setdefault("LABLINK_STATE_KEY", secrets.token_urlsafe(48))
    return env


def build_tinylab(workdir: Path) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("bench-replicas: benchmarks/tinylab.c needs a C compiler (cc)")
    binary = workdir / "tinylab"
    subprocess.run([cc, "-O2", "-o", str(binary), str(TINYLAB_SOURCE)], check=True)
    return binary


def end_own_labs(binary: Path) -> int:
    """SIGKILL every process that runs this run's own ``tinylab`` build (labs left by
    a backend that failed: they outlive it by design); how many there were."""
    ended = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(entry / "exe") == str(binary):
                    os.kill(int(entry.name), signal.SIGKILL)
                    ended += 1
    return ended


# -- starting and stopping many labs -----------------------------------------------------


async def gather_limited(jobs: Sequence[Callable[[], Awaitable[Any]]], limit: int) -> list[Any]:
    gate = asyncio.Semaphore(limit)

    async def one(job: Callable[[], Awaitable[Any]]) -> Any:
        async with gate:
            return await job()

    return await asyncio.gather(*(one(job) for job in jobs))


def start_body(i: int, options: dict[str, Any]) -> dict[str, Any]:
    name = f"b{i:04d}"
    return {
        "user": {"name": "alice", "groups": [], "admin": False},
        "server_name": name,
        "options": dict(options),
        "env": {
            "JUPYTERHUB_API_TOKEN": secrets.token_urlsafe(16),
            "JUPYTERHUB_SERVICE_PREFIX": f"/user/alice/{name}/",
        },
    }


async def start_labs(backend: Backend, count: int, options: dict[str, Any]) -> list[str]:
    async with backend.client() as client:

        def job(i: int) -> Callable[[], Awaitable[str]]:
            async def post() -> str:
                resp = await client.post("/labs", json=start_body(i, options))
                if resp.status_code != 202:
                    raise RuntimeError(f"start {i}: {resp.status_code} {resp.text[:300]}")
                return str(resp.json()["id"])

            return post

        return await gather_limited([job(i) for i in range(count)], CONCURRENCY)


async def wait_settled(backend: Backend, count: int, timeout: float) -> tuple[float, int]:
    """Wait until no lab is starting any more: (seconds, labs running). A start that
    failed is counted out (a port taken by another process between the backend
    choosing it and the lab binding it); raises when time runs out."""
    t0 = time.monotonic()
    async with backend.client(None) as admin:
        while True:
            labs = (await admin.get("/labs", params={"active": "true"})).json()
            running = sum(1 for lab in labs if lab["state"] == "running")
            if running == len(labs):
                if running < count:
                    print(f"  {count - running} of {count} starts failed", flush=True)
                return time.monotonic() - t0, running
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"{running} of {count} labs run after {timeout:g} s")
            await asyncio.sleep(1.0)


async def stop_all(backend: Backend, timeout: float = 600) -> None:
    async with backend.client(None) as admin:
        labs = (await admin.get("/labs", params={"active": "true"})).json()

        def job(lab_id: str) -> Callable[[], Awaitable[None]]:
            async def delete() -> None:
                await admin.delete(f"/labs/{lab_id}")

            return delete

        await gather_limited([job(lab["id"]) for lab in labs], CONCURRENCY)
        deadline = time.monotonic() + timeout
        while (await admin.get("/labs", params={"active": "true"})).json():
            if time.monotonic() > deadline:
                raise RuntimeError("labs still active after the stop")
            await asyncio.sleep(1.0)


def end_labs(backend: Backend) -> None:
    """Stop every lab through the backend (also after a failure: the labs outlive the
    backend by design), then the backend."""
    try:
        if backend.proc is not None and backend.proc.poll() is None:
            asyncio.run(stop_all(backend, timeout=900))
    except Exception as exc:  # the backend is stopped below whatever happened
        print(f"bench-replicas: stopping the labs failed: {exc}", file=sys.stderr)
    finally:
        backend.stop()


def measure(
    kind: str,
    backend: Backend,
    labs: int,
    seconds: float,
    peer: int | None = None,
    note: str = "",
) -> Follow:
    load = load_average()
    cpu0 = cpu_seconds(backend.pid)
    peer0 = cpu_seconds(peer) if peer else 0.0
    t0 = time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - t0
    cpu = cpu_seconds(backend.pid) - cpu0
    mem = memory(backend.pid)
    return Follow(
        kind=kind,
        labs=labs,
        seconds=wall,
        cpu_s=cpu,
        rss_mib=mem["rss_mib"],
        threads=mem["threads"],
        fds=mem["fds"],
        peer_cpu_s=(cpu_seconds(peer) - peer0) if peer else None,
        load=load,
        note=note,
    )


# -- part: follow ------------------------------------------------------------------------


def follow_local(args: argparse.Namespace, workdir: Path, tinylab: Path) -> list[Follow]:
    environ = token_environ()
    system = site.local_system(command=[str(tinylab)], args=[], start_timeout=120)
    document = site.doc(
        workdir / "state",
        args.database_url or f"sqlite+aiosqlite:///{workdir}/backend.sqlite",
        systems={"local": system},
    )
    backend = Backend(workdir, document, environ)
    backend.start()
    results = []
    try:
        t0 = time.monotonic()
        asyncio.run(start_labs(backend, args.labs, {}))
        took, running = asyncio.run(wait_settled(backend, args.labs, 600))
        took += time.monotonic() - t0
        print(f"local: {running} labs running after {took:.1f} s", flush=True)
        time.sleep(args.settle)
        results.append(measure("local", backend, running, args.seconds))
        print(results[-1].line(), flush=True)
        backend.stop()  # the labs keep running: the next backend re-attaches by pid
        t0 = time.monotonic()
        backend.start()
        took, running = asyncio.run(wait_settled(backend, running, 600))
        took += time.monotonic() - t0
        print(f"local: a restarted backend re-attached {running} labs in {took:.1f} s")
        time.sleep(args.settle)
        results.append(
            measure("local", backend, running, args.seconds, note=" (re-attached by pid)")
        )
        print(results[-1].line(), flush=True)
    finally:
        end_labs(backend)
    return results


def follow_unicore(args: argparse.Namespace, workdir: Path, tinylab: Path) -> list[Follow]:
    environ = token_environ()
    devsite: Devsite = run_devsite(workdir, environ, "--queues", "batch,devel")
    environ[PASSWORD_ENV] = PASSWORD
    system = site.unicore_system(
        devsite.url,
        lab_command=[str(tinylab)],
        lab_args=[],
        poll_interval=1.0,
        watch_interval=args.watch_interval,
        retry_for=60,
        request_timeout=20,
        start_timeout=300,
        stop_timeout=60,
    )
    document = site.doc(
        workdir / "state",
        args.database_url or f"sqlite+aiosqlite:///{workdir}/backend.sqlite",
        systems={"hpc": system},
    )
    backend = Backend(workdir, document, environ)
    backend.start()
    options = {"partition": "batch", "account": "alice", "project": "p1", "runtime": 60,
               "nodes": 1}  # fmt: skip
    results = []
    try:
        t0 = time.monotonic()
        asyncio.run(start_labs(backend, args.labs, options))
        took, running = asyncio.run(wait_settled(backend, args.labs, 900))
        took += time.monotonic() - t0
        print(f"unicore: {running} labs running after {took:.1f} s", flush=True)
        time.sleep(args.settle)
        assert devsite.proc is not None
        results.append(measure("unicore", backend, running, args.seconds, peer=devsite.proc.pid))
        print(results[-1].line(), flush=True)
    finally:
        end_labs(backend)
        devsite.stop()
    return results


# -- part: throughput -------------------------------------------------------------------


@dataclass
class Throughput:
    """A burst of start requests against one address."""

    path: str
    replicas: int
    starts: int
    seconds: float
    latencies_ms: list[float]
    failures: int
    running_s: float
    load: str

    @property
    def per_second(self) -> float:
        return (self.starts - self.failures) / self.seconds

    def line(self) -> str:
        lat = self.latencies_ms
        return (
            f"{self.path}: {self.starts} starts in {self.seconds:.2f} s = "
            f"{self.per_second:.1f} labs/s accepted, POST p50 {percentile(lat, 50):.0f} ms / "
            f"p99 {percentile(lat, 99):.0f} ms, {self.failures} failed, all running after "
            f"{self.running_s:.1f} s (load {self.load})"
        )


async def burst(
    url: str, tokens: dict[str, str], starts: int, tag: str
) -> tuple[float, list[float], list[str], int]:
    """``starts`` POST /labs, CONCURRENCY at a time: (seconds, latencies ms, lab ids,
    failures)."""
    headers = {"Authorization": f"Bearer {tokens['hub']}", "X-Lablink-User": "alice"}
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    latencies: list[float] = []
    ids: list[str] = []
    failures = 0
    async with httpx.AsyncClient(
        base_url=f"{url}/api/v1", headers=headers, timeout=60, trust_env=False, limits=limits
    ) as client:

        def job(i: int) -> Callable[[], Awaitable[None]]:
            async def post() -> None:
                nonlocal failures
                body = start_body(i, {})
                body["server_name"] = f"{tag}{i:04d}"
                body["env"]["JUPYTERHUB_SERVICE_PREFIX"] = f"/user/alice/{tag}{i:04d}/"
                t0 = time.perf_counter()
                resp = await client.post(
                    "/labs", json=body, headers={"Idempotency-Key": secrets.token_hex(8)}
                )
                latencies.append((time.perf_counter() - t0) * 1000)
                if resp.status_code == 202:
                    ids.append(str(resp.json()["id"]))
                else:
                    failures += 1
                    print(f"  start {i}: {resp.status_code} {resp.text[:200]}", flush=True)

            return post

        t0 = time.perf_counter()
        await gather_limited([job(i) for i in range(starts)], CONCURRENCY)
        return time.perf_counter() - t0, latencies, ids, failures


async def active_labs(admin: httpx.AsyncClient) -> list[dict[str, Any]]:
    """The active labs; a balancer's 502/503 or a timeout under load is asked again."""
    for _attempt in range(20):
        with contextlib.suppress(httpx.TransportError):
            resp = await admin.get("/labs", params={"active": "true"})
            if resp.status_code == 200:
                return resp.json()  # type: ignore[no-any-return]
        await asyncio.sleep(0.5)
    raise RuntimeError("the backend did not list its labs")


async def settle_and_stop(url: str, tokens: dict[str, str], timeout: float = 300) -> float:
    """Seconds until no lab is starting, then every lab stopped (not timed)."""
    headers = {"Authorization": f"Bearer {tokens['admin']}"}
    t0 = time.monotonic()
    async with httpx.AsyncClient(
        base_url=f"{url}/api/v1", headers=headers, timeout=60, trust_env=False
    ) as admin:
        while True:
            labs = await active_labs(admin)
            if all(lab["state"] == "running" for lab in labs):
                break
            if time.monotonic() - t0 > timeout:
                raise RuntimeError("labs still starting after the burst")
            await asyncio.sleep(0.2)
        took = time.monotonic() - t0

        def job(lab_id: str) -> Callable[[], Awaitable[None]]:
            async def delete() -> None:
                for _attempt in range(10):
                    with contextlib.suppress(httpx.TransportError):
                        if (await admin.delete(f"/labs/{lab_id}")).status_code < 500:
                            return
                    await asyncio.sleep(0.5)

            return delete

        await gather_limited([job(lab["id"]) for lab in labs], CONCURRENCY)
        while await active_labs(admin):
            if time.monotonic() - t0 > 2 * timeout:
                raise RuntimeError("labs still active after the stop")
            await asyncio.sleep(0.5)
    return took


def throughput(args: argparse.Namespace, workdir: Path, tinylab: Path) -> list[Throughput]:
    from tests.helpers.replicas import ReplicaSet, haproxy_program

    if haproxy_program() is None:
        raise SystemExit("bench-replicas: HAProxy is needed (bash .ci/peers.sh haproxy)")
    admin_url = os.environ.get("LABLINK_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
    system = site.local_system(command=[str(tinylab)], args=[], start_timeout=120)
    results: list[Throughput] = []
    for count in [int(c) for c in args.replicas.split(",")]:
        rs = ReplicaSet(workdir / f"set{count}", admin_url, count=count, systems={"local": system})
        try:
            rs.start_all()
            paths = (
                [("direct", rs.replica_url(0)), ("HAProxy", rs.url)]
                if count == 1
                else [("HAProxy", rs.url)]
            )
            for rnd in range(args.rounds):
                for name, url in paths:
                    asyncio.run(burst(url, rs.tokens, 10, f"w{rnd}{name[0]}"))  # warm-up
                    asyncio.run(settle_and_stop(url, rs.tokens))
                    load = load_average()
                    took, lat, _ids, failed = asyncio.run(
                        burst(url, rs.tokens, args.starts, f"r{rnd}{name[0]}")
                    )
                    running = asyncio.run(settle_and_stop(url, rs.tokens))
                    found = Throughput(
                        f"{count} replica{'s' if count > 1 else ''}, {name}",
                        count, args.starts, took, lat, failed, running + took, load,
                    )  # fmt: skip
                    results.append(found)
                    print(found.line(), flush=True)
        finally:
            with contextlib.suppress(Exception):  # the labs outlive their backends
                asyncio.run(settle_and_stop(rs.replica_url(0), rs.tokens, timeout=60))
            rs.close()
    return results


# -- parts: takeover and restart -----------------------------------------------------------


async def owned_by(rs: Any, lab_ids: list[str]) -> dict[str, str | None]:
    conn = await asyncpg_connect(rs.database_url)
    try:
        rows = await conn.fetch("SELECT id, owner FROM labs WHERE id = ANY($1)", lab_ids)
        return {row["id"]: row["owner"] for row in rows}
    finally:
        await conn.close()


async def asyncpg_connect(url: str) -> Any:
    import asyncpg

    return await asyncpg.connect(url, timeout=10)


async def until_owned(
    rs: Any, lab_ids: list[str], gone: set[str], t0: float, timeout: float = 60
) -> list[float]:
    """Seconds from ``t0`` until each lab is owned by a replica not in ``gone`` and
    alive (the database read every 20 ms, on one connection)."""
    conn = await asyncpg_connect(rs.database_url)
    taken: dict[str, float] = {}
    try:
        while len(taken) < len(lab_ids):
            now = time.monotonic()
            if now - t0 > timeout:
                raise RuntimeError(
                    f"{len(lab_ids) - len(taken)} labs not taken over in {timeout} s"
                )
            live = {r["id"] for r in await conn.fetch("SELECT id FROM replicas")} - gone
            rows = await conn.fetch("SELECT id, owner FROM labs WHERE id = ANY($1)", lab_ids)
            for row in rows:
                if row["id"] not in taken and row["owner"] in live:
                    taken[row["id"]] = now - t0
            await asyncio.sleep(0.02)
    finally:
        await conn.close()
    return sorted(taken.values())


def replica_set(workdir: Path, tinylab: Path, count: int, name: str) -> Any:
    from tests.helpers.replicas import ReplicaSet, haproxy_program

    if haproxy_program() is None:
        raise SystemExit("bench-replicas: HAProxy is needed (bash .ci/peers.sh haproxy)")
    admin_url = os.environ.get("LABLINK_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
    system = site.local_system(command=[str(tinylab)], args=[], start_timeout=120)
    return ReplicaSet(workdir / name, admin_url, count=count, systems={"local": system})


def takeover(args: argparse.Namespace, workdir: Path, tinylab: Path) -> dict[str, Any]:
    """3 replicas, ``--running`` labs; SIGKILL the replica that owns the most: seconds
    until each of its labs is owned by a live one."""
    rs = replica_set(workdir, tinylab, 3, "takeover")
    try:
        rs.start_all()
        _took, _lat, ids, _failed = asyncio.run(burst(rs.url, rs.tokens, args.running, "t"))
        asyncio.run(wait_all_running(rs.url, rs.tokens))
        owners = asyncio.run(owned_by(rs, ids))
        live = asyncio.run(rs.live_replica_ids())
        counts = {rid: sum(1 for o in owners.values() if o == rid) for rid in live}
        victim_id = max(counts, key=lambda rid: counts[rid])
        victim = live[victim_id]
        theirs = [lab for lab, owner in owners.items() if owner == victim_id]
        load = load_average()
        t0 = time.monotonic()
        rs.kill(victim)
        times = asyncio.run(until_owned(rs, theirs, {victim_id}, t0))
        found = {
            "labs": len(ids), "killed_owned": len(theirs), "lease_s": rs.lease,
            "p50_s": percentile(times, 50), "max_s": max(times), "load": load,
        }  # fmt: skip
        print(
            f"takeover: replica {victim} (of 3, lease {rs.lease:g} s) killed with "
            f"{len(theirs)} of {len(ids)} running labs; taken over p50 {found['p50_s']:.2f} s, "
            f"max {found['max_s']:.2f} s (load {load})",
            flush=True,
        )
        return found
    finally:
        with contextlib.suppress(Exception):
            asyncio.run(settle_and_stop(rs.url, rs.tokens, timeout=60))
        rs.close()


def restart(args: argparse.Namespace, workdir: Path, tinylab: Path) -> dict[str, Any]:
    """1 replica, ``--running`` labs; SIGKILL it and start it again: seconds until the
    new process owns every lab, and until it has re-attached each (its log)."""
    rs = replica_set(workdir, tinylab, 1, "restart")
    try:
        rs.start_all()
        _took, _lat, ids, _failed = asyncio.run(burst(rs.url, rs.tokens, args.running, "s"))
        asyncio.run(wait_all_running(rs.url, rs.tokens))
        old_id = asyncio.run(rs.replica_id(0))
        load = load_average()
        t0 = time.monotonic()
        rs.kill(0)
        rs.start(0, wait=False)
        times = asyncio.run(until_owned(rs, ids, {old_id}, t0))
        healthy_s = None
        with contextlib.suppress(Exception):
            rs.wait_healthy(0, 60)
            healthy_s = time.monotonic() - t0
        found = {
            "labs": len(ids), "owned_p50_s": percentile(times, 50), "owned_all_s": max(times),
            "healthy_s": healthy_s, "load": load,
        }  # fmt: skip
        print(
            f"restart: one replica killed and started again with {len(ids)} running labs; "
            f"all owned by the new process after {found['owned_all_s']:.2f} s (p50 "
            f"{found['owned_p50_s']:.2f} s), healthy in HAProxy after "
            f"{healthy_s if healthy_s is not None else float('nan'):.2f} s (load {load})",
            flush=True,
        )
        return found
    finally:
        with contextlib.suppress(Exception):
            asyncio.run(settle_and_stop(rs.url, rs.tokens, timeout=60))
        rs.close()


async def wait_all_running(url: str, tokens: dict[str, str], timeout: float = 120) -> None:
    headers = {"Authorization": f"Bearer {tokens['admin']}"}
    t0 = time.monotonic()
    async with httpx.AsyncClient(
        base_url=f"{url}/api/v1", headers=headers, timeout=60, trust_env=False
    ) as admin:
        while not all(lab["state"] == "running" for lab in await active_labs(admin)):
            if time.monotonic() - t0 > timeout:
                raise RuntimeError("labs still starting")
            await asyncio.sleep(0.2)


# -- main ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--parts",
        default="follow,throughput,takeover,restart",
        help="follow,throughput,takeover,restart (comma-separated)",
    )
    parser.add_argument("--labs", type=int, default=1000, help="labs to follow (follow)")
    parser.add_argument("--kinds", default="local,unicore", help="kinds to follow (follow)")
    parser.add_argument("--seconds", type=float, default=60, help="seconds measured (follow)")
    parser.add_argument("--settle", type=float, default=15, help="seconds before measuring")
    parser.add_argument(
        "--watch-interval", type=float, default=10.0, help="the unicore system's watch_interval"
    )
    parser.add_argument("--database-url", default="", help="another backend database (follow)")
    parser.add_argument("--starts", type=int, default=200, help="starts per burst (throughput)")
    parser.add_argument("--replicas", default="1,2,3", help="replica counts (throughput)")
    parser.add_argument("--running", type=int, default=100, help="running labs (takeover, restart)")
    parser.add_argument("--rounds", type=int, default=2, help="bursts per path (throughput)")
    parser.add_argument("--keep", type=Path, help="keep the work directory (logs) here")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="lablink-bench-replicas-"))
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    figures: dict[str, Any] = {"load_before": load_average(), "cpus": os.cpu_count()}
    summary: list[str] = []
    try:
        if "follow" in parts:
            tinylab = build_tinylab(workdir)
            found: list[Follow] = []
            for kind in [k.strip() for k in args.kinds.split(",") if k.strip()]:
                kind_dir = workdir / kind
                kind_dir.mkdir()
                if kind == "local":
                    found += follow_local(args, kind_dir, tinylab)
                elif kind == "unicore":
                    found += follow_unicore(args, kind_dir, tinylab)
                else:
                    raise SystemExit(f"bench-replicas: no kind {kind!r} (local, unicore)")
            figures["follow"] = [vars(f) | {"core_percent": f.core_percent} for f in found]
            for f in found:
                tag = f.kind + ("_reattached" if "re-attached" in f.note else "")
                summary.append(f"follow_{tag}_core_pct={f.core_percent:.2f}")
                summary.append(f"follow_{tag}_rss_mib={f.rss_mib:.0f}")
        if "throughput" in parts:
            tinylab = build_tinylab(workdir)
            runs = throughput(args, workdir, tinylab)
            figures["throughput"] = [
                vars(r) | {"per_second": r.per_second, "p50_ms": percentile(r.latencies_ms, 50),
                           "p99_ms": percentile(r.latencies_ms, 99)}
                for r in runs
            ]  # fmt: skip
            for r in runs:
                tag = f"r{r.replicas}_{'direct' if 'direct' in r.path else 'haproxy'}"
                summary.append(f"{tag}_labs_per_s={r.per_second:.1f}")
                summary.append(f"{tag}_p99_ms={percentile(r.latencies_ms, 99):.0f}")
        for part, run in (("takeover", takeover), ("restart", restart)):
            if part in parts:
                found_part = run(args, workdir, build_tinylab(workdir))
                figures[part] = found_part
                for key in ("p50_s", "max_s", "owned_all_s"):
                    if key in found_part:
                        summary.append(f"{part}_{key}={found_part[key]:.2f}")
    finally:
        left = end_own_labs(workdir / "tinylab")
        if left:
            print(f"bench-replicas: ended {left} labs left behind", file=sys.stderr)
        if args.keep:
            shutil.copytree(
                workdir, args.keep, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.sock")
            )
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    print(" ".join(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
