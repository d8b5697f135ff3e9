"""The UserLab Manager against the Kubernetes API emulator: pods and services made
with the official client, a pod's life followed by a watch and told in sentences,
bad requests refused with nothing made, and reconciliation after a restart."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.kube import KubeApi
from tests.helpers.labs import assert_error
from tests.helpers.userlabs import NAMESPACE, UserlabManager, lab_body, scheduled

pytestmark = [pytest.mark.cloud, pytest.mark.integration]


@pytest.fixture
def manager(tmp_path: Path, kube: KubeApi) -> Iterator[UserlabManager]:
    svc = UserlabManager.for_kube(tmp_path / "manager", kube)
    svc.start()
    yield svc
    svc.stop()


def names(objects: list[dict[str, Any]]) -> list[str]:
    return sorted(o["metadata"]["name"] for o in objects)


def next_state(client: httpx.Client, lab_id: str, seen: str) -> dict[str, Any]:
    """The lab once its state differs from ``seen`` (long poll)."""
    resp = client.get(f"/labs/{lab_id}", params={"wait": 10, "seen": seen})
    assert resp.status_code == 200, resp.text
    lab: dict[str, Any] = resp.json()
    assert lab["state"] != seen, f"still {seen} after 10 s: {lab}"
    return lab


def test_a_lab_pod_is_made_followed_to_ready_and_deleted(
    manager: UserlabManager, kube: KubeApi
) -> None:
    with manager.client() as client:
        resp = client.post("/labs", json=lab_body())
        assert resp.status_code == 201, resp.text
        lab = resp.json()
        assert lab["state"] == "scheduling" and "Waiting for a node" in lab["message"]
        assert names(kube.pods(NAMESPACE)) == names(kube.services(NAMESPACE)) == ["lab-lab-0001"]
        assert names(kube.objects("secrets", NAMESPACE)) == ["lab-lab-0001"]
        [pod] = kube.pods(NAMESPACE)
        assert pod["metadata"]["labels"]["lablink.io/vo"] == "demo"
        [container] = pod["spec"]["containers"]
        assert container["resources"]["limits"] == {"cpu": "1000m", "memory": "2048Mi"}
        assert container["resources"]["requests"] == {"cpu": "500m", "memory": "1024Mi"}
        assert client.post("/labs", json=lab_body()).status_code == 200  # repeated: the same

        kube.set_pod_status(NAMESPACE, "lab-lab-0001", scheduled())
        lab = next_state(client, "lab-0001", "scheduling")
        assert lab["state"] == "pulling"
        assert "Pulling the image quay.io/jupyter/scipy-notebook" in lab["message"]

        kube.set_pod_status(NAMESPACE, "lab-lab-0001", scheduled("10.1.2.3", phase="Running",
                                                                  running={}))  # fmt: skip
        assert next_state(client, "lab-0001", "pulling")["state"] == "starting"
        kube.set_pod_status(
            NAMESPACE, "lab-lab-0001", scheduled("10.1.2.3", True, "Running", running={})
        )
        lab = next_state(client, "lab-0001", "starting")
        assert (lab["state"], lab["url"]) == ("ready", "http://10.1.2.3:8888")

        resp = client.delete("/labs/lab-0001")
        assert resp.status_code == 200 and resp.json()["state"] == "gone"
        assert kube.pods(NAMESPACE) == [] and kube.services(NAMESPACE) == []
        assert kube.objects("secrets", NAMESPACE) == []
        assert client.delete("/labs/lab-0001").status_code == 204  # gone is fine
        assert_error(client.get("/labs/lab-0001"), 404)


@pytest.mark.parametrize(
    ("status", "words"),
    [
        (
            scheduled(waiting={"reason": "ImagePullBackOff", "message": "manifest unknown"}),
            "cannot be pulled (ImagePullBackOff: manifest unknown); check its name and tag",
        ),
        (
            {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
             "reason": "Unschedulable", "message": "0/4 nodes are available: 4 Insufficient "
             "nvidia.com/gpu."}]},
            "No node of the cluster can take this lab now (0/4 nodes are available: 4 "
            "Insufficient nvidia.com/gpu.); choose a smaller flavor or try later.",
        ),
        (
            scheduled("10.1.2.3", phase="Failed", terminated={"reason": "OOMKilled",
                                                               "exitCode": 137}),
            "ran out of memory (its limit is 2048Mi)",
        ),
    ],
)  # fmt: skip
def test_a_pod_that_cannot_work_says_why(
    manager: UserlabManager, kube: KubeApi, status: dict[str, Any], words: str
) -> None:
    with manager.client() as client:
        assert client.post("/labs", json=lab_body()).status_code == 201
        kube.set_pod_status(NAMESPACE, "lab-lab-0001", status)
        lab = next_state(client, "lab-0001", "scheduling")
        assert lab["state"] == "failed" and words in lab["message"], lab


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"flavor": "huge"}, ["flavor", "'huge'", "allowed: small, gpu"]),
        ({"cpu": 2}, ["cpu", "2 cores is more than flavor 'small' allows"]),
        ({"memory": 64}, ["memory", "64 GiB"]),
        ({"image": "docker.io/evil/miner:latest"}, ["image", "not allowed on system 'cloud'"]),
        ({"image": "quay.io/jupyter/x;id"}, ["image", "not an image reference"]),
        ({"system": "hpc"}, ["system", "not a cloud system here; allowed: cloud"]),
        ({"prefix": "/user/alice"}, ["prefix"]),
        ({"env": {"A B": "x"}}, ["env"]),
        ({"privileged": True}, ["privileged"]),
    ],
)
def test_a_bad_request_is_refused_and_makes_nothing(
    manager: UserlabManager, kube: KubeApi, changes: dict[str, Any], words: list[str]
) -> None:
    with manager.client() as client:
        assert_error(client.post("/labs", json=lab_body(**changes)), 422, *words)
        assert client.get("/labs").json() == []
    assert kube.pods(NAMESPACE) == [] and kube.services(NAMESPACE) == []


def test_every_call_needs_the_token(manager: UserlabManager) -> None:
    with manager.client(token="not-the-token-0123456789") as client:
        assert_error(client.get("/health"), 401)
        assert_error(client.post("/labs", json=lab_body()), 401)


def test_a_restarted_manager_reconciles_with_the_cluster(
    manager: UserlabManager, kube: KubeApi
) -> None:
    with manager.client() as client:
        for lab_id in ("lab-keep", "lab-lost"):
            assert client.post("/labs", json=lab_body(lab_id)).status_code == 201
    manager.stop(signal.SIGKILL)
    # while it is down: a pod of ours that no lab owns appears, and one lab's pod goes
    with kube.client() as api:
        import kubernetes

        core = kubernetes.client.CoreV1Api(api)
        orphan = kube.pods(NAMESPACE)[0]
        orphan["metadata"] = {
            "name": "lab-orphan",
            "namespace": NAMESPACE,
            "labels": {**orphan["metadata"]["labels"], "lablink.io/lab-id": "orphan"},
        }
        orphan.pop("status", None)
        core.create_namespaced_pod(NAMESPACE, orphan)
    kube.delete_pod(NAMESPACE, "lab-lab-lost")
    manager.start()
    deadline = time.monotonic() + 5
    while "lab-orphan" in names(kube.pods(NAMESPACE)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert names(kube.pods(NAMESPACE)) == ["lab-lab-keep"]
    with manager.client() as client:
        states = {lab["lab_id"]: lab["state"] for lab in client.get("/labs").json()}
        assert states == {"lab-keep": "scheduling", "lab-lost": "gone"}
    assert "no lab of ours owns it" in manager.log_text()


def test_a_delete_during_or_before_the_create_leaves_nothing(
    manager: UserlabManager, kube: KubeApi
) -> None:
    """A lab stopped in the same breath as it was started: its delete may reach the
    manager while the pod is being made, or even before the create (two requests on
    two connections). Either way no pod, service or Secret is left."""
    from concurrent.futures import ThreadPoolExecutor

    with manager.client() as a, manager.client() as b, ThreadPoolExecutor(2) as pool:
        for i in range(12):
            lab_id = f"race-{i:04d}"
            made = pool.submit(a.post, "/labs", json=lab_body(lab_id))
            time.sleep(0.002 * (i % 4))
            gone = pool.submit(b.delete, f"/labs/{lab_id}")
            assert made.result().status_code in (201, 409), made.result().text
            assert gone.result().status_code in (200, 204), gone.result().text
        late = a.post("/labs", json=lab_body("race-0000"))
        assert_error(late, 409)  # deleted: a late create makes nothing
        assert "stopped before its pod was made" in late.json()["detail"]
        b.delete("/labs/early-0001")
        assert_error(a.post("/labs", json=lab_body("early-0001")), 409)
    for what in ("pods", "services", "secrets"):
        assert kube.objects(what, NAMESPACE) == [], what
