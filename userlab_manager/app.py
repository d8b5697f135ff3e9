"""The UserLab Manager: lab pods on Kubernetes for cloud systems.

``POST /api/v1/labs`` checks the request against the system's flavors and
images (the backend has checked it too), builds the lab's service and pod
(userlab_manager/manifests.py) and creates them; ``GET /api/v1/labs/{id}``
says what the pod is doing, in a sentence (userlab_manager/status.py), from a
watch on the namespace's pods, and ``?wait=S&seen=STATE`` waits up to S
seconds for a change; ``DELETE /api/v1/labs/{id}`` deletes both and answers
the pod's last output lines (idempotent).

The labs it made are kept in ``<state_dir>/userlabs.json`` (written before the
pod is created). On start it reconciles: pods of ours that belong to no known
lab are deleted, and known labs whose pod is gone report ``gone``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
import weakref
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Response
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ConfigDict, Field

from backend import __version__
from backend.auth import Principal, authenticate
from backend.files import private_dir
from backend.metrics import install_metrics
from backend.service import backend_only_app
from backend.settings import Settings
from backend.systems.kubernetes.config import KubernetesSystem, is_image_reference

from .kube import ClusterError, Kube
from .manifests import (
    LABEL_LAB,
    LabPod,
    name_of,
    pod_manifest,
    secret_manifest,
    service_manifest,
)
from .metrics import ManagerMetrics, PodPhases
from .status import ACTIVE, lab_status

log = logging.getLogger("lablink.userlab_manager")

DEFAULT_PORT = 8030
OUTPUT_LINES = 20
MAX_WAIT = 30.0
DELETED_KEPT = 600.0  # seconds a deleted lab id refuses a late create

router = APIRouter(prefix="/api/v1")
Auth = Annotated[Principal, Depends(authenticate)]


class LabIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lab_id: str = Field(pattern=r"^[A-Za-z0-9-]{1,56}$")
    system: str = Field(pattern=r"^[a-z][a-z0-9-]{0,62}$")
    user: str = Field(min_length=1, max_length=255)
    server_name: str = Field(default="", max_length=255)
    vo: str = Field(default="", max_length=255)
    flavor: str = Field(max_length=64)
    image: str = Field(max_length=255)
    cpu: float | None = Field(default=None, gt=0, le=512)
    memory: float | None = Field(default=None, gt=0, le=4096)
    prefix: str = Field(pattern=r"^/[^\s?#]{0,510}/$")
    env: dict[
        Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")],
        Annotated[str, Field(max_length=65536)],
    ] = Field(default_factory=dict, max_length=200)


class LabOut(BaseModel):
    lab_id: str
    system: str
    namespace: str
    pod: str = Field(description="the name of the lab's pod, its service and its secret")
    state: str
    message: str
    reason: str = ""
    url: str | None = None
    output: str = ""


def refuse(field: str, text: str) -> HTTPException:
    return HTTPException(422, f"The field {field}: {text}.")


class Labs:
    """The labs this manager made, their pods as the watch last saw them, and the
    file that keeps the former."""

    def __init__(self, settings: Settings, kube: Kube, path: Path):
        self.settings = settings
        self.kube = kube
        self.path = path
        self.known: dict[str, dict[str, str]] = {}
        self.pods: dict[str, dict[str, Any]] = {}
        self.changed = asyncio.Condition()
        # a create and a delete of one lab take turns: a delete that came while the pod
        # was being made waits for it and then removes it
        self.turns: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        # labs deleted lately (id -> when): a create that arrives after its own delete
        # (two requests on two connections) makes nothing
        self.deleted: dict[str, float] = {}

    def turn(self, lab_id: str) -> asyncio.Lock:
        lock = self.turns.get(lab_id)
        if lock is None:
            lock = self.turns[lab_id] = asyncio.Lock()
        return lock

    def mark_deleted(self, lab_id: str) -> None:
        now = time.monotonic()
        for old in [k for k, t in self.deleted.items() if now - t > DELETED_KEPT]:
            del self.deleted[old]
        self.deleted[lab_id] = now

    # -- the file ---------------------------------------------------------------

    def load(self) -> None:
        if self.path.exists():
            self.known = json.loads(self.path.read_text() or "{}")

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.known, indent=1, sort_keys=True))
        os.replace(tmp, self.path)

    # -- systems ----------------------------------------------------------------

    def system(self, name: str) -> KubernetesSystem:
        found = self.settings.systems.get(name)
        if not isinstance(found, KubernetesSystem):
            names = [n for n, s in self.settings.systems.items() if isinstance(s, KubernetesSystem)]
            raise refuse("system", f"{name!r} is not a cloud system here; allowed: "
                         f"{', '.join(names) or 'none'}")  # fmt: skip
        return found

    def namespaces(self) -> set[str]:
        return {
            s.namespace for s in self.settings.systems.values() if isinstance(s, KubernetesSystem)
        }

    def pod_for(self, body: LabIn) -> LabPod:
        """The lab's pod, from a request checked against the system's allow-lists."""
        system = self.system(body.system)
        flavor = system.flavors.get(body.flavor)
        if flavor is None:
            raise refuse("flavor", f"{body.flavor!r} is not a flavor of system {body.system!r}; "
                         f"allowed: {', '.join(system.flavors)}")  # fmt: skip
        if not is_image_reference(body.image):
            raise refuse("image", f"{body.image[:80]!r} is not an image reference")
        if not system.image_allowed(body.image):
            raise refuse("image", f"{body.image[:80]!r} is not allowed on system {body.system!r}")
        cpu = flavor.cpu if body.cpu is None else body.cpu
        memory = flavor.memory if body.memory is None else body.memory
        if cpu > flavor.cpu:
            raise refuse("cpu", f"{cpu:g} cores is more than flavor {body.flavor!r} allows; "
                         f"allowed: up to {flavor.cpu:g}")  # fmt: skip
        if memory > flavor.memory:
            raise refuse("memory", f"{memory:g} GiB is more than flavor {body.flavor!r} allows; "
                         f"allowed: up to {flavor.memory:g}")  # fmt: skip
        run_as = self.settings.userlab_manager
        return LabPod(
            lab_id=body.lab_id,
            system=body.system,
            namespace=system.namespace,
            user=body.user,
            server_name=body.server_name,
            vo=body.vo,
            image=body.image,
            cpu=cpu,
            cpu_request=min(flavor.cpu_request or cpu, cpu),
            memory=memory,
            memory_request=min(flavor.memory_request or memory, memory),
            gpus=flavor.gpus,
            gpu_resource=system.gpu_resource,
            port=system.port,
            prefix=body.prefix,
            env={**system.environment, **body.env},
            run_as_user=run_as.run_as_user,
            run_as_group=run_as.run_as_group,
        )

    # -- what a lab does ----------------------------------------------------------

    def out(self, lab_id: str, output: str = "") -> LabOut:
        record = self.known[lab_id]
        system = self.settings.systems.get(record["system"])
        status = lab_status(self.pods.get(lab_id))
        url = None
        if status.state in ACTIVE and isinstance(system, KubernetesSystem):
            if system.reach == "pod_ip" and status.pod_ip:
                url = f"http://{status.pod_ip}:{system.port}"
            elif system.reach == "service":
                url = f"http://{name_of(lab_id)}.{record['namespace']}.svc:{system.port}"
        return LabOut(
            lab_id=lab_id,
            system=record["system"],
            namespace=record["namespace"],
            pod=name_of(lab_id),
            state=status.state,
            message=status.message,
            reason=status.reason,
            url=url,
            output=output,
        )

    async def on_event(self, kind: str, pod: dict[str, Any]) -> None:
        lab_id = (pod.get("metadata", {}).get("labels") or {}).get(LABEL_LAB, "")
        if not lab_id:
            return
        if kind == "DELETED":
            self.pods.pop(lab_id, None)
        else:
            self.pods[lab_id] = pod
        async with self.changed:
            self.changed.notify_all()

    def on_event_soon(self, kind: str, pod: dict[str, Any]) -> None:
        asyncio.get_running_loop().create_task(self.on_event(kind, pod))

    async def wait_change(self, lab_id: str, seen: str, seconds: float) -> None:
        """Until the lab's state is other than ``seen`` (or ``seconds`` pass)."""
        deadline = time.monotonic() + seconds
        async with self.changed:
            while lab_id in self.known and self.out(lab_id).state == seen:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), remaining)

    async def reconcile(self) -> None:
        """Delete pods of ours that no known lab owns; take up the others."""
        for namespace in self.namespaces():
            for pod in await self.kube.list_pods(namespace):
                lab_id = (pod["metadata"].get("labels") or {}).get(LABEL_LAB, "")
                if lab_id in self.known:
                    self.pods[lab_id] = pod
                else:
                    log.warning("deleting pod %s: no lab of ours owns it", pod["metadata"]["name"])
                    await self.kube.delete(namespace, pod["metadata"]["name"])
        gone = [lab_id for lab_id in self.known if lab_id not in self.pods]
        if gone:
            log.warning("%d known labs have no pod; they report 'gone'", len(gone))


def labs_of(request: Request) -> Labs:
    return request.app.state.labs  # type: ignore[no-any-return]


def cluster_trouble(exc: ClusterError) -> HTTPException:
    if 400 <= exc.status < 500:
        return HTTPException(
            422, f"The cluster refused the lab: {exc.message[:300]}.".replace("..", ".")
        )
    log.warning("cluster unreachable: %s", exc.message)
    return HTTPException(503, "The cluster cannot be reached right now; try again in a minute.")


@router.get("/health")
async def health(request: Request, who: Auth) -> dict[str, Any]:
    labs = labs_of(request)
    return {"status": "ok", "version": __version__, "pid": os.getpid(), "labs": len(labs.known)}


@router.post("/labs", status_code=201, response_model=LabOut)
async def create_lab(request: Request, body: LabIn, who: Auth, response: Response) -> LabOut:
    """Create the lab's service and pod (a repeated request answers 200)."""
    labs = labs_of(request)
    pod = labs.pod_for(body)
    async with labs.turn(body.lab_id):
        return await _create(labs, body, pod, response)


async def _create(labs: Labs, body: LabIn, pod: LabPod, response: Response) -> LabOut:
    if body.lab_id in labs.deleted:
        raise HTTPException(409, "This lab was stopped before its pod was made; start a new one.")
    if body.lab_id in labs.known:
        response.status_code = 200
        return labs.out(body.lab_id)
    labs.known[body.lab_id] = {"system": body.system, "namespace": pod.namespace}
    labs.save()  # before the pod: a restart must not take it for an orphan
    try:
        await labs.kube.create(
            pod.namespace, pod_manifest(pod), service_manifest(pod), secret_manifest(pod)
        )
    except ClusterError as exc:
        labs.known.pop(body.lab_id, None)
        labs.save()
        with contextlib.suppress(ClusterError):
            await labs.kube.delete(pod.namespace, name_of(body.lab_id))
        raise cluster_trouble(exc) from None
    log.info("lab %s: pod %s in %s (%s, %s)", body.lab_id[:8], name_of(body.lab_id),
             pod.namespace, body.flavor, body.image)  # fmt: skip
    found = await labs.kube.read_pod(pod.namespace, name_of(body.lab_id))
    if found is not None and body.lab_id not in labs.pods:
        labs.pods[body.lab_id] = found
    return labs.out(body.lab_id)


@router.get("/labs", response_model=list[LabOut])
async def list_labs(request: Request, who: Auth) -> list[LabOut]:
    labs = labs_of(request)
    return [labs.out(lab_id) for lab_id in labs.known]


@router.get("/labs/{lab_id}", response_model=LabOut)
async def get_lab(
    request: Request,
    lab_id: str,
    who: Auth,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT)] = 0,
    seen: Annotated[str, Query(max_length=32)] = "",
) -> LabOut:
    """The lab's state; with ``wait``, up to that many seconds for it to differ
    from ``seen``."""
    labs = labs_of(request)
    if lab_id not in labs.known:
        raise HTTPException(404, "There is no such lab here.")
    if wait and seen:
        await labs.wait_change(lab_id, seen, wait)
    return labs.out(lab_id)


@router.delete("/labs/{lab_id}", response_model=LabOut | None)
async def delete_lab(request: Request, lab_id: str, who: Auth, response: Response) -> Any:
    """Delete the lab's pod and service; answers the pod's last output lines.
    A lab that is gone answers 204."""
    labs = labs_of(request)
    async with labs.turn(lab_id[:64]):
        return await _delete(labs, lab_id[:64], response)


async def _delete(labs: Labs, lab_id: str, response: Response) -> Any:
    labs.mark_deleted(lab_id)
    record = labs.known.get(lab_id)
    if record is None:
        response.status_code = 204
        return None
    name = name_of(lab_id)
    output = await labs.kube.log_tail(record["namespace"], name, OUTPUT_LINES)
    try:
        await labs.kube.delete(record["namespace"], name)
    except ClusterError as exc:
        raise cluster_trouble(exc) from None
    result = labs.out(lab_id, output)
    labs.known.pop(lab_id, None)
    labs.pods.pop(lab_id, None)
    labs.save()
    return result.model_copy(update={"state": "gone", "message": "The lab's pod was deleted."})


def create_app(
    settings: Settings, token: str, kube: Kube, environ: Mapping[str, str] | None = None
) -> FastAPI:
    """The service; ``environ`` (default: the process's) holds the metrics token."""
    registry = CollectorRegistry()  # the app's own: a process may build several
    metrics = ManagerMetrics(registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        private_dir(settings.state_dir)
        labs = Labs(settings, kube, settings.state_dir / "userlabs.json")
        labs.load()
        app.state.labs = labs
        pods = PodPhases(labs)
        registry.register(pods)
        await labs.reconcile()
        for namespace in labs.namespaces():
            kube.watch(namespace, labs.on_event_soon, metrics.watch_restarts.inc)
        try:
            yield
        finally:
            registry.unregister(pods)
            await asyncio.to_thread(kube.close)

    app = backend_only_app(
        "Lablink UserLab Manager",
        "Lab pods on Kubernetes for cloud systems. Every call needs a bearer token.",
        token,
        settings.userlab_manager.token_env,
        lifespan,
    )
    app.include_router(router)
    install_metrics(
        app,
        registry,
        settings.metrics,
        "userlab_manager",
        os.environ if environ is None else environ,
    )
    return app
