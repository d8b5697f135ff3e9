"""A node for the Kubernetes API emulator: what a kubelet does for the tests' pods.

It watches the namespace's pods (polling the emulator), and for each new one:
reports it scheduled, runs its lab (tests/fakelab.py with the pod's environment,
secrets resolved, at a loopback address of its own), reports it running and
ready, and when the lab process ends reports the container terminated with
its exit code. A pod that is deleted has its process killed. ``crash_next``
makes the next pod's lab crash at once, as a broken image would.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.helpers.kube import KubeApi, KubeError
from tests.helpers.labs import FAKELAB
from tests.helpers.userlabs import NAMESPACE, pod_environment, scheduled


@dataclass
class Pod:
    name: str
    ip: str
    proc: subprocess.Popen[bytes]
    reported_end: bool = False


@dataclass
class Kubelet:
    kube: KubeApi
    namespace: str = NAMESPACE
    interval: float = 0.05
    crash_next: bool = False
    pods: dict[str, Pod] = field(default_factory=dict)
    _next_ip: int = 2
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    errors: list[str] = field(default_factory=list)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kubelet", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        for pod in self.pods.values():
            self._kill(pod)
        self.pods.clear()

    def _ip(self) -> str:
        self._next_ip += 1
        return f"127.0.{200 + self._next_ip // 250}.{self._next_ip % 250 + 2}"

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._step()
            except (
                KubeError,
                OSError,
                KeyError,
                httpx.HTTPError,
            ) as exc:  # a pod deleted meanwhile
                self.errors.append(repr(exc))

    def _step(self) -> None:
        present = {p["metadata"]["name"]: p for p in self.kube.pods(self.namespace)}
        for name in list(self.pods):
            if name not in present:
                self._kill(self.pods.pop(name))
        for name, manifest in present.items():
            pod = self.pods.get(name)
            if pod is None and not manifest.get("status", {}).get("containerStatuses"):
                self._launch(name, manifest)
            elif pod is not None and not pod.reported_end and pod.proc.poll() is not None:
                code = pod.proc.returncode
                terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error"}
                phase = "Succeeded" if code == 0 else "Failed"
                status = scheduled(pod.ip, False, phase, terminated=terminated)
                self.kube.set_pod_status(self.namespace, name, status)
                pod.reported_end = True

    def _launch(self, name: str, manifest: dict[str, Any]) -> None:
        ip = self._ip()
        self.kube.set_pod_status(self.namespace, name, scheduled())
        env = pod_environment(self.kube, manifest)
        prefix = env.get("JUPYTERHUB_SERVICE_PREFIX", "/")
        lab_env = {**os.environ, **env, "JUPYTERHUB_SERVICE_URL": f"http://{ip}:8888{prefix}"}
        if self.crash_next:
            lab_env["FAKELAB_MODE"] = "crash"
            self.crash_next = False
        proc = subprocess.Popen(
            FAKELAB, env=lab_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.pods[name] = Pod(name, ip, proc)
        time.sleep(0.1)  # the container starting
        if proc.poll() is None:
            status = scheduled(ip, True, "Running", running={"startedAt": "2026-01-01T00:00:00Z"})
            self.kube.set_pod_status(self.namespace, name, status)

    @staticmethod
    def _kill(pod: Pod) -> None:
        if pod.proc.poll() is None:
            pod.proc.kill()
        pod.proc.wait(5)
