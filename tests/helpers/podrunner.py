"""Run a rendered Helm chart's pods as local processes (tests/test_helm_wiring.py).

No Kubernetes runs on a test machine, so ``Cluster`` plays the kubelet, the Service
network and DNS for the objects ``tests.helpers.chart.render`` returns: each container
of each Deployment/StatefulSet becomes a process with the command, arguments and
environment the chart gave it, and nothing else is changed but what a pod's own
filesystem and network make necessary:

* files: every pod gets its own root directory (pods have filesystems of their own);
  its ConfigMap, Secret, emptyDir and PVC volumes are made there at their mount paths
  (``items``, ``subPath`` and ``defaultMode`` as the kubelet does), and every mention
  of a mount path (and of ``/etc/lablink``, ``/var/lib/lablink``, ``/srv/lablink``,
  ``/tmp``) in the command, the arguments, literal env values and the mounted text
  files is rewritten to that root;
* network: every container port gets a free port on 127.0.0.1; ``<svc>``,
  ``<svc>.<ns>``, ``<svc>.<ns>.svc``, ``<svc>.<ns>.svc.cluster.local`` and the pod DNS
  names of StatefulSets (``<sts>-<i>.<serviceName>...``) become 127.0.0.1 (a bare
  ``<svc>`` only after ``scheme://`` or before ``:port``: else it is a word), and the
  port after such a name (or the scheme's default port in a URL without one) becomes
  the local port of the Service's target; a bind address 0.0.0.0 becomes 127.0.0.1, and
  a port flag's value (``--port N``, ``--port=N``, ``--api-port=N``) that is one of
  the container's ports becomes its local port;
* env: literal values (rewritten as above), ``secretKeyRef``/``configMapKeyRef`` from
  the rendered objects or from ``existing_secrets`` (Secrets the values name but the
  chart does not render; anything else missing is an error), ``fieldRef`` as the
  downward API answers, ``resourceFieldRef`` from the container's resources;
  ``envFrom`` likewise; plus PATH and HOME (the image's part);
* the command's program: looked up in ``programs`` (``lablink`` → the venv's, the
  proxy → the one ``make up`` installs); an unknown program is an error;
* readiness: ``httpGet``/``tcpSocket`` readiness probes on the mapped port; a
  container that exits is restarted (restartPolicy Always) up to ``restarts`` times.

Anything the runner cannot do as Kubernetes would raises ``PodRunnerError`` with one
sentence, before a process starts. ``stop()`` ends every process (SIGTERM to its process
group, SIGKILL after a grace period) and any process left that runs in a pod's root
(labs the backend started); ``tails()`` gives each container's log end for a failure.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from backend.procs import free_ports, tail
from tests.helpers import chart
from tests.helpers.stack import marked_processes

LOCALHOST = "127.0.0.1"
BIND_ANY = "0.0.0.0"
# paths the chart mounts (or that the site names) in every pod: rewritten to the pod's root
KNOWN_PATHS = ("/etc/lablink", "/var/lib/lablink", "/srv/lablink", "/tmp", "/home/lablink")
POD_WORKLOADS = ("Deployment", "StatefulSet")
HOME = "/home/lablink"  # the services image's HOME and working directory


class PodRunnerError(Exception):
    """What the runner cannot do as Kubernetes would (one sentence)."""


@dataclass
class Container:
    pod: Pod
    spec: dict[str, Any]
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    ready: bool = False

    @property
    def name(self) -> str:
        return str(self.spec.get("name", "?"))

    @property
    def what(self) -> str:
        return f"container {self.name} of {self.pod.name}"

    @property
    def log(self) -> Path:
        return self.pod.cluster.workdir / "logs" / f"{self.pod.name}.{self.name}.log"


@dataclass
class Pod:
    cluster: Cluster
    workload: dict[str, Any]
    name: str  # the pod's name: <deployment>-<hash>-<suffix> or <statefulset>-0
    root: Path
    ports: dict[int, int] = field(default_factory=dict)  # container port → local port
    port_names: dict[str, int] = field(default_factory=dict)  # name → container port
    containers: list[Container] = field(default_factory=list)

    @property
    def workload_name(self) -> str:
        return chart.name_of(self.workload)

    @property
    def labels(self) -> dict[str, str]:
        return chart.pod_labels(self.workload)

    def container_port(self, port: int | str) -> int:
        """A probe's or Service's port (number or name) as a container port."""
        if isinstance(port, str) and not port.isdigit():
            if port not in self.port_names:
                raise PodRunnerError(
                    f"{chart.ref(self.workload)} has no container port named {port!r}"
                )
            return self.port_names[port]
        return int(port)

    def local_port(self, port: int | str) -> int:
        number = self.container_port(port)
        if number not in self.ports:
            raise PodRunnerError(
                f"{chart.ref(self.workload)} declares no container port {number} "
                f"(it has {sorted(self.ports)})"
            )
        return self.ports[number]


class Cluster:
    """The workloads of ``objects`` as local processes under ``workdir``.

    ``programs`` maps a command's first element to the executable to run;
    ``existing_secrets`` gives the data of Secrets the values name (by name);
    ``extra_env`` adds variables to one workload's containers (a documented test
    substitution, e.g. KUBECONFIG of the UserLab Manager)."""

    def __init__(
        self,
        objects: list[chart.Obj],
        workdir: Path,
        *,
        programs: Mapping[str, str],
        namespace: str = chart.NAMESPACE,
        existing_secrets: Mapping[str, Mapping[str, str]] | None = None,
        extra_env: Mapping[str, Mapping[str, str]] | None = None,
        restarts: int = 3,
        grace: float = 10.0,
    ) -> None:
        self.objects = objects
        self.workdir = workdir
        self.programs = dict(programs)
        self.namespace = namespace
        self.existing_secrets = {k: dict(v) for k, v in (existing_secrets or {}).items()}
        self.extra_env = {k: dict(v) for k, v in (extra_env or {}).items()}
        self.max_restarts = restarts
        self.grace = grace
        self.pods: dict[str, Pod] = {}  # by workload name
        self.hosts: dict[str, str] = {}  # DNS name → Service (or "pod:<pod name>")
        self._plan()

    # -- planning (no process yet) ------------------------------------------------------

    def _plan(self) -> None:
        workloads = [o for o in self.objects if o.get("kind") in POD_WORKLOADS]
        if not workloads:
            raise PodRunnerError("the render has no Deployment or StatefulSet")
        for obj in chart.workloads(self.objects):
            if obj.get("kind") not in POD_WORKLOADS:
                raise PodRunnerError(f"{chart.ref(obj)}: the runner runs only {POD_WORKLOADS}")
        count = sum(len(c.get("ports") or []) for o in workloads for c in chart.containers_of(o))
        local = iter(free_ports(count))
        for obj in workloads:
            name = chart.name_of(obj)
            if obj["kind"] == "StatefulSet":
                pod_name = f"{name}-0"
            else:
                pod_name = f"{name}-5d4f8b7c9-x2x7q"  # <deployment>-<template hash>-<suffix>
            pod = Pod(self, obj, pod_name, self.workdir / "pods" / name)
            for spec in chart.containers_of(obj, init=False):
                for port in spec.get("ports") or []:
                    number = int(port["containerPort"])
                    if number in pod.ports:
                        raise PodRunnerError(f"{chart.ref(obj)} declares port {number} twice")
                    pod.ports[number] = next(local)
                    if port.get("name"):
                        pod.port_names[port["name"]] = number
            if chart.pod_spec(obj).get("initContainers"):
                raise PodRunnerError(f"{chart.ref(obj)} has init containers; the runner has none")
            self.pods[name] = pod
        self._plan_dns()
        for pod in self.pods.values():
            self._plan_files(pod)
            for spec in chart.containers_of(pod.workload, init=False):
                container = Container(pod, spec)
                container.argv = self._argv(pod, spec)
                container.env = self._env(pod, spec)
                pod.containers.append(container)

    def _plan_dns(self) -> None:
        ns = self.namespace
        for svc in chart.objects_of(self.objects, "Service"):
            name = chart.name_of(svc)
            for host in (
                name,
                f"{name}.{ns}",
                f"{name}.{ns}.svc",
                f"{name}.{ns}.svc.cluster.local",
            ):
                self.hosts[host] = name
        for pod in self.pods.values():
            service = (pod.workload.get("spec") or {}).get("serviceName")
            if pod.workload["kind"] == "StatefulSet" and service:
                for tail_ in (service, f"{service}.{ns}", f"{service}.{ns}.svc",
                              f"{service}.{ns}.svc.cluster.local"):  # fmt: skip
                    self.hosts[f"{pod.name}.{tail_}"] = f"pod:{pod.workload_name}"

    def service(self, name: str) -> chart.Obj:
        return chart.one(self.objects, "Service", name)

    def service_pod(self, name: str) -> Pod:
        """The one pod a Service selects (the runner runs one replica of each)."""
        svc = self.service(name)
        selector = (svc.get("spec") or {}).get("selector")
        if not selector:
            raise PodRunnerError(f"Service {name} has no selector")
        found = [
            p for p in self.pods.values() if chart.selects({"matchLabels": selector}, p.labels)
        ]
        if len(found) != 1:
            raise PodRunnerError(
                f"Service {name} selects {len(found)} workloads "
                f"({[p.workload_name for p in found]}), not one"
            )
        return found[0]

    def service_port(self, name: str, port: int) -> int:
        """The local port behind port ``port`` of Service ``name``."""
        svc = self.service(name)
        ports = (svc.get("spec") or {}).get("ports") or []
        for entry in ports:
            if int(entry["port"]) == port:
                target = entry.get("targetPort", entry["port"])
                return self.service_pod(name).local_port(target)
        if (svc.get("spec") or {}).get("clusterIP") == "None":  # headless: the pod's ports
            return self.service_pod(name).local_port(port)
        raise PodRunnerError(
            f"Service {name} has no port {port} (it has {[int(p['port']) for p in ports]})"
        )

    def _host_pattern(self) -> re.Pattern[str]:
        hosts = sorted([*self.hosts, BIND_ANY, "localhost", LOCALHOST], key=len, reverse=True)
        alternatives = "|".join(re.escape(h) for h in hosts)
        return re.compile(
            rf"(?:(?P<scheme>\b[a-z][a-z0-9+.-]*://)|(?<![\w./-]))(?P<host>{alternatives})"
            rf"(?::(?P<port>\d+))?(?![\w-]|\.[\w-])"
        )

    def rewrite(self, pod: Pod, text: str) -> str:
        """``text`` as the process on this machine must see it: names of Services and
        pods → 127.0.0.1 with the local ports, then the pod's paths under its root."""
        pattern = self._host_pattern()

        def host(match: re.Match[str]) -> str:
            scheme, name, port = match["scheme"] or "", match["host"], match["port"]
            target = self.hosts.get(name)
            if not scheme and not port and "." not in name:
                return match.group(0)  # a bare word: a name only with a scheme or a port
            if target is None:  # 0.0.0.0, localhost, 127.0.0.1: this pod's own ports
                mapped = pod.ports.get(int(port)) if port else None
                if port and mapped is None and name == BIND_ANY:
                    raise PodRunnerError(
                        f"{pod.workload_name} binds {name}:{port}, not a port it declares"
                    )
                where = LOCALHOST if name == BIND_ANY else name
                return f"{scheme}{where}" + (f":{mapped or port}" if port else "")
            if port is None and scheme in ("http://", "https://"):
                default = 80 if scheme == "http://" else 443
                with contextlib.suppress(PodRunnerError):
                    return f"{scheme}{LOCALHOST}:{self._port_of(target, default)}"
                return f"{scheme}{LOCALHOST}"
            if port is None:
                return f"{scheme}{LOCALHOST}"
            return f"{scheme}{LOCALHOST}:{self._port_of(target, int(port))}"

        text = pattern.sub(host, text)
        return self.rewrite_paths(pod, text)

    def _port_of(self, target: str, port: int) -> int:
        if target.startswith("pod:"):
            pod = self.pods[target[4:]]
            return pod.ports.get(port, port)  # a forward port the process binds itself
        return self.service_port(target, port)

    def pod_paths(self, pod: Pod) -> list[str]:
        mounts = [
            m["mountPath"]
            for c in chart.containers_of(pod.workload, init=False)
            for m in c.get("volumeMounts") or []
        ]
        return sorted({*mounts, *KNOWN_PATHS}, key=len, reverse=True)

    def rewrite_paths(self, pod: Pod, text: str) -> str:
        paths = "|".join(re.escape(p.rstrip("/")) for p in self.pod_paths(pod))
        pattern = re.compile(rf"(?<![\w.-])(?:{paths})(?=/|$|[^\w.-])")
        return pattern.sub(lambda m: f"{pod.root}{m.group(0)}", text)

    # -- files --------------------------------------------------------------------------

    def _secret(self, name: str, optional: bool, where: str) -> dict[str, str] | None:
        obj = chart.find(self.objects, "Secret", name)
        if obj is not None:
            return chart.secret_data(obj)
        if name in self.existing_secrets:
            return self.existing_secrets[name]
        if optional:
            return None
        raise PodRunnerError(
            f"{where} needs the Secret {name}, which the chart does not render and the "
            "values do not name as an existing Secret"
        )

    def _configmap(self, name: str, optional: bool, where: str) -> dict[str, str] | None:
        obj = chart.find(self.objects, "ConfigMap", name)
        if obj is not None:
            data = {k: str(v) for k, v in (obj.get("data") or {}).items()}
            for key, value in (obj.get("binaryData") or {}).items():
                data[key] = base64.b64decode(value).decode("latin-1")
            return data
        if optional:
            return None
        raise PodRunnerError(f"{where} needs the ConfigMap {name}, which the chart does not render")

    def _volume_files(
        self, pod: Pod, volume: Mapping[str, Any]
    ) -> dict[str, tuple[str, int]] | None:
        """{relative path: (content, mode)} of a ConfigMap/Secret volume; None for a
        directory volume (emptyDir, PVC, claim template)."""
        where = f"volume {volume.get('name')} of {chart.ref(pod.workload)}"
        if "configMap" in volume or "secret" in volume:
            source = volume.get("configMap") or volume.get("secret") or {}
            optional = bool(source.get("optional"))
            if "configMap" in volume:
                data = self._configmap(source.get("name", ""), optional, where)
            else:
                data = self._secret(source.get("secretName", ""), optional, where)
            mode = int(source.get("defaultMode", 0o644))
            files: dict[str, tuple[str, int]] = {}
            if data is None:
                return files
            items = source.get("items")
            if items is None:
                items = [{"key": k, "path": k} for k in data]
            for item in items:
                if item["key"] not in data:
                    if optional:
                        continue
                    raise PodRunnerError(
                        f"{where} names the key {item['key']!r}, which is not there"
                    )
                files[item["path"]] = (data[item["key"]], int(item.get("mode", mode)))
            return files
        if {"emptyDir", "persistentVolumeClaim", "claimTemplate"} & set(volume):
            return None
        kinds = sorted(set(volume) - {"name"})
        raise PodRunnerError(f"{where} is of a kind the runner does not make: {kinds}")

    def _plan_files(self, pod: Pod) -> None:
        for spec in chart.containers_of(pod.workload, init=False):
            for path, mount in chart.mounts_of(pod.workload, spec).items():
                volume = mount.get("volume")
                if volume is None:
                    raise PodRunnerError(
                        f"{chart.ref(pod.workload)} mounts {mount['name']!r}, which is no volume"
                    )
                files = self._volume_files(pod, volume)
                target = pod.root / path.lstrip("/")
                sub = str(mount.get("subPath") or "")
                if files is None:
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                if sub:
                    if sub not in files:
                        raise PodRunnerError(
                            f"{chart.ref(pod.workload)} mounts subPath {sub!r} of volume "
                            f"{mount['name']!r}, which has no such file"
                        )
                    files = {"": files[sub]}
                else:
                    target.mkdir(parents=True, exist_ok=True)  # an empty ConfigMap too
                for relative, (content, mode) in files.items():
                    out = target / relative if relative else target
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_text(self.rewrite(pod, content), encoding="utf-8")
                    out.chmod(mode)
        (pod.root / HOME.lstrip("/")).mkdir(parents=True, exist_ok=True)

    # -- command and environment ----------------------------------------------------------

    def _argv(self, pod: Pod, spec: Mapping[str, Any]) -> list[str]:
        words = [str(w) for w in [*(spec.get("command") or []), *(spec.get("args") or [])]]
        if not spec.get("command"):
            raise PodRunnerError(
                f"container {spec.get('name')} of {pod.workload_name} has no command "
                "(the runner has no image entrypoints)"
            )
        program = words[0]
        if program not in self.programs:
            raise PodRunnerError(
                f"container {spec.get('name')} of {pod.workload_name} runs {program!r}, "
                f"which the runner has no program for (it has {sorted(self.programs)})"
            )
        out = [self.programs[program]]
        for i, word in enumerate(words[1:], start=1):
            flag, eq, value = word.partition("=")
            if eq and flag.startswith("--") and "port" in flag and value.isdigit():
                word = f"{flag}={self._own_port(pod, int(value), flag)}"
            elif word.isdigit() and words[i - 1].startswith("--") and "port" in words[i - 1]:
                word = str(self._own_port(pod, int(word), words[i - 1]))
            elif word == BIND_ANY:
                word = LOCALHOST
            out.append(self.rewrite(pod, word))
        return out

    def _own_port(self, pod: Pod, port: int, flag: str) -> int:
        if port not in pod.ports:
            raise PodRunnerError(
                f"{pod.workload_name} is given {flag} {port}, which is not a container port "
                f"it declares ({sorted(pod.ports)})"
            )
        return pod.ports[port]

    def _field(self, pod: Pod, path: str) -> str:
        meta = pod.workload.get("metadata") or {}
        template_meta = chart.pod_template(pod.workload).get("metadata") or {}
        simple = {
            "metadata.name": pod.name,
            "metadata.namespace": self.namespace,
            "metadata.uid": "00000000-0000-4000-8000-000000000001",
            "spec.nodeName": socket.gethostname(),
            "spec.serviceAccountName": str(
                chart.pod_spec(pod.workload).get("serviceAccountName") or "default"
            ),
            "status.hostIP": LOCALHOST,
            "status.hostIPs": LOCALHOST,
            "status.podIP": LOCALHOST,
            "status.podIPs": LOCALHOST,
        }
        if path in simple:
            return simple[path]
        match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
        if match:
            found = (template_meta.get(match[1]) or {}).get(match[2])
            return "" if found is None else str(found)
        raise PodRunnerError(f"{meta.get('name')}: the downward API has no field {path!r}")

    def _resource(self, spec: Mapping[str, Any], ref: Mapping[str, Any]) -> str:
        kind, _, name = str(ref["resource"]).partition(".")
        value = ((spec.get("resources") or {}).get(kind) or {}).get(name)
        if value is None:
            raise PodRunnerError(f"container {spec.get('name')} has no {ref['resource']} to read")
        return str(value)

    def _env(self, pod: Pod, spec: Mapping[str, Any]) -> dict[str, str]:
        where = f"container {spec.get('name')} of {pod.workload_name}"
        env: dict[str, str] = {}
        for source in spec.get("envFrom") or []:
            prefix = str(source.get("prefix") or "")
            if "secretRef" in source:
                ref = source["secretRef"]
                data = self._secret(ref["name"], bool(ref.get("optional")), where) or {}
            else:
                ref = source["configMapRef"]
                data = self._configmap(ref["name"], bool(ref.get("optional")), where) or {}
            env.update({prefix + k: v for k, v in data.items()})
        for var in spec.get("env") or []:
            name = var["name"]
            source = var.get("valueFrom")
            if source is None:
                env[name] = self.rewrite(pod, str(var.get("value", "")))
                continue
            if "secretKeyRef" in source or "configMapKeyRef" in source:
                secret = "secretKeyRef" in source
                ref = source["secretKeyRef" if secret else "configMapKeyRef"]
                optional = bool(ref.get("optional"))
                what = f"{where}, variable {name}"
                getter = self._secret if secret else self._configmap
                data = getter(ref["name"], optional, what)
                if data is None:
                    continue
                if ref["key"] not in data:
                    if optional:
                        continue
                    kind = "Secret" if secret else "ConfigMap"
                    raise PodRunnerError(
                        f"{what} reads key {ref['key']!r} of the {kind} {ref['name']}, which "
                        f"has only {sorted(data)}"
                    )
                env[name] = data[ref["key"]]
            elif "fieldRef" in source:
                env[name] = self._field(pod, source["fieldRef"]["fieldPath"])
            elif "resourceFieldRef" in source:
                env[name] = self._resource(spec, source["resourceFieldRef"])
            else:
                raise PodRunnerError(f"{where}: variable {name} has a source the runner lacks")
        env.update(self.extra_env.get(pod.workload_name, {}))
        env.setdefault("HOME", str(pod.root / HOME.lstrip("/")))
        programs = {str(Path(p).parent) for p in self.programs.values()}
        env.setdefault("PATH", os.pathsep.join([*sorted(programs), os.environ.get("PATH", "")]))
        # $(VAR) references, as the kubelet expands them in env values and arguments
        return {k: _expand(v, env) for k, v in env.items()}

    # -- processes ----------------------------------------------------------------------

    def containers(self) -> list[Container]:
        return [c for pod in self.pods.values() for c in pod.containers]

    def _spawn(self, container: Container) -> None:
        container.log.parent.mkdir(parents=True, exist_ok=True)
        argv = [_expand(word, container.env) for word in container.argv]
        with container.log.open("ab") as out:
            out.write(f"--- start {container.restarts}: {argv}\n".encode())
            out.flush()
            container.proc = subprocess.Popen(
                argv,
                cwd=container.pod.root / HOME.lstrip("/"),
                env=container.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def start(self, timeout: float = 60) -> None:
        """Start every container at once (as a cluster would) and wait until each is
        ready; a container that exits is restarted (at most ``restarts`` times)."""
        for container in self.containers():
            self._spawn(container)
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2, trust_env=False) as http:
            while True:
                waiting = [c for c in self.containers() if not c.ready]
                if not waiting:
                    return
                for container in waiting:
                    self._check(container, http)
                if time.monotonic() > deadline:
                    names = ", ".join(c.what for c in self.containers() if not c.ready)
                    raise PodRunnerError(f"not ready after {timeout:.0f} s: {names}")
                time.sleep(0.1)

    def _check(self, container: Container, http: httpx.Client) -> None:
        proc = container.proc
        if proc is not None and proc.poll() is not None:
            if container.restarts >= self.max_restarts:
                raise PodRunnerError(
                    f"{container.what} exited with {proc.returncode} {container.restarts + 1} times"
                )
            container.restarts += 1
            time.sleep(min(2.0, 0.2 * 2**container.restarts))  # the kubelet's back-off, short
            self._spawn(container)
            return
        probe = container.spec.get("readinessProbe")
        container.ready = probe is None or self._probe(container, probe, http)

    def _probe(self, container: Container, probe: Mapping[str, Any], http: httpx.Client) -> bool:
        pod = container.pod
        if "httpGet" in probe:
            get = probe["httpGet"]
            port = pod.local_port(get["port"])
            scheme = str(get.get("scheme", "HTTP")).lower()
            headers = {h["name"]: h["value"] for h in get.get("httpHeaders") or []}
            url = f"{scheme}://{LOCALHOST}:{port}{get.get('path', '/')}"
            with contextlib.suppress(httpx.HTTPError):
                return 200 <= http.get(url, headers=headers).status_code < 400
            return False
        if "tcpSocket" in probe:
            port = pod.local_port(probe["tcpSocket"]["port"])
            with contextlib.suppress(OSError), socket.create_connection((LOCALHOST, port), 1):
                return True
            return False
        raise PodRunnerError(f"{container.what} has a readiness probe the runner lacks: {probe}")

    def stop(self) -> None:
        """SIGTERM to every container's process group, SIGKILL after ``grace`` seconds;
        then any process still running in a pod's root (labs the backend started)."""
        running = [c.proc for c in self.containers() if c.proc and c.proc.poll() is None]
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        for proc in running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.0, deadline - time.monotonic()))
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for pid in self.leftovers():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def leftovers(self) -> list[int]:
        """Processes whose command line or working directory is in a pod's root."""
        mark = str(self.workdir / "pods")
        return [pid for pid, _ in marked_processes([mark], mark)]

    def tails(self, lines: int = 40) -> str:
        """The end of every container's log, for a failed test's report."""
        parts = []
        for container in self.containers():
            state = "not started"
            if container.proc is not None:
                code = container.proc.poll()
                state = "running" if code is None else f"exited {code}"
            parts.append(
                f"=== {container.what} ({state}, {container.restarts} restarts): {container.log}\n"
                + tail(container.log, lines)
            )
        return "\n".join(parts)

    # -- what a test needs --------------------------------------------------------------

    def url(self, service: str, port: int | None = None, scheme: str = "http") -> str:
        """The local URL of a Service's port (its first when none is given)."""
        ports = (self.service(service).get("spec") or {}).get("ports") or []
        number = int(port if port is not None else ports[0]["port"])
        return f"{scheme}://{LOCALHOST}:{self.service_port(service, number)}"

    def container(self, workload: str, name: str | None = None) -> Container:
        pod = self.pods[workload]
        if name is None:
            return pod.containers[0]
        return next(c for c in pod.containers if c.name == name)

    def wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``predicate`` until true; fail naming ``what`` with every log's end."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.1)
        raise PodRunnerError(f"timed out waiting for {what}")


def _expand(value: str, env: Mapping[str, str]) -> str:
    """``$(VAR)`` → the variable's value when defined (``$$(VAR)`` stays literal)."""

    def one(match: re.Match[str]) -> str:
        if match.group(0).startswith("$$"):
            return match.group(0)[1:]
        return env.get(match[1], match.group(0))

    return re.sub(r"\$?\$\(([A-Za-z_][A-Za-z0-9_]*)\)", one, value)


def find_program(*candidates: str | os.PathLike[str] | None) -> str | None:
    """The first candidate that is an executable file, or on PATH."""
    for candidate in candidates:
        if not candidate:
            continue
        path = Path(candidate)
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
        found = shutil.which(str(candidate)) if os.sep not in str(candidate) else None
        if found:
            return found
    return None
