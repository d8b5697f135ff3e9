"""The ``unicore`` driver: each lab is a UNICORE job on an HPC system.

``start`` stores the job's tag before it submits (so a job whose URL was
never stored is still found), submits the job description from
``backend.unicore.jobs``, then follows the job: its status becomes the lab's
state (queued, starting), ``lab.json`` in the job's working directory tells
where JupyterLab listens, and the lab is running once it answers there.
``stop`` aborts the job and keeps the end of its stdout and stderr.

Calls to UNICORE carry the person's bearer token (or the system's basic
login in development) and ``X-UNICORE-User-Preferences`` with the account
and project. Network errors and 5xx answers are retried with backoff for the
system's ``retry_for`` seconds; then the lab fails with a sentence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
import time
from typing import Any

import httpx

from ..states import InvalidTransition, LabState
from ..tunnels import TunnelError
from ..unicore import jobs
from ..unicore.client import (
    Credentials,
    UnicoreClient,
    UnicoreRefused,
    UnicoreUnavailable,
    link,
)
from ..unicore.config import UnicoreSystem
from .base import Driver, LabContext, LabEnded, LabFailed, LabStatus, service_prefix

log = logging.getLogger("lablink.backend.unicore")

PROBE_INTERVAL = 0.1


def _name(ctx: LabContext) -> str:
    system: UnicoreSystem = ctx.system
    return system.display_name or ctx.system_name


def unavailable(ctx: LabContext) -> str:
    return (
        f"The HPC system {_name(ctx)!r} cannot be reached through UNICORE right now; "
        "please try again later or choose another system."
    )


def refused(ctx: LabContext, exc: UnicoreRefused) -> str:
    if exc.status in (401, 403):
        return (
            f"UNICORE on {_name(ctx)!r} did not accept your login or account "
            f"({exc.message.rstrip('.')}); log out and in again, or choose another account."
        )
    return f"UNICORE on {_name(ctx)!r} refused the lab's job: {exc.message.rstrip('.')}."


INTERNAL_TUNNEL = (
    "This system needs the tunnel service, which the backend is not set up to use; please "
    "tell the site's admins."
)


def lab_url(ctx: LabContext) -> str | None:
    """Where the backend and the proxy reach the lab: the tunnel's local end, or the
    lab's own host:port for `tunnel: none`; None before it is known."""
    if ctx.system.tunnel == "ssh":
        if "local_port" not in ctx.handle:
            return None
        return f"http://{ctx.handle['local_host']}:{ctx.handle['local_port']}"
    if "host" not in ctx.handle:
        return None
    return f"http://{ctx.handle['host']}:{ctx.handle['port']}"


def summary(ctx: LabContext) -> str:
    """What was asked for, in words: "partition batch, 1 node, 60 minutes"."""
    opts = ctx.options
    part = ctx.system.partitions[opts["partition"]]
    if part.interactive:
        return f"login node ({opts['partition']}), {opts['runtime']} minutes"
    nodes = f"{opts['nodes']} node" + ("s" if opts["nodes"] != 1 else "")
    text = f"partition {opts['partition']}, {nodes}, {opts['runtime']} minutes"
    if opts.get("gpus"):
        text += f", {opts['gpus']} GPUs per node"
    if opts.get("reservation"):
        text += f", reservation {opts['reservation']}"
    return text


def status_message(status: str, job: dict[str, Any], interactive: bool) -> str:
    batch_id = str(job.get("batchSystemID") or "")
    known = batch_id not in ("", "N/A")
    queue = job.get("queue") or "?"
    if status == "QUEUED":
        which = f" (batch job {batch_id})" if known else ""
        return f"Waiting in the queue of partition {queue}{which}."
    if status in ("RUNNING", "STAGINGOUT"):
        if interactive:
            return "The job runs on a login node; JupyterLab is starting."
        which = f"Batch job {batch_id}" if known else "The batch job"
        return f"{which} runs on partition {queue}; JupyterLab is starting."
    return "UNICORE accepted the job and prepares it."


def duration(seconds: float) -> str:
    for unit, size in (("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} seconds"


def ended_message(job: dict[str, Any]) -> str:
    status = job.get("status", "?")
    code = job.get("exitCode")
    why = str(job.get("statusMessage") or "").strip().rstrip(".")
    text = f"The job ended ({status}" + (f", exit code {code}" if code not in (None, "") else "")
    text += f": {why[:200]})" if why else ")"
    return text


async def report(ctx: LabContext, state: LabState, message: str) -> None:
    """Report progress; a lab that is already further along (re-followed after a
    restart) or being stopped keeps its state."""
    with contextlib.suppress(InvalidTransition):
        await ctx.report(state, message)


class UnicoreDriver(Driver):
    kind = "unicore"

    def __init__(self, http: httpx.AsyncClient):
        super().__init__(http)
        self._tls_clients: dict[str, httpx.AsyncClient] = {}
        self._misses: dict[str, int] = {}  # looks in a row at a lab that did not answer

    # -- plumbing -------------------------------------------------------------

    def _http_for(self, system: UnicoreSystem) -> httpx.AsyncClient:
        if not system.ca_bundle:
            return self.http
        client = self._tls_clients.get(system.ca_bundle)
        if client is None:
            context = ssl.create_default_context(cafile=system.ca_bundle)
            client = httpx.AsyncClient(verify=context, trust_env=False)
            self._tls_clients[system.ca_bundle] = client
        return client

    def client(self, ctx: LabContext) -> UnicoreClient | None:
        """A client acting for the lab's owner, or None without credentials."""
        system: UnicoreSystem = ctx.system
        if system.auth.method == "basic":
            if not ctx.site_secret:
                return None
            creds = Credentials(basic=(system.auth.username, ctx.site_secret))
        elif ctx.access_token:
            creds = Credentials(bearer=ctx.access_token)
        else:
            return None
        return UnicoreClient(
            self._http_for(system),
            creds,
            preferences=jobs.user_preferences(ctx.options) if system.user_preferences else None,
            timeout=system.request_timeout,
            retry_for=system.retry_for,
        )

    @staticmethod
    def jobs_url(ctx: LabContext) -> str:
        return ctx.system.url.rstrip("/") + "/jobs"  # type: ignore[no-any-return]

    async def _output(self, ctx: LabContext, uc: UnicoreClient, job: dict[str, Any]) -> str:
        storage = link(job, "workingDirectory")
        if storage is None:
            return ""
        lines = ctx.system.output_lines
        parts = []
        try:
            for name in ("stdout", "stderr"):
                text = await uc.tail(storage, name)
                tail = text.splitlines()[-lines:]
                if tail:
                    parts.append(f"[{name}]\n" + "\n".join(tail))
        except (UnicoreUnavailable, UnicoreRefused) as exc:
            log.warning("%s: cannot read the job's output: %s", ctx.log_name, exc)
        return "\n".join(parts)

    async def _abort(
        self, ctx: LabContext, uc: UnicoreClient, job_url: str
    ) -> dict[str, Any] | None:
        """Abort a job and wait (bounded) until it has ended; return its last view."""
        job = await uc.job(job_url)
        if job is None:
            return None
        if job.get("status") not in jobs.ENDED_STATUSES:
            await uc.action(job, "abort")
            deadline = time.monotonic() + ctx.system.stop_timeout
            delay = 0.1
            while time.monotonic() < deadline:
                await asyncio.sleep(delay)
                delay = min(delay * 1.5, 1.0)
                current = await uc.job(job_url)
                if current is None:
                    return job
                job = current
                if job.get("status") in jobs.ENDED_STATUSES:
                    break
            else:
                log.warning("%s: job %s did not end after abort", ctx.log_name, job_url)
        return job

    async def _abort_quietly(self, ctx: LabContext, uc: UnicoreClient, job_url: str) -> None:
        try:
            await self._abort(ctx, uc, job_url)
        except (UnicoreUnavailable, UnicoreRefused) as exc:
            log.warning("%s: could not abort job %s: %s", ctx.log_name, job_url, exc)

    # -- the contract -----------------------------------------------------------

    async def start(self, ctx: LabContext) -> str:
        system: UnicoreSystem = ctx.system
        uc = self.client(ctx)
        if uc is None:
            raise LabFailed(
                f"Starting a lab on {_name(ctx)!r} needs your login token; please log out and "
                "in again."
            )
        prefix = service_prefix(ctx)
        tag = jobs.job_tag(ctx.lab_id)
        await ctx.save({"tag": tag, "prefix": prefix})
        description = jobs.job_description(
            system,
            ctx.options,
            lab_id=ctx.lab_id,
            user_name=ctx.user_name,
            server_name=ctx.server_name,
            env=ctx.env,
            prefix=prefix,
        )
        await ctx.report(LabState.SUBMITTED, f"Submitting a job to {_name(ctx)} ({summary(ctx)}).")
        try:
            try:
                job_url = await uc.submit(self.jobs_url(ctx), description)
            except UnicoreRefused as exc:
                log.warning("%s: job refused: %s", ctx.log_name, exc)
                raise LabFailed(refused(ctx, exc)) from None
            except UnicoreUnavailable:
                raise LabFailed(unavailable(ctx)) from None
            await ctx.save({**ctx.handle, "job": job_url})
            log.info("%s: job %s", ctx.log_name, job_url)
            await self._drop_duplicates(ctx, uc, job_url)
            return await self._follow(ctx, uc)
        except LabFailed:
            # a submit that timed out may still have created the job, and a job that
            # could not be followed still runs: end whatever carries this lab's tag
            await self._end_quietly(ctx, uc)
            raise

    async def _end_quietly(self, ctx: LabContext, uc: UnicoreClient) -> None:
        """Best effort: abort the lab's job (by URL, else by tag) and remove its tunnel;
        log what fails."""
        await self._close_tunnel(ctx)
        try:
            if ctx.handle.get("job"):
                urls = [ctx.handle["job"]]
            else:
                urls = await uc.jobs_tagged(self.jobs_url(ctx), ctx.handle["tag"])
            for url in urls:
                await self._abort(ctx, uc, url)
        except (UnicoreUnavailable, UnicoreRefused) as exc:
            log.warning(
                "%s: could not end its job; it runs until its wall time: %s", ctx.log_name, exc
            )

    async def _drop_duplicates(self, ctx: LabContext, uc: UnicoreClient, keep: str) -> None:
        """A retried submit may have created the job twice: abort all but ``keep``."""
        try:
            tagged = await uc.jobs_tagged(self.jobs_url(ctx), ctx.handle["tag"])
        except (UnicoreUnavailable, UnicoreRefused):
            return
        for url in tagged:
            if url.rstrip("/") != keep.rstrip("/"):
                log.warning("%s: aborting duplicate job %s", ctx.log_name, url)
                await self._abort_quietly(ctx, uc, url)

    async def _follow(self, ctx: LabContext, uc: UnicoreClient) -> str:
        """Follow the job until JupyterLab answers; raise LabFailed otherwise."""
        system: UnicoreSystem = ctx.system
        job_url = ctx.handle["job"]
        interactive = system.partitions[ctx.options["partition"]].interactive
        last_status: tuple[Any, ...] | None = None
        waiting_since = time.monotonic()  # submitted or queued: bounded by queue_timeout
        running_at: float | None = None
        next_look = 0.0
        job: dict[str, Any] = {}
        while True:
            now = time.monotonic()
            if now >= next_look:
                next_look = now + system.poll_interval
                try:
                    found = await uc.job(job_url)
                except UnicoreUnavailable:
                    raise LabFailed(unavailable(ctx)) from None
                except UnicoreRefused as exc:
                    raise LabFailed(refused(ctx, exc)) from None
                if found is None:
                    raise LabFailed(
                        "The lab's job disappeared from UNICORE before JupyterLab was ready; "
                        "please start it again."
                    )
                job = found
                status = str(job.get("status", "UNDEFINED"))
                state = jobs.lab_state_for(status)
                if state is None:
                    detail = await self._output(ctx, uc, job)
                    raise LabFailed(
                        f"{ended_message(job)} before JupyterLab was ready; the end of its "
                        "output is below.",
                        detail=detail,
                    )
                seen = (status, job.get("batchSystemID"), job.get("queue"))
                if seen != last_status:
                    last_status = seen
                    await report(ctx, state, status_message(status, job, interactive))
                if state != LabState.STARTING and running_at is not None:
                    # requeued (a node failed, the job was preempted): start over
                    running_at = None
                    waiting_since = now
                    await self._close_tunnel(ctx)
                    gone = ("host", "port", "local_host", "local_port")
                    await ctx.save({k: v for k, v in ctx.handle.items() if k not in gone})
                if state != LabState.STARTING:
                    if now - waiting_since > system.queue_timeout:
                        raise LabFailed(
                            f"The job waited in the queue for more than "
                            f"{duration(system.queue_timeout)} and was given up; try "
                            "another partition or a shorter run time."
                        )
                if state == LabState.STARTING:
                    running_at = running_at or now
                    if "host" not in ctx.handle:
                        try:
                            await self._read_address(ctx, uc, job)
                        except UnicoreUnavailable:
                            raise LabFailed(unavailable(ctx)) from None
                        except UnicoreRefused as exc:
                            raise LabFailed(refused(ctx, exc)) from None
                    elif system.tunnel == "ssh" and "local_port" not in ctx.handle:
                        # known from before a restart, but its tunnel was never made
                        address = jobs.LabAddress(ctx.handle["host"], ctx.handle["port"])
                        await self._open_tunnel(ctx, address)
            url = lab_url(ctx)
            if url is not None and await self._answers(url + ctx.handle["prefix"] + "api"):
                return url
            if running_at is not None and now - running_at > system.start_timeout:
                detail = await self._output(ctx, uc, job)
                raise LabFailed(
                    f"JupyterLab did not answer within {system.start_timeout:g} seconds of the "
                    "job starting; the job was ended and the end of its output is below.",
                    detail=detail,
                )
            wait = PROBE_INTERVAL if lab_url(ctx) else max(0.0, next_look - now)
            await asyncio.sleep(min(wait, system.poll_interval))

    async def _read_address(self, ctx: LabContext, uc: UnicoreClient, job: dict[str, Any]) -> None:
        storage = link(job, "workingDirectory")
        if storage is None:
            return
        data = await uc.read_file(storage, jobs.LAB_FILE)
        if not data:
            return
        try:
            address = jobs.parse_lab_file(data, ctx.system)
        except jobs.BadLabFile as exc:
            log.warning("%s: refusing lab.json: %s", ctx.log_name, exc)
            raise LabFailed(
                "The lab's job reported an address this site does not allow; the job was "
                "ended. Please tell the site's admins."
            ) from None
        await ctx.save({**ctx.handle, "host": address.host, "port": address.port})
        await report(
            ctx, LabState.STARTING, f"JupyterLab is starting on {address.host}:{address.port}."
        )
        if ctx.system.tunnel == "ssh":
            await self._open_tunnel(ctx, address)

    async def _open_tunnel(self, ctx: LabContext, address: jobs.LabAddress) -> None:
        """Ask the tunnel service for a forward to the lab; retried, then LabFailed."""

        async def retrying(problem: str) -> None:
            await report(
                ctx, LabState.STARTING, "The tunnel to the lab cannot be made yet; retrying."
            )

        if ctx.tunnels is None:
            raise LabFailed(INTERNAL_TUNNEL)
        try:
            endpoint = await ctx.tunnels.open(
                ctx.lab_id,
                ctx.system_name,
                address.host,
                address.port,
                retry_for=ctx.system.retry_for,
                on_retry=retrying,
            )
        except TunnelError as exc:
            log.warning("%s: no tunnel: %s", ctx.log_name, exc.message)
            raise LabFailed(
                "JupyterLab started, but no tunnel to its compute node could be made; the "
                "job was ended. Please try again later.",
                detail=exc.message if exc.refused else "",
            ) from None
        await ctx.save({**ctx.handle, "local_host": endpoint.host, "local_port": endpoint.port})

    async def status(self, ctx: LabContext) -> LabStatus:
        uc = self.client(ctx)
        job_url = ctx.handle.get("job")
        if not job_url:
            return LabStatus(alive=False)
        if uc is None:
            return await self._status_from_lab(ctx)
        try:
            job = await uc.job(job_url)
        except (UnicoreUnavailable, UnicoreRefused) as exc:
            log.warning("%s: cannot look at the job: %s", ctx.log_name, exc)
            return await self._status_from_lab(ctx)
        self._misses.pop(ctx.lab_id, None)
        if job is None:
            return LabStatus(alive=False, message="The job is gone from UNICORE.")
        if job.get("status") in jobs.ENDED_STATUSES:
            code = str(job.get("exitCode") or "")
            return LabStatus(
                alive=False,
                exit_code=int(code) if re.fullmatch(r"-?[0-9]{1,9}", code) else None,
                message=str(job.get("statusMessage") or "")[:200],
            )
        return LabStatus(alive=True)

    async def _status_from_lab(self, ctx: LabContext) -> LabStatus:
        """When UNICORE cannot be asked: the lab is alive while it answers; three
        looks in a row without an answer and it has ended."""
        url = lab_url(ctx)
        if url is None:
            return LabStatus(alive=True)
        if await self._answers(url + ctx.handle["prefix"] + "api"):
            self._misses.pop(ctx.lab_id, None)
            return LabStatus(alive=True)
        self._misses[ctx.lab_id] = self._misses.get(ctx.lab_id, 0) + 1
        if self._misses[ctx.lab_id] < 3:
            return LabStatus(alive=True)
        self._misses.pop(ctx.lab_id, None)
        return LabStatus(
            alive=False, message="It stopped answering, and UNICORE could not be asked why"
        )

    async def wait_ended(self, ctx: LabContext) -> LabStatus:
        while True:
            st = await self.status(ctx)
            if not st.alive:
                return st
            await asyncio.sleep(ctx.system.watch_interval)

    async def _close_tunnel(self, ctx: LabContext) -> None:
        if ctx.system.tunnel == "ssh" and ctx.tunnels is not None:
            await ctx.tunnels.close(ctx.lab_id)

    async def stop(self, ctx: LabContext) -> str:
        await self._close_tunnel(ctx)
        uc = self.client(ctx)
        if uc is None:
            log.warning("%s: no credentials to end its job", ctx.log_name)
            raise LabFailed(
                "The lab's job could not be ended without your login token, so it runs "
                "until its wall time; the site's admins can end it sooner."
            )
        urls: list[str] = []
        try:
            if ctx.handle.get("job"):
                urls = [ctx.handle["job"]]
            elif ctx.handle.get("tag"):
                urls = await uc.jobs_tagged(self.jobs_url(ctx), ctx.handle["tag"])
            output = ""
            for url in urls:
                job = await self._abort(ctx, uc, url)
                if job is not None:
                    output = await self._output(ctx, uc, job)
        except (UnicoreUnavailable, UnicoreRefused) as exc:
            log.warning("%s: could not end its job: %s", ctx.log_name, exc)
            raise LabFailed(
                f"UNICORE on {_name(ctx)!r} could not be asked to end the lab's job, so it "
                "may run until its wall time; the site's admins can end it sooner."
            ) from None
        return output

    async def _wait_for_client(self, ctx: LabContext) -> UnicoreClient | None:
        """After a restart, a bearer system has no token until the hub hands one over
        (it does with every poll); wait for it, bounded by ``token_wait``."""
        deadline = time.monotonic() + ctx.system.token_wait
        while True:
            uc = self.client(ctx)
            if uc is not None or time.monotonic() >= deadline:
                return uc
            await asyncio.sleep(0.2)

    async def recover(self, ctx: LabContext) -> str | None:
        if not ctx.handle.get("job") and not ctx.handle.get("tag"):
            return None
        uc = await self._wait_for_client(ctx)
        if uc is None:
            log.warning("%s: no credentials to follow its job after a restart", ctx.log_name)
            raise LabFailed(
                "The backend restarted and cannot follow this lab's job without your "
                "login token; please start the lab again (the old job ends at its wall "
                "time)."
            )
        try:
            if not ctx.handle.get("job"):
                tag = ctx.handle.get("tag")
                found = await uc.jobs_tagged(self.jobs_url(ctx), tag) if tag else []
                if not found:
                    return None  # never submitted
                await ctx.save({**ctx.handle, "job": found[0]})
                await self._drop_duplicates(ctx, uc, found[0])
            job = await uc.job(ctx.handle["job"])
        except UnicoreUnavailable:
            raise LabFailed(unavailable(ctx)) from None
        except UnicoreRefused as exc:
            raise LabFailed(refused(ctx, exc)) from None
        if job is None or job.get("status") in jobs.ENDED_STATUSES:
            detail = await self._output(ctx, uc, job) if job else ""
            raise LabEnded("The lab's job ended while the backend was not running.", detail)
        try:
            return await self._follow(ctx, uc)
        except LabFailed:
            await self._end_quietly(ctx, uc)
            raise

    async def close(self) -> None:
        for client in self._tls_clients.values():
            with contextlib.suppress(Exception):
                await client.aclose()
        self._tls_clients.clear()
