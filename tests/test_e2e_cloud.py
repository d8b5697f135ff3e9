"""End to end on a cloud system: hub → backend → UserLab Manager → Kubernetes API
emulator, with the test playing the kubelet.

`lablink up` runs the stack with the embedded site plus a ``kind: kubernetes``
system and starts the UserLab Manager itself. The kubelet here watches the
emulated cluster: for a pod it reports scheduling and the image pull, then
starts a real ``jupyterhub-singleuser`` with the pod's environment at a loopback
address of its own (the pod's IP) and reports the pod ready; a pod whose image
is "missing" gets ImagePullBackOff, one that asks for a GPU stays unschedulable,
and a deleted pod's process ends. People act through the hub's public port only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from backend.procs import free_port
from tests.helpers import site
from tests.helpers.hub import HubUser
from tests.helpers.kube import KubeApi, KubeError
from tests.helpers.stack import Stack
from tests.helpers.userlabs import NAMESPACE, pod_environment, scheduled
from tests.helpers.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow, pytest.mark.cloud]

PASSWORD = "e2e-cloud-password-0123"
USERS = ["demo", "alice", "bob"]
SINGLEUSER = str(Path(sys.executable).parent / "jupyterhub-singleuser")
UNSCHEDULABLE = {
    "phase": "Pending",
    "conditions": [
        {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": "0/1 nodes are available: 1 Insufficient nvidia.com/gpu.",
        }
    ],
}


class Kubelet:
    """The node of the emulated cluster: it runs each pod's lab as a process."""

    def __init__(self, kube: KubeApi, home: Path):
        self.kube = kube
        self.home = home
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.seen: set[str] = set()
        # step() runs in a thread that a cancelled task does not stop: the lock keeps it
        # from starting a lab while stop() ends them, and from starting one after
        self.lock = threading.Lock()
        self.stopped = False

    def _run(self, pod: dict[str, Any], ip: str) -> str:
        """Start the pod's lab at ``ip``; its URL prefix."""
        env = pod_environment(self.kube, pod)
        prefix = env["JUPYTERHUB_SERVICE_PREFIX"]
        home = self.home / pod["metadata"]["name"]
        home.mkdir(parents=True, exist_ok=True)
        lab_env = {**os.environ, **env, "HOME": str(home),
                   "JUPYTERHUB_SERVICE_URL": f"http://{ip}:8888{prefix}"}  # fmt: skip
        argv = [SINGLEUSER, f"--ip={ip}", "--port=8888"]
        if os.geteuid() == 0:
            argv.append("--allow-root")
        with self.lock:
            if self.stopped:
                return prefix
            log = (home / "lab.log").open("ab")
            self.procs[pod["metadata"]["name"]] = subprocess.Popen(
                argv, env=lab_env, cwd=home, stdout=log, stderr=subprocess.STDOUT
            )
        return prefix

    def step(self) -> None:
        pods = {p["metadata"]["name"]: p for p in self.kube.pods(NAMESPACE)}
        for name in list(self.procs):
            if name not in pods:  # deleted: the container stops
                with self.lock:
                    proc = self.procs.pop(name, None)
                if proc is None:
                    continue
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)
        for name, pod in pods.items():
            if name in self.seen:
                continue
            self.seen.add(name)
            [container] = pod["spec"]["containers"]
            if "nvidia.com/gpu" in container["resources"]["limits"]:
                self.kube.set_pod_status(NAMESPACE, name, UNSCHEDULABLE)
                continue
            if "missing" in container["image"]:
                waiting = {"reason": "ImagePullBackOff", "message": "manifest unknown"}
                self.kube.set_pod_status(NAMESPACE, name, scheduled(waiting=waiting))
                continue
            self.kube.set_pod_status(NAMESPACE, name, scheduled())
            time.sleep(0.5)  # pulling the image
            ip = f"127.0.{random.randint(1, 250)}.{random.randint(2, 250)}"
            prefix = self._run(pod, ip)
            self.kube.set_pod_status(NAMESPACE, name, scheduled(ip, False, "Running", running={}))
            probe = f"http://{ip}:8888{prefix}api"  # the pod's readiness probe
            for _ in range(600):
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(probe, timeout=1, trust_env=False).status_code == 200:
                        break
                time.sleep(0.05)
            self.kube.set_pod_status(NAMESPACE, name, scheduled(ip, True, "Running", running={}))

    async def run(self) -> None:
        while True:
            await asyncio.to_thread(self.step)
            await asyncio.sleep(0.1)

    def stop(self) -> None:
        with self.lock:
            self.stopped = True
            procs = list(self.procs.values())
        for proc in procs:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeApi]:
    from tests.helpers.peers import peer_missing

    api = KubeApi(tmp_path_factory.mktemp("kube"))
    try:
        api.start()
    except (KubeError, OSError) as exc:
        peer_missing("Kubernetes API emulator (kmock)", str(exc))
    yield api
    api.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, kube: KubeApi) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("cloud-stack")
    s = Stack(state_dir=root / "state", password=PASSWORD, users=USERS,
              extra_env={"LABLINK_POLL_INTERVAL": "1"})  # fmt: skip
    doc = yaml.safe_load(Path("backend/data/embedded.yaml").read_text())
    for hpc in ("hpc", "cluster"):  # HPC labs have their own end-to-end tests
        del doc["systems"][hpc]
    del doc["vos"]["hpc-course"]  # the VO for the HPC system only
    doc["systems"]["cloud"] = site.kubernetes_system(
        image_patterns=["quay.io/jupyter/*"], start_timeout=60, retry_for=5
    )
    doc["userlab_manager"] = {
        "url": f"http://127.0.0.1:{free_port()}",
        "kubeconfig": str(kube.kubeconfig(root / "kubeconfig")),
    }
    s.site = site.write(doc, root / "site.yaml")
    s.start()
    yield s
    s.stop_cleanly()


@pytest.fixture
async def kubelet(tmp_path: Path, kube: KubeApi) -> AsyncIterator[Kubelet]:
    node = Kubelet(kube, tmp_path / "node")
    task = asyncio.create_task(node.run())
    try:
        yield node
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        node.stop()


async def test_a_cloud_lab_opens_through_the_proxy_and_stop_deletes_its_pod(
    stack: Stack, kube: KubeApi, kubelet: Kubelet
) -> None:
    async with HubUser(stack.url, "alice", PASSWORD) as alice:
        await alice.login()
        starting = asyncio.create_task(alice.start(options={"system": "cloud", "flavor": "small"}))
        await wait_until(lambda: bool(kube.pods(NAMESPACE)), 30, "alice's pod")
        events = await alice.progress()
        response = await starting
        assert response.status_code in (201, 202), response.text
        messages = [e.get("message", "") for e in events]
        assert any("Pulling the image quay.io/jupyter/scipy-notebook" in m for m in messages), (
            events
        )
        assert events[-1].get("ready") is True, events
        await alice.wait_lab(timeout=60)  # JupyterLab, after OAuth with the hub's API
        [pod] = kube.pods(NAMESPACE)
        assert pod["metadata"]["annotations"]["lablink.io/user"] == "alice"

        response = await alice.stop()
        assert response.status_code in (202, 204), response.text
        await alice.wait_stopped()
        await wait_until(lambda: not kube.pods(NAMESPACE), 10, "the pod to go")
        assert kube.services(NAMESPACE) == []


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"image": "quay.io/jupyter/missing-notebook:1"},
         "The image quay.io/jupyter/missing-notebook:1 cannot be pulled (ImagePullBackOff"),
        ({"flavor": "gpu"}, "No node of the cluster can take this lab now (0/1 nodes are "
         "available: 1 Insufficient nvidia.com/gpu.); choose a smaller flavor or try later."),
    ],
)  # fmt: skip
async def test_a_pod_that_cannot_run_says_why_on_the_spawn_page(
    stack: Stack, kube: KubeApi, kubelet: Kubelet, options: dict[str, str], words: str
) -> None:
    async with HubUser(stack.url, "bob", PASSWORD) as bob:
        await bob.login()
        response = await bob.start("broken", {"system": "cloud", **options})
        assert response.status_code in (202, 502), response.text
        events = await bob.progress("broken")
        failed = events[-1]
        assert failed.get("failed") is True, events
        assert words in failed["html_message"], failed
    await wait_until(lambda: not kube.pods(NAMESPACE), 10, "the failed lab's pod to go")
