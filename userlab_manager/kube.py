"""The official Kubernetes client, kept off the event loop.

The ``kubernetes`` package is synchronous (urllib3). Every call runs in a worker
thread (``asyncio.to_thread``) so that the service keeps answering while the
API server is slow, and each namespace's pod watch runs in a thread of its own
that hands every event to the loop with ``call_soon_threadsafe``. Objects
leave this module as plain JSON dicts (camelCase, as the API sends them), so
the rest of the service never touches the client's model classes.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from .manifests import LABEL_MANAGED_BY, MANAGED_BY, SELECTOR

log = logging.getLogger("lablink.userlab_manager")

WATCH_SECONDS = 5  # one watch request; short, so that stopping never waits long
EARLY = WATCH_SECONDS - 1  # a watch that ends sooner without an error was ended by the server
# the most of a pod's log read for a lab's output (the lab decides what it prints)
LOG_BYTES = 16 * 1024
Event = Callable[[str, dict[str, Any]], None]


class ClusterError(Exception):
    """The cluster refused (``status`` 4xx) or could not be reached (``status`` 0, 5xx)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def api_client(kubeconfig: str | None) -> client.ApiClient:
    """A client for the configured cluster: a kubeconfig file, else the in-cluster
    service account, else ~/.kube/config."""
    if kubeconfig:
        return config.new_client_from_config(config_file=kubeconfig)
    try:
        config.load_incluster_config()
        return client.ApiClient()
    except config.ConfigException:
        return config.new_client_from_config()


def _reason(exc: ApiException) -> str:
    import json

    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except ValueError:
        return str(exc.reason)


def managed(obj: dict[str, Any]) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    return labels.get(LABEL_MANAGED_BY) == MANAGED_BY


class Kube:
    def __init__(self, api: client.ApiClient):
        self.api = api
        self.core = client.CoreV1Api(api)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _json(self, obj: Any) -> dict[str, Any]:
        return self.api.sanitize_for_serialization(obj)  # type: ignore[no-any-return]

    async def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args, _request_timeout=15, **kwargs)
        except ApiException as exc:
            raise ClusterError(exc.status or 0, _reason(exc)) from None
        except Exception as exc:  # urllib3 errors: the cluster is not reachable
            raise ClusterError(0, f"{type(exc).__name__}: {exc}") from None

    async def create(
        self, namespace: str, pod: dict[str, Any], service: dict[str, Any], secret: dict[str, Any]
    ) -> None:
        """Create the secret, the service, then the pod; one that exists is fine."""
        for create, body in (
            (self.core.create_namespaced_secret, secret),
            (self.core.create_namespaced_service, service),
            (self.core.create_namespaced_pod, pod),
        ):
            try:
                await self._call(create, namespace, body)
            except ClusterError as exc:
                if exc.status != 409:
                    raise

    async def read_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._json(await self._call(self.core.read_namespaced_pod, name, namespace))
        except ClusterError as exc:
            if exc.status == 404:
                return None
            raise

    async def list_pods(self, namespace: str) -> list[dict[str, Any]]:
        """The pods this manager made (the label selector is checked here too)."""
        found = await self._call(self.core.list_namespaced_pod, namespace, label_selector=SELECTOR)
        return [p for p in (self._json(i) for i in found.items) if managed(p)]

    async def log_tail(self, namespace: str, name: str, lines: int) -> str:
        """The last lines the lab printed, at most ``LOG_BYTES`` of them; best effort."""
        try:
            text = await self._call(
                self.core.read_namespaced_pod_log,
                name,
                namespace,
                tail_lines=lines,
                limit_bytes=LOG_BYTES,
            )
        except ClusterError:
            return ""
        return str(text or "")

    async def delete(self, namespace: str, name: str) -> None:
        """Delete the pod, the service and the secret; what is gone already is fine."""
        for delete in (
            self.core.delete_namespaced_pod,
            self.core.delete_namespaced_service,
            self.core.delete_namespaced_secret,
        ):
            try:
                await self._call(delete, name, namespace)
            except ClusterError as exc:
                if exc.status != 404:
                    raise

    # -- watching -------------------------------------------------------------

    def watch(
        self, namespace: str, on_event: Event, on_restart: Callable[[], None] | None = None
    ) -> None:
        """Follow the namespace's pods in a thread; ``on_event(type, pod)`` runs on
        the calling loop for each ADDED, MODIFIED and DELETED pod of ours, and
        ``on_restart()`` in the thread whenever the watch begins again after an error
        (a 410 Gone among them) or after the server ended it before its time, each
        after a pause (0.5 s doubling to 10 s); not after its routine end every
        WATCH_SECONDS, when it begins again at once."""
        loop = asyncio.get_running_loop()
        thread = threading.Thread(
            target=self._follow, args=(namespace, loop, on_event, on_restart), daemon=True,
            name=f"watch-{namespace}",
        )  # fmt: skip
        self._threads.append(thread)
        thread.start()

    def _follow(
        self,
        namespace: str,
        loop: asyncio.AbstractEventLoop,
        on_event: Event,
        on_restart: Callable[[], None] | None,
    ) -> None:
        delay = 0.5
        again = False  # the last watch broke off: this one is a restart
        while not self._stop.is_set():
            if again and on_restart is not None:
                on_restart()
            began = time.monotonic()
            try:
                stream = watch.Watch().stream(
                    self.core.list_namespaced_pod,
                    namespace,
                    label_selector=SELECTOR,
                    timeout_seconds=WATCH_SECONDS,
                    _request_timeout=WATCH_SECONDS + 5,
                )
                for event in stream:
                    if self._stop.is_set():
                        return
                    # the object as the API sent it (the client's model of it too)
                    pod = event.get("raw_object") or self._json(event["object"])
                    if managed(pod):
                        loop.call_soon_threadsafe(on_event, str(event["type"]), pod)
                again = time.monotonic() - began < EARLY
                if not again:  # its routine end: at once again
                    delay = 0.5
                    continue
                if self._stop.is_set():
                    return
                log.info("the cluster ended the watch of pods in %s early; again in %.1f s",
                         namespace, delay)  # fmt: skip
            except Exception as exc:
                if self._stop.is_set() or loop.is_closed():
                    return
                again = True
                log.warning("watching pods in %s: %s; again in %.1f s", namespace, exc, delay)
            # broken off: again after a pause (a cluster that ends every watch at once
            # is not asked again and again without one)
            self._stop.wait(delay)
            delay = min(delay * 2, 10.0)

    def close(self) -> None:
        """Stop watching. A watch thread may sit in a request for up to WATCH_SECONDS;
        it is a daemon and ends on its next event or with the process."""
        self._stop.set()
        for thread in self._threads:
            thread.join(0.2)
        self.api.close()
