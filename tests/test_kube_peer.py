"""The Kubernetes API emulator (tests/helpers/kube.py) answers the official client
as the UserLab Manager will use it: if these fail, the cloud tests cannot be
trusted. They also pin down where the emulator differs from a real cluster."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import kubernetes.client
import kubernetes.config
import kubernetes.watch
import kubernetes_validate
import pytest
from kubernetes.client import ApiException, CoreV1Api

from tests.helpers.kube import KubeApi

pytestmark = pytest.mark.cloud

NS = "lablink-labs"
K8S_VERSION = "1.33.0"


def pod_manifest(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A minimal lab pod; ``metadata.namespace`` as the UserLab Manager will send it."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": labels or {"app": "userlab"}},
        "spec": {
            "containers": [{"name": "lab", "image": "quay.io/jupyter/base-notebook:latest"}],
            "restartPolicy": "Never",
        },
    }


def service_manifest(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"selector": {"pod": name}, "ports": [{"port": 8888, "targetPort": 8888}]},
    }


@pytest.fixture
def core(kube: KubeApi) -> Iterator[CoreV1Api]:
    with kube.client() as api_client:
        yield CoreV1Api(api_client)


def test_create_read_list_pod_and_service(kube: KubeApi, core: CoreV1Api) -> None:
    created = core.create_namespaced_pod(NS, pod_manifest("lab-alice"))
    assert created.metadata.name == "lab-alice"
    assert created.metadata.uid and created.metadata.resource_version  # set by the emulator
    core.create_namespaced_service(NS, service_manifest("lab-alice"))

    pod = core.read_namespaced_pod("lab-alice", NS)
    assert pod.spec.containers[0].image.endswith("base-notebook:latest")
    assert [p.metadata.name for p in core.list_namespaced_pod(NS).items] == ["lab-alice"]
    assert core.read_namespaced_service("lab-alice", NS).spec.ports[0].port == 8888
    assert [s["metadata"]["name"] for s in kube.services(NS)] == ["lab-alice"]
    assert kube.pods("elsewhere") == []


def test_duplicate_is_409_and_missing_is_404(core: CoreV1Api) -> None:
    core.create_namespaced_pod(NS, pod_manifest("lab-bob"))
    with pytest.raises(ApiException) as duplicate:
        core.create_namespaced_pod(NS, pod_manifest("lab-bob"))
    assert duplicate.value.status == 409
    for call in (
        core.read_namespaced_pod,
        core.delete_namespaced_pod,
        core.read_namespaced_service,
    ):
        with pytest.raises(ApiException) as missing:
            call("nobody", NS)
        assert missing.value.status == 404, call


def test_status_patch_is_seen_by_read(kube: KubeApi, core: CoreV1Api) -> None:
    core.create_namespaced_pod(NS, pod_manifest("lab-carol"))
    kube.set_pod_status(NS, "lab-carol", {"phase": "Pending"})
    kube.set_pod_status(NS, "lab-carol", {"phase": "Running", "podIP": "10.0.0.7"})
    pod = core.read_namespaced_pod("lab-carol", NS)
    assert (pod.status.phase, pod.status.pod_ip) == ("Running", "10.0.0.7")
    # the official client's own status patch (sent as strategic merge patch) works too
    core.patch_namespaced_pod_status("lab-carol", NS, {"status": {"phase": "Succeeded"}})
    assert core.read_namespaced_pod("lab-carol", NS).status.pod_ip == "10.0.0.7"  # merged
    assert kube.pods(NS)[0]["status"]["phase"] == "Succeeded"


def test_watch_sees_added_modified_deleted_and_ends_at_timeout(
    kube: KubeApi, core: CoreV1Api
) -> None:
    events: queue.Queue[tuple[str, str, str | None]] = queue.Queue()
    timeout = 3

    def watch() -> None:
        stream = kubernetes.watch.Watch().stream(
            core.list_namespaced_pod, NS, timeout_seconds=timeout
        )
        for event in stream:
            pod = event["object"]
            events.put((event["type"], pod.metadata.name, pod.status and pod.status.phase))
        events.put(("END", "", None))

    def next_event() -> tuple[str, str, str | None]:
        return events.get(timeout=timeout + 2)

    core.create_namespaced_pod(NS, pod_manifest("lab-dave"))
    started = time.monotonic()
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    assert next_event() == ("ADDED", "lab-dave", None)  # existing objects come first
    kube.set_pod_status(NS, "lab-dave", {"phase": "Running"})
    assert next_event() == ("MODIFIED", "lab-dave", "Running")
    core.create_namespaced_pod(NS, pod_manifest("lab-erin"))
    assert next_event()[:2] == ("ADDED", "lab-erin")
    kube.delete_pod(NS, "lab-dave")
    assert next_event()[:2] == ("DELETED", "lab-dave")
    assert next_event()[0] == "END"  # the server closed the stream after timeout_seconds
    assert timeout - 0.5 < time.monotonic() - started < timeout + 2
    watcher.join(5)
    assert kube.pods(NS)[0]["metadata"]["name"] == "lab-erin"


def test_label_selector_on_list_and_watch(core: CoreV1Api) -> None:
    core.create_namespaced_pod(NS, pod_manifest("lab-frank", {"app": "userlab", "user": "frank"}))
    core.create_namespaced_pod(NS, pod_manifest("other", {"app": "other"}))
    names = [
        p.metadata.name for p in core.list_namespaced_pod(NS, label_selector="app=userlab").items
    ]
    assert names == ["lab-frank"]
    selector = "app in (userlab, x),user!=grace,!missing"
    assert len(core.list_namespaced_pod(NS, label_selector=selector).items) == 1
    by_name = core.list_namespaced_pod(NS, field_selector="metadata.name=other").items
    assert [p.metadata.name for p in by_name] == ["other"]
    stream = kubernetes.watch.Watch().stream(
        core.list_namespaced_pod, NS, label_selector="app=other", timeout_seconds=1
    )
    assert [event["object"].metadata.name for event in stream] == ["other"]


def test_kubeconfig_and_token(kube: KubeApi, tmp_path: Any) -> None:
    """The UserLab Manager in a subprocess finds the emulator through a kubeconfig;
    a client without the token is refused, as by a cluster."""
    path = kube.kubeconfig(tmp_path / "config", namespace=NS)
    with kubernetes.config.new_client_from_config(config_file=str(path)) as api_client:
        CoreV1Api(api_client).create_namespaced_pod(NS, pod_manifest("lab-heidi"))
    anonymous = kubernetes.client.Configuration(host=kube.url)
    with kubernetes.client.ApiClient(anonymous) as api_client, pytest.raises(ApiException) as exc:
        CoreV1Api(api_client).list_namespaced_pod(NS)
    assert exc.value.status == 401


def test_namespaces_need_not_exist(core: CoreV1Api) -> None:
    """Unlike a cluster (404 for a missing namespace), the emulator stores objects in
    any namespace: tests that care must check that the namespace was created."""
    core.create_namespaced_pod(
        "never-created", {**pod_manifest("lab-ivan"), "metadata": {"name": "lab-ivan"}}
    )
    assert (
        core.read_namespaced_pod("lab-ivan", "never-created").metadata.namespace == "never-created"
    )
    core.create_namespace({"metadata": {"name": NS}})
    assert [n.metadata.name for n in core.list_namespace().items] == [NS]


def test_manifests_validate_strictly() -> None:
    """kubernetes-validate --strict checks our manifests against a current API schema."""
    assert kubernetes_validate.validate(pod_manifest("lab-judy"), K8S_VERSION, strict=True)
    assert kubernetes_validate.validate(service_manifest("lab-judy"), K8S_VERSION, strict=True)
    bad = pod_manifest("lab-judy")
    bad["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError, match="imagePullPolicyy"):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_stop_ends_open_watches(kube: KubeApi, core: CoreV1Api) -> None:
    """The emulator stops at once (exit code 0) with a watch open, and the watcher
    sees its stream end rather than hang."""
    opened = threading.Event()
    ended = threading.Event()

    def watch() -> None:
        opened.set()
        # no resource_version yet: the client does not reconnect after the stream ends
        for _ in kubernetes.watch.Watch().stream(core.list_namespaced_pod, NS):
            pass  # pragma: no cover  # the namespace stays empty
        ended.set()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    opened.wait(5)
    time.sleep(0.3)  # the request is in
    started = time.monotonic()
    assert kube.stop() == 0
    assert time.monotonic() - started < 2
    assert ended.wait(5)
