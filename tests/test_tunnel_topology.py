"""The tunnel on a site's network: the compute node is reachable only through the
login node (network namespaces, tests/helpers/netns.py), and it reaches the
hub's API only through the login node's reverse forward."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend.certs import hub_forward_tls
from tests.helpers.netns import COMPUTE, HUB_SIDE, LOGIN_INSIDE, LOGIN_OUTSIDE, NetnsError, Site
from tests.helpers.peers import peer_missing
from tests.helpers.site import tunnel_service_doc
from tests.helpers.sshd import (
    HttpBackend,
    Sshd,
    SshdError,
    http_get,
)
from tests.helpers.tunnel import TunnelService

pytestmark = [pytest.mark.integration, pytest.mark.tunnel]

LAB_PORT = 8888
HUB_FORWARD_PORT = 8081
LAB_BODY = b"a lab on the compute node\n"

# a lab: answers every request with one write (socketserver, not http.server: that
# looks up its own name, and this network has no DNS)
LAB = f"""
import socketserver
class Lab(socketserver.StreamRequestHandler):
    def handle(self):
        while self.rfile.readline() not in (b"\\r\\n", b"\\n", b""):
            pass
        body = {LAB_BODY!r}
        head = b"HTTP/1.1 200 OK\\r\\nConnection: close\\r\\n"
        self.wfile.write(head + b"Content-Length: %d\\r\\n\\r\\n" % len(body) + body)
socketserver.TCPServer(({COMPUTE!r}, {LAB_PORT}), Lab).serve_forever()
"""

# what the lab does with JUPYTERHUB_API_URL: an HTTP request to the hub's API
FETCH = """
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=3) as resp:
        sys.stdout.write(resp.read().decode())
except OSError as exc:
    sys.stdout.write(f"unreachable: {exc}")
"""


@pytest.fixture
def site() -> Iterator[Site]:
    if os.geteuid() != 0:
        peer_missing("network namespaces", "making them needs root")
    made = Site()
    try:
        made.create()
    except (NetnsError, OSError, subprocess.SubprocessError) as exc:
        peer_missing("network namespaces (iproute2's ip netns)", str(exc))
    try:
        yield made
    finally:
        made.remove()


def reaches(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def wait_listening(site: Site, port: int, seconds: float = 10) -> None:
    """Until something listens on ``port`` in the compute node's namespace."""
    argv = site.exec_argv(site.compute, ["ss", "-ltnH", f"sport = :{port}"])
    deadline = time.monotonic() + seconds
    while not subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip():
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing listens on port {port} of the compute node")
        time.sleep(0.05)


def fetch_from_compute_node(site: Site, url: str, trust: Path | None = None) -> str:
    """What the lab gets from ``url``; ``trust``: its SSL_CERT_FILE (as its start
    script makes it)."""
    argv = site.exec_argv(site.compute, [sys.executable, "-c", FETCH, url])
    env = {**os.environ, **({"SSL_CERT_FILE": str(trust)} if trust else {})}
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=20, check=True, env=env
    ).stdout


def test_a_compute_node_is_reached_only_through_its_login_node(
    tmp_path: Path, site: Site, http_backend: HttpBackend
) -> None:
    login = Sshd(
        tmp_path / "login",
        host=LOGIN_OUTSIDE,
        port=22,
        netns=site.login,
        gateway_ports="clientspecified",  # the reverse forward listens toward the compute nodes
    )
    try:
        login.start()
    except SshdError as exc:
        pytest.fail(f"sshd in the login node's namespace did not start: {exc}")
    lab = subprocess.Popen(site.exec_argv(site.compute, [sys.executable, "-c", LAB]))
    svc = None
    try:
        wait_listening(site, LAB_PORT)
        # the network: nothing crosses the login node, in either direction
        assert not reaches(COMPUTE, LAB_PORT)
        hub_api = f"http://{HUB_SIDE}:{http_backend.port}/"  # http_backend plays the hub
        assert fetch_from_compute_node(site, hub_api).startswith("unreachable")

        tls = hub_forward_tls(tmp_path / "hub-tls", [LOGIN_INSIDE])
        ssh = login.ssh_settings(
            destinations=[{"hosts": "10.231.1.*", "ports": {"min": 1024, "max": 65535}}],
            keepalive=1,
            hub_forward={"bind": LOGIN_INSIDE, "port": HUB_FORWARD_PORT, "tls": tls.settings()},
        )
        doc = tunnel_service_doc(tmp_path / "state", ssh)
        doc["tunnel_service"]["hub_api"] = f"http://127.0.0.1:{http_backend.port}"
        svc = TunnelService(tmp_path / "tunnel", doc)
        svc.start()  # healthy once the login node listens for the hub

        with svc.client() as client:
            resp = client.post(
                "/tunnels",
                json={"lab_id": "lab-1", "system": "hpc", "host": COMPUTE, "port": LAB_PORT},
            )
        assert resp.status_code == 201, resp.text
        local_port = resp.json()["local_port"]
        assert http_get("127.0.0.1", local_port) == (200, LAB_BODY)

        # the lab's JUPYTERHUB_API_URL would be https://10.231.1.1:8081/hub/api, and it
        # trusts the hub forward's CA besides the system's
        url = f"https://{LOGIN_INSIDE}:{HUB_FORWARD_PORT}/"
        trust = tmp_path / "lab-trust.pem"
        system = Path("/etc/ssl/certs/ca-certificates.crt")
        trust.write_text((system.read_text() if system.exists() else "") + tls.ca_file.read_text())
        assert fetch_from_compute_node(site, url, trust) == http_backend.body.decode()
        assert "CERTIFICATE_VERIFY_FAILED" in fetch_from_compute_node(site, url)
    finally:
        if svc is not None:
            svc.stop()
        lab.kill()
        lab.wait(5)
        login.stop()
