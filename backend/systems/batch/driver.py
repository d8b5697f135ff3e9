"""The driver every batch kind shares: a lab is a job on a batch system.

``start`` stores the job's tag before it submits (so a job whose id was never
stored is still found), submits the job, then follows it: its status becomes
the lab's state (queued, starting), the lab's address (``lab.json``) tells
where JupyterLab listens, a tunnel is made when the system has ``tunnel: ssh``,
and the lab is running once it answers. ``stop`` cancels the job and keeps the
end of its output.

A kind supplies a :class:`JobSession`, the batch system acting for one lab's
owner, and the words for its refusals; this module does the rest. Errors of the
batch system are :class:`SiteUnavailable` (retried by the session within the
system's ``retry_for``; then the lab fails with a sentence) or
:class:`SiteRefused` (a refusal, with the system's own words).
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Hashable
from typing import Any, ClassVar, TypeVar

import httpx

from ...states import LabState
from ...tunnels import TunnelError
from ..driver import Driver, LabContext, LabEnded, LabFailed, LabStatus, service_prefix
from . import script
from .config import BatchSystem
from .session import JobSession, JobView, SiteRefused, SiteUnavailable
from .watch import SharedWatch, close_all

B = TypeVar("B", bound=BatchSystem[Any])

PROBE_INTERVAL = 0.1
ADDRESS_KEYS = ("host", "port", "local_host", "local_port")
INTERNAL_TUNNEL = (
    "This system needs the tunnel service, which the backend is not set up to use; please "
    "tell the site's admins."
)


def duration(seconds: float) -> str:
    for unit, size in (("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} seconds"


def ended_sentence(job: JobView, status: str) -> str:
    """ "The job ended (FAILED, exit code 1: why)"."""
    code = f", exit code {job.exit_code}" if job.exit_code is not None else ""
    why = job.message.strip().rstrip(".")
    return f"The job ended ({status}{code}" + (f": {why[:200]})" if why else ")")


class BatchDriver(Driver[B]):
    """Labs as jobs; a kind implements :meth:`session` and its sentences."""

    site_kind: ClassVar[str] = "the batch system"
    """how sentences name the batch system ("UNICORE", "Slurm")"""

    def __init__(self, http: httpx.AsyncClient):
        super().__init__(http)
        self._misses: dict[str, int] = {}  # looks in a row at a lab that did not answer
        self._watches: dict[Hashable, SharedWatch] = {}  # running labs sharing a listing

    # -- what a kind supplies -----------------------------------------------------------

    @abc.abstractmethod
    def session(self, ctx: LabContext[B]) -> JobSession | None:
        """The batch system acting for the lab's owner; None without credentials."""

    def credentials_wait(self, ctx: LabContext[B]) -> float:
        """After a restart: seconds to wait for credentials to come (a bearer token the
        hub hands over with its next poll)."""
        return 0.0

    def no_credentials(self, ctx: LabContext[B]) -> str:
        return (
            f"Starting a lab on {ctx.system_label!r} needs your login token; please log out "
            "and in again."
        )

    def status_name(self, job: JobView) -> str:
        """The job's status in the batch system's words, for "The job ended (...)"."""
        return str(job.seen[0]) if job.seen else "ended"

    def summary(self, ctx: LabContext[B]) -> str:
        """What was asked for, in words: "partition batch, 1 node, 60 minutes"."""
        opts = ctx.options
        nodes = f"{opts['nodes']} node" + ("s" if opts["nodes"] != 1 else "")
        text = f"partition {opts['partition']}, {nodes}, {opts['runtime']} minutes"
        if opts.get("gpus"):
            text += f", {opts['gpus']} GPUs per node"
        if opts.get("reservation"):
            text += f", reservation {opts['reservation']}"
        return text

    # -- sentences ----------------------------------------------------------------------

    def unavailable(self, ctx: LabContext[B]) -> str:
        return (
            f"The HPC system {ctx.system_label!r} cannot be reached through {self.site_kind} "
            "right now; please try again later or choose another system."
        )

    def refused(self, ctx: LabContext[B], exc: SiteRefused) -> str:
        if exc.status in (401, 403):
            return (
                f"{self.site_kind} on {ctx.system_label!r} did not accept your login or "
                f"account ({exc.message.rstrip('.')}); log out and in again, or choose "
                "another account."
            )
        return (
            f"{self.site_kind} on {ctx.system_label!r} refused the lab's job: "
            f"{exc.message.rstrip('.')}."
        )

    def failed(self, ctx: LabContext[B], exc: Exception) -> LabFailed:
        if isinstance(exc, SiteRefused):
            return LabFailed(self.refused(ctx, exc))
        return LabFailed(self.unavailable(ctx))

    # -- where the lab is ---------------------------------------------------------------

    @staticmethod
    def lab_url(ctx: LabContext[B]) -> str | None:
        """Where the backend and the proxy reach the lab: the tunnel's local end, or the
        lab's own host:port for `tunnel: none`; None before it is known."""
        if ctx.system.tunnel == "ssh":
            if "local_port" not in ctx.handle:
                return None
            return f"http://{ctx.handle['local_host']}:{ctx.handle['local_port']}"
        if "host" not in ctx.handle:
            return None
        return f"http://{ctx.handle['host']}:{ctx.handle['port']}"

    async def _read_address(self, ctx: LabContext[B], jobs: JobSession, job: JobView) -> None:
        data = await jobs.address(job)
        if not data:
            return
        try:
            address = script.parse_lab_file(data, ctx.system)
        except script.BadLabFile as exc:
            self.log.warning("%s: refusing the lab's address: %s", ctx.log_name, exc)
            raise LabFailed(
                "The lab's job reported an address this site does not allow; the job was "
                "ended. Please tell the site's admins."
            ) from None
        self.step(ctx, "lab address %s:%s", address.host, address.port)
        await ctx.save({**ctx.handle, "host": address.host, "port": address.port})
        await ctx.progress(
            LabState.STARTING, f"JupyterLab is starting on {address.host}:{address.port}."
        )
        if ctx.system.tunnel == "ssh":
            await self._open_tunnel(ctx, address)

    async def _open_tunnel(self, ctx: LabContext[B], address: script.LabAddress) -> None:
        """Ask the tunnel service for a forward to the lab; retried, then LabFailed."""

        async def retrying(problem: str) -> None:
            await ctx.progress(
                LabState.STARTING, "The tunnel to the lab cannot be made yet; retrying."
            )

        tunnels = ctx.peers.tunnels
        if tunnels is None:
            raise LabFailed(INTERNAL_TUNNEL)
        self.step(ctx, "asking for a tunnel to %s:%s", address.host, address.port)
        try:
            endpoint = await tunnels.open(
                ctx.lab_id,
                ctx.system_name,
                address.host,
                address.port,
                retry_for=ctx.system.retry_for,
                on_retry=retrying,
            )
        except TunnelError as exc:
            self.log.warning("%s: no tunnel: %s", ctx.log_name, exc.message)
            raise LabFailed(
                "JupyterLab started, but no tunnel to its compute node could be made; the "
                "job was ended. Please try again later.",
                detail=exc.message if exc.refused else "",
            ) from None
        self.step(ctx, "tunnel at %s:%s", endpoint.host, endpoint.port)
        await ctx.save({**ctx.handle, "local_host": endpoint.host, "local_port": endpoint.port})

    async def _close_tunnel(self, ctx: LabContext[B]) -> None:
        if ctx.system.tunnel == "ssh" and ctx.peers.tunnels is not None:
            await ctx.peers.tunnels.close(ctx.lab_id)

    # -- ending jobs --------------------------------------------------------------------

    async def _end(self, ctx: LabContext[B], jobs: JobSession, ref: str) -> JobView | None:
        """Cancel a job and wait (bounded by ``stop_timeout``) until it has ended; its
        last view (None when the system no longer knows it)."""
        job = await jobs.look(ref)
        if job is None or job.state is None:
            return job
        self.step(ctx, "cancelling job %s", ref)
        await jobs.cancel(job)
        deadline = time.monotonic() + ctx.system.stop_timeout
        delay = 0.1
        while time.monotonic() < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 1.0)
            current = await jobs.look(ref)
            if current is None:
                return job
            job = current
            if job.state is None:
                return job
        self.log.warning("%s: job %s did not end after cancel", ctx.log_name, ref)
        return job

    async def _refs(self, ctx: LabContext[B], jobs: JobSession) -> list[str]:
        """The lab's jobs: the stored one, else those with its tag."""
        if ctx.handle.get("job"):
            return [str(ctx.handle["job"])]
        if ctx.handle.get("tag"):
            return await jobs.tagged()
        return []

    async def _end_quietly(self, ctx: LabContext[B], jobs: JobSession) -> None:
        """Best effort: end the lab's jobs and remove its tunnel; log what fails."""
        await self._close_tunnel(ctx)
        try:
            for ref in await self._refs(ctx, jobs):
                await self._end(ctx, jobs, ref)
        except (SiteUnavailable, SiteRefused) as exc:
            self.log.warning(
                "%s: could not end its job; it runs until its wall time: %s", ctx.log_name, exc
            )

    async def _drop_duplicates(self, ctx: LabContext[B], jobs: JobSession, keep: str) -> None:
        """A retried submit may have made the job twice: end all but ``keep``."""
        try:
            for ref in await jobs.tagged():
                if ref.rstrip("/") != keep.rstrip("/"):
                    self.log.warning("%s: ending duplicate job %s", ctx.log_name, ref)
                    await self._end(ctx, jobs, ref)
        except (SiteUnavailable, SiteRefused) as exc:
            self.log.warning("%s: could not look for duplicate jobs: %s", ctx.log_name, exc)

    # -- the contract -------------------------------------------------------------------

    async def start(self, ctx: LabContext[B]) -> str:
        jobs = self.session(ctx)
        if jobs is None:
            raise LabFailed(self.no_credentials(ctx))
        await ctx.save({"tag": script.job_tag(ctx.lab_id), "prefix": service_prefix(ctx)})
        await ctx.report(
            LabState.SUBMITTED, f"Submitting a job to {ctx.system_label} ({self.summary(ctx)})."
        )
        try:
            try:
                ref = await jobs.submit()
            except SiteRefused as exc:
                self.log.warning("%s: job refused: %s", ctx.log_name, exc)
                raise self.failed(ctx, exc) from None
            except SiteUnavailable:
                raise LabFailed(self.unavailable(ctx)) from None
            except script.BadHubCa as exc:
                self.log.error("%s: no job submitted: hub_forward.tls: %s", ctx.log_name, exc)
                raise LabFailed(
                    f"Labs on {ctx.system_label!r} cannot be started: the site's certificate "
                    "for the hub's API on the login nodes is missing. Please tell the site's "
                    "admins."
                ) from None
            await ctx.save({**ctx.handle, "job": ref})
            self.log.info("%s: job %s", ctx.log_name, ref)
            await self._drop_duplicates(ctx, jobs, ref)
            return await self._follow(ctx, jobs)
        except LabFailed:
            # a submit that timed out may still have made the job, and a job that could
            # not be followed still runs: end whatever carries this lab's tag
            await self._end_quietly(ctx, jobs)
            raise

    async def _look(self, ctx: LabContext[B], jobs: JobSession, ref: str) -> JobView:
        try:
            job = await jobs.look(ref)
        except (SiteUnavailable, SiteRefused) as exc:
            raise self.failed(ctx, exc) from None
        if job is None:
            raise LabFailed(
                f"The lab's job disappeared from {self.site_kind} before JupyterLab was "
                "ready; please start it again."
            )
        return job

    async def _follow(self, ctx: LabContext[B], jobs: JobSession) -> str:
        """Follow the job until JupyterLab answers; raise LabFailed otherwise."""
        system = ctx.system
        ref = str(ctx.handle["job"])
        last_seen: tuple[Any, ...] | None = None
        waiting_since = time.monotonic()  # submitted or queued: bounded by queue_timeout
        running_at: float | None = None
        next_look = 0.0
        job: JobView | None = None
        while True:
            now = time.monotonic()
            if now >= next_look:
                next_look = now + system.poll_interval
                job = await self._look(ctx, jobs, ref)
                if job.state is None:
                    self.step(ctx, "job %s ended before the lab answered", ref)
                    detail = await self._output_quietly(ctx, jobs, job)
                    raise LabFailed(
                        f"{ended_sentence(job, self.status_name(job))} before JupyterLab was "
                        "ready; the end of its output is below.",
                        detail=detail,
                        reason="ended",
                    )
                if job.seen != last_seen:
                    last_seen = job.seen
                    self.step(ctx, "job %s: %s", ref, job.seen)
                    await ctx.progress(job.state, job.message)
                if job.state != LabState.STARTING and running_at is not None:
                    # requeued (a node failed, the job was preempted): start over
                    running_at = None
                    waiting_since = now
                    await self._close_tunnel(ctx)
                    await ctx.save({k: v for k, v in ctx.handle.items() if k not in ADDRESS_KEYS})
                if job.state != LabState.STARTING and now - waiting_since > system.queue_timeout:
                    raise LabFailed(
                        f"The job waited in the queue for more than "
                        f"{duration(system.queue_timeout)} and was given up; try another "
                        "partition or a shorter run time.",
                        reason="timeout",
                    )
                if job.state == LabState.STARTING:
                    running_at = running_at or now
                    await self._reach(ctx, jobs, job)
            url = self.lab_url(ctx)
            if url is not None and await self.answers(url + ctx.handle["prefix"] + "api"):
                self.step(ctx, "the lab answers at %s", url)
                return url
            if running_at is not None and now - running_at > system.start_timeout:
                detail = await self._output_quietly(ctx, jobs, job) if job else ""
                raise LabFailed(
                    f"JupyterLab did not answer within {system.start_timeout:g} seconds of the "
                    "job starting; the job was ended and the end of its output is below.",
                    detail=detail,
                    reason="timeout",
                )
            wait = PROBE_INTERVAL if url else max(0.0, next_look - now)
            await asyncio.sleep(min(wait, system.poll_interval))

    async def _reach(self, ctx: LabContext[B], jobs: JobSession, job: JobView) -> None:
        """A running job: learn the lab's address, and make its tunnel if it has none."""
        try:
            if "host" not in ctx.handle:
                await self._read_address(ctx, jobs, job)
            elif ctx.system.tunnel == "ssh" and "local_port" not in ctx.handle:
                # known from before a restart, but its tunnel was never made
                address = script.LabAddress(ctx.handle["host"], ctx.handle["port"])
                await self._open_tunnel(ctx, address)
        except (SiteUnavailable, SiteRefused) as exc:
            raise self.failed(ctx, exc) from None

    async def _output_quietly(self, ctx: LabContext[B], jobs: JobSession, job: JobView) -> str:
        try:
            return await jobs.output(job)
        except (SiteUnavailable, SiteRefused) as exc:
            self.log.warning("%s: cannot read the job's output: %s", ctx.log_name, exc)
            return ""

    async def status(self, ctx: LabContext[B]) -> LabStatus:
        ref = ctx.handle.get("job")
        if not ref:
            return LabStatus(alive=False)
        jobs = self.session(ctx)
        if jobs is None:
            return await self._status_from_lab(ctx)
        try:
            job = await jobs.look(str(ref))
        except (SiteUnavailable, SiteRefused) as exc:
            self.log.warning("%s: cannot look at the job: %s", ctx.log_name, exc)
            return await self._status_from_lab(ctx)
        self._misses.pop(ctx.lab_id, None)
        if job is None:
            return LabStatus(alive=False, message=f"The job is gone from {self.site_kind}.")
        if job.state is None:
            return LabStatus(alive=False, exit_code=job.exit_code, message=job.message[:200])
        return LabStatus(alive=True)

    async def _status_from_lab(self, ctx: LabContext[B]) -> LabStatus:
        """When the batch system cannot be asked: the lab is alive while it answers;
        three looks in a row without an answer and it has ended."""
        url = self.lab_url(ctx)
        if url is None:
            return LabStatus(alive=True)
        if await self.answers(url + ctx.handle["prefix"] + "api"):
            self._misses.pop(ctx.lab_id, None)
            return LabStatus(alive=True)
        self._misses[ctx.lab_id] = self._misses.get(ctx.lab_id, 0) + 1
        if self._misses[ctx.lab_id] < 3:
            return LabStatus(alive=True)
        self._misses.pop(ctx.lab_id, None)
        return LabStatus(
            alive=False,
            message=f"It stopped answering, and {self.site_kind} could not be asked why",
        )

    async def wait_ended(self, ctx: LabContext[B]) -> LabStatus:
        st = await self.status(ctx)
        if not st.alive:
            return st
        jobs = self.session(ctx)
        key = jobs.listing_key() if jobs is not None else None
        if key is not None:
            # one listing per interval for every lab of this system and credential
            key = (ctx.system_name, ctx.system.watch_interval, key)
            watch = self._watches.get(key)
            if watch is None:
                watch = self._watches[key] = SharedWatch(
                    key, ctx.system.watch_interval, self.session, self.status
                )
            return await watch.wait(ctx)
        while True:
            await asyncio.sleep(ctx.system.watch_interval)
            st = await self.status(ctx)
            if not st.alive:
                return st

    async def stop(self, ctx: LabContext[B]) -> str:
        await self._close_tunnel(ctx)
        jobs = self.session(ctx)
        if jobs is None:
            self.log.warning("%s: no credentials to end its job", ctx.log_name)
            raise LabFailed(
                "The lab's job could not be ended without your login token, so it runs "
                "until its wall time; the site's admins can end it sooner."
            )
        output = ""
        try:
            for ref in await self._refs(ctx, jobs):
                job = await self._end(ctx, jobs, ref)
                if job is not None:
                    output = await self._output_quietly(ctx, jobs, job)
        except (SiteUnavailable, SiteRefused) as exc:
            self.log.warning("%s: could not end its job: %s", ctx.log_name, exc)
            raise LabFailed(
                f"{self.site_kind} on {ctx.system_label!r} could not be asked to end the "
                "lab's job, so it may run until its wall time; the site's admins can end it "
                "sooner."
            ) from None
        return output

    async def close(self) -> None:
        close_all(self._watches)

    async def _wait_for_session(self, ctx: LabContext[B]) -> JobSession | None:
        """After a restart, credentials may come later (see ``credentials_wait``)."""
        deadline = time.monotonic() + self.credentials_wait(ctx)
        while True:
            jobs = self.session(ctx)
            if jobs is not None or time.monotonic() >= deadline:
                return jobs
            await asyncio.sleep(0.2)

    async def recover(self, ctx: LabContext[B]) -> str | None:
        if not ctx.handle.get("job") and not ctx.handle.get("tag"):
            return None
        jobs = await self._wait_for_session(ctx)
        if jobs is None:
            self.log.warning("%s: no credentials to follow its job after a restart", ctx.log_name)
            raise LabFailed(
                "The backend restarted and cannot follow this lab's job without your "
                "login token; please start the lab again (the old job ends at its wall "
                "time)."
            )
        try:
            if not ctx.handle.get("job"):
                found = await jobs.tagged()
                if not found:
                    return None  # never submitted
                self.step(ctx, "found job %s by its tag", found[0])
                await ctx.save({**ctx.handle, "job": found[0]})
                await self._drop_duplicates(ctx, jobs, found[0])
            job = await jobs.look(str(ctx.handle["job"]))
        except (SiteUnavailable, SiteRefused) as exc:
            raise self.failed(ctx, exc) from None
        if job is None or job.state is None:
            detail = await self._output_quietly(ctx, jobs, job) if job else ""
            raise LabEnded("The lab's job ended while the backend was not running.", detail)
        try:
            return await self._follow(ctx, jobs)
        except LabFailed:
            await self._end_quietly(ctx, jobs)
            raise
