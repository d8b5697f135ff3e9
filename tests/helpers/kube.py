"""A Kubernetes API server for tests: kmock's emulator as a real HTTP server.

No real API server can run on a test machine, so the UserLab Manager talks to
kmock's ``KubernetesEmulator`` (an in-memory object store behind the Kubernetes
REST paths; the official ``kubernetes`` client works against it unchanged). It
runs as a subprocess (``python -m tests.helpers.kube --port-file F``) so that it
is independent of any test's event loop and reachable from the UserLab Manager
whether that runs in the test process or as a subprocess of its own.

kmock 0.8 has no server command line and leaves some API behaviour out; the
subclass built by ``_emulator_class`` adds what our tests rely on:

* a bearer token, checked on every request (401 otherwise), as a cluster would;
* ``metadata.namespace`` (from the URL), ``uid``, ``creationTimestamp`` and a
  growing ``resourceVersion`` on create, and a new ``resourceVersion`` on every
  patch: kmock's watches deliver live events only for objects that carry
  ``metadata.namespace``, and clients use the others;
* ``metadata.generateName``;
* ``labelSelector`` and ``fieldSelector`` (equality and set-based) on lists and
  watches, which kmock ignores;
* ``timeoutSeconds`` on watches, and their end when the emulator stops (kmock's
  streams never end by themselves);
* the paths of Namespace objects, on which kmock fails, and ``watch=True``;
* core/v1 pods, services, ... declared up front: kmock answers a list of a
  resource it has never stored an object of with 404; discovery (``/api/v1``) names
  their kinds (``Secret``, not kmock's ``Secrets``), which Helm's ``lookup`` needs;
* ``KubeApi(directory, token="")``: no token check, for helm_python's cluster-aware
  render, which sends no credentials (tests/test_helm_chart.py).

The emulator has no kubelet and no controllers: a pod's status changes only when
a test patches it (``KubeApi.set_pod_status``), a deleted pod is gone at once
(no graceful termination), and deleting a namespace deletes nothing in it.

Tests take a fresh emulator per test from the ``kube`` fixture (tests/plugins/kube.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import itertools
import json
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import yaml

if TYPE_CHECKING:
    import kubernetes.client

REPO = Path(__file__).resolve().parent.parent.parent
log = logging.getLogger("lablink.tests.kube")

# Namespaced core/v1 resources that exist (and list empty) before any object does.
# Their kinds go into discovery (kmock would say "Secrets"): Helm's ``lookup`` finds a
# resource by its kind there.
CORE_RESOURCES = {"pods": "Pod", "services": "Service", "configmaps": "ConfigMap",
                  "secrets": "Secret", "events": "Event",
                  "persistentvolumeclaims": "PersistentVolumeClaim",
                  "serviceaccounts": "ServiceAccount", "endpoints": "Endpoints"}  # fmt: skip


class KubeError(RuntimeError):
    """The emulator did not start (the message has the end of its log)."""


# -- selectors (kmock ignores them; the emulator subclass applies them) -----------

Requirement = Callable[[Mapping[str, str]], bool]

_SET_REQUIREMENT = re.compile(r"^(!?)\s*([\w./-]+)\s*(?:\s(in|notin)\s*\(([^)]*)\))?$")
_EQUALITY = re.compile(r"^([\w./-]+)\s*(==|=|!=)\s*([\w./-]*)$")


def _requirement(text: str) -> Requirement:
    """One term of a selector: ``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``,
    ``k in (a,b)`` or ``k notin (a,b)``, as ``kubectl`` accepts them."""
    text = text.strip()
    if m := _EQUALITY.match(text):
        key, op, value = m.groups()
        if op == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    if m := _SET_REQUIREMENT.match(text):
        negated, key, op, values = m.groups()
        if op is None:
            return (lambda labels: key not in labels) if negated else (lambda labels: key in labels)
        choices = {v.strip() for v in values.split(",")}
        if op == "in":
            return lambda labels: labels.get(key) in choices
        return lambda labels: labels.get(key) not in choices
    raise ValueError(f"unparsable selector term {text!r}")


def parse_selector(selector: str | None) -> list[Requirement]:
    """A label or field selector as requirements that must all hold (commas
    inside ``in (...)`` do not split terms)."""
    if not selector or not selector.strip():
        return []
    return [_requirement(term) for term in re.split(r",(?![^()]*\))", selector)]


def _field_values(obj: Mapping[str, Any]) -> dict[str, str]:
    """The fields a ``fieldSelector`` may name, flattened to dotted keys."""
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, sub in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), sub)
        elif isinstance(value, str | int | bool):
            flat[prefix] = str(value).lower() if isinstance(value, bool) else str(value)

    walk("", {"metadata": obj.get("metadata", {}), "spec": obj.get("spec", {}),
              "status": obj.get("status", {})})  # fmt: skip
    return flat


def selected(obj: Mapping[str, Any], labels: list[Requirement], fields: list[Requirement]) -> bool:
    """Whether ``obj`` matches both selectors."""
    own_labels = obj.get("metadata", {}).get("labels") or {}
    if not all(req(own_labels) for req in labels):
        return False
    return not fields or all(req(_field_values(obj)) for req in fields)


# -- the emulator process ------------------------------------------------------------


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_namespace_paths() -> None:
    """Make kmock parse the paths of Namespace objects (``/api/v1/namespaces``,
    ``/api/v1/namespaces/NAME[/status|/finalize]``): kmock 0.8 reads ``namespaces/X``
    only as the prefix of a namespaced resource and fails with a 500 on them."""
    from kmock._internal import parsing

    original = parsing.parse_path

    def parse_path(path: str) -> parsing.ParsedPath:
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "v1"] and parts[2:3] == ["namespaces"]:
            rest = parts[3:]
            if len(rest) <= 1 or (len(rest) == 2 and rest[1] in ("status", "finalize")):
                name, subresource = [*rest, None, None][:2]
                return parsing.ParsedPath("", "v1", "namespaces", None, name, subresource)
        return original(path)

    parsing.parse_path = parse_path


async def _next_event(
    events: AsyncIterator[Any], stopping: asyncio.Future[Any], deadline: float | None
) -> Any:
    """The next item of a watch stream; None at its end, at ``deadline`` or on stop."""
    left = None if deadline is None else max(0.0, deadline - time.monotonic())
    step = asyncio.ensure_future(anext(events))
    done, _ = await asyncio.wait(
        {step, stopping}, timeout=left, return_when=asyncio.FIRST_COMPLETED
    )
    if step not in done:
        step.cancel()
        with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
            await step
        return None
    with contextlib.suppress(StopAsyncIteration):
        return step.result()
    return None


def _parse_watch_flag() -> None:
    """Take ``watch=True`` (kubernetes_asyncio sends that) for a watch, as the API
    server's ParseBool does: kmock 0.8 takes only ``watch=true`` and lists instead."""
    from kmock._internal import parsing

    original = parsing.guess_k8s

    def guess_k8s(k8s: parsing.ParsedPath, method: Any, query: dict[str, str]) -> Any:
        if query.get("watch") in ("True", "TRUE", "1", "t", "T"):
            query = {**query, "watch": "true"}
        return original(k8s, method, query)

    parsing.guess_k8s = guess_k8s


def _emulator_class() -> type[Any]:
    """kmock's emulator with a token check, server-set metadata, selectors and watch
    timeouts. Built on demand so that the test process need not import kmock."""
    import aiohttp.web
    import attrs
    import kmock

    _parse_namespace_paths()
    _parse_watch_flag()

    @attrs.define(kw_only=True)
    class Emulator(kmock.KubernetesEmulator):  # type: ignore[misc]
        token: str | None = None
        stopping: asyncio.Event = attrs.field(factory=asyncio.Event, init=False)
        _versions: Iterator[int] = attrs.field(factory=lambda: itertools.count(1), init=False)

        def __attrs_post_init__(self) -> None:
            super().__attrs_post_init__()
            for plural, kind in CORE_RESOURCES.items():
                self.resources[f"v1/{plural}"] = kmock.ResourceInfo(
                    namespaced=True,
                    kind=kind,
                    singular=kind.lower(),
                    subresources={"status"} if plural == "pods" else set(),
                )
            self.resources["v1/namespaces"] = kmock.ResourceInfo(
                namespaced=False, kind="Namespace", singular="namespace"
            )
            self.fallback["get /version/"] << self._serve_server_version  # VersionApi's path

        async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
            if self.token and request.headers.get("Authorization") != f"Bearer {self.token}":
                raise kmock.KubernetesError(401, "Unauthorized", "Unauthorized")
            self._stamp(request)
            response: aiohttp.web.StreamResponse = await super()._handle(request)
            return response  # aiohttp's access log has a line for it

        def _stamp(self, request: kmock.Request) -> None:
            """Set what the API server sets on creates and patches (in place, before
            kmock stores the body)."""
            if not isinstance(request.data, dict) or request.resource is None:
                return
            meta = request.data.setdefault("metadata", {})
            if request.action == kmock.action.CREATE:
                if not meta.get("name") and meta.get("generateName"):
                    meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
                if request.namespace:
                    meta.setdefault("namespace", request.namespace)
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("creationTimestamp", _now())
            if request.action in (kmock.action.CREATE, kmock.action.UPDATE):
                meta["resourceVersion"] = str(next(self._versions))

        async def _serve_list(self, request: kmock.Request) -> Any:
            listing: dict[str, Any] = await super()._serve_list(request)  # type: ignore[assignment]
            labels, fields = self._selectors(request)
            listing["items"] = [obj for obj in listing["items"] if selected(obj, labels, fields)]
            listing["metadata"]["resourceVersion"] = str(next(self._versions))
            return listing

        async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[Any]:
            labels, fields = self._selectors(request)
            timeout = float(request.params.get("timeoutSeconds") or 0) or None
            deadline = None if timeout is None else time.monotonic() + timeout
            events: AsyncGenerator[Any] = super()._serve_watch(request)  # type: ignore[assignment]
            stopping = asyncio.ensure_future(self.stopping.wait())
            try:
                while (event := await _next_event(events, stopping, deadline)) is not None:
                    obj = event.get("object", {}) if isinstance(event, dict) else None
                    if obj is None or selected(obj, labels, fields):
                        yield event
            finally:  # the server ends the stream, as kube-apiserver does
                stopping.cancel()
                await events.aclose()

        @staticmethod
        def _selectors(request: kmock.Request) -> tuple[list[Requirement], list[Requirement]]:
            return (
                parse_selector(request.params.get("labelSelector")),
                parse_selector(request.params.get("fieldSelector")),
            )

    return Emulator


async def serve(host: str, port: int, token: str | None, port_file: Path | None) -> None:
    """Serve until SIGTERM or SIGINT; write the bound port to ``port_file`` (atomically)
    once listening, so that the parent needs no free-port guess."""
    import kmock

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with (
        _emulator_class()(token=token) as emulator,
        kmock.Server(emulator, host=host, port=port or None) as server,
    ):
        log.info("Kubernetes API emulator listening on %s", server.url)
        if port_file:
            partial = port_file.with_suffix(".partial")
            partial.write_text(str(server.port))
            partial.replace(port_file)
        await stop.wait()
        log.info("stopping")
        emulator.stopping.set()  # end open watches, or aiohttp waits for them


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="kmock's Kubernetes API emulator as a server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--port-file", type=Path, help="write the bound port here")
    parser.add_argument("--token-env", help="environment variable with the bearer token")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    token = os.environ.get(args.token_env) if args.token_env else None
    asyncio.run(serve(args.host, args.port, token, args.port_file))


# -- the test side -------------------------------------------------------------------


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


@dataclass
class KubeApi:
    """The emulator as a child of the test process, and the kubelet's part for tests.

    ``directory`` holds ``kube.log`` (one line per request) and the files of
    ``kubeconfig()``. Inspection helpers read the emulator's state over HTTP as
    raw dicts, as the API server holds them."""

    directory: Path
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    host: str = "127.0.0.1"
    port: int = 0
    start_timeout: float = 20.0
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def log(self) -> Path:
        return self.directory / "kube.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- the process ----------------------------------------------------------------

    def start(self) -> None:
        """Start the emulator; return once ``/version`` answers (at most
        ``start_timeout`` seconds), or raise ``KubeError`` with its log's end."""
        if self.running:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        port_file = self.directory / "kube.port"
        port_file.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "tests.helpers.kube", "--host", self.host,
                "--port", str(self.port), "--port-file", str(port_file),
                "--token-env", "LABLINK_KUBE_TOKEN"]  # fmt: skip
        env = {**os.environ, "LABLINK_KUBE_TOKEN": self.token, "PYTHONUNBUFFERED": "1"}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        problem = self._wait_ready(port_file)
        if problem:
            self.stop()
            raise KubeError(
                f"the Kubernetes API emulator did not start: {problem}\n{_tail(self.log)}"
            )

    def _wait_ready(self, port_file: Path) -> str | None:
        """None once the emulator answers ``/version``, else what went wrong."""
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return f"it exited with {self.proc.returncode if self.proc else None}"
            if port_file.exists():
                self.port = int(port_file.read_text())
                with contextlib.suppress(httpx.HTTPError):
                    if self._http().get("/version").status_code == 200:
                        return None
            time.sleep(0.02)
        return f"no answer within {self.start_timeout} s"

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM (it closes its streams and exits 0), SIGKILL after ``timeout``."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc else 0
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    # -- clients --------------------------------------------------------------------

    def kubeconfig(self, path: Path | None = None, namespace: str = "default") -> Path:
        """Write a kubeconfig for the emulator (bearer token, plain HTTP) and return its path."""
        path = path or self.directory / "kubeconfig"
        name = "lablink-test"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": name, "cluster": {"server": self.url}}],
            "users": [{"name": name, "user": {"token": self.token}}],
            "contexts": [
                {"name": name, "context": {"cluster": name, "user": name, "namespace": namespace}}
            ],
            "current-context": name,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    def client(self) -> kubernetes.client.ApiClient:
        """An official client for the emulator (close it, or use it as a context manager)."""
        import kubernetes.client

        configuration = kubernetes.client.Configuration(
            host=self.url,
            api_key={"BearerToken": self.token},
            api_key_prefix={"BearerToken": "Bearer"},
        )
        configuration.proxy = None  # never through a proxy from the environment
        return kubernetes.client.ApiClient(configuration)

    def _http(self) -> httpx.Client:
        # token "": an emulator without the token check (helm_python's cluster-aware
        # render sends no credentials); an empty bearer header is not valid HTTP
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10, trust_env=False)

    # -- the kubelet's part and inspection ------------------------------------------

    def objects(self, plural: str, namespace: str) -> list[dict[str, Any]]:
        """The core/v1 objects of one kind in ``namespace``, as the API server holds them."""
        with self._http() as http:
            response = http.get(f"/api/v1/namespaces/{namespace}/{plural}")
        response.raise_for_status()
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    def pods(self, namespace: str) -> list[dict[str, Any]]:
        return self.objects("pods", namespace)

    def services(self, namespace: str) -> list[dict[str, Any]]:
        return self.objects("services", namespace)

    def set_pod_status(self, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        """Merge ``status`` into the pod's status, as the kubelet would report it;
        watchers see a MODIFIED event. Nested dicts merge, lists are replaced whole
        (JSON merge patch; the emulator does no strategic merge)."""
        path = f"/api/v1/namespaces/{namespace}/pods/{name}/status"
        with self._http() as http:
            response = http.patch(
                path,
                json={"status": status},
                headers={"Content-Type": "application/merge-patch+json"},
            )
        response.raise_for_status()
        pod: dict[str, Any] = response.json()
        return pod

    def delete_pod(self, namespace: str, name: str) -> None:
        """Delete the pod at once (no grace period); watchers see a DELETED event."""
        with self._http() as http:
            http.delete(f"/api/v1/namespaces/{namespace}/pods/{name}").raise_for_status()


# -- a scripted pod watch, for the UserLab Manager's watch loop without a server ----------


class WatchAnswer:
    """One watch request's answer as urllib3 hands it to the client: ``lines`` after
    ``hold`` seconds, then its end."""

    status = 200

    def __init__(self, *lines: dict[str, Any], hold: float = 0.0):
        self.lines = lines
        self.hold = hold

    def stream(self, amt: int | None = None, decode_content: bool = False) -> Iterator[bytes]:
        time.sleep(self.hold)
        for line in self.lines:
            yield json.dumps(line).encode() + b"\n"

    def close(self) -> None:
        pass

    def release_conn(self) -> None:
        pass


class ScriptedPods:
    """In place of a ``Kube``'s ``core`` (userlab_manager/kube.py): the pods API of a
    cluster whose watches answer from ``script`` (an exception in it is raised),
    then end in their time (``routine`` seconds)."""

    def __init__(self, script: list[WatchAnswer | Exception], routine: float):
        self.script = script
        self.routine = routine
        self.calls = 0

    def list_namespaced_pod(self, namespace: str, **kwargs: Any) -> WatchAnswer:
        self.calls += 1
        step = self.script.pop(0) if self.script else WatchAnswer(hold=self.routine)
        if isinstance(step, Exception):
            raise step
        return step


if __name__ == "__main__":
    main()
