"""Run the UserLab Manager (``lablink userlab-manager``) as a subprocess, as an admin
would, against the Kubernetes API emulator (tests/helpers/kube.py)."""

from __future__ import annotations

import base64
import os
import secrets
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from backend.procs import free_port
from tests.helpers import site
from tests.helpers.kube import KubeApi
from tests.helpers.site import IMAGE, NAMESPACE
from tests.helpers.stack import end_process, launch


@dataclass
class UserlabManager:
    directory: Path
    site: dict[str, Any]
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)  # more of its environment

    @classmethod
    def for_kube(cls, directory: Path, kube: KubeApi, **system: Any) -> UserlabManager:
        kubeconfig = kube.kubeconfig(directory / "kubeconfig")
        return cls(directory, site.userlab_manager_doc(directory / "state", kubeconfig, **system))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.directory / "userlab-manager.log"

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        return httpx.Client(
            base_url=f"{self.url}/api/v1", headers=headers, timeout=40, trust_env=False
        )

    def start(self, timeout: float = 30) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        site_file = site.write(self.site, self.directory / "site.yaml")
        self.port = self.port or free_port()
        env = {
            **os.environ,
            "LABLINK_USERLAB_MANAGER_TOKEN": self.token,
            "LABLINK_TEST_HUB_TOKEN": secrets.token_urlsafe(24),
            **self.env,
        }
        argv = [sys.executable, "-m", "backend.cli", "userlab-manager", "--site", str(site_file),
                "--port", str(self.port), "--log-level", "debug"]  # fmt: skip

        def ready() -> bool:
            with self.client() as client:
                return client.get("/health").status_code == 200

        self.proc = launch(argv, env, self.log, ready, "the UserLab Manager", timeout)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        return end_process(self.proc, sig, 20)

    def log_text(self, last: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-last:] if self.log.exists() else ""


def lab_body(lab_id: str = "lab-0001", **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "lab_id": lab_id,
        "system": "cloud",
        "user": "alice",
        "server_name": "",
        "vo": "demo",
        "flavor": "small",
        "image": IMAGE,
        "prefix": "/user/alice/",
        "env": {"JUPYTERHUB_USER": "alice", "JUPYTERHUB_API_TOKEN": "t0ken-for-the-lab"},
    }
    body.update(changes)
    return body


def scheduled(
    ip: str = "", ready: bool = False, phase: str = "Pending", **state: Any
) -> dict[str, Any]:
    """A pod status as the kubelet reports it: scheduled, the container in ``state``."""
    conditions = [{"type": "PodScheduled", "status": "True"}]
    if ready:
        conditions.append({"type": "Ready", "status": "True"})
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": conditions,
        "containerStatuses": [
            {  # what a kubelet always sets (the client's models require it)
                "name": "lab",
                "image": IMAGE,
                "imageID": "",
                "restartCount": 0,
                "ready": ready,
                "state": state or {"waiting": {"reason": "ContainerCreating"}},
            }
        ],
    }
    if ip:
        status["podIP"] = ip
    return status


def pod_environment(kube: KubeApi, pod: dict[str, Any]) -> dict[str, str]:
    """The lab container's environment as a kubelet resolves it, secrets included."""
    secrets_ = {s["metadata"]["name"]: s for s in kube.objects("secrets", NAMESPACE)}
    [container] = pod["spec"]["containers"]
    env: dict[str, str] = {}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        ref = item["valueFrom"]["secretKeyRef"]
        secret = secrets_[ref["name"]]
        if ref["key"] in (secret.get("stringData") or {}):
            env[item["name"]] = secret["stringData"][ref["key"]]
        else:
            env[item["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
    return env
