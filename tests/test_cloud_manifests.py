"""Cloud labs as data: the pod and service manifests (checked by kubernetes-validate
--strict against the newest Kubernetes it bundles), what a pod's status means
for a person, and the catalog and option checks of a ``kubernetes`` system."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from backend.catalog import OptionError, catalog, validate_options
from backend.settings import Settings, SettingsError
from tests.helpers import site
from userlab_manager.manifests import (
    LabPod,
    label_value,
    labels,
    name_of,
    pod_manifest,
    secret_manifest,
    service_manifest,
)
from userlab_manager.status import lab_status

pytestmark = [pytest.mark.cloud]

KUBERNETES = kubernetes_validate.latest_version()


def lab(**changes: Any) -> LabPod:
    values: dict[str, Any] = {
        "lab_id": "0b6f6b8e-6c0a-4a53-9d7e-2f1f4c9f7a11",
        "system": "cloud",
        "namespace": "lablink-labs",
        "user": "alice@example.org",
        "server_name": "gpu",
        "vo": "demo-vo",
        "image": "quay.io/jupyter/scipy-notebook:2025-01-06",
        "cpu": 2.0,
        "cpu_request": 0.5,
        "memory": 4.0,
        "memory_request": 2.0,
        "gpus": 0,
        "gpu_resource": "nvidia.com/gpu",
        "port": 8888,
        "prefix": "/user/alice@example.org/gpu/",
        "env": {"JUPYTERHUB_API_TOKEN": "secret-token", "JUPYTERHUB_USER": "alice@example.org"},
    }
    values.update(changes)
    return LabPod(**values)


# -- manifests ----------------------------------------------------------------------


@pytest.mark.parametrize("build", [pod_manifest, service_manifest, secret_manifest])
@pytest.mark.parametrize("gpus", [0, 2])
def test_every_manifest_is_valid_kubernetes(build: Any, gpus: int) -> None:
    kubernetes_validate.validate(build(lab(gpus=gpus)), KUBERNETES, strict=True)


def test_a_manifest_with_a_field_kubernetes_does_not_know_is_refused() -> None:
    """The check above can fail: a typo in a manifest is caught."""
    manifest = pod_manifest(lab())
    manifest["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalaton"] = False
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(manifest, KUBERNETES, strict=True)


def test_the_pod_runs_unprivileged_with_the_flavors_resources() -> None:
    pod = pod_manifest(lab(gpus=1))
    spec = pod["spec"]
    [container] = spec["containers"]
    assert pod["metadata"]["name"] == name_of(lab().lab_id)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 1000
    assert spec["automountServiceAccountToken"] is False
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["resources"] == {
        "requests": {"cpu": "500m", "memory": "2048Mi", "nvidia.com/gpu": "1"},
        "limits": {"cpu": "2000m", "memory": "4096Mi", "nvidia.com/gpu": "1"},
    }
    assert container["readinessProbe"]["httpGet"] == {
        "path": "/user/alice@example.org/gpu/api",
        "port": 8888,
    }
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["JUPYTERHUB_SERVICE_PREFIX"] == "/user/alice@example.org/gpu/"
    assert env["JUPYTERHUB_SERVICE_URL"] == "http://0.0.0.0:8888/user/alice@example.org/gpu/"
    assert env["LABLINK_LAB_ID"] == lab().lab_id


def test_the_hubs_token_is_in_the_labs_secret_not_in_the_pod_spec() -> None:
    pod = pod_manifest(lab())
    assert "secret-token" not in json.dumps(pod)
    [token] = [
        e for e in pod["spec"]["containers"][0]["env"] if e["name"] == "JUPYTERHUB_API_TOKEN"
    ]
    assert token == {
        "name": "JUPYTERHUB_API_TOKEN",
        "valueFrom": {
            "secretKeyRef": {"name": name_of(lab().lab_id), "key": "JUPYTERHUB_API_TOKEN"}
        },
    }
    assert secret_manifest(lab())["stringData"] == {"JUPYTERHUB_API_TOKEN": "secret-token"}


def test_labels_find_the_lab_and_name_its_owner_in_a_valid_form() -> None:
    found = labels(lab())
    assert found["lablink.io/lab-id"] == lab().lab_id
    assert found["app.kubernetes.io/managed-by"] == "lablink-userlab-manager"
    assert found["lablink.io/vo"] == "demo-vo"
    user = found["lablink.io/user"]
    assert user.startswith("alice_example.org-") and len(user) <= 63  # '@' is not allowed
    assert label_value("bob") == "bob"
    assert label_value("a" * 80) != label_value("a" * 81)  # long values stay apart
    annotations = pod_manifest(lab())["metadata"]["annotations"]
    assert annotations["lablink.io/user"] == "alice@example.org"  # exact, as annotation
    service = service_manifest(lab())
    assert service["spec"]["selector"]["lablink.io/lab-id"] == lab().lab_id


# -- what a pod's status means ------------------------------------------------------


def pod(phase: str = "Pending", conditions: list[Any] | None = None, **container: Any) -> Any:
    manifest = pod_manifest(lab())
    manifest["status"] = {
        "phase": phase,
        "podIP": "10.0.0.7",
        "conditions": conditions or [],
        "containerStatuses": [{"name": "lab", **container}] if container else [],
    }
    return manifest


SCHEDULED = {"type": "PodScheduled", "status": "True"}
READY = {"type": "Ready", "status": "True"}


@pytest.mark.parametrize(
    ("status", "state", "words"),
    [
        (None, "gone", "gone"),
        (pod(), "scheduling", "Waiting for a node"),
        (
            pod(
                conditions=[
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": "0/3 nodes are available: 3 Insufficient cpu.",
                    }
                ]
            ),
            "failed",
            "choose a smaller flavor",
        ),
        (
            pod(conditions=[SCHEDULED], state={"waiting": {"reason": "ContainerCreating"}}),
            "pulling",
            "Pulling the image quay.io/jupyter/scipy-notebook:2025-01-06",
        ),
        (
            pod(
                conditions=[SCHEDULED],
                state={
                    "waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}
                },
            ),
            "failed",
            "cannot be pulled (ImagePullBackOff: Back-off pulling image); check its name",
        ),
        (pod("Running", [SCHEDULED], state={"running": {}}), "starting", "waiting for JupyterLab"),
        (pod("Running", [SCHEDULED, READY], state={"running": {}}), "ready", "answers"),
        (
            pod(
                "Failed",
                [SCHEDULED],
                state={"terminated": {"reason": "OOMKilled", "exitCode": 137}},
            ),
            "failed",
            "ran out of memory (its limit is 4096Mi)",
        ),
        (
            pod("Running", [SCHEDULED], state={"waiting": {"reason": "CrashLoopBackOff"}}),
            "failed",
            "keeps crashing",
        ),
        (
            pod(
                "Succeeded",
                [SCHEDULED],
                state={"terminated": {"reason": "Completed", "exitCode": 0}},
            ),
            "ended",
            "exit code 0",
        ),
    ],
)
def test_a_pods_status_becomes_a_sentence(status: Any, state: str, words: str) -> None:
    found = lab_status(status)
    assert found.state == state, found
    assert words in found.message, found.message
    assert found.message.endswith("."), found.message


# -- the site file, the catalog and the options -------------------------------------

CLOUD = {
    "kind": "kubernetes",
    "display_name": "HDF Cloud",
    "namespace": "lablink-labs",
    "flavors": {
        "small": {"cpu": 1, "memory": 2, "description": "for notebooks"},
        "gpu": {"cpu": 8, "memory": 32, "gpus": 1, "cpu_request": 4, "memory_request": 16},
    },
    "images": [{"image": "quay.io/jupyter/scipy-notebook:2025-01-06", "display_name": "SciPy"}],
    "image_patterns": ["quay.io/jupyter/*"],
}


def cloud_settings(tmp_path: Path, **changes: Any) -> Settings:
    """A site whose one system ``cloud`` is CLOUD, ``changes`` on top."""
    systems = {"cloud": {**CLOUD, **changes}}
    doc = site.doc(tmp_path, systems=systems, tokens=site.hub_token("HUB_TOKEN"))
    return site.settings(doc, "site.yaml")


def test_the_catalog_lists_flavors_and_images(tmp_path: Path) -> None:
    [entry] = catalog(cloud_settings(tmp_path), "alice")["systems"]
    assert entry["kind"] == "kubernetes"
    assert [f["name"] for f in entry["flavors"]] == ["small", "gpu"]
    assert entry["flavors"][1] == {
        "name": "gpu", "display_name": "gpu", "description": "", "cpu": 8, "memory": 32, "gpus": 1,
    }  # fmt: skip
    assert entry["images"][0]["display_name"] == "SciPy"
    assert entry["image_patterns"] == ["quay.io/jupyter/*"]


def test_defaults_are_the_first_flavor_and_image_at_their_limits(tmp_path: Path) -> None:
    _, clean = validate_options(cloud_settings(tmp_path), {"system": "cloud"}, "alice")
    assert clean == {
        "system": "cloud",
        "flavor": "small",
        "image": "quay.io/jupyter/scipy-notebook:2025-01-06",
        "cpu": 1.0,
        "memory": 2.0,
    }
    options = {"flavor": "gpu", "image": "quay.io/jupyter/pytorch-notebook:cuda12", "cpu": "2.5"}
    _, clean = validate_options(cloud_settings(tmp_path), options, "alice")
    assert (clean["cpu"], clean["memory"], clean["image"]) == (2.5, 32.0, options["image"])


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"flavor": "huge"},
         "Flavor: 'huge' is not offered on system HDF Cloud; choose small or gpu."),
        ({"cpu": 2},
         "CPU cores: 2 cores is more than flavor small allows; choose more than 0 and up to "
         "1 cores."),
        ({"memory": "64"}, "Memory: 64 GiB is more than flavor small allows"),
        ({"memory": 0}, "Memory: 0 GiB is not more than 0; choose more than 0 and up to 2 GiB."),
        ({"cpu": "1e3"}, "CPU cores: '1e3' is not a number of cores."),
        ({"cpu": float("nan")}, "CPU cores: nan is not a number of cores."),
        ({"image": "docker.io/evil/miner:latest"},
         "Image: 'docker.io/evil/miner:latest' is not allowed on system HDF Cloud; choose SciPy"),
        ({"image": "quay.io/jupyter/x; rm -rf /"},
         "Image: 'quay.io/jupyter/x; rm -rf /' is not an image reference"),
        ({"image": "Quay.io/Jupyter/UPPER"}, "is not an image reference"),
        ({"image": ["a"]}, "Image: ['a'] is not an image reference"),
        ({"gpus": 1},
         "'gpus' is not an option of system HDF Cloud; its options are system, flavor, image, "
         "cpu and memory."),
    ],
)  # fmt: skip
def test_options_beyond_what_is_offered_are_refused_by_name(
    tmp_path: Path, options: dict[str, Any], words: str
) -> None:
    with pytest.raises(OptionError) as err:
        validate_options(cloud_settings(tmp_path), {"system": "cloud", **options}, "alice")
    assert words in str(err.value), str(err.value)
    assert str(err.value).endswith(".")
    assert err.value.field == next(iter(options))


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"flavors": {}}, "systems.cloud.flavors"),
        ({"flavors": {"x": {"cpu": 1, "memory": 2, "cpu_request": 2}}}, "cpu_request (2.0)"),
        ({"images": [{"image": "not an image"}]}, "systems.cloud.images.0"),
        ({"namespace": "Lab_Labs"}, "systems.cloud.namespace"),
    ],
)
def test_a_bad_cloud_system_names_its_key(
    tmp_path: Path, changes: dict[str, Any], words: str
) -> None:
    with pytest.raises(SettingsError, match=re.escape(words)):
        cloud_settings(tmp_path, **changes)
