"""A node for the Kubernetes API emulator: what a kubelet does for the tests' pods.

It watches the namespace's pods (polling the emulator), and for each new one:
reports it scheduled, runs its lab (tests/fakelab.py with the pod's environment,
secrets resolved, at a loopback address of its own), reports it running and
ready, and when the lab process ends reports the container terminated with
its exit code. A pod that is deleted has its process killed. ``crash_next``
makes the next pod's lab crash at once, as a broken image would.

``JupyterNode`` is the node of the end-to-end tests: it runs a real
``jupyterhub-singleuser`` for each pod (so that a browser renders JupyterLab),
reports an image pull, and refuses as a cluster would: an image whose name has
"missing" in it cannot be pulled, a pod that asks for a GPU cannot be scheduled.
"""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
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


class JupyterNode:
    """The emulated cluster's node for end-to-end tests: each pod's lab is a real
    JupyterLab (``jupyterhub-singleuser``) at a loopback address of its own (the pod's
    IP), reported ready once it answers, as a readiness probe would. Runs in a thread
    (``start``/``stop``), so it serves tests on any event loop."""

    def __init__(self, kube: KubeApi, home: Path, namespace: str = NAMESPACE):
        self.kube = kube
        self.home = home
        self.namespace = namespace
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.seen: set[str] = set()
        self.errors: list[str] = []
        # step() may be starting a lab while stop() ends them: the lock keeps it from
        # starting one after
        self.lock = threading.Lock()
        self.stopped = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="jupyter-node", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self.lock:
            self.stopped = True
            procs = list(self.procs.values())
        for proc in procs:
            proc.kill()
            proc.wait(10)
        if self._thread is not None:
            self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            try:
                self.step()
            except (KubeError, OSError, KeyError, httpx.HTTPError) as exc:  # a pod went
                self.errors.append(repr(exc))

    def _launch(self, pod: dict[str, Any], ip: str) -> str:
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
            with (home / "lab.log").open("ab") as log:
                self.procs[pod["metadata"]["name"]] = subprocess.Popen(
                    argv, env=lab_env, cwd=home, stdout=log, stderr=subprocess.STDOUT
                )
        return prefix

    def step(self) -> None:
        pods = {p["metadata"]["name"]: p for p in self.kube.pods(self.namespace)}
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
            if name in self.seen or self._stop.is_set():
                continue
            self.seen.add(name)
            [container] = pod["spec"]["containers"]
            if "nvidia.com/gpu" in container["resources"]["limits"]:
                self.kube.set_pod_status(self.namespace, name, UNSCHEDULABLE)
                continue
            if "missing" in container["image"]:
                waiting = {"reason": "ImagePullBackOff", "message": "manifest unknown"}
                self.kube.set_pod_status(self.namespace, name, scheduled(waiting=waiting))
                continue
            self.kube.set_pod_status(self.namespace, name, scheduled())
            time.sleep(0.5)  # pulling the image
            ip = f"127.0.{random.randint(1, 250)}.{random.randint(2, 250)}"
            prefix = self._launch(pod, ip)
            running = scheduled(ip, False, "Running", running={})
            self.kube.set_pod_status(self.namespace, name, running)
            probe = f"http://{ip}:8888{prefix}api"  # the pod's readiness probe
            for _ in range(600):
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(probe, timeout=1, trust_env=False).status_code == 200:
                        break
                if self._stop.wait(0.05):
                    return
            ready = scheduled(ip, True, "Running", running={})
            self.kube.set_pod_status(self.namespace, name, ready)
