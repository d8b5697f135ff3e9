"""Following many running labs' jobs with one listing per interval (pure asyncio).

A running lab's job is looked at every ``watch_interval`` seconds to learn when it
ends by itself. Where the batch system lists jobs with their state (slurmrestd's
``GET /jobs``), the labs whose sessions share a :meth:`JobSession.listing_key`
(the same system and credential) share one :class:`SharedWatch`: one listing per
interval for all of them, instead of one request per lab. A lab whose job is not
in the listing, and every lab when the listing fails, is asked about on its own
(the driver's ``status``: a look at the job, or at the lab when the system cannot
be reached), a few at a time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

from ..driver import LabContext, LabStatus
from .session import JobSession, JobView, SiteRefused, SiteUnavailable

log = logging.getLogger("lablink.backend.batch")

# labs asked about on their own at once (missing from the listing, or it failed)
SINGLE_LOOKS_AT_ONCE = 8

Status = Callable[[LabContext[Any]], Awaitable[LabStatus]]
Sessions = Callable[[LabContext[Any]], JobSession | None]


def status_of(view: JobView) -> LabStatus:
    """A running lab's status from its job in a listing."""
    if view.state is None:
        return LabStatus(alive=False, exit_code=view.exit_code, message=view.message[:200])
    return LabStatus(alive=True)


class SharedWatch:
    """The running labs of one listing key; ``wait`` returns when a lab's job ended."""

    def __init__(self, key: Hashable, interval: float, sessions: Sessions, status: Status):
        self.key = key
        self.interval = interval
        self._sessions = sessions
        self._status = status
        self._members: dict[str, tuple[LabContext[Any], asyncio.Future[LabStatus]]] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def active(self) -> bool:
        return self._task is not None and not self._task.done()

    async def wait(self, ctx: LabContext[Any]) -> LabStatus:
        """Until the lab's job ends (its status then)."""
        done: asyncio.Future[LabStatus] = asyncio.get_running_loop().create_future()
        self._members[ctx.lab_id] = (ctx, done)
        if not self.active:
            self._task = asyncio.create_task(self._run(), name=f"watch {self.key}")
        try:
            return await done
        finally:
            self._members.pop(ctx.lab_id, None)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while self._members:
            await asyncio.sleep(self.interval)
            try:
                await self._look()
            except Exception:  # one bad round must not leave the labs unwatched
                log.exception("following the jobs of %s broke; trying again", self.key)

    async def _look(self) -> None:
        members = [(ctx, done) for ctx, done in self._members.values() if not done.done()]
        if not members:
            return
        views: dict[str, JobView] | None = None
        # the newest lab's session: its credential is the freshest
        session = self._sessions(members[-1][0])
        if session is not None:
            try:
                views = await session.look_all()
            except (SiteUnavailable, SiteRefused) as exc:
                log.warning("cannot list the jobs of %s: %s", self.key, exc)
        alone: list[tuple[LabContext[Any], asyncio.Future[LabStatus]]] = []
        for ctx, done in members:
            view = views.get(str(ctx.handle.get("job"))) if views is not None else None
            if view is None:
                alone.append((ctx, done))
            elif view.state is None and not done.done():
                done.set_result(status_of(view))
        if alone:
            turns = asyncio.Semaphore(SINGLE_LOOKS_AT_ONCE)

            async def ask(ctx: LabContext[Any], done: asyncio.Future[LabStatus]) -> None:
                async with turns:
                    if done.done():
                        return
                    status = await self._status(ctx)
                    if not status.alive and not done.done():
                        done.set_result(status)

            results = await asyncio.gather(*(ask(c, d) for c, d in alone), return_exceptions=True)
            for (ctx, _), result in zip(alone, results, strict=True):
                if isinstance(result, Exception):
                    log.warning("%s: cannot look at its job: %s", ctx.log_name, result)


def close_all(watches: dict[Hashable, SharedWatch]) -> None:
    for watch in watches.values():
        watch.close()
    watches.clear()
