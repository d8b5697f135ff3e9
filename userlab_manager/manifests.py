"""A lab's pod and service, as data (pure functions; no cluster needed).

Every lab is one pod running ``jupyterhub-singleuser``, one ClusterIP
service in front of it and one Secret with its credentials (the hub's API
token), all named ``lab-<lab id>`` and labelled so that the manager finds them
again after a restart. The pod runs as a non-root user
with no privilege escalation and no added capabilities; a readiness probe on
the lab's own API tells when JupyterLab answers.

Label values must be short and plain (``[A-Za-z0-9._-]``, 63 characters), so
the person's user name, server name and VO are labels in a cleaned form and
annotations as they are.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from backend.systems.base import QUIET_LAB_ARGS

MANAGED_BY = "lablink-userlab-manager"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_LAB = "lablink.io/lab-id"
LABEL_USER = "lablink.io/user"
LABEL_SERVER = "lablink.io/server-name"
LABEL_VO = "lablink.io/vo"
LABEL_SYSTEM = "lablink.io/system"
ANNOTATION_USER = "lablink.io/user"
ANNOTATION_SERVER = "lablink.io/server-name"
ANNOTATION_VO = "lablink.io/vo"
ANNOTATION_IMAGE = "lablink.io/image"
CONTAINER = "lab"
SELECTOR = f"{LABEL_MANAGED_BY}={MANAGED_BY}"


@dataclass(frozen=True)
class LabPod:
    """Everything a lab's manifests are made from (validated before it gets here)."""

    lab_id: str
    system: str
    namespace: str
    user: str
    server_name: str
    vo: str
    image: str
    cpu: float  # cores, limit
    cpu_request: float
    memory: float  # GiB, limit
    memory_request: float
    gpus: int
    gpu_resource: str
    port: int
    prefix: str  # the hub's URL prefix for the lab, /user/<name>/[<server>/]
    env: dict[str, str] = field(default_factory=dict)
    run_as_user: int = 1000
    run_as_group: int = 100


def name_of(lab_id: str) -> str:
    """The pod's and the service's name."""
    return f"lab-{lab_id}"


def label_value(text: str) -> str:
    """``text`` as a valid label value: plain characters, at most 63, starting and
    ending with a letter or digit; a long or changed one keeps a hash suffix so that
    two people never share a value."""
    clean = re.sub(r"[^A-Za-z0-9._-]", "_", text).strip("._-")
    if clean == text and len(clean) <= 63:
        return clean
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return f"{clean[:52].rstrip('._-')}-{digest}".lstrip("-")


def cpu_quantity(cores: float) -> str:
    return f"{round(cores * 1000)}m"


def memory_quantity(gib: float) -> str:
    return f"{round(gib * 1024)}Mi"


def labels(lab: LabPod) -> dict[str, str]:
    out = {
        LABEL_NAME: "lablink-lab",
        LABEL_COMPONENT: "jupyterlab",
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_LAB: lab.lab_id,
        LABEL_SYSTEM: lab.system,
        LABEL_USER: label_value(lab.user),
    }
    if lab.server_name:
        out[LABEL_SERVER] = label_value(lab.server_name)
    if lab.vo:
        out[LABEL_VO] = label_value(lab.vo)
    return out


def annotations_of(lab: LabPod) -> dict[str, str]:
    return {
        ANNOTATION_USER: lab.user,
        ANNOTATION_SERVER: lab.server_name,
        ANNOTATION_VO: lab.vo,
        ANNOTATION_IMAGE: lab.image,
    }


def metadata(lab: LabPod, annotate: bool = True) -> dict[str, Any]:
    """The name, namespace and labels every object of a lab has (and annotations)."""
    meta: dict[str, Any] = {
        "name": name_of(lab.lab_id),
        "namespace": lab.namespace,
        "labels": labels(lab),
    }
    if annotate:
        meta["annotations"] = annotations_of(lab)
    return meta


def is_secret(name: str) -> bool:
    """Variables that hold credentials (the hub's API token, and the like): they go
    into the lab's Secret, not into the pod spec that anyone reading pods can see."""
    return any(word in name.upper() for word in ("TOKEN", "SECRET", "PASSWORD", "KEY"))


def environment(lab: LabPod) -> list[dict[str, Any]]:
    """The hub's variables with Lablink's own on top, sorted (stable manifests);
    credentials come from the lab's Secret."""
    env = dict(lab.env)
    env["JUPYTERHUB_SERVICE_PREFIX"] = lab.prefix
    env["JUPYTERHUB_SERVICE_URL"] = f"http://0.0.0.0:{lab.port}{lab.prefix}"
    env["LABLINK_LAB_ID"] = lab.lab_id
    out: list[dict[str, Any]] = []
    for key, value in sorted(env.items()):
        if is_secret(key):
            ref = {"name": name_of(lab.lab_id), "key": key}
            out.append({"name": key, "valueFrom": {"secretKeyRef": ref}})
        else:
            out.append({"name": key, "value": value})
    return out


def secret_manifest(lab: LabPod) -> dict[str, Any]:
    """The lab's credentials (deleted with its pod)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": metadata(lab, annotate=False),
        "stringData": {k: v for k, v in sorted(lab.env.items()) if is_secret(k)},
    }


def resources(lab: LabPod) -> dict[str, dict[str, str]]:
    requests = {"cpu": cpu_quantity(lab.cpu_request), "memory": memory_quantity(lab.memory_request)}
    limits = {"cpu": cpu_quantity(lab.cpu), "memory": memory_quantity(lab.memory)}
    if lab.gpus:
        requests[lab.gpu_resource] = limits[lab.gpu_resource] = str(lab.gpus)
    return {"requests": requests, "limits": limits}


def pod_manifest(lab: LabPod) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata(lab),
        "spec": {
            "restartPolicy": "Never",  # a lab that ends is over; the person starts a new one
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": lab.run_as_user,
                "runAsGroup": lab.run_as_group,
                "fsGroup": lab.run_as_group,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": CONTAINER,
                    "image": lab.image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["jupyterhub-singleuser"],
                    "args": ["--ip=0.0.0.0", f"--port={lab.port}", *QUIET_LAB_ARGS],
                    "ports": [{"name": "http", "containerPort": lab.port, "protocol": "TCP"}],
                    "env": environment(lab),
                    "resources": resources(lab),
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "privileged": False,
                        "runAsNonRoot": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    "readinessProbe": {
                        "httpGet": {"path": f"{lab.prefix}api", "port": lab.port},
                        "periodSeconds": 2,
                        "timeoutSeconds": 2,
                        "failureThreshold": 3,
                    },
                }
            ],
        },
    }


def service_manifest(lab: LabPod) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(lab),
        "spec": {
            "type": "ClusterIP",
            "selector": {LABEL_LAB: lab.lab_id, LABEL_MANAGED_BY: MANAGED_BY},
            "ports": [
                {"name": "http", "port": lab.port, "targetPort": lab.port, "protocol": "TCP"}
            ],
        },
    }
