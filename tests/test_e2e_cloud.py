"""End to end on a cloud system: hub → backend → UserLab Manager → Kubernetes API
emulator, with the test playing the kubelet.

`lablink up` runs the stack with the embedded site plus a ``kind: kubernetes``
system and starts the UserLab Manager itself. The node (``jupyter_node``,
tests/helpers/kubelet.py) watches the emulated cluster: for a pod it reports
scheduling and the image pull, then starts a real ``jupyterhub-singleuser`` with
the pod's environment at a loopback address of its own (the pod's IP) and reports
the pod ready; a pod whose image is "missing" gets ImagePullBackOff, one that asks
for a GPU stays unschedulable, and a deleted pod's process ends. People act through
the hub's public port only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from backend.procs import free_port
from tests.helpers import site
from tests.helpers.hub import HubUser
from tests.helpers.kube import KubeApi
from tests.helpers.kubelet import JupyterNode
from tests.helpers.metrics import scrape
from tests.helpers.stack import Stack
from tests.helpers.userlabs import NAMESPACE
from tests.helpers.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow, pytest.mark.cloud]

PASSWORD = "e2e-cloud-password-0123"
USERS = ["demo", "alice", "bob"]


@pytest.fixture(scope="module")
def kube(module_kube: KubeApi) -> KubeApi:
    """The emulator the module's stack uses (it keeps its UserLab Manager on it)."""
    return module_kube


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


async def test_a_cloud_lab_opens_through_the_proxy_and_stop_deletes_its_pod(
    stack: Stack, kube: KubeApi, jupyter_node: JupyterNode
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
        # what an admin's `curl` of the backend's and the manager's /metrics shows now
        token = (stack.state_dir / "secrets" / "metrics_token").read_text().strip()
        backend = await scrape(f"http://127.0.0.1:{stack.ports['backend']}/metrics", token)
        running = {"state": "running", "system": "cloud", "kind": "kubernetes", "vo": "demo"}
        assert backend.value("lablink_labs", choice="small", **running) == 1
        assert backend.value("lablink_driver_call_duration_seconds_count", peer="userlab_manager")
        manager_url = yaml.safe_load(stack.site.read_text())["userlab_manager"]["url"]
        manager = await scrape(f"{manager_url}/metrics", token)
        assert manager.value("lablink_userlab_pods", phase="Running") == 1

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
    stack: Stack, kube: KubeApi, jupyter_node: JupyterNode, options: dict[str, str], words: str
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
