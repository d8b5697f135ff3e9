"""The backend service, built by ``create_app(settings)``."""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

from . import health
from .admin_api import router as admin_router
from .api import router
from .auth import TokenChecker
from .bounded import turn_taking_client
from .bus import Bus
from .db import create_engine, migrate
from .files import private_dir
from .labs import LabManager
from .metrics import install_metrics
from .observe import BackendMetrics
from .replicas import Replica, hold_sqlite, let_go_sqlite
from .sealed import sealer_from
from .service import service_app
from .settings import (
    Settings,
    hub_forward_cas,
    system_secrets,
    token_secrets,
    tunnel_token,
    userlab_manager_token,
)
from .store import Store
from .systems.driver import Peers
from .systems.kubernetes.client import UserlabClient
from .tunnels import TunnelClient
from .workshops import WorkshopEnder
from .workshops_api import router as workshops_router

log = logging.getLogger("lablink.backend")


def create_app(settings: Settings, environ: Mapping[str, str] | None = None) -> FastAPI:
    env = dict(environ) if environ is not None else None
    tokens = TokenChecker(token_secrets(settings, env))
    secrets = system_secrets(settings, env)
    tunnel_secret = tunnel_token(settings, env)
    userlab_secret = userlab_manager_token(settings, env)
    hub_forward_cas(settings)
    sealer = sealer_from(settings, os.environ if env is None else env)
    metrics = BackendMetrics(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        private_dir(settings.state_dir)
        # SQLite: one backend per database file (lablink backend checked it already)
        sqlite_file = hold_sqlite(settings.resolved_database_url)
        engine = create_engine(settings.resolved_database_url, settings.replicas.connections)
        await migrate(engine)
        bus = Bus(engine)
        store = Store(engine, sealer=sealer, bus=bus)
        store.on_moved = metrics.moved
        # events stored by other replicas wake this one's streams; after a lost
        # connection every stream reads the table again (it is the truth)
        bus.on("event", store.notifier.publish)
        bus.on("resync", store.notifier.publish_all)
        await bus.start()
        app.state.bus = bus
        http = turn_taking_client(timeout=httpx.Timeout(10.0), observe=metrics.call)
        own: list[httpx.AsyncClient] = []  # clients with a site's CA bundle

        def client_for(ca_bundle: str) -> httpx.AsyncClient:
            if not ca_bundle:
                return http
            own.append(
                turn_taking_client(
                    timeout=httpx.Timeout(10.0),
                    verify=ssl.create_default_context(cafile=ca_bundle),
                    observe=metrics.call,
                )
            )
            return own[-1]

        tunnels = None
        if tunnel_secret is not None:
            service = settings.tunnel_service
            tunnels = TunnelClient(client_for(service.ca_bundle), service.url, tunnel_secret)
        userlabs = None
        if userlab_secret is not None:
            um = settings.userlab_manager
            userlabs = UserlabClient(client_for(um.ca_bundle), um.url, userlab_secret)
        manager = LabManager(settings, store, http, secrets, Peers(tunnels, userlabs), bus)
        manager.metrics = metrics
        app.state.store = store
        app.state.manager = manager

        async def lost() -> None:  # fenced: stop following labs, answer 503
            app.state.healthy = False
            await manager.release_all()

        def back() -> None:
            app.state.healthy = True

        replica = Replica(store, settings.replicas.lease, manager.adopt, lost, bus, back)
        replica.metrics = metrics
        app.state.replica = replica
        await replica.start()  # its first scan claims the labs nobody follows
        app.state.healthy = replica.healthy
        grace = settings.workshops.grace if settings.workshops is not None else 15
        ender = WorkshopEnder(manager.workshops, grace, manager.stop_workshop_labs)
        app.state.ender = ender
        await ender.end_due()  # workshops that ended while the backend was down
        ender.start()
        try:
            yield
        finally:
            await ender.close()
            await manager.close()
            await replica.close()  # the labs handed back: the other replicas take them now
            for client in (http, *own):
                await client.aclose()
            await bus.close()
            await engine.dispose()
            let_go_sqlite(sqlite_file)

    app = service_app(
        "Lablink backend",
        "Systems, labs and their states. Every call needs a bearer token.",
        tokens,
        lifespan,
    )
    app.state.settings = settings
    app.state.streams = {}  # open event streams by person
    app.state.healthy = True  # False while the replica has stopped following labs
    health.install(app)
    app.include_router(router)
    app.include_router(workshops_router)
    app.include_router(admin_router)

    async def refresh() -> None:
        manager = getattr(app.state, "manager", None)
        if manager is not None:
            await metrics.refresh(manager.store, manager.workshops, app.state.streams)

    install_metrics(
        app, metrics.registry, settings.metrics, "backend", os.environ if env is None else env,
        refresh,
    )  # fmt: skip
    return app
