"""The chart's pods fit together: names, ports, tokens and files (issue 17, point 9).

The chart is rendered with tests/helm/values-wiring.yaml and every Deployment and
StatefulSet runs as local processes (tests/helpers/podrunner.py: the command, arguments
and environment the chart gives, with the Service names, ports and mount paths a
cluster would provide mapped onto this machine). Then a person logs in at the proxy's
public port with the demo password from the rendered Secret, starts a lab of the
`kind: local` system, reaches JupyterLab through the proxy and stops it; and the
backend's tokens open the UserLab Manager's and the tunnel service's health at the
URLs the rendered site names.

Test substitutions (a cluster would provide these, the runner cannot):
- the UserLab Manager gets KUBECONFIG for the Kubernetes API emulator (kmock) in its
  environment (in a cluster: the service account's in-cluster configuration);
- values on top of values-wiring.yaml: `tunnel.enabled: true` (so that the tunnel
  service's name, port and token are checked too; no system uses it), and, only when
  the tests run as root, `allow_root: true` on the local system (in the pod the backend
  runs as uid 10001; here it runs as whoever runs the tests).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.helpers import chart
from tests.helpers.hub import HubUser
from tests.helpers.kube import KubeApi
from tests.helpers.peers import peer_missing
from tests.helpers.podrunner import Cluster, PodRunnerError, find_program

pytestmark = pytest.mark.helm

WIRING_VALUES = chart.VALUES_DIR / "values-wiring.yaml"
USER = "demo"


def wiring_values() -> dict[str, Any]:
    changes: dict[str, Any] = {"tunnel": {"enabled": True}}
    if os.geteuid() == 0:
        site = chart.values_of(WIRING_VALUES).get("site") or {}
        local = [name for name, s in (site.get("systems") or {}).items() if s["kind"] == "local"]
        changes["site"] = {"systems": {name: {"allow_root": True} for name in local}}
    return chart.merged(WIRING_VALUES, changes)


def programs() -> dict[str, str]:
    """``lablink`` of this venv, and the configurable-http-proxy `make up` installs."""
    lablink = find_program(Path(sys.executable).parent / "lablink")
    proxy = find_program(
        os.environ.get("LABLINK_PROXY_COMMAND"),
        chart.REPO / ".venv" / "proxy" / "node_modules" / ".bin" / "configurable-http-proxy",
    )
    if lablink is None:
        pytest.fail(f"no lablink command beside {sys.executable}; pip install -e . first")
    if proxy is None:
        peer_missing(
            "configurable-http-proxy",
            "set LABLINK_PROXY_COMMAND or run `make up` once (it installs .venv/proxy)",
        )
    return {"lablink": lablink, "configurable-http-proxy": proxy}


def the_cluster(tmp: Path, kube: KubeApi, objects: list[chart.Obj]) -> Cluster:
    kubeconfig = kube.kubeconfig(tmp / "kubeconfig", namespace=chart.NAMESPACE)
    return Cluster(
        objects,
        tmp / "cluster",
        programs=programs(),
        extra_env={"lablink-userlab-manager": {"KUBECONFIG": str(kubeconfig)}},
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, module_kube: KubeApi) -> Iterator[Cluster]:
    """The wiring render, running for this module's tests; every process ends with the
    module, and a failed start's report has each container's log end."""
    tmp = tmp_path_factory.mktemp("wiring")
    running = the_cluster(tmp, module_kube, chart.render(wiring_values()))
    try:
        running.start(timeout=45)
    except PodRunnerError as exc:
        running.stop()
        pytest.fail(f"{exc}\n{running.tails()}", pytrace=False)
    try:
        yield running
    finally:
        running.stop()
        left = running.leftovers()
        assert not left, f"processes left after the pods stopped: {left}"


def secret_value(objects: list[chart.Obj], key: str) -> str:
    return chart.secret_data(chart.one(objects, "Secret", chart.SECRETS))[key]


def backend_site(cluster: Cluster) -> dict[str, Any]:
    """The site file as the backend's process reads it (in its pod's root)."""
    path = cluster.pods["lablink-backend"].root / chart.SITE_PATH.lstrip("/")
    site: dict[str, Any] = yaml.safe_load(path.read_text())
    return site


async def log_in_and_use_a_lab(cluster: Cluster) -> None:
    password = secret_value(cluster.objects, "demo-password")
    public = cluster.url("lablink-proxy-public")
    async with HubUser(public, USER, password) as demo:
        await demo.login()
        started = await demo.start("", {"system": "local"})
        assert started.status_code in (201, 202), started.text
        await demo.wait_lab(timeout=40)
        status = await demo.http.get(f"{demo.server_path()}api/status")
        assert status.status_code == 200, status.text
        assert "kernels" in status.json()
        model = await demo.model()
        assert model["servers"][""]["ready"] is True
        stopped = await demo.stop()
        assert stopped.status_code in (202, 204), stopped.text
        await demo.wait_stopped(timeout=30)
        gone = await demo.http.get(f"{demo.server_path()}api/status")
        assert gone.status_code != 200


@pytest.mark.integration
@pytest.mark.slow
def test_the_pods_of_the_chart_serve_a_lab_through_the_proxy(cluster: Cluster) -> None:
    try:
        asyncio.run(log_in_and_use_a_lab(cluster))
    except (AssertionError, httpx.HTTPError) as exc:
        pytest.fail(f"{exc!r}\n{cluster.tails()}", pytrace=False)


@pytest.mark.integration
@pytest.mark.slow
def test_the_backend_reaches_the_tunnel_and_the_manager_with_its_tokens(
    cluster: Cluster,
) -> None:
    """The URLs of the rendered site (as the backend's process sees them) and the
    tokens of the backend's environment open each peer's health; the backend's own
    token is the hub's."""
    site = backend_site(cluster)
    backend = cluster.container("lablink-backend").env
    peers = {
        "userlab_manager": ("LABLINK_USERLAB_MANAGER_TOKEN", "lablink-userlab-manager"),
        "tunnel_service": ("LABLINK_TUNNEL_TOKEN", "lablink-tunnel"),
    }
    with httpx.Client(timeout=10, trust_env=False) as http:
        for key, (variable, workload) in peers.items():
            token_env = site[key].get("token_env", variable)
            assert token_env in backend, f"the backend has no {token_env} for {key}"
            assert cluster.container(workload).env[token_env] == backend[token_env]
            url = site[key]["url"].rstrip("/") + "/api/v1/health"
            answer = http.get(url, headers={"Authorization": f"Bearer {backend[token_env]}"})
            assert answer.status_code == 200, f"{key} at {url}: {answer.status_code} {answer.text}"
            refused = http.get(url, headers={"Authorization": "Bearer not-the-token-at-all"})
            assert refused.status_code in (401, 403), f"{key} took a wrong token"
        hub_token = cluster.container("lablink-hub").env["LABLINK_BACKEND_TOKEN"]
        assert hub_token == backend["LABLINK_HUB_TOKEN"]
        hub_url = cluster.container("lablink-hub").env["LABLINK_BACKEND_URL"]
        site_face = http.get(f"{hub_url}/healthz")
        assert site_face.status_code == 200, site_face.text


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.metrics
def test_prometheus_reads_each_service_with_the_metrics_token(cluster: Cluster) -> None:
    """What the ServiceMonitor asks for (metrics.access token, the default): the port
    named metrics of each Service, with the Secret's metrics-token, answers the
    service's metrics in Prometheus' text format; another token is refused."""
    from prometheus_client.parser import text_string_to_metric_families

    token = secret_value(cluster.objects, "metrics-token")
    own = {
        "lablink-backend": "lablink_labs",
        "lablink-tunnel": "lablink_tunnel_forwards",
        "lablink-userlab-manager": "lablink_userlab_pods",
    }
    hub_token = cluster.container("lablink-hub").env["LABLINK_BACKEND_TOKEN"]
    with httpx.Client(timeout=10, trust_env=False) as http:
        for service, metric in own.items():
            assert cluster.container(service).env["LABLINK_METRICS_TOKEN"] == token
            ports = {p["name"]: p["port"] for p in cluster.service(service)["spec"]["ports"]}
            url = cluster.url(service, ports["metrics"]) + "/metrics"
            answer = http.get(url, headers={"Authorization": f"Bearer {token}"})
            assert answer.status_code == 200, f"{service}: {answer.status_code} {answer.text}"
            names = {f.name for f in text_string_to_metric_families(answer.text)}
            assert metric in names, f"{service}: {sorted(names)}"
            refused = http.get(url, headers={"Authorization": f"Bearer {hub_token}"})
            assert refused.status_code == 401, f"{service} took the hub's token"


# -- the runner itself: what a cluster would refuse, it refuses (no process) ------------


def test_a_secret_the_render_lacks_is_named(tmp_path: Path) -> None:
    objects = chart.render(wiring_values())
    hub = chart.container_of(chart.one(objects, "Deployment", "lablink-hub"))
    hub["env"].append(
        {"name": "X_TOKEN", "valueFrom": {"secretKeyRef": {"name": "nowhere", "key": "k"}}}
    )
    with pytest.raises(PodRunnerError, match="needs the Secret nowhere"):
        Cluster(objects, tmp_path, programs={"lablink": "/bin/true",
                                             "configurable-http-proxy": "/bin/true"})  # fmt: skip


def test_a_missing_key_and_a_service_port_that_is_not_there_are_named(tmp_path: Path) -> None:
    progs = {"lablink": "/bin/true", "configurable-http-proxy": "/bin/true"}
    objects = chart.render(wiring_values())
    backend = chart.container_of(chart.one(objects, "Deployment", "lablink-backend"))
    backend["env"].append(
        {"name": "Y_TOKEN", "valueFrom": {"secretKeyRef": {"name": chart.SECRETS, "key": "no"}}}
    )
    with pytest.raises(PodRunnerError, match="reads key 'no' of the Secret lablink-secrets"):
        Cluster(objects, tmp_path / "a", programs=progs)
    objects = chart.render(wiring_values())
    hub = chart.container_of(chart.one(objects, "Deployment", "lablink-hub"))
    hub["env"].append({"name": "WRONG_URL", "value": "http://lablink-backend:8019"})
    with pytest.raises(PodRunnerError, match="Service lablink-backend has no port 8019"):
        Cluster(objects, tmp_path / "b", programs=progs)


def test_names_ports_and_paths_are_mapped_per_pod(tmp_path: Path) -> None:
    progs = {"lablink": "/bin/true", "configurable-http-proxy": "/bin/true"}
    objects = chart.render(wiring_values())
    cluster = Cluster(objects, tmp_path, programs=progs)
    backend = cluster.pods["lablink-backend"]
    hub = cluster.container("lablink-hub")
    assert hub.env["LABLINK_BACKEND_URL"] == f"http://127.0.0.1:{backend.ports[8010]}"
    assert hub.env["LABLINK_HUB_BIND_URL"].startswith("http://127.0.0.1:")
    assert str(cluster.pods["lablink-hub"].root) in hub.env["LABLINK_STATE_DIR"]
    site = backend_site(cluster)
    assert site["state_dir"] == str(backend.root / "var/lib/lablink")
    manager = cluster.pods["lablink-userlab-manager"]
    assert site["userlab_manager"]["url"] == f"http://127.0.0.1:{manager.ports[8030]}"
    tunnel = cluster.pods["lablink-tunnel"]
    hub_port = cluster.pods["lablink-hub"].ports[8081]
    assert site["tunnel_service"]["url"] == f"http://127.0.0.1:{tunnel.ports[8020]}"
    assert site["tunnel_service"]["hub_api"] == f"http://127.0.0.1:{hub_port}"
    assert site["tunnel_service"]["advertise"] == "127.0.0.1"  # the tunnel pod's DNS name
    assert site["tunnel_service"]["bind"] == "127.0.0.1"
    argv = cluster.container("lablink-backend").argv
    assert argv[argv.index("--port") + 1] == str(backend.ports[8010])
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    manager_site = manager.root / chart.SITE_PATH.lstrip("/")
    assert str(manager.root) in manager_site.read_text()
    assert str(backend.root) not in manager_site.read_text()  # each pod its own files


def a_pod(container: dict[str, Any], volumes: list[dict[str, Any]]) -> list[chart.Obj]:
    """A Deployment ``web`` (one container), its Service, a ConfigMap and a Secret."""
    labels = {"app.kubernetes.io/name": "web"}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "labels": labels},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": {**labels, "tier": "front"}},
                "spec": {"containers": [container], "volumes": volumes},
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": "http"}]},
    }
    config = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "conf"},
        "data": {"a.yaml": "url: http://web.lablink.svc/x\ndir: /var/lib/lablink/db\n", "b": "B"},
    }
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "keys"},
        "stringData": {"ssh-privatekey": "KEY", "known_hosts": "HOSTS", "other": "O"},
    }
    return [deployment, service, config, secret]


def test_volumes_items_subpaths_and_the_downward_api_are_as_the_kubelet_makes_them(
    tmp_path: Path,
) -> None:
    container = {
        "name": "web",
        "command": ["lablink", "serve", "--port=8080", "--conf", "/etc/web/a.yaml"],
        "ports": [{"name": "http", "containerPort": 8080}],
        "env": [
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "TIER", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['tier']"}}},
            {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "conf", "key": "b"}}},
            {"name": "SELF", "value": "http://web:80/ and $(B)"},
        ],
        "volumeMounts": [
            {"name": "conf", "mountPath": "/etc/web"},
            {"name": "ssh", "mountPath": "/etc/lablink/ssh", "readOnly": True},
            {"name": "conf", "mountPath": "/srv/only-b", "subPath": "b"},
            {"name": "state", "mountPath": "/var/lib/lablink"},
        ],
    }
    volumes = [
        {"name": "conf", "configMap": {"name": "conf"}},
        {
            "name": "ssh",
            "secret": {
                "secretName": "keys",
                "defaultMode": 0o440,
                "items": [
                    {"key": "ssh-privatekey", "path": "id"},
                    {"key": "known_hosts", "path": "kh"},
                ],
            },
        },
        {"name": "state", "emptyDir": {}},
    ]
    cluster = Cluster(a_pod(container, volumes), tmp_path, programs={"lablink": "/bin/true"})
    pod = cluster.pods["web"]
    web = cluster.container("web")
    port = pod.ports[8080]
    assert web.argv == ["/bin/true", "serve", f"--port={port}", "--conf",
                        f"{pod.root}/etc/web/a.yaml"]  # fmt: skip
    assert web.env["POD"].startswith("web-") and web.env["NS"] == chart.NAMESPACE
    assert (web.env["IP"], web.env["TIER"], web.env["B"]) == ("127.0.0.1", "front", "B")
    assert web.env["SELF"] == f"http://127.0.0.1:{port}/ and B"
    conf = (pod.root / "etc/web/a.yaml").read_text()
    assert conf == f"url: http://127.0.0.1:{port}/x\ndir: {pod.root}/var/lib/lablink/db\n"
    ssh = pod.root / "etc/lablink/ssh"
    assert sorted(p.name for p in ssh.iterdir()) == ["id", "kh"]
    assert (ssh / "id").read_text() == "KEY" and (ssh / "id").stat().st_mode & 0o777 == 0o440
    assert (pod.root / "srv/only-b").read_text() == "B"
    assert (pod.root / "var/lib/lablink").is_dir()


def test_a_container_that_keeps_exiting_fails_the_start_with_its_log(tmp_path: Path) -> None:
    container = {
        "name": "web",
        "command": ["lablink", "-c", "echo the web server broke; exit 3"],
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"tcpSocket": {"port": "http"}},
    }
    cluster = Cluster(a_pod(container, []), tmp_path, programs={"lablink": "/bin/sh"}, restarts=1)
    try:
        with pytest.raises(PodRunnerError, match=r"container web of web-.* exited with 3 2 times"):
            cluster.start(timeout=20)
    finally:
        cluster.stop()
    assert "the web server broke" in cluster.tails()


def test_each_pod_takes_its_configuration_with_the_cluster_s_own_names(tmp_path: Path) -> None:
    """The runner maps Service names to 127.0.0.1, which the services trust more than a
    cluster name; so each pod's site (paths mapped, names as rendered) must pass
    `lablink check` with the pod's environment, and the hub's backend URL as rendered
    must pass the spawner's check, as they would in the cluster."""
    from traitlets import TraitError

    from spawner.spawner import LablinkSpawner

    objects = chart.render(wiring_values())
    cluster = Cluster(objects, tmp_path, programs=programs())
    text = chart.site_text(objects)
    problems = []
    for pod in cluster.pods.values():
        for container in pod.containers:
            if "--site" not in container.argv:
                continue
            site_file = tmp_path / f"{pod.workload_name}.site.yaml"
            site_file.write_text(cluster.rewrite_paths(pod, text))
            service = container.argv[1]  # the pod checks what its own service reads
            argv = [container.argv[0], "check", "--site", str(site_file), "--service", service]
            done = subprocess.run(argv, env=container.env, capture_output=True, text=True)
            if done.returncode != 0:
                problems.append(f"{container.what}: {(done.stdout + done.stderr).strip()}")
    hub = chart.container_of(chart.one(objects, "Deployment", "lablink-hub"))
    rendered_url = chart.literal_env(hub)["LABLINK_BACKEND_URL"]
    try:
        LablinkSpawner().backend_url = rendered_url
    except TraitError as exc:
        problems.append(f"the hub's LABLINK_BACKEND_URL {rendered_url}: {exc}")
    assert not problems, "\n".join(problems)
