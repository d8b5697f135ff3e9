"""The tunnel service, built by ``create_app(settings, token)``.

``POST /api/v1/tunnels {lab_id, system, host, port}`` opens a local forward
(on the configured bind address, a port from the configured range) through
the system's login node to the compute node's ``host:port`` and answers
``{local_host, local_port}`` (``local_host``: ``tunnel_service.advertise``, else the
bind address); ``DELETE /api/v1/tunnels/{lab_id}`` closes it.
Destinations are checked against the system's allow-list before anything is
opened: the host in its canonical spelling, patterns matching whole DNS labels
(:mod:`backend.addresses`), its name resolved once here and the login node
asked to connect to that address, never to the name. A system with
``ssh.hub_forward`` also gets, on every login node, a reverse forward to the
hub's API (``tunnel_service.hub_api``), opened when the service starts and
served with the site's TLS certificate (:mod:`tunnel.hubtls`); while a login
node does not let it listen, the log says so once and health answers 503.
Tunnels are persisted in ``<state_dir>/tunnels.json`` and restored when the
service starts; ``GET /api/v1/health`` answers 503 until every one of them
listens again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import socket
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ConfigDict, Field

from backend import __version__, addresses
from backend.auth import Principal, authenticate
from backend.files import private_dir
from backend.metrics import install_metrics
from backend.service import backend_only_app
from backend.settings import Settings, SettingsError
from backend.sshconfig import HOST_PATTERN, HubForwardTls, SshTunnel

from .hubtls import HubTls, server_context
from .links import Forward, LinkDown, NodeLink, SystemLink, port_in_use
from .metrics import TunnelMetrics

log = logging.getLogger("lablink.tunnel")

DEFAULT_PORT = 8020
OPEN_WITHIN = 30.0  # seconds a POST may spend connecting to a login node

router = APIRouter(prefix="/api/v1")
Auth = Annotated[Principal, Depends(authenticate)]


class TunnelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lab_id: str = Field(pattern=r"^[A-Za-z0-9-]{1,64}$")
    system: str = Field(pattern=r"^[a-z][a-z0-9-]{0,62}$")
    host: str = Field(pattern=HOST_PATTERN, max_length=255)
    port: int = Field(ge=1, le=65535)


class TunnelOut(BaseModel):
    lab_id: str
    system: str
    host: str
    port: int
    local_host: str
    local_port: int
    up: bool


class Tunnels:
    """The forwards of every system, and their file."""

    def __init__(self, settings: Settings, path: Path):
        self.settings = settings
        self.path = path
        self.bind = settings.tunnel_service.bind  # where forwards listen
        self.local_host = settings.tunnel_service.local_host  # where they are reached
        self.links: dict[str, SystemLink] = {}
        self.nodes: dict[tuple[str, int], NodeLink] = {}
        self.hub_tls: dict[tuple[str, str], HubTls] = {}  # by (cert_file, key_file)
        self.hub_targets: dict[str, tuple[str, int]] = {}  # system: its HubTls listener

    async def start_hub_tls(self) -> None:
        """A TLS listener for the hub's API per certificate the systems' hub forwards
        use; the login nodes' reverse forwards lead there."""
        hub = self.settings.tunnel_service.hub_address()
        for name, tls in hub_forward_tls(self.settings).items():
            key = (tls.cert_file, tls.key_file)
            if key not in self.hub_tls:
                self.hub_tls[key] = HubTls(tls, hub)
                await self.hub_tls[key].start()
            self.hub_targets[name] = self.hub_tls[key].address

    def ssh_of(self, system: str) -> SshTunnel:
        found = self.settings.systems.get(system)
        ssh = getattr(found, "ssh", None)
        if found is None or getattr(found, "tunnel", "none") != "ssh" or ssh is None:
            names = [n for n, s in self.settings.systems.items() if getattr(s, "ssh", None)]
            raise HTTPException(
                422,
                f"The field system: {system!r} has no SSH tunnel here; allowed: "
                f"{', '.join(names) or 'none'}.",
            )
        return ssh  # type: ignore[no-any-return]

    def link(self, system: str) -> SystemLink:
        link = self.links.get(system)
        if link is None:
            ssh = self.ssh_of(system)
            hub = self.hub_targets.get(system, self.settings.tunnel_service.hub_address())
            nodes = []
            for node in ssh.login_nodes:
                key = (node.host, node.port)
                if key not in self.nodes:
                    self.nodes[key] = NodeLink(node, ssh, hub)
                nodes.append(self.nodes[key])
            link = self.links[system] = SystemLink(system, ssh, self.bind, nodes)
        return link

    def all(self) -> list[Forward]:
        return [f for link in self.links.values() for f in link.forwards.values()]

    def find(self, lab_id: str) -> tuple[SystemLink, Forward] | None:
        for link in self.links.values():
            if lab_id in link.forwards:
                return link, link.forwards[lab_id]
        return None

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps([f.record() for f in self.all()], indent=1))
        os.replace(tmp, self.path)

    def free_port(self) -> int:
        used = {f.local_port for f in self.all()}
        ports = self.settings.tunnel_service.ports
        candidates = [p for p in range(ports.min, ports.max + 1) if p not in used]
        if not candidates:
            raise HTTPException(503, "Every port of the tunnel service's range is in use.")
        return random.choice(candidates)  # noqa: S311

    def load(self) -> None:
        """Take up the persisted forwards, and connect every system that has them
        or whose login nodes carry the hub's API; they listen again in the
        background (health answers 503 until they all do)."""
        records = json.loads(self.path.read_text() or "[]") if self.path.exists() else []
        for rec in records:
            system = self.settings.systems.get(rec.get("system", ""))
            if getattr(system, "tunnel", "none") != "ssh":
                log.warning("dropping the tunnel of lab %s: its system has no SSH tunnel now",
                            rec.get("lab_id"))  # fmt: skip
                continue
            self.link(rec["system"]).forwards[rec["lab_id"]] = Forward(
                rec["lab_id"],
                rec["system"],
                rec["host"],
                rec["port"],
                rec["local_port"],
                address=rec.get("address", ""),
            )
        for name, system in self.settings.systems.items():
            ssh = getattr(system, "ssh", None)
            if getattr(system, "tunnel", "none") == "ssh" and ssh and ssh.hub_forward:
                self.link(name)
        for link in self.links.values():
            link.start()
            link.notify()
        if records:
            log.info("restoring %d tunnels", len(self.all()))

    async def close(self) -> None:
        for link in self.links.values():
            await link.close()
        await asyncio.gather(*(node.close() for node in self.nodes.values()))
        await asyncio.gather(*(tls.close() for tls in self.hub_tls.values()))


def hub_forward_tls(settings: Settings) -> dict[str, HubForwardTls]:
    """The TLS settings of every system with a hub forward, by system name."""
    out = {}
    for name, system in settings.systems.items():
        ssh = getattr(system, "ssh", None)
        if getattr(system, "tunnel", "none") == "ssh" and ssh and ssh.hub_forward:
            out[name] = ssh.hub_forward.tls
    return out


def check_hub_tls(settings: Settings) -> None:
    """SettingsError when a hub forward's certificate or key cannot be used."""
    for name, tls in hub_forward_tls(settings).items():
        try:
            server_context(tls)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            why = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
            raise SettingsError(
                f"systems.{name}.ssh.hub_forward.tls: the certificate {tls.cert_file} with the "
                f"key {tls.key_file} cannot be used: {why}"
            ) from None


def allowed(ssh: SshTunnel, host: str, address: str, port: int) -> bool:
    """Whether a destination lets labs be reached at ``host`` (a canonical name or
    address) resolved to ``address``; a local address (the login node itself) only
    where a destination names it, not by ``*``."""
    ports = [dest for dest in ssh.destinations if port in dest.ports]
    if not any(addresses.matches(host, d.hosts) or addresses.matches(address, d.hosts)
               for d in ports):  # fmt: skip
        return False
    patterns = [d.hosts for d in ports]
    return not addresses.is_local(address) or addresses.named_by(address, patterns)


async def resolve(host: str) -> str | None:
    """The IP address ``host`` names (itself for an address); None if it resolves to none."""
    address = addresses.ip_of(host)
    if address is not None:
        return str(address)
    try:
        found = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return None
    for _family, _type, _proto, _name, sockaddr in found:
        resolved = addresses.ip_of(str(sockaddr[0]))
        if resolved is not None:
            return str(resolved)
    return None


def tunnels_of(request: Request) -> Tunnels:
    return request.app.state.tunnels  # type: ignore[no-any-return]


def out(fwd: Forward, local_host: str) -> TunnelOut:
    """A forward as the backend sees it: reached at ``local_host`` (``advertise`` or
    ``bind``), on its own port."""
    return TunnelOut(
        lab_id=fwd.lab_id,
        system=fwd.system,
        host=fwd.host,
        port=fwd.port,
        local_host=local_host,
        local_port=fwd.local_port,
        up=fwd.listener is not None,
    )


@router.get("/health")
async def health(request: Request, who: Auth, response: Response) -> dict[str, Any]:
    """503 until every tunnel listens (again, after a start or a lost connection)
    and the hub's API is reachable on a login node of every system that needs it."""
    tunnels = tunnels_of(request)
    down = [f.lab_id for f in tunnels.all() if f.listener is None]
    if down or not all(link.hub_ready for link in tunnels.links.values()):
        response.status_code = 503
    return {
        "status": "restoring" if response.status_code == 503 else "ok",
        "version": __version__,
        "pid": os.getpid(),
        "tunnels": len(tunnels.all()),
        "down": len(down),
        "systems": {name: link.summary() for name, link in tunnels.links.items()},
    }


@router.post("/tunnels", status_code=201, response_model=TunnelOut)
async def open_tunnel(request: Request, body: TunnelIn, who: Auth, response: Response) -> TunnelOut:
    """Forward a local port to ``host:port`` through the system's login node."""
    tunnels = tunnels_of(request)
    ssh = tunnels.ssh_of(body.system)
    host = addresses.canonical(body.host)
    if host is None:
        raise HTTPException(422, f"host: {body.host!r} is not a host name or an IP address.")
    address = await resolve(host)
    if address is None:
        raise HTTPException(
            422,
            f"host: {host!r} does not resolve to an address on the tunnel service's machine; "
            "give the compute node's address, or make its name known there.",
        )
    if not allowed(ssh, host, address, body.port):
        rules = ", ".join(f"{d.hosts} ports {d.ports.min}-{d.ports.max}" for d in ssh.destinations)
        raise HTTPException(
            403,
            f"The destination {host}:{body.port} ({address}) is not allowed for system "
            f"{body.system!r}; allowed: {rules} (local addresses only where named).",
        )
    existing = tunnels.find(body.lab_id)
    if existing is not None:
        _, fwd = existing
        if (fwd.system, fwd.host, fwd.port) == (body.system, host, body.port):
            response.status_code = 200
            return out(fwd, tunnels.local_host)
        raise HTTPException(
            409, f"Lab {body.lab_id} already has a tunnel to another place; delete it first."
        )
    link = tunnels.link(body.system)
    deadline = time.monotonic() + OPEN_WITHIN
    for _ in range(20):
        fwd = Forward(
            body.lab_id, body.system, host, body.port, tunnels.free_port(), address=address
        )
        try:
            await link.add(fwd, deadline)
        except LinkDown as exc:
            log.warning("%s: cannot reach a login node: %s", body.system, exc)
            raise HTTPException(
                503,
                f"No login node of system {body.system!r} can be reached right now; try again "
                "in a minute.",
            ) from None
        except OSError as exc:
            if port_in_use(exc):
                continue  # somebody else took it: another one
            raise
        tunnels.save()
        log.info("lab %s: %s:%s (%s) via %s on port %s", body.lab_id, host, body.port, address,
                 fwd.node.name if fwd.node else "?", fwd.local_port)  # fmt: skip
        return out(fwd, tunnels.local_host)
    raise HTTPException(503, "No free port could be bound for the tunnel; try again.")


@router.get("/tunnels", response_model=list[TunnelOut])
async def list_tunnels(request: Request, who: Auth) -> list[TunnelOut]:
    tunnels = tunnels_of(request)
    return [out(f, tunnels.local_host) for f in tunnels.all()]


@router.delete("/tunnels/{lab_id}", status_code=204)
async def close_tunnel(request: Request, lab_id: str, who: Auth) -> Response:
    """Close a lab's forward. Idempotent: a tunnel that is gone is fine."""
    tunnels = tunnels_of(request)
    found = tunnels.find(lab_id[:64])
    if found is not None:
        link, _ = found
        await link.remove(lab_id)
        tunnels.save()
    return Response(status_code=204)


def create_app(settings: Settings, token: str, environ: Mapping[str, str] | None = None) -> FastAPI:
    """The service; ``environ`` (default: the process's) holds the metrics token."""
    registry = CollectorRegistry()  # the app's own: a process may build several

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        private_dir(settings.state_dir)
        tunnels = Tunnels(settings, settings.state_dir / "tunnels.json")
        app.state.tunnels = tunnels
        metrics = TunnelMetrics(tunnels)
        registry.register(metrics)
        await tunnels.start_hub_tls()
        tunnels.load()
        try:
            yield
        finally:
            registry.unregister(metrics)
            await tunnels.close()

    app = backend_only_app(
        "Lablink tunnel",
        "SSH port forwards through login nodes. Every call needs a bearer token.",
        token,
        settings.tunnel_service.token_env,
        lifespan,
    )
    app.include_router(router)
    install_metrics(
        app, registry, settings.metrics, "tunnel", os.environ if environ is None else environ
    )
    return app
