"""The tunnel service against a real OpenSSH sshd: forwards, the allow-list, and
healing after a dropped connection, an sshd restart and its own SIGKILL."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import signal
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import httpx
import pytest

from backend.certs import hub_forward_tls
from backend.procs import free_port
from backend.settings import Settings, SettingsError
from tests.helpers import site
from tests.helpers.api import BackendFactory, RunningBackend, lab_request, wait_state
from tests.helpers.devsite import (
    PASSWORD,
    PASSWORD_ENV,
    Devsite,
    job_processes,
    run_devsite,
)
from tests.helpers.labs import assert_error, stored_lab
from tests.helpers.sshd import (
    HttpBackend,
    Sshd,
    http_get,
    http_get_async,
    known_hosts_of,
    lab_tls,
)
from tests.helpers.tunnel import TunnelService
from tunnel import fastpath, links

pytestmark = [pytest.mark.integration, pytest.mark.tunnel]

ALLOWED = [{"hosts": "127.0.0.1", "ports": {"min": 1024, "max": 65535}}]


@pytest.fixture
def service(tmp_path: Path, sshd: Sshd) -> Iterator[TunnelService]:
    ssh = sshd.ssh_settings(destinations=ALLOWED, keepalive=1)
    svc = TunnelService(tmp_path / "tunnel", site.tunnel_service_doc(tmp_path / "state", ssh))
    svc.start()
    yield svc
    svc.stop()


def open_tunnel(svc: TunnelService, backend: HttpBackend, lab_id: str = "lab-1") -> int:
    with svc.client() as client:
        resp = client.post(
            "/tunnels",
            json={"lab_id": lab_id, "system": "hpc", "host": "127.0.0.1", "port": backend.port},
        )
    assert resp.status_code == 201, resp.text
    return int(resp.json()["local_port"])


def answers(port: int, tls: ssl.SSLContext | None = None) -> bool:
    try:
        return http_get("127.0.0.1", port, timeout=1, tls=tls)[0] == 200
    except OSError:
        return False


def back_within(port: int, seconds: float, tls: ssl.SSLContext | None = None) -> float:
    """How long until the forward answers again; fails after ``seconds``."""
    began = time.monotonic()
    while time.monotonic() - began < seconds:
        if answers(port, tls):
            return time.monotonic() - began
        time.sleep(0.02)
    raise AssertionError(f"the tunnel on port {port} did not answer within {seconds} s")


def test_a_tunnel_reaches_the_compute_node_and_goes_away(
    service: TunnelService,
    http_backend: HttpBackend,
) -> None:
    port = open_tunnel(service, http_backend)
    assert 20000 <= port <= 29999
    status, body = http_get("127.0.0.1", port)
    assert (status, body) == (200, http_backend.body)
    with service.client() as client:
        [listed] = client.get("/tunnels").json()
        assert listed["local_port"] == port and listed["up"] is True
        again = client.post(
            "/tunnels",
            json={
                "lab_id": "lab-1",
                "system": "hpc",
                "host": "127.0.0.1",
                "port": http_backend.port,
            },
        )
        assert again.status_code == 200 and again.json()["local_port"] == port  # idempotent
        assert client.delete("/tunnels/lab-1").status_code == 204
        assert client.delete("/tunnels/lab-1").status_code == 204  # gone is fine
        assert client.get("/tunnels").json() == []
    assert not answers(port), "the port still listens after its tunnel was removed"


def test_a_tunnel_is_handed_out_at_the_advertised_host(
    tmp_path: Path, sshd: Sshd, http_backend: HttpBackend
) -> None:
    """In a cluster the forwards listen on every address of the tunnel pod and the
    proxy reaches them by the pod's name: `local_host` is `advertise`, not `bind`."""
    ssh = sshd.ssh_settings(destinations=ALLOWED, keepalive=1)
    doc = site.tunnel_service_doc(tmp_path / "state", ssh)
    doc["tunnel_service"].update(bind="127.0.0.1", advertise="lablink-tunnel-0.forwards.test")
    svc = TunnelService(tmp_path / "tunnel", doc)
    svc.start()
    try:
        port = open_tunnel(svc, http_backend)
        assert http_get("127.0.0.1", port) == (200, http_backend.body)  # listens on bind
        with svc.client() as client:
            [listed] = client.get("/tunnels").json()
        assert (listed["local_host"], listed["local_port"]) == (
            "lablink-tunnel-0.forwards.test",
            port,
        )
    finally:
        svc.stop()


def test_advertise_defaults_to_bind_and_must_be_a_host() -> None:
    def service_of(**tunnel_service: str) -> Settings:
        return site.settings(site.doc(None, tunnel_service=tunnel_service))

    assert service_of(bind="0.0.0.0").tunnel_service.local_host == "0.0.0.0"
    advertised = service_of(bind="0.0.0.0", advertise="tunnel-0.forwards.ns.svc")
    assert advertised.tunnel_service.local_host == "tunnel-0.forwards.ns.svc"
    with pytest.raises(SettingsError, match=r"tunnel_service\.advertise: String should match"):
        service_of(advertise="http://tunnel:9000")


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"host": "10.0.0.7", "port": 8888}, 403, ["10.0.0.7:8888", "not allowed", "127.0.0.1"]),
        ({"host": "127.0.0.1", "port": 22}, 403, ["127.0.0.1:22", "ports 1024-65535"]),
        ({"system": "cloud"}, 422, ["system", "allowed: hpc"]),
        ({"host": "a;b"}, 422, ["host"]),
        ({"port": 70000}, 422, ["port"]),
    ],
)
def test_what_is_not_allowed_is_refused_and_opens_nothing(
    service: TunnelService, body: dict[str, object], status: int, words: list[str]
) -> None:
    request = {"lab_id": "lab-x", "system": "hpc", "host": "127.0.0.1", "port": 8888, **body}
    with service.client() as client:
        assert_error(client.post("/tunnels", json=request), status, *words)
        assert client.get("/tunnels").json() == []


def test_every_call_needs_the_token(service: TunnelService) -> None:
    with service.client(token="not-the-token-0123456789") as client:
        assert_error(client.get("/tunnels"), 401)
        assert_error(client.get("/health"), 401)
    with httpx.Client(base_url=service.url, trust_env=False) as anonymous:
        assert_error(anonymous.post("/tunnels", json={}), 401)


def test_a_killed_connection_is_restored(
    service: TunnelService,
    sshd: Sshd,
    http_backend: HttpBackend,
) -> None:
    port = open_tunnel(service, http_backend)
    assert answers(port)
    assert sshd.kill_connections() >= 1
    assert back_within(port, 5) < 5
    assert "connection to" in service.log_text() and "lost" in service.log_text()


def test_an_sshd_restart_is_survived(
    service: TunnelService,
    sshd: Sshd,
    http_backend: HttpBackend,
) -> None:
    ports = [open_tunnel(service, http_backend, f"lab-{i}") for i in range(3)]
    sshd.restart()
    for port in ports:
        assert back_within(port, 5) < 5


def test_a_tunnel_service_killed_restores_every_forward_before_it_is_healthy(
    service: TunnelService,
    http_backend: HttpBackend,
) -> None:
    ports = [open_tunnel(service, http_backend, f"lab-{i}") for i in range(3)]
    service.stop(signal.SIGKILL)
    assert not any(answers(p) for p in ports)
    began = time.monotonic()
    service.start(wait_healthy=True)  # health answers 200 only once all listen again
    assert all(answers(p) for p in ports)
    assert time.monotonic() - began < 5
    with service.client() as client:
        assert client.get("/health").json()["tunnels"] == 3


def health_of(svc: TunnelService) -> tuple[int, dict[str, object]]:
    with svc.client() as client:
        resp = client.get("/health")
    return resp.status_code, resp.json()


def until(predicate: object, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        time.sleep(0.05)


def hub_forwarding_service(
    tmp_path: Path, sshd: Sshd, hub: HttpBackend, port: int
) -> tuple[TunnelService, ssl.SSLContext]:
    """A tunnel service whose login node listens on ``port`` for the hub's API (TLS
    with a certificate for 127.0.0.1); ``hub`` plays the hub's API. Also what a
    lab trusts for it."""
    tls = hub_forward_tls(tmp_path / "hub-tls", ["127.0.0.1"])
    ssh = sshd.ssh_settings(
        destinations=ALLOWED,
        keepalive=1,
        hub_forward={"bind": "127.0.0.1", "port": port, "tls": tls.settings()},
    )
    doc = site.tunnel_service_doc(tmp_path / "state", ssh)
    doc["tunnel_service"]["hub_api"] = f"http://127.0.0.1:{hub.port}"
    return TunnelService(tmp_path / "tunnel", doc), lab_tls(tls.ca_file)


def test_compute_nodes_reach_the_hub_api_through_the_login_node(
    tmp_path: Path,
    sshd: Sshd,
    http_backend: HttpBackend,
) -> None:
    port = free_port()
    svc, tls = hub_forwarding_service(tmp_path, sshd, http_backend, port)
    svc.start()  # healthy only once the login node listens for the hub
    try:
        assert http_get("127.0.0.1", port, tls=tls) == (200, http_backend.body)
        with pytest.raises(ConnectionError):  # TLS only: plain HTTP gets no answer
            http_get("127.0.0.1", port)
        _, health = health_of(svc)
        assert health["systems"]["hpc"]["hub_forward"] == [f"127.0.0.1:{sshd.port}"]  # type: ignore[index]
        sshd.kill_connections()
        assert back_within(port, 5, tls) < 5
        sshd.restart()
        assert back_within(port, 5, tls) < 5
    finally:
        svc.stop()
    assert not answers(port, tls), (
        "the login node still listens for the hub after the service ended"
    )


class Impostor(socketserver.ThreadingTCPServer):
    """Somebody on the login node who took the hub forward's port, with a certificate
    of their own for its name; keeps what labs send."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, directory: Path):
        own = hub_forward_tls(directory, ["127.0.0.1"], "Impostor")
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(own.cert_file, own.key_file)
        self.received = bytearray()
        super().__init__(("127.0.0.1", port), ImpostorHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class ImpostorHandler(socketserver.BaseRequestHandler):
    server: Impostor

    def handle(self) -> None:
        try:
            with self.server.context.wrap_socket(self.request, server_side=True) as conn:
                conn.settimeout(2)
                while chunk := conn.recv(4096):
                    self.server.received += chunk
                    if b"\r\n\r\n" in self.server.received:
                        conn.sendall(b"HTTP/1.0 200 OK\r\n\r\nthanks")
                        return
        except OSError:
            return


def test_whoever_takes_the_hub_port_on_a_login_node_gets_no_token(
    tmp_path: Path,
    sshd: Sshd,
    http_backend: HttpBackend,
) -> None:
    """The port is taken on the login node before the service starts: the service says
    so once in its log and in its health, retrying; a lab that reaches the impostor
    fails its TLS handshake, so its hub token is never sent; once the port is free,
    the hub's API is back on it."""
    port = free_port()
    impostor = Impostor(port, tmp_path / "impostor")
    svc, tls = hub_forwarding_service(tmp_path, sshd, http_backend, port)
    svc.start(wait_healthy=False)
    try:
        until(lambda: "cannot reach the hub" in svc.log_text(), 10, "the alert in the log")
        status, health = health_of(svc)
        assert (status, health["status"]) == (503, "restoring")
        problems = health["systems"]["hpc"]["hub_forward_problems"]  # type: ignore[index]
        assert list(problems) == [f"127.0.0.1:{sshd.port}"], problems
        assert f"listen on 127.0.0.1:{port} for the hub's API" in problems[f"127.0.0.1:{sshd.port}"]

        token = "Authorization: token lab-secret-123\r\n"
        with pytest.raises(ssl.SSLCertVerificationError):
            http_get("127.0.0.1", port, tls=tls, headers=token)
        assert b"lab-secret" not in impostor.received

        time.sleep(2)  # retries go on: the alert is not repeated
        assert svc.log_text(100_000).count("cannot reach the hub") == 1
        impostor.close()
        until(lambda: health_of(svc)[0] == 200, 15, "healthy once the port is free")
        assert http_get("127.0.0.1", port, tls=tls, headers=token) == (200, http_backend.body)
        _, health = health_of(svc)
        assert health["systems"]["hpc"]["hub_forward_problems"] == {}  # type: ignore[index]
        assert "the hub's API is on" in svc.log_text() and " again, after " in svc.log_text()
    finally:
        impostor.close()
        svc.stop()


def test_forwards_move_to_another_login_node_when_theirs_is_lost(
    tmp_path: Path,
    sshd: Sshd,
    http_backend: HttpBackend,
) -> None:
    second = sshd.another_login_node(tmp_path / "sshd2")
    svc = None
    try:
        known = known_hosts_of(tmp_path / "known_hosts", sshd, second)
        ssh = sshd.ssh_settings(destinations=ALLOWED, keepalive=1, known_hosts=str(known))
        ssh["login_nodes"].append({"host": second.host, "port": second.port})
        svc = TunnelService(tmp_path / "tunnel", site.tunnel_service_doc(tmp_path / "state", ssh))
        svc.start()
        ports = [open_tunnel(svc, http_backend, f"lab-{i}") for i in range(2)]
        nodes = {f"127.0.0.1:{s.port}": s for s in (sshd, second)}

        def summary() -> dict[str, object]:
            return health_of(svc)[1]["systems"]["hpc"]  # type: ignore[index, return-value]

        until(lambda: set(summary()["login_nodes"].values()) == {"up"}, 10, "both nodes up")  # type: ignore[attr-defined]
        carrier = str(summary()["carrier"])
        nodes[carrier].stop()  # the login node goes away, and stays away
        for port in ports:
            assert back_within(port, 2) < 2  # on the other node, without waiting for this one
        assert summary()["carrier"] != carrier
        assert summary()["login_nodes"][carrier] in ("connecting", "down")  # type: ignore[index]
    finally:
        if svc is not None:
            svc.stop()
        second.stop()


def test_an_unknown_host_key_is_refused(
    tmp_path: Path,
    sshd: Sshd,
    http_backend: HttpBackend,
) -> None:
    stranger = tmp_path / "known_hosts_of_another_host"
    stranger.write_text(f"[127.0.0.1]:{sshd.port} ssh-ed25519 " + "A" * 68 + "\n")
    ssh = sshd.ssh_settings(destinations=ALLOWED, known_hosts=str(stranger))
    svc = TunnelService(tmp_path / "tunnel", site.tunnel_service_doc(tmp_path / "state", ssh))
    svc.start()
    try:
        with svc.client() as client:
            resp = client.post(
                "/tunnels",
                json={
                    "lab_id": "l",
                    "system": "hpc",
                    "host": "127.0.0.1",
                    "port": http_backend.port,
                },
            )
            assert_error(resp, 503, "No login node of system 'hpc' can be reached")
            assert client.get("/tunnels").json() == []
        assert "Host key is not trusted" in svc.log_text() or "host key" in svc.log_text().lower()
    finally:
        svc.stop()


async def test_an_hpc_lab_is_reached_through_the_tunnel(
    tmp_path: Path,
    sshd: Sshd,
    start_backend: BackendFactory,
    token_env: dict[str, str],
) -> None:
    """Backend → development site (local job) → lab; the backend and the proxy reach
    the lab through the tunnel service's forward, which goes when the lab stops."""
    stack = await hpc_through_a_tunnel(tmp_path, sshd, start_backend, token_env, retry_for=1)
    settings, svc, devsite = stack.settings, stack.tunnel, stack.devsite
    try:
        svc.start()
        async with stack.backend.client("alice") as alice:
            lab_id = await stack.start_lab(alice)
            lab = await wait_state(alice, lab_id, {"running", "failed"})
            assert lab["state"] == "running", lab
            with svc.client() as client:
                [tunnel] = client.get("/tunnels").json()
            assert tunnel["lab_id"] == lab_id
            assert lab["url"] == f"http://127.0.0.1:{tunnel['local_port']}"
            handle = (await stored_lab(settings, lab_id)).handle
            assert tunnel["port"] == handle["port"]  # the compute node's port, from lab.json
            status, _ = await http_get_async("127.0.0.1", tunnel["local_port"], "/user/alice/api")
            assert status == 200

            await alice.delete(f"/labs/{lab_id}")
            assert (await wait_state(alice, lab_id, {"stopped", "failed"}))["state"] == "stopped"
            with svc.client() as client:
                assert client.get("/tunnels").json() == []
        assert not answers(tunnel["local_port"])
        assert job_processes(devsite) == []
    finally:
        svc.stop()
        devsite.stop()


@dataclass
class HpcWithTunnel:
    settings: Settings
    backend: RunningBackend
    devsite: Devsite
    tunnel: TunnelService

    async def start_lab(self, client: httpx.AsyncClient) -> str:
        body = lab_request("alice", options={"system": "hpc"})
        return str((await client.post("/labs", json=body)).json()["id"])


async def hpc_through_a_tunnel(
    tmp_path: Path,
    sshd: Sshd,
    start_backend: BackendFactory,
    token_env: dict[str, str],
    retry_for: float,
) -> HpcWithTunnel:
    """A backend whose HPC system (the development site, local jobs) is reached
    through a tunnel service that is set up but not started."""
    ssh = sshd.ssh_settings(destinations=ALLOWED)
    svc = TunnelService(tmp_path / "tunnel", site.tunnel_service_doc(tmp_path / "tstate", ssh))
    svc.port = free_port()
    devsite = run_devsite(tmp_path, dict(os.environ), "--queues", "batch,devel")
    system = site.unicore_system(devsite.url, tunnel="ssh", ssh=ssh, retry_for=retry_for)
    doc = site.doc(
        tmp_path / "state",
        f"sqlite+aiosqlite:///{tmp_path}/b.sqlite",
        systems={"hpc": system},
        tunnel_service={"url": f"http://127.0.0.1:{svc.port}"},
    )
    settings = site.settings(doc)
    token_env.update({PASSWORD_ENV: PASSWORD, "LABLINK_TUNNEL_TOKEN": svc.token})
    try:
        return HpcWithTunnel(settings, await start_backend(settings), devsite, svc)
    except BaseException:
        devsite.stop()
        raise


async def messages_of(client: httpx.AsyncClient, lab_id: str) -> list[str]:
    return [e["message"] for e in (await client.get(f"/labs/{lab_id}/events")).json()]


async def test_a_tunnel_service_that_comes_late_is_waited_for(
    tmp_path: Path,
    sshd: Sshd,
    start_backend: BackendFactory,
    token_env: dict[str, str],
) -> None:
    """The backend shows that it retries, and the lab runs once the service is there."""
    stack = await hpc_through_a_tunnel(tmp_path, sshd, start_backend, token_env, retry_for=60)
    svc, devsite = stack.tunnel, stack.devsite  # nothing listens at svc's port yet
    try:
        async with stack.backend.client("alice") as alice:
            lab_id = await stack.start_lab(alice)
            retrying = "The tunnel to the lab cannot be made yet; retrying."
            deadline = time.monotonic() + 30
            while retrying not in await messages_of(alice, lab_id):
                assert time.monotonic() < deadline, await messages_of(alice, lab_id)
                await asyncio.sleep(0.1)
            assert (await alice.get(f"/labs/{lab_id}")).json()["state"] == "starting"
            svc.start()
            lab = await wait_state(alice, lab_id, {"running", "failed"})
            assert lab["state"] == "running", lab
            await alice.delete(f"/labs/{lab_id}")
            await wait_state(alice, lab_id, {"stopped"})
    finally:
        svc.stop()
        devsite.stop()


async def test_no_tunnel_in_time_fails_the_lab_and_ends_its_job(
    tmp_path: Path,
    sshd: Sshd,
    start_backend: BackendFactory,
    token_env: dict[str, str],
) -> None:
    stack = await hpc_through_a_tunnel(tmp_path, sshd, start_backend, token_env, retry_for=2)
    devsite = stack.devsite  # the tunnel service is never started
    try:
        async with stack.backend.client("alice") as alice:
            lab_id = await stack.start_lab(alice)
            lab = await wait_state(alice, lab_id, {"running", "failed"})
            assert lab["state"] == "failed", lab
            messages = await messages_of(alice, lab_id)
            assert "The tunnel to the lab cannot be made yet; retrying." in messages
            assert any("no tunnel to its compute node could be made" in m for m in messages)
        assert job_processes(devsite) == []  # the job was ended
    finally:
        devsite.stop()


# -- the bytes themselves ---------------------------------------------------------------

SIZE = 24 << 20


def pattern(seed: int) -> bytes:
    return random.Random(seed).randbytes(SIZE)


class _Sink(socketserver.BaseRequestHandler):
    """``D<seed>\\n``: send pattern(seed) and close; ``U``: read to the end, answer
    its SHA-256."""

    def handle(self) -> None:
        sock = self.request
        first = sock.recv(1)
        if first == b"D":
            seed = b""
            while not seed.endswith(b"\n"):
                seed += sock.recv(1)
            sock.sendall(pattern(int(seed)))
            sock.shutdown(socket.SHUT_WR)
            return
        digest = hashlib.sha256()
        while chunk := sock.recv(1 << 16):
            digest.update(chunk)
        sock.sendall(digest.digest())


def download(port: int, seed: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(b"D%d\n" % seed)
        got = bytearray()
        while chunk := sock.recv(1 << 20):
            got += chunk
    return bytes(got) == pattern(seed)


def upload(port: int, seed: int) -> bool:
    data = pattern(seed)
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(b"U" + data)
        sock.shutdown(socket.SHUT_WR)
        return sock.recv(64) == hashlib.sha256(data).digest()


def test_every_byte_arrives_both_ways_across_rekeys(tmp_path: Path) -> None:
    """Random data down and up at once through the service (whose receive path for
    forwarded data is its own, tunnel/fastpath.py), while sshd changes keys every
    4 MiB: every byte arrives, in order, each way."""
    sshd = Sshd(tmp_path / "sshd", extra_config="RekeyLimit 4M\nLogLevel DEBUG1\n")
    sshd.start()
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Sink)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    svc = TunnelService(
        tmp_path / "tunnel",
        site.tunnel_service_doc(tmp_path / "state", sshd.ssh_settings(destinations=ALLOWED)),
    )
    try:
        svc.start()
        with svc.client() as client:
            body = {"lab_id": "bytes", "system": "hpc", "host": "127.0.0.1"}
            resp = client.post("/tunnels", json={**body, "port": server.server_address[1]})
        assert resp.status_code == 201, resp.text
        port = resp.json()["local_port"]
        jobs = [(download, 1), (upload, 2), (download, 3), (upload, 4)]
        with ThreadPoolExecutor(len(jobs)) as pool:
            results = list(pool.map(lambda job: job[0](port, job[1]), jobs))
        assert results == [True] * len(jobs)
        assert "asyncssh's internals changed" not in svc.log_text()
        kexinits = sshd.log.read_text(errors="replace").count("SSH2_MSG_KEXINIT sent")
        assert kexinits > 4, "the keys did not change during the transfers"
    finally:
        svc.stop()
        server.shutdown()
        sshd.stop()


async def test_forwarded_data_takes_the_fast_path(sshd: Sshd, http_backend: HttpBackend) -> None:
    """With the asyncssh release pinned in pyproject.toml, the service's own receive
    path carries forwarded data (not asyncssh's, which copies it ~12 times)."""
    fastpath.install()
    before = fastpath.carried
    options = {"encryption_algs": links.CIPHERS, "window": links.WINDOW}
    async with asyncssh.connect(**sshd.asyncssh_options(), **options) as conn:
        listener = await conn.forward_local_port("127.0.0.1", 0, "127.0.0.1", http_backend.port)
        size = 4 << 20
        status, body = await http_get_async(
            "127.0.0.1", listener.get_port(), f"/big?bytes={size}", timeout=30
        )
    assert status == 200 and len(body) == size
    assert fastpath.carried - before >= size // (32 << 10)  # sshd sends ≤ 32 KiB per packet
