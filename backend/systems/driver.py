"""The driver contract: how the backend starts, watches, stops and finds labs.

One driver per system kind. The lab manager (``backend/labs.py``) owns the
state machine and the database; a driver only does the work and tells what
happens through its :class:`LabContext`. The methods' contracts are written on
the abstract methods of :class:`Driver`.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

import httpx

from ..bounded import IDENTITY, read_at_most
from ..states import InvalidTransition, LabState
from .base import SystemSettings

if TYPE_CHECKING:
    from ..tunnels import TunnelClient
    from .kubernetes.client import UserlabClient


def lab_log_name(user_name: str, server_name: str, lab_id: str) -> str:
    """How logs name a lab: ``user[:server] lab <id prefix>``."""
    server = f":{server_name}" if server_name else ""
    return f"{user_name}{server} lab {lab_id[:8]}"


class LabFailed(Exception):
    """The lab could not start (or be stopped). ``message`` is one sentence for the
    person; ``detail`` the end of the lab's output, if any; ``reason`` the failure's
    class for the metrics: ``start`` (the system refused or could not start it),
    ``timeout`` (it did not answer in time), ``ended`` (it ended during its start)."""

    def __init__(self, message: str, detail: str = "", *, reason: str = "start"):
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.reason = reason


class LabEnded(Exception):
    """The lab ended (by itself, or while the backend was down)."""

    def __init__(self, message: str, detail: str = ""):
        super().__init__(message)
        self.message = message
        self.detail = detail


@dataclass(frozen=True)
class LabStatus:
    alive: bool
    exit_code: int | None = None
    message: str = ""


class Reporter(Protocol):
    async def __call__(
        self, state: LabState, message: str, *, detail: str = "", progress: int | None = None
    ) -> None: ...


Saver = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class Peers:
    """The services some kinds need, when the site has them (None otherwise)."""

    tunnels: TunnelClient | None = None
    userlabs: UserlabClient | None = None


S = TypeVar("S", bound=SystemSettings)

# the most of a readiness probe's answer the backend reads
PROBE_BYTES = 64 * 1024


@dataclass
class LabContext(Generic[S]):
    """What a driver knows about one lab. ``env`` is only set for ``start``."""

    lab_id: str
    user_name: str
    server_name: str
    system_name: str
    system: S
    options: dict[str, Any]
    handle: dict[str, Any]
    state_dir: Path
    report: Reporter
    save_handle: Saver
    env: dict[str, str] = field(default_factory=dict)
    # held in memory only: the person's OIDC access token (from the start request,
    # renewed whenever the hub hands over a newer one) and the system's configured
    # secret (read from the backend's environment or a file at start)
    token_source: Callable[[], str | None] = field(default=lambda: None, repr=False)
    secret: str | None = field(default=None, repr=False)
    peers: Peers = field(default_factory=Peers)
    vo: str = ""  # the VO the lab was started in
    # ``start`` of a lab another backend (a replica that died) may have launched before
    # it could store the handle: the driver looks for that launch before it makes one
    resumed: bool = False

    @property
    def access_token(self) -> str | None:
        return self.token_source()

    @property
    def log_name(self) -> str:
        return lab_log_name(self.user_name, self.server_name, self.lab_id)

    @property
    def system_label(self) -> str:
        """The system's name as people see it."""
        return self.system.display_name or self.system_name

    async def save(self, handle: dict[str, Any]) -> None:
        """Store the handle (what finds the lab again after a restart)."""
        self.handle = dict(handle)
        await self.save_handle(self.handle)

    async def progress(self, state: LabState, message: str) -> None:
        """Report progress; a lab that is already further along (followed again after a
        restart) or is being stopped keeps its state."""
        try:
            await self.report(state, message)
        except InvalidTransition:
            pass


def service_prefix(ctx: LabContext[Any]) -> str:
    """The URL prefix the hub routes to the lab (``/user/<name>/[<server>/]``)."""
    prefix = ctx.env.get("JUPYTERHUB_SERVICE_PREFIX") or ctx.handle.get("prefix")
    if not prefix:
        server = f"{ctx.server_name}/" if ctx.server_name else ""
        prefix = f"/user/{ctx.user_name}/{server}"
    return prefix if prefix.endswith("/") else prefix + "/"


class Driver(abc.ABC, Generic[S]):
    """Starts, follows and stops the labs of one kind of system.

    One instance serves every system of its kind; whatever is per system or per
    lab comes in the :class:`LabContext`. Every method may be cancelled (the
    manager cancels a start when a stop comes).
    """

    status_interval: ClassVar[float] = 5.0
    log: ClassVar[logging.Logger] = logging.getLogger("lablink.backend.driver")

    def __init__(self, http: httpx.AsyncClient):
        self.http = http

    async def answers(self, probe: str) -> bool:
        """Whether the lab answers 200 at ``probe`` (its API under its prefix).

        The lab decides what it sends, so at most ``PROBE_BYTES`` of the body are
        read (an endless body costs nothing), within two seconds in all."""
        try:
            async with asyncio.timeout(2.0):
                async with self.http.stream("GET", probe, headers=IDENTITY, timeout=2.0) as resp:
                    await read_at_most(resp, PROBE_BYTES)
        except (httpx.TransportError, TimeoutError):
            return False
        return resp.status_code == 200

    def step(self, ctx: LabContext[Any], what: str, *args: Any) -> None:
        """One debug line per step the driver takes (``lablink backend --log-level
        debug``): what an admin follows when a lab is stuck."""
        self.log.debug("%s: " + what, ctx.log_name, *args)

    @abc.abstractmethod
    async def start(self, ctx: LabContext[S]) -> str:
        """Launch the lab and return, once it answers HTTP, the URL the proxy routes to.

        Before anything that outlives this call (a process, a job, a pod), store
        what finds it again with ``await ctx.save(handle)``. Report progress with
        ``ctx.report`` or ``ctx.progress`` (``submitted``, ``queued``,
        ``starting``; never ``running``: the manager records that with the URL).
        Raise :class:`LabFailed` with a sentence for the person when the lab cannot
        start, after ending what was launched for it.
        """

    @abc.abstractmethod
    async def status(self, ctx: LabContext[S]) -> LabStatus:
        """Whether the lab is still alive. Cheap: called by ``wait_ended`` and when
        the hub polls. A peer that cannot be asked is not a reason to say the lab
        ended."""

    async def wait_ended(self, ctx: LabContext[S]) -> LabStatus:
        """Return when the running lab has ended by itself (its status then). The
        default asks ``status`` every ``status_interval`` seconds; drivers that can be
        told (a process exit, a long poll) override it."""
        while True:
            st = await self.status(ctx)
            if not st.alive:
                return st
            await asyncio.sleep(self.status_interval)

    @abc.abstractmethod
    async def stop(self, ctx: LabContext[S]) -> str:
        """End the lab and everything it started; return the last lines of its output.

        Idempotent: stopping what is gone, or a lab that never launched, returns what
        output is left. Raise :class:`LabFailed` only when the lab may still run (its
        job or pod could not be ended)."""

    @abc.abstractmethod
    async def recover(self, ctx: LabContext[S]) -> str | None:
        """After a restart of the backend, find the lab again from ``ctx.handle``.

        Return its URL once it answers (waiting as ``start`` would if it is still
        starting); return None if nothing was launched yet; raise :class:`LabEnded`
        if it ended while the backend was down, :class:`LabFailed` if it cannot be
        followed."""

    async def close(self) -> None:
        """Release what the driver holds (connections); labs keep running."""
