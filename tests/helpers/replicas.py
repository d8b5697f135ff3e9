"""Several backend replicas on one PostgreSQL database, behind a real load balancer.

``ReplicaSet`` makes a fresh database, writes one site file, and runs N ``lablink
backend`` processes (``python -m backend.cli backend``), each with its own port, state
directory and log, and HAProxy (Debian's ``haproxy``, in the foreground) in front of
them: ``url`` is HAProxy's, ``replica_url(i)`` one replica's own. Each replica reaches
PostgreSQL through a ``mode tcp`` listener of the same HAProxy, so that a test can cut
one replica's database (``cut_database``) and give it back (``restore_database``)
through HAProxy's runtime API, the others untouched.

The processes are controlled as an operator would: ``kill`` (SIGKILL, no goodbye),
``stop`` (SIGTERM, wait), ``start`` and ``restart``; ``wait_healthy`` waits until a
replica answers and HAProxy sends it requests. The database is read directly (not
through HAProxy) by the ``rows``/``owners``/... coroutines.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import csv
import io
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import asyncpg
import httpx

from backend import procs
from backend.procs import free_ports
from tests.helpers import site
from tests.helpers.labs import fakelab_processes, process_environment
from tests.helpers.stack import REPO, end_process

T = TypeVar("T")

STATE_KEY_ENV = "LABLINK_STATE_KEY"
# the variable a test puts in a lab's start environment to find the lab's processes
TAG_ENV = "LABLINK_TEST_TAG"


def run_coroutine(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to its end from synchronous code, also under a running event loop
    (in a thread of its own then)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def haproxy_program() -> str | None:
    return shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if os.access(p, os.X_OK)),
        None,
    )


def has_healthz() -> bool:
    """Whether the backend under test serves ``GET /healthz`` (HAProxy checks it; until
    it exists HAProxy checks that the port accepts connections)."""
    from backend.app import create_app

    doc = site.doc(None, "postgresql://nobody@127.0.0.1:9/none")
    env = {site.HUB_TOKEN_ENV: "h" * 32, site.ADMIN_TOKEN_ENV: "a" * 32, STATE_KEY_ENV: "k" * 44}
    app = create_app(site.settings(doc), env)

    async def probe() -> int:  # without its lifespan the app only answers
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://probe") as client:
            return (await client.get("/healthz")).status_code

    return run_coroutine(probe()) != 404


@dataclass
class Replica:
    """One ``lablink backend`` process (started again as a new process by ``start``)."""

    index: int
    port: int
    db_port: int  # HAProxy's listener in front of PostgreSQL, for this replica only
    state_dir: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return f"r{self.index}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class ReplicaSet:
    """``count`` replicas of the backend on a fresh database named after the test, with
    HAProxy in front. ``systems`` and ``extra`` shape the site document (tests/helpers/
    site.py); ``lease`` is the site's ``replicas.lease``."""

    root: Path
    admin_url: str
    count: int = 3
    lease: float = 3.0
    systems: dict[str, dict[str, Any]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    tokens: dict[str, str] = field(
        default_factory=lambda: {
            "hub": secrets.token_urlsafe(24),
            "admin": secrets.token_urlsafe(24),
        }
    )
    state_key: str = field(default_factory=lambda: secrets.token_urlsafe(36))
    replicas: list[Replica] = field(default_factory=list)
    haproxy: subprocess.Popen[bytes] | None = None
    database: str = ""
    port: int = 0
    http_check: bool = False

    # -- where things are ---------------------------------------------------------

    @property
    def url(self) -> str:
        """HAProxy's frontend: the address the hub would be given."""
        return f"http://127.0.0.1:{self.port}"

    def replica_url(self, i: int) -> str:
        return self.replicas[i].url

    @property
    def database_url(self) -> str:
        """The test database, directly (not through HAProxy)."""
        base = self.admin_url.rsplit("/", 1)[0]
        return f"{base}/{self.database}"

    def replica_database_url(self, replica: Replica) -> str:
        parts = urlsplit(self.admin_url)
        user = parts.username or "postgres"
        auth = f"{user}:{parts.password}@" if parts.password else f"{user}@"
        return f"postgresql://{auth}127.0.0.1:{replica.db_port}/{self.database}"

    @property
    def site_file(self) -> Path:
        return self.root / "site.yaml"

    @property
    def haproxy_cfg(self) -> Path:
        return self.root / "haproxy.cfg"

    @property
    def haproxy_log(self) -> Path:
        return self.root / "haproxy.log"

    @property
    def admin_socket(self) -> Path:
        return self.root / "haproxy.sock"

    def token_env(self) -> dict[str, str]:
        return {
            site.HUB_TOKEN_ENV: self.tokens["hub"],
            site.ADMIN_TOKEN_ENV: self.tokens["admin"],
            STATE_KEY_ENV: self.state_key,
        }

    # -- the whole set ---------------------------------------------------------------

    def start_all(self, timeout: float = 60) -> ReplicaSet:
        """Database, site file, HAProxy, then every replica; returns when each is
        healthy and in HAProxy's rotation."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.database = f"lablink_replicas_{uuid.uuid4().hex[:12]}"
        run_coroutine(self._admin(f'CREATE DATABASE "{self.database}"'))
        ports = free_ports(1 + 2 * self.count)
        self.port = ports[0]
        for i in range(self.count):
            self.replicas.append(
                Replica(
                    index=i,
                    port=ports[1 + i],
                    db_port=ports[1 + self.count + i],
                    state_dir=self.root / f"r{i}" / "state",
                    log=self.root / f"r{i}" / "backend.log",
                )
            )
        document = site.doc(
            None,
            "postgresql://unused@127.0.0.1:9/unused",  # each replica's URL is in its env
            systems=self.systems,
            replicas={"lease": self.lease},
            **self.extra,
        )
        site.write(document, self.site_file)
        self.http_check = has_healthz()
        self._start_haproxy()
        # the first replica migrates the fresh database alone; then the others together
        self.start(0, wait=True, timeout=timeout)
        for i in range(1, self.count):
            self.start(i, wait=False)
        for i in range(1, self.count):
            self.wait_healthy(i, timeout)
        return self

    def close(self) -> None:
        """Kill everything this set started and drop its database."""
        for replica in self.replicas:
            end_process(replica.proc, signal.SIGKILL, 10)
        end_process(self.haproxy, signal.SIGTERM, 10)
        if self.database:
            run_coroutine(self._admin(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)'))

    async def _admin_async(self, sql: str) -> None:
        conn = await asyncpg.connect(self.admin_url, timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def _admin(self, sql: str) -> Coroutine[Any, Any, None]:
        return self._admin_async(sql)

    # -- HAProxy ------------------------------------------------------------------------

    def _haproxy_config(self) -> str:
        pg = urlsplit(self.admin_url)
        check = (
            "  option httpchk GET /healthz\n  http-check expect status 200\n"
            if self.http_check
            else ""
        )
        servers = "".join(
            f"  server {r.name} 127.0.0.1:{r.port} check inter 500ms fall 3 rise 1\n"
            for r in self.replicas
        )
        databases = "".join(
            f"listen pg_{r.name}\n"
            "  mode tcp\n"
            f"  bind 127.0.0.1:{r.db_port}\n"
            "  timeout client 1h\n"
            "  timeout server 1h\n"
            f"  server db {pg.hostname or '127.0.0.1'}:{pg.port or 5432}\n"
            for r in self.replicas
        )
        return (
            "global\n"
            "  maxconn 4000\n"
            f"  stats socket {self.admin_socket} mode 600 level admin\n"
            "  log stdout format raw local0 info\n"
            "defaults\n"
            "  log global\n"
            "  timeout connect 2s\n"
            # event streams stay open while a lab starts (HPC labs: minutes)
            "  timeout client 10m\n"
            "  timeout server 10m\n"
            "  timeout http-request 30s\n"
            # a replica busy with a burst answers its health check late, not never:
            # the check waits 2 s (not the 0.5 s between checks) and 3 must fail
            "  timeout check 2s\n"
            "frontend api\n"
            "  mode http\n"
            "  option httplog\n"
            f"  bind 127.0.0.1:{self.port}\n"
            "  default_backend replicas\n"
            "backend replicas\n"
            "  mode http\n"
            "  balance roundrobin\n"
            f"{check}"
            "  retries 3\n"
            "  option redispatch\n"
            "  retry-on conn-failure empty-response response-timeout\n"
            f"{servers}"
            f"{databases}"
        )

    def _start_haproxy(self) -> None:
        program = haproxy_program()
        assert program is not None, "haproxy is not installed (bash .ci/peers.sh haproxy)"
        self.haproxy_cfg.write_text(self._haproxy_config())
        check = subprocess.run(
            [program, "-c", "-q", "-f", str(self.haproxy_cfg)], capture_output=True, text=True
        )
        assert check.returncode == 0, f"haproxy -c: {check.stdout}{check.stderr}"
        with self.haproxy_log.open("ab") as out:
            self.haproxy = subprocess.Popen(
                [program, "-f", str(self.haproxy_cfg), "-db"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.haproxy.poll() is not None:
                raise RuntimeError(f"haproxy exited:\n{self.haproxy_log.read_text()[-3000:]}")
            if self.admin_socket.exists():
                with contextlib.suppress(OSError):
                    self.haproxy_command("show info")
                    return
            time.sleep(0.05)
        raise RuntimeError(f"haproxy did not come up:\n{self.haproxy_log.read_text()[-3000:]}")

    def haproxy_command(self, command: str) -> str:
        """One command on HAProxy's runtime API (its stats socket)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(self.admin_socket))
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def haproxy_status(self, i: int, proxy: str = "replicas") -> str:
        """HAProxy's view of replica ``i`` (``UP``, ``DOWN``, ``MAINT``, ...)."""
        text = self.haproxy_command("show stat").lstrip("# ")
        name = self.replicas[i].name if proxy == "replicas" else "db"
        for row in csv.DictReader(io.StringIO(text)):
            if row.get("pxname") == proxy and row.get("svname") == name:
                return row.get("status", "")
        raise AssertionError(f"HAProxy has no server {proxy}/{name}")

    def wait_haproxy_status(self, i: int, status: str, timeout: float = 5) -> None:
        """Until HAProxy's view of replica ``i`` is ``status`` (``UP``, ``DOWN``): its
        checks run every 0.5 s and it takes two failed ones to mark a replica down."""
        deadline = time.monotonic() + timeout
        while not (now := self.haproxy_status(i)).startswith(status):
            assert time.monotonic() < deadline, f"HAProxy has replica {i} {now}, not {status}"
            time.sleep(0.1)

    def cut_database(self, i: int) -> None:
        """Replica ``i`` loses PostgreSQL: its connections are cut and new ones refused."""
        proxy = f"pg_{self.replicas[i].name}"
        self.haproxy_command(f"set server {proxy}/db state maint")
        self.haproxy_command(f"shutdown sessions server {proxy}/db")

    def restore_database(self, i: int) -> None:
        self.haproxy_command(f"set server pg_{self.replicas[i].name}/db state ready")

    # -- one replica -------------------------------------------------------------------

    def start(self, i: int, wait: bool = True, timeout: float = 60) -> Replica:
        """Start replica ``i`` (a new process, so a new replica id)."""
        replica = self.replicas[i]
        assert not replica.running, f"replica {i} runs already (pid {replica.pid})"
        replica.state_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            **self.token_env(),
            "LABLINK_DATABASE_URL": self.replica_database_url(replica),
            **self.env,
        }
        argv = [
            sys.executable, "-m", "backend.cli", "backend",
            "--site", str(self.site_file),
            "--port", str(replica.port),
            "--state-dir", str(replica.state_dir),
            "--log-level", "info",
        ]  # fmt: skip
        with replica.log.open("ab") as out:
            out.write(f"---- {time.strftime('%H:%M:%S')} start\n".encode())
            replica.proc = subprocess.Popen(
                argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        if wait:
            self.wait_healthy(i, timeout)
        return replica

    def kill(self, i: int) -> None:
        """SIGKILL: the replica dies without a word (its connections drop)."""
        replica = self.replicas[i]
        assert replica.proc is not None
        with contextlib.suppress(ProcessLookupError):
            replica.proc.send_signal(signal.SIGKILL)
        replica.proc.wait(10)
        self._note(replica, "SIGKILL")

    def stop(self, i: int, timeout: float = 30) -> int:
        """SIGTERM and wait for the exit (SIGKILL after ``timeout``); the exit code."""
        replica = self.replicas[i]
        code = end_process(replica.proc, signal.SIGTERM, timeout)
        self._note(replica, f"SIGTERM, exit code {code}")
        return code

    def restart(self, i: int, timeout: float = 60) -> Replica:
        self.stop(i)
        return self.start(i, wait=True, timeout=timeout)

    def _note(self, replica: Replica, what: str) -> None:
        with replica.log.open("ab") as out:
            out.write(f"---- {time.strftime('%H:%M:%S')} {what}\n".encode())

    def answers(self, i: int) -> bool:
        """Replica ``i`` says it is healthy (``/healthz``, or the API's health)."""
        replica = self.replicas[i]
        with httpx.Client(base_url=replica.url, timeout=2, trust_env=False) as http:
            try:
                if self.http_check:
                    return http.get("/healthz").status_code == 200
                headers = {"Authorization": f"Bearer {self.tokens['hub']}"}
                return http.get("/api/v1/health", headers=headers).status_code == 200
            except httpx.HTTPError:
                return False

    def wait_healthy(self, i: int, timeout: float = 60) -> None:
        """Until replica ``i`` answers healthy and HAProxy has it UP."""
        replica = self.replicas[i]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if replica.proc is None or replica.proc.poll() is not None:
                raise RuntimeError(f"replica {i} exited:\n{self.logs(i, 6000)}")
            if self.answers(i) and self.haproxy_status(i).startswith("UP"):
                return
            time.sleep(0.1)
        raise RuntimeError(
            f"replica {i} was not healthy in {timeout:g} s (HAProxy: "
            f"{self.haproxy_status(i)}):\n{self.logs(i, 6000)}"
        )

    def logs(self, i: int, last: int = 20000, requests: bool = False) -> str:
        """The end of replica ``i``'s log (all its processes), without the request lines
        unless ``requests``."""
        log = self.replicas[i].log
        if not log.exists():
            return ""
        lines = log.read_text(errors="replace").splitlines()
        if not requests:
            lines = [line for line in lines if " uvicorn.access] " not in line]
        return "\n".join(lines)[-last:]

    def all_logs(self, last: int = 4000) -> str:
        return "\n".join(
            f"==== replica {r.index} (pid {r.pid}) {r.log}\n{self.logs(r.index, last)}"
            for r in self.replicas
        )

    # -- clients -----------------------------------------------------------------------

    def client(
        self,
        user: str | None = "alice",
        *,
        admin: bool = False,
        replica: int | None = None,
        timeout: float = 30,
        connections: int = 100,
    ) -> httpx.AsyncClient:
        """A client of the API (``/api/v1``) through HAProxy, or of replica ``replica``
        directly; the hub's token acting for ``user``, or the admin token."""
        headers = {"Authorization": f"Bearer {self.tokens['admin' if admin else 'hub']}"}
        if user is not None:
            headers["X-Lablink-User"] = user
        base = self.url if replica is None else self.replica_url(replica)
        return httpx.AsyncClient(
            base_url=f"{base}/api/v1",
            headers=headers,
            timeout=timeout,
            trust_env=False,
            limits=httpx.Limits(max_connections=connections),
        )

    # -- what the database says ------------------------------------------------------------

    async def rows(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        conn = await asyncpg.connect(self.database_url, timeout=10)
        try:
            return [dict(r) for r in await conn.fetch(sql, *args)]
        finally:
            await conn.close()

    async def database_text(self) -> str:
        """Every row of every table of the database, as text (to look for secrets)."""
        conn = await asyncpg.connect(self.database_url, timeout=10)
        try:
            tables = await conn.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            )
            out = []
            for table in tables:
                name = table["table_name"].replace('"', '""')
                rows = await conn.fetch(f'SELECT t::text AS row FROM "{name}" t')
                out += [row["row"] for row in rows]
            return "\n".join(out)
        finally:
            await conn.close()

    async def owners(self, lab_ids: list[str] | None = None) -> dict[str, str | None]:
        """``labs.owner`` of every lab (or of ``lab_ids``)."""
        if lab_ids is None:
            found = await self.rows("SELECT id, owner FROM labs")
        else:
            found = await self.rows("SELECT id, owner FROM labs WHERE id = ANY($1)", lab_ids)
        return {row["id"]: row["owner"] for row in found}

    async def replica_rows(self) -> list[dict[str, Any]]:
        return await self.rows("SELECT * FROM replicas ORDER BY started")

    async def live_replica_ids(self) -> dict[str, int]:
        """The ids of the replica rows whose process runs now, with its index."""
        by_pid = {r.pid: r.index for r in self.replicas if r.running}
        return {
            row["id"]: by_pid[row["pid"]]
            for row in await self.replica_rows()
            if row.get("pid") in by_pid
        }

    async def replica_id(self, i: int, timeout: float = 10) -> str:
        """The id of the row of replica ``i``'s current process."""
        deadline = time.monotonic() + timeout
        while True:
            for rid, index in (await self.live_replica_ids()).items():
                if index == i:
                    return rid
            if time.monotonic() > deadline:
                raise AssertionError(f"replica {i} (pid {self.replicas[i].pid}) has no row")
            await asyncio.sleep(0.1)

    async def active_count(self, vo: str | None = None) -> int:
        sql = "SELECT count(*) AS n FROM labs WHERE state NOT IN ('stopped', 'failed')"
        if vo is None:
            return int((await self.rows(sql))[0]["n"])
        return int((await self.rows(sql + " AND vo = $1", vo))[0]["n"])


def tagged_processes(tag: str) -> list[int]:
    """The live fakelab processes whose start environment holds ``TAG_ENV=tag``."""
    found = []
    for pid in fakelab_processes():
        with contextlib.suppress(OSError):
            if process_environment(pid).get(TAG_ENV) == tag and procs.is_alive(pid, None):
                found.append(pid)
    return found
