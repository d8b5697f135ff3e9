"""``/metrics`` of a Lablink service (Prometheus' text format), as the site's
``metrics`` block says: behind a token of its own on the service's port, or
without a token on a port of its own, or not at all.

Each service makes its own :class:`~prometheus_client.CollectorRegistry` (never
the library's global one: one process may build several apps) and calls
:func:`install_metrics` once. Figures that the database knows (the labs by
state, a VO's usage) are read when a scrape asks, by the ``refresh`` given,
at most once per :data:`REFRESH_EVERY` seconds however many scrapers ask.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from starlette.applications import Starlette
from starlette.routing import Route

from .metrics_config import MetricsSettings, Service
from .settings import SettingsError

log = logging.getLogger("lablink.metrics")

REFRESH_EVERY = 5.0  # seconds: a scrape within this time of the last reads no database
TOKEN_MIN = 16
NAMES = {"backend": "backend", "tunnel": "tunnel service", "userlab_manager": "UserLab Manager"}

Refresh = Callable[[], Awaitable[None]]


def metrics_token(metrics: MetricsSettings, environ: Mapping[str, str]) -> str | None:
    """The scraper's token (``access: token``), None when its variable is unset;
    SettingsError with the sentence for the admin when it is too short."""
    if metrics.access != "token":
        return None
    value = environ.get(metrics.token_env, "")
    if not value:
        return None
    if len(value) < TOKEN_MIN:
        raise SettingsError(
            f"metrics.token_env: the environment variable {metrics.token_env} must hold a "
            f"secret of at least {TOKEN_MIN} characters (or be unset: no metrics)"
        )
    return value


class Exposition:
    """The registry's text, with the refresh before it (shared by concurrent scrapes)."""

    def __init__(self, registry: CollectorRegistry, refresh: Refresh | None):
        self.registry = registry
        self.refresh = refresh
        self.refresh_every = REFRESH_EVERY
        self._last = -REFRESH_EVERY
        self._lock = asyncio.Lock()

    async def text(self) -> bytes:
        if self.refresh is not None:
            async with self._lock:
                if time.monotonic() - self._last >= self.refresh_every:
                    try:
                        await self.refresh()
                    except Exception as exc:  # the figures of the last refresh stay
                        log.warning("metrics: could not read the database's figures: %s", exc)
                    else:
                        self._last = time.monotonic()
        return generate_latest(self.registry)


def _answer(body: bytes) -> Response:
    return Response(body, media_type=CONTENT_TYPE_PLAIN_0_0_4)


def _refused(status: int, detail: str, **headers: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers or None)


def install_metrics(
    app: FastAPI,
    registry: CollectorRegistry,
    metrics: MetricsSettings,
    service: Service,
    environ: Mapping[str, str],
    refresh: Refresh | None = None,
) -> None:
    """Serve ``registry`` at ``/metrics`` as ``metrics.access`` says (see the module)."""
    name = NAMES[service]
    token = metrics_token(metrics, environ)
    # the process' own figures (CPU, memory, open files, garbage collection), in the
    # service's registry as in prometheus_client's global one
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    exposition = Exposition(registry, refresh)
    app.state.metrics = exposition

    if metrics.access == "off":
        off = "Metrics are off on this site (the site file's metrics.access)."
    elif metrics.access == "port":
        port = getattr(metrics.ports, service)
        off = f"Metrics are served on port {port} (the site file's metrics.access: port)."
    elif token is None:
        off = (
            f"Metrics are off on this {name}: {metrics.token_env} (the site file's "
            "metrics.token_env) is not set."
        )
        log.info("metrics: off (%s is not set)", metrics.token_env)
    else:
        off = ""
    expected = token.encode() if token else b""

    @app.get("/metrics", include_in_schema=False, response_model=None)
    async def _metrics(request: Request) -> Response:
        if off:
            return _refused(404, off)
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return _refused(
                401,
                "Metrics need the metrics token as 'Authorization: Bearer <token>'.",
                **{"WWW-Authenticate": "Bearer"},
            )
        if not hmac.compare_digest(value.strip().encode(), expected):
            return _refused(
                401, "The bearer token is not the metrics token.", **{"WWW-Authenticate": "Bearer"}
            )
        return _answer(await exposition.text())

    if metrics.access == "port":
        _serve_on_own_port(app, exposition, metrics.bind, getattr(metrics.ports, service), name)


class _Server(uvicorn.Server):
    """A second server in the service's event loop: the service's own server keeps
    the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


def _serve_on_own_port(
    app: FastAPI, exposition: Exposition, bind: str, port: int, name: str
) -> None:
    """With the service's lifespan: /metrics without a token at ``bind:port``."""

    async def page(request: Any) -> Response:
        return _answer(await exposition.text())

    async def elsewhere(request: Any) -> Response:
        return _refused(404, f"There is no {request.url.path} here; the metrics are at /metrics.")

    own = Starlette(
        routes=[Route("/metrics", page), Route("/{path:path}", elsewhere)],
    )
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app_: Any) -> AsyncIterator[Any]:
        family = socket.AF_INET6 if ":" in bind else socket.AF_INET
        try:
            sock = socket.create_server((bind, port), family=family, reuse_port=False)
        except OSError as exc:
            raise RuntimeError(
                f"the {name}'s metrics port {bind}:{port} cannot be opened ({exc.strerror}); "
                "free it or set the site file's metrics.ports"
            ) from None
        config = uvicorn.Config(own, lifespan="off", log_config=None, access_log=False)
        server = _Server(config)
        task = asyncio.create_task(server._serve([sock]), name="metrics-port")
        log.info("metrics: at http://%s:%d/metrics", bind, port)
        try:
            async with inner(app_) as state:
                yield state
        finally:
            server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 5)
            sock.close()

    app.router.lifespan_context = lifespan
