"""The driver contract: how the backend starts, watches, stops and finds labs.

One implementation per system kind (``local`` now; UNICORE and Kubernetes
later). The lab manager owns the state machine and the database; a driver
only does the work and tells what happens through its ``LabContext``.

``start(ctx) -> str``
    Launch the lab and return once it answers HTTP, with the URL the proxy
    should route to. Before anything long-running, store what is needed to
    find the lab again with ``await ctx.save(handle)``. Report progress with
    ``await ctx.report(state, message)`` (``submitted``, ``queued``,
    ``starting``; never ``running``, which the manager records with the URL).
    Raise ``LabFailed`` with a sentence for the person when the lab cannot
    start; the driver cleans up what it launched before raising.

``status(ctx) -> LabStatus``
    Whether the lab is still alive; cheap, called by ``wait_ended`` and when
    the hub polls.

``wait_ended(ctx) -> LabStatus``
    Return when the lab has ended by itself. The default polls ``status``;
    drivers that can be told (a process exit, a watch) override it.

``stop(ctx) -> str``
    End the lab and everything it started; return the last lines of its
    output. Idempotent: stopping what is gone returns what output is left.

``recover(ctx) -> str | None``
    After a backend restart, find the lab from ``ctx.handle``. Return its URL
    once it answers (wait if it is still starting); return None if nothing
    was launched yet; raise ``LabEnded`` if it ended while the backend was down.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import httpx


def lab_log_name(user_name: str, server_name: str, lab_id: str) -> str:
    """How logs name a lab: ``user[:server] lab <id prefix>``."""
    server = f":{server_name}" if server_name else ""
    return f"{user_name}{server} lab {lab_id[:8]}"


class LabFailed(Exception):
    """The lab could not start. ``message`` is one sentence for the person."""

    def __init__(self, message: str, detail: str = ""):
        super().__init__(message)
        self.message = message
        self.detail = detail


class LabEnded(Exception):
    """The lab ended (by itself or while the backend was down)."""

    def __init__(self, message: str, detail: str = ""):
        super().__init__(message)
        self.message = message
        self.detail = detail


@dataclass(frozen=True)
class LabStatus:
    alive: bool
    exit_code: int | None = None
    message: str = ""


Reporter = Callable[..., Awaitable[None]]
Saver = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class LabContext:
    """What a driver knows about one lab. ``env`` is only set for ``start``."""

    lab_id: str
    user_name: str
    server_name: str
    system_name: str
    system: Any
    options: dict[str, Any]
    handle: dict[str, Any]
    state_dir: Path
    report: Reporter
    save_handle: Saver
    env: dict[str, str] = field(default_factory=dict)
    # held in memory only: the person's OIDC access token (from the start request,
    # renewed whenever the hub hands over a newer one) and the system's configured
    # secret (from the backend's environment)
    token_source: Callable[[], str | None] = field(default=lambda: None, repr=False)
    site_secret: str | None = field(default=None, repr=False)
    tunnels: Any = None  # the tunnel service's client, for systems with `tunnel: ssh`
    userlabs: Any = None  # the UserLab Manager's client, for `kind: kubernetes` systems
    vo: str = ""  # the VO the lab was started in

    @property
    def access_token(self) -> str | None:
        return self.token_source()

    @property
    def log_name(self) -> str:
        return lab_log_name(self.user_name, self.server_name, self.lab_id)

    async def save(self, handle: dict[str, Any]) -> None:
        self.handle = dict(handle)
        await self.save_handle(self.handle)


def service_prefix(ctx: LabContext) -> str:
    """The URL prefix the hub routes to the lab (``/user/<name>/[<server>/]``)."""
    prefix = ctx.env.get("JUPYTERHUB_SERVICE_PREFIX") or ctx.handle.get("prefix")
    if not prefix:
        server = f"{ctx.server_name}/" if ctx.server_name else ""
        prefix = f"/user/{ctx.user_name}/{server}"
    return prefix if prefix.endswith("/") else prefix + "/"


class Driver(abc.ABC):
    kind: ClassVar[str]
    status_interval: ClassVar[float] = 5.0

    def __init__(self, http: httpx.AsyncClient):
        self.http = http

    async def _answers(self, probe: str) -> bool:
        """Whether the lab answers 200 at ``probe`` (its API under its prefix)."""
        try:
            resp = await self.http.get(probe, timeout=2.0)
        except httpx.TransportError:
            return False
        return resp.status_code == 200

    @abc.abstractmethod
    async def start(self, ctx: LabContext) -> str: ...

    @abc.abstractmethod
    async def status(self, ctx: LabContext) -> LabStatus: ...

    @abc.abstractmethod
    async def stop(self, ctx: LabContext) -> str: ...

    @abc.abstractmethod
    async def recover(self, ctx: LabContext) -> str | None: ...

    async def wait_ended(self, ctx: LabContext) -> LabStatus:
        while True:
            st = await self.status(ctx)
            if not st.alive:
                return st
            await asyncio.sleep(self.status_interval)

    async def close(self) -> None:
        """Release what the driver holds (connections); labs keep running."""
