"""The backend's cloud labs: backend → UserLab Manager → Kubernetes API emulator, with
the test playing the kubelet (it moves the pod's status along and runs the lab's
process at the pod's address)."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import site
from tests.helpers.api import BackendFactory, RunningBackend, lab_request, wait_state
from tests.helpers.kube import KubeApi
from tests.helpers.labs import FAKELAB, assert_error
from tests.helpers.userlabs import (
    NAMESPACE,
    UserlabManager,
    pod_environment,
    scheduled,
)

pytestmark = [pytest.mark.cloud, pytest.mark.integration]


@dataclass
class Kubelet:
    """Plays the node: runs a pod's lab (tests/fakelab.py) at the pod's address."""

    kube: KubeApi
    ip: str = field(
        default_factory=lambda: f"127.0.{random.randint(1, 250)}.{random.randint(2, 250)}"
    )
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    async def pod(self, timeout: float = 20) -> dict[str, Any]:
        for _ in range(int(timeout / 0.05)):
            pods = self.kube.pods(NAMESPACE)
            if pods:
                return pods[0]
            await asyncio.sleep(0.05)
        raise AssertionError("no pod was made")

    def run(self, pod: dict[str, Any]) -> None:
        env = pod_environment(self.kube, pod)
        prefix = env["JUPYTERHUB_SERVICE_PREFIX"]
        lab_env = {**os.environ, **env, "JUPYTERHUB_SERVICE_URL": f"http://{self.ip}:8888{prefix}"}
        self.procs.append(subprocess.Popen(FAKELAB, env=lab_env))

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait(5)


@pytest.fixture
async def cloud(
    tmp_path: Path, kube: KubeApi, start_backend: BackendFactory, token_env: dict[str, str]
) -> AsyncIterator[tuple[RunningBackend, Kubelet]]:
    manager = UserlabManager.for_kube(tmp_path / "manager", kube)
    manager.start()
    kubelet = Kubelet(kube)
    try:
        doc = site.doc(
            tmp_path / "state",
            f"sqlite+aiosqlite:///{tmp_path}/b.sqlite",
            systems={"cloud": site.kubernetes_system()},
            userlab_manager={"url": manager.url},
        )
        token_env["LABLINK_USERLAB_MANAGER_TOKEN"] = manager.token
        backend = await start_backend(site.settings(doc, "t"))
        yield backend, kubelet
    finally:
        kubelet.stop()
        manager.stop()


async def messages(client: httpx.AsyncClient, lab_id: str) -> list[str]:
    return [e["message"] for e in (await client.get(f"/labs/{lab_id}/events")).json()]


async def test_a_cloud_lab_runs_in_its_pod_and_stop_deletes_it(
    cloud: tuple[RunningBackend, Kubelet], kube: KubeApi
) -> None:
    backend, kubelet = cloud
    async with backend.client("alice") as alice:
        body = lab_request("alice", options={"system": "cloud", "flavor": "small"})
        resp = await alice.post("/labs", json=body)
        assert resp.status_code == 202, resp.text
        lab_id = resp.json()["id"]
        pod = await kubelet.pod()
        assert (await wait_state(alice, lab_id, {"queued"}))["state"] == "queued"
        kube.set_pod_status(NAMESPACE, pod["metadata"]["name"], scheduled())
        await wait_state(alice, lab_id, {"starting"})
        kubelet.run(pod)
        kube.set_pod_status(
            NAMESPACE, pod["metadata"]["name"], scheduled(kubelet.ip, True, "Running", running={})
        )
        lab = await wait_state(alice, lab_id, {"running", "failed"})
        assert lab["state"] == "running", lab
        assert lab["url"] == f"http://{kubelet.ip}:8888"
        said = await messages(alice, lab_id)
        assert "Waiting for a node of the cluster to take the lab." in said
        assert any("Pulling the image quay.io/jupyter/scipy-notebook" in m for m in said), said

        await alice.delete(f"/labs/{lab_id}")
        assert (await wait_state(alice, lab_id, {"stopped", "failed"}))["state"] == "stopped"
    assert kube.pods(NAMESPACE) == [] and kube.services(NAMESPACE) == []


async def test_an_image_that_cannot_be_pulled_fails_the_lab_with_a_sentence(
    cloud: tuple[RunningBackend, Kubelet], kube: KubeApi
) -> None:
    backend, kubelet = cloud
    async with backend.client("alice") as alice:
        body = lab_request("alice", options={"system": "cloud"})
        lab_id = (await alice.post("/labs", json=body)).json()["id"]
        pod = await kubelet.pod()
        waiting = {"reason": "ErrImagePull", "message": "manifest unknown"}
        kube.set_pod_status(NAMESPACE, pod["metadata"]["name"], scheduled(waiting=waiting))
        lab = await wait_state(alice, lab_id, {"failed", "running"})
        assert lab["state"] == "failed"
        said = await messages(alice, lab_id)
        assert any("cannot be pulled (ErrImagePull: manifest unknown)" in m for m in said), said
    assert kube.pods(NAMESPACE) == []  # the failed lab's pod is deleted


async def test_bad_cloud_options_are_refused_and_nothing_is_made(
    cloud: tuple[RunningBackend, Kubelet], kube: KubeApi
) -> None:
    backend, _ = cloud
    async with backend.client("alice") as alice:
        for options, words in (
            ({"flavor": "huge"}, "Flavor: 'huge' is not offered"),
            ({"cpu": "3"}, "CPU cores: 3 cores is more than flavor "),
            ({"image": "docker.io/evil/miner:latest"}, "Image: 'docker.io/evil/miner:latest'"),
            ({"image": "quay.io/jupyter/scipy-notebook:bad tag"}, "is not an image reference"),
        ):
            body = lab_request("alice", options={"system": "cloud", **options})
            field = next(iter(options))
            assert_error(await alice.post("/labs", json=body), 422, words, field=field)
        assert (await alice.get("/labs", params={"user": "alice"})).json() == []
    assert kube.pods(NAMESPACE) == []
