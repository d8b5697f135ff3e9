"""What an operator sees of the labs: one log line per transition, and the
backend's Prometheus metrics (served by :mod:`backend.metrics`).

Label values are bounded by the site file: systems, kinds, partitions and
flavors, VOs, workshops, peers and a fixed set of reasons; never a person's
name or a lab's id (those are in the log lines, for one lab's story).
"""

from __future__ import annotations

import logging
import time
from collections import Counter as Tally
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .states import LabState
from .workshop_settings import WorkshopSettings

if TYPE_CHECKING:
    from .settings import Settings
    from .store import Lab, Store
    from .workshops import WorkshopStore

log = logging.getLogger("lablink.backend.transitions")

# why a lab failed, for the failures' label (the sentence is in the lab's message)
REASONS = ("start", "timeout", "ended", "lost", "internal", "restart", "removed")
# a start takes seconds on a cloud and minutes to hours in an HPC queue
START_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 12 * 3600)
CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# what of a handle a log line shows: where the lab is, never a credential
HANDLE_KEYS = ("job", "host", "port", "pid", "pod", "namespace", "local_port")


def lab_fields(lab: Lab) -> dict[str, str]:
    """A lab's fields of a log line (backend/logs.py writes them as JSON)."""
    return {
        "lab": lab.id,
        "user": lab.user_name,
        "server": lab.server_name,
        "system": lab.system,
        "vo": lab.vo or "",
        "to_state": lab.state.value,
    }


def handle_summary(handle: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a driver's handle that say where a lab runs (job, node, pod, pid)."""
    return {k: handle[k] for k in HANDLE_KEYS if handle.get(k) not in (None, "")}


def peer_hosts(settings: Settings) -> dict[str, str]:
    """Which peer an address (``scheme://host:port``) is: each system's own, as its kind
    names it (``SystemSettings.peer``: UNICORE, slurmrestd), the tunnel service and the
    UserLab Manager."""
    peers: dict[str, str] = {}

    def add(url: str, peer: str) -> None:
        parts = urlsplit(url)
        if parts.hostname:
            peers[_address(parts.scheme, parts.hostname, parts.port)] = peer

    for system in settings.systems.values():
        peer = system.peer()
        if peer is not None:
            add(peer[1], peer[0])
    add(settings.tunnel_service.url, "tunnel")
    add(settings.userlab_manager.url, "userlab_manager")
    return peers


def _address(scheme: str, host: str, port: int | None) -> str:
    port = port or (443 if scheme == "https" else 80)
    return f"{scheme}://{host.lower()}:{port}"


class BackendMetrics:
    """The backend's metrics, in a registry of their own."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.registry = r = CollectorRegistry()
        lab = ["system", "kind"]
        self.labs = Gauge(
            "lablink_labs",
            "Active labs as the database holds them (every replica reports the same figure)",
            ["state", "system", "kind", "choice", "vo", "workshop"],
            registry=r,
        )
        self.starts = Counter("lablink_lab_starts", "Labs accepted", lab, registry=r)
        self.start_duration = Histogram(
            "lablink_lab_start_duration_seconds",
            "Seconds from a lab's request to its answer (accepted to running)",
            lab,
            buckets=START_BUCKETS,
            registry=r,
        )
        self.failures = Counter(
            "lablink_lab_failures", "Labs that failed, by reason", [*lab, "reason"], registry=r
        )
        self.stops = Counter(
            "lablink_lab_stops",
            "Labs that stopped: asked to (requested) or by themselves (ended)",
            [*lab, "how"],
            registry=r,
        )
        self.vo_labs = Gauge("lablink_vo_labs", "Active labs of a VO", ["vo"], registry=r)
        self.vo_limit = Gauge(
            "lablink_vo_labs_limit", "A VO's quota of active labs", ["vo"], registry=r
        )
        self.workshop_labs = Gauge(
            "lablink_workshop_labs", "Active labs of a workshop", ["workshop"], registry=r
        )
        self.workshop_limit = Gauge(
            "lablink_workshop_labs_limit", "A workshop's limit of active labs", ["workshop"],
            registry=r,
        )  # fmt: skip
        self.calls = Histogram(
            "lablink_driver_call_duration_seconds",
            "Seconds of one HTTP call to a peer, until its answer's head",
            ["peer", "method"],
            buckets=CALL_BUCKETS,
            registry=r,
        )
        self.call_errors = Counter(
            "lablink_driver_call_errors",
            "HTTP calls to a peer that got no answer (transport) or a 5xx",
            ["peer", "method", "error"],
            registry=r,
        )
        self.streams = Gauge(
            "lablink_event_streams", "Event streams open on this replica", registry=r
        )
        self.replicas = Gauge("lablink_replicas", "Live backend replicas", registry=r)
        self.takeovers = Counter(
            "lablink_replica_takeovers", "Labs this replica took over", registry=r
        )
        self.renewals = Counter(
            "lablink_replica_lease_renewals", "Leases this replica renewed", registry=r
        )
        self.losses = Counter(
            "lablink_replica_lease_losses",
            "Times this replica lost its lease and stopped following labs",
            registry=r,
        )
        self.peers = peer_hosts(settings)
        for name, system in settings.systems.items():  # every series from 0
            self.starts.labels(name, system.kind)
            for how in ("requested", "ended"):
                self.stops.labels(name, system.kind, how)
            for reason in REASONS:
                self.failures.labels(name, system.kind, reason)

    def _choice(self, lab: Lab) -> str:
        found = self.settings.systems.get(lab.system)
        return found.choice(lab.options) if found is not None else ""

    def _kind(self, system: str) -> str:
        found = self.settings.systems.get(system)
        return found.kind if found is not None else "unknown"

    # -- what the backend reports ------------------------------------------------------

    def accepted(self, lab: Lab) -> None:
        self.starts.labels(lab.system, self._kind(lab.system)).inc()

    def moved(self, before: Lab, after: Lab, reason: str = "") -> None:
        """A lab's transition: one log line, and the counters it moves."""
        system, kind = after.system, self._kind(after.system)
        handle = handle_summary(after.handle)
        where = "".join(f" {k}={v}" for k, v in handle.items())
        log.info(
            "lab %s (%s/%s) on %s: %s -> %s%s",
            after.id[:8],
            after.user_name,
            after.server_name or "-",
            system,
            before.state.value,
            after.state.value,
            where,
            extra={
                **lab_fields(after),
                "from_state": before.state.value,
                "handle": handle,
                **({"reason": reason} if reason else {}),
            },
        )
        if after.state == LabState.RUNNING and before.state != LabState.RUNNING:
            seconds = max(0.0, (after.updated - after.created).total_seconds())
            self.start_duration.labels(system, kind).observe(seconds)
        elif after.state == LabState.FAILED:
            self.failures.labels(system, kind, reason if reason in REASONS else "start").inc()
        elif after.state == LabState.STOPPED:
            how = "ended" if before.state == LabState.RUNNING else "requested"
            self.stops.labels(system, kind, how).inc()

    def call(self, request: httpx.Request, seconds: float, error: str | None) -> None:
        """One HTTP call of the backend's clients (calls to labs are not counted)."""
        url = request.url
        peer = self.peers.get(_address(url.scheme, url.host, url.port))
        if peer is None:
            return
        self.calls.labels(peer, request.method).observe(seconds)
        if error is not None:
            self.call_errors.labels(peer, request.method, error).inc()

    # -- what the database holds (at a scrape) -------------------------------------

    async def refresh(
        self,
        store: Store,
        workshops: WorkshopStore,
        streams: Mapping[str, set[int]],
    ) -> None:
        active = await store.list_labs(active_only=True)
        site_vos = self.settings.vos
        shown = await workshops.all()
        workshop_ids = {w.id for w in shown}
        by_labels: Tally[tuple[str, ...]] = Tally()
        vo_count: Tally[str] = Tally()
        ws_count: Tally[str] = Tally()
        for lab in active:
            vo = lab.vo or ""
            in_vo = vo if vo in site_vos else ""
            in_workshop = vo if vo and vo not in site_vos and vo in workshop_ids else ""
            key = (lab.state.value, lab.system, self._kind(lab.system), self._choice(lab),
                   in_vo, in_workshop)  # fmt: skip
            by_labels[key] += 1
            if in_vo:
                vo_count[in_vo] += 1
            if in_workshop:
                ws_count[in_workshop] += 1
        live = await store.replica_count()
        # the rest without an await: a scrape sees all the new figures or none
        self.labs.clear()
        for labels, n in by_labels.items():
            self.labs.labels(*labels).set(n)
        self.vo_labs.clear()
        self.vo_limit.clear()
        for name, vo_settings in site_vos.items():
            self.vo_labs.labels(name).set(vo_count[name])
            if vo_settings.quota.labs is not None:
                self.vo_limit.labels(name).set(vo_settings.quota.labs)
        self.workshop_labs.clear()
        self.workshop_limit.clear()
        limits = (self.settings.workshops or WorkshopSettings()).limits
        now = time.time()
        for ws in shown:
            if ws_count[ws.id] == 0 and ws.end.timestamp() < now:
                continue  # an ended workshop without labs: gone from the figures
            self.workshop_labs.labels(ws.id).set(ws_count[ws.id])
            self.workshop_limit.labels(ws.id).set(ws.lab_limit(limits))
        self.streams.set(sum(len(s) for s in streams.values()))
        self.replicas.set(live)
