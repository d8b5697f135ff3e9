"""``/metrics`` of the tunnel service and the UserLab Manager (issue 18), scraped as
Prometheus would and parsed with prometheus_client's own parser: the figures move
as forwards are made and carry bytes, as SSH links are lost and made again, as lab
pods change phase and as the pod watch breaks; and only the metrics token (or
the metrics port) opens them."""

from __future__ import annotations

import asyncio
import secrets
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import kubernetes.client
import pytest

from backend.procs import free_port
from tests.helpers import site
from tests.helpers.kube import KubeApi, ScriptedPods, WatchAnswer
from tests.helpers.labs import assert_error
from tests.helpers.metrics import Scrape, scrape_now
from tests.helpers.sshd import Sshd
from tests.helpers.tunnel import TunnelService
from tests.helpers.userlabs import NAMESPACE, UserlabManager, lab_body, scheduled
from tests.helpers.waiting import wait_until
from userlab_manager import kube as kube_module
from userlab_manager.kube import Kube

pytestmark = [pytest.mark.metrics, pytest.mark.integration]

ALLOWED = [{"hosts": "127.0.0.1", "ports": {"min": 1024, "max": 65535}}]
TOKEN_ENV = "LABLINK_METRICS_TOKEN"
PHASES = ("Pending", "Running", "Succeeded", "Failed", "Unknown")


def until(predicate: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"not within {seconds} s: {what}"
        time.sleep(0.1)


# -- the tunnel service --------------------------------------------------------------


class _Echo(socketserver.BaseRequestHandler):
    """Reads to the end of what the client sends, then sends it all back: a lab
    that takes bytes in and gives as many out."""

    def handle(self) -> None:
        got = bytearray()
        while chunk := self.request.recv(1 << 16):
            got += chunk
        self.request.sendall(bytes(got))


@pytest.fixture
def echo() -> Iterator[int]:
    """The port of an echoing "compute node" on 127.0.0.1."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def through(port: int, data: bytes) -> bytes:
    """Send ``data`` through a forward's local port and read what comes back."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        back = bytearray()
        while chunk := sock.recv(1 << 20):
            back += chunk
    return bytes(back)


def tunnel_service(
    directory: Path, ssh: dict[str, Any], metrics: dict[str, Any], env: dict[str, str]
) -> TunnelService:
    document = site.with_metrics(site.tunnel_service_doc(directory / "state", ssh), **metrics)
    svc = TunnelService(directory / "tunnel", document, env=env)
    svc.start()
    return svc


def open_tunnel(svc: TunnelService, port: int, lab_id: str = "lab-1") -> int:
    with svc.client() as client:
        body = {"lab_id": lab_id, "system": "hpc", "host": "127.0.0.1", "port": port}
        resp = client.post("/tunnels", json=body)
    assert resp.status_code == 201, resp.text
    return int(resp.json()["local_port"])


@pytest.fixture
def metrics_token() -> str:
    return secrets.token_urlsafe(24)


@pytest.fixture
def tunnel(tmp_path: Path, sshd: Sshd, metrics_token: str) -> Iterator[TunnelService]:
    """A tunnel service whose system ``hpc`` has two login nodes: the sshd, and one
    that never answers (its port is closed)."""
    ssh = sshd.ssh_settings(destinations=ALLOWED, keepalive=1)
    ssh["login_nodes"].append({"host": "127.0.0.1", "port": free_port()})
    svc = tunnel_service(tmp_path, ssh, {"access": "token"}, {TOKEN_ENV: metrics_token})
    yield svc
    svc.stop()


def tunnel_metrics(svc: TunnelService, token: str) -> Scrape:
    return scrape_now(f"http://127.0.0.1:{svc.port}/metrics", token)


def test_a_forward_raises_the_forwards_and_its_link_and_bytes_count_both_ways(
    tunnel: TunnelService, sshd: Sshd, echo: int, metrics_token: str
) -> None:
    node = f"127.0.0.1:{sshd.port}"
    silent = tunnel.site["systems"]["hpc"]["ssh"]["login_nodes"][1]
    never = f"127.0.0.1:{silent['port']}"  # a login node that never answers
    before = tunnel_metrics(tunnel, metrics_token)
    assert before.one("lablink_tunnel_forwards", system="hpc") == 0
    for login in (node, never):  # every configured login node, before its first link
        assert before.one("lablink_tunnel_link_up", system="hpc", node=login) == 0
        assert before.one("lablink_tunnel_reconnects_total", system="hpc", node=login) == 0
    for direction in ("to_lab", "from_lab"):
        assert before.one("lablink_tunnel_bytes_total", system="hpc", direction=direction) == 0

    port = open_tunnel(tunnel, echo)
    open_tunnel(tunnel, echo, "lab-2")
    data = secrets.token_bytes(3 << 20)
    assert through(port, data) == data
    after = tunnel_metrics(tunnel, metrics_token)
    assert after.one("lablink_tunnel_forwards", system="hpc") == 2
    assert after.one("lablink_tunnel_link_up", system="hpc", node=node) == 1
    assert after.one("lablink_tunnel_link_up", system="hpc", node=never) == 0
    for direction in ("to_lab", "from_lab"):
        moved = after.one("lablink_tunnel_bytes_total", system="hpc", direction=direction)
        assert len(data) <= moved < 2 * len(data), direction
    values = {value for sample in after.samples for value in sample.labels.values()}
    assert not values & {"lab-1", "lab-2"}  # no lab id as a label value

    with tunnel.client() as client:
        assert client.delete("/tunnels/lab-1").status_code == 204
    gone = tunnel_metrics(tunnel, metrics_token)
    assert gone.one("lablink_tunnel_forwards", system="hpc") == 1
    moved = gone.one("lablink_tunnel_bytes_total", system="hpc", direction="to_lab")
    assert moved == after.one("lablink_tunnel_bytes_total", system="hpc", direction="to_lab")


def test_a_lost_link_shows_down_and_counts_a_reconnect_when_it_is_back(
    tunnel: TunnelService, sshd: Sshd, echo: int, metrics_token: str
) -> None:
    node = f"127.0.0.1:{sshd.port}"
    port = open_tunnel(tunnel, echo)

    def figure(name: str) -> float:
        return tunnel_metrics(tunnel, metrics_token).one(name, system="hpc", node=node)

    assert figure("lablink_tunnel_link_up") == 1
    assert figure("lablink_tunnel_reconnects_total") == 0
    sshd.stop()  # the login node goes away: the link is down while it is away
    until(lambda: figure("lablink_tunnel_link_up") == 0, 10, "the link shown down")
    assert figure("lablink_tunnel_reconnects_total") == 0  # lost, not made again yet
    sshd.start()
    until(lambda: figure("lablink_tunnel_link_up") == 1, 15, "the link shown up again")
    assert figure("lablink_tunnel_reconnects_total") == 1
    assert through(port, b"again") == b"again"
    assert sshd.kill_connections() >= 1  # dropped, and made again at once
    until(lambda: figure("lablink_tunnel_reconnects_total") == 2, 10, "a second reconnect")
    assert figure("lablink_tunnel_link_up") == 1


def test_tunnel_metrics_need_the_metrics_token_and_open_nothing_else(
    tunnel: TunnelService, metrics_token: str
) -> None:
    url = f"http://127.0.0.1:{tunnel.port}/metrics"
    with httpx.Client(trust_env=False, timeout=10) as http:
        assert_error(http.get(url), 401, "metrics token")
        # the service's own API token is not the metrics token
        assert_error(http.get(url, headers={"Authorization": f"Bearer {tunnel.token}"}), 401)
        assert_error(http.get(url, headers={"Authorization": "Bearer " + "x" * 32}), 401)
        # and the metrics token opens nothing of the API
        with tunnel.client(token=metrics_token) as client:
            assert_error(client.get("/tunnels"), 401)
    assert "lablink_tunnel_forwards" in tunnel_metrics(tunnel, metrics_token).names()


def test_tunnel_metrics_on_a_port_of_their_own(tmp_path: Path, sshd: Sshd) -> None:
    port = free_port()
    metrics = {"access": "port", "bind": "127.0.0.1", "ports": {"tunnel": port}}
    ssh = sshd.ssh_settings(destinations=ALLOWED, keepalive=1)
    svc = tunnel_service(tmp_path, ssh, metrics, {})
    try:
        samples = scrape_now(f"http://127.0.0.1:{port}/metrics")  # no token
        assert samples.one("lablink_tunnel_forwards", system="hpc") == 0
        with httpx.Client(trust_env=False, timeout=10) as http:
            headers = {"Authorization": f"Bearer {svc.token}"}
            assert_error(http.get(f"http://127.0.0.1:{svc.port}/metrics", headers=headers), 404)
    finally:
        svc.stop()
    with pytest.raises(httpx.ConnectError):  # the metrics port ends with the service
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2, trust_env=False)


# -- the UserLab Manager -------------------------------------------------------------


def userlab_manager(
    directory: Path, kube: KubeApi, metrics: dict[str, Any], env: dict[str, str]
) -> UserlabManager:
    svc = UserlabManager.for_kube(directory, kube)
    svc.site = site.with_metrics(svc.site, **metrics)
    svc.env = env
    svc.start()
    return svc


@pytest.fixture
def manager(tmp_path: Path, kube: KubeApi, metrics_token: str) -> Iterator[UserlabManager]:
    svc = userlab_manager(tmp_path / "manager", kube, {"access": "token"},
                          {TOKEN_ENV: metrics_token})  # fmt: skip
    yield svc
    svc.stop()


def pods_by_phase(svc: UserlabManager, token: str) -> dict[str, float]:
    samples = scrape_now(f"{svc.url}/metrics", token)
    return {phase: samples.one("lablink_userlab_pods", phase=phase) for phase in PHASES}


def test_lab_pods_are_counted_by_phase(
    manager: UserlabManager, kube: KubeApi, metrics_token: str
) -> None:
    none = dict.fromkeys(PHASES, 0.0)
    assert pods_by_phase(manager, metrics_token) == none  # all five phases, at 0
    with manager.client() as client:
        assert client.post("/labs", json=lab_body()).status_code == 201
        assert client.post("/labs", json=lab_body("lab-0002")).status_code == 201
        until(lambda: pods_by_phase(manager, metrics_token) == {**none, "Pending": 2}, 10,
              "two pods Pending")  # fmt: skip
        kube.set_pod_status(NAMESPACE, "lab-lab-0001",
                            scheduled("10.1.2.3", True, "Running", running={}))  # fmt: skip
        until(lambda: pods_by_phase(manager, metrics_token) == {**none, "Pending": 1,
              "Running": 1}, 10, "one Pending, one Running")  # fmt: skip
        kube.set_pod_status(NAMESPACE, "lab-lab-0002", {"phase": "Failed"})
        until(lambda: pods_by_phase(manager, metrics_token) == {**none, "Running": 1,
              "Failed": 1}, 10, "one Running, one Failed")  # fmt: skip
        assert client.delete("/labs/lab-0001").status_code == 200
        assert client.delete("/labs/lab-0002").status_code == 200
    until(lambda: pods_by_phase(manager, metrics_token) == none, 10, "no pods")


def test_a_broken_pod_watch_counts_a_restart_and_its_routine_end_does_not(
    manager: UserlabManager, kube: KubeApi, metrics_token: str
) -> None:
    def restarts() -> float:
        samples = scrape_now(f"{manager.url}/metrics", metrics_token)
        return samples.one("lablink_userlab_watch_restarts_total")

    time.sleep(6.5)  # longer than one watch request (kube.WATCH_SECONDS): it ended once
    assert restarts() == 0
    assert kube.proc is not None
    kube.proc.kill()  # the API server dies: the watch breaks off with an error
    kube.proc.wait()
    kube.start()  # and comes back on its port
    until(lambda: restarts() >= 1, 20, "the watch counted as begun again")
    before = restarts()
    kube.stop()  # it goes away in order: it ends the watch, then it is not there
    kube.start()
    until(lambda: restarts() > before, 20, "the watch counted as begun again")
    with manager.client() as client:  # and it follows pods again
        assert client.post("/labs", json=lab_body()).status_code == 201
    until(lambda: pods_by_phase(manager, metrics_token)["Pending"] == 1, 15, "the new pod")


async def test_the_pod_watch_counts_an_early_end_a_410_and_an_error_not_its_routine_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kube_module, "EARLY", 0.2)  # a watch's routine end: after 0.3 s
    gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired",
                                        "message": "too old resource version"}}  # fmt: skip
    pods = ScriptedPods(
        [
            WatchAnswer(hold=0.3),  # 1: its routine end
            WatchAnswer(),  # 2: ended by the server at once
            WatchAnswer(hold=0.3),  # 3: its routine end
            WatchAnswer(gone),  # 4: 410 Gone
            WatchAnswer(hold=0.3),  # 5: its routine end
            OSError("connection refused"),  # 6: the cluster cannot be reached
        ],
        routine=0.3,
    )
    kube = Kube(kubernetes.client.ApiClient())
    kube.core = pods  # type: ignore[assignment]
    restarts: list[int] = []  # the requests made before each restart
    kube.watch("labs", lambda kind, pod: None, lambda: restarts.append(pods.calls))
    await wait_until(lambda: pods.calls >= 8, 15, "eight watch requests")
    await asyncio.to_thread(kube.close)
    assert restarts == [2, 4, 6]  # begun again after 2, 4 and 6; not after 1, 3, 5, 7


def test_userlab_manager_metrics_need_the_metrics_token_or_their_port(
    tmp_path: Path, kube: KubeApi, metrics_token: str
) -> None:
    svc = userlab_manager(tmp_path / "a", kube, {"access": "token"}, {TOKEN_ENV: metrics_token})
    try:
        with httpx.Client(trust_env=False, timeout=10) as http:
            assert_error(http.get(f"{svc.url}/metrics"), 401)
            headers = {"Authorization": f"Bearer {svc.token}"}  # the API token
            assert_error(http.get(f"{svc.url}/metrics", headers=headers), 401)
        assert pods_by_phase(svc, metrics_token)["Pending"] == 0
    finally:
        svc.stop()

    port = free_port()
    metrics = {"access": "port", "bind": "127.0.0.1", "ports": {"userlab_manager": port}}
    svc = userlab_manager(tmp_path / "b", kube, metrics, {TOKEN_ENV: metrics_token})
    try:
        samples = scrape_now(f"http://127.0.0.1:{port}/metrics")  # no token
        assert samples.one("lablink_userlab_watch_restarts_total") == 0
        with httpx.Client(trust_env=False, timeout=10) as http:
            headers = {"Authorization": f"Bearer {metrics_token}"}
            assert_error(http.get(f"{svc.url}/metrics", headers=headers), 404)
    finally:
        svc.stop()
