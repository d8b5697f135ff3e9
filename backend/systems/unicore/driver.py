"""The ``unicore`` driver: each lab is a UNICORE job on an HPC system.

The batch kinds' driver (``backend.systems.batch.driver``) follows the job;
this module says how to talk to UNICORE/X for one lab: submit the job
description from ``jobs``, look at the job, find it by its tag, abort it, and
read ``lab.json`` and the job's output through the storage of its working
directory.

Calls to UNICORE carry the person's bearer token (or the system's basic login
in development) and ``X-UNICORE-User-Preferences`` with the account and
project.
"""

from __future__ import annotations

import contextlib
import logging
import re
import ssl
from typing import Any, ClassVar

import httpx

from ...bounded import turn_taking_client
from ..batch.driver import BatchDriver
from ..batch.script import LAB_FILE, job_tag
from ..batch.session import JobSession, JobView
from ..driver import LabContext, service_prefix
from . import jobs
from .client import Credentials, UnicoreClient, link
from .config import UnicoreSystem

EXIT_CODE = re.compile(r"-?[0-9]{1,9}")


class UnicoreSession(JobSession):
    """UNICORE/X acting for one lab's owner."""

    def __init__(self, client: UnicoreClient, ctx: LabContext[UnicoreSystem]):
        self.uc = client
        self.ctx = ctx
        self.jobs_url = ctx.system.url.rstrip("/") + "/jobs"

    async def submit(self) -> str:
        ctx = self.ctx
        description = jobs.job_description(
            ctx.system,
            ctx.options,
            lab_id=ctx.lab_id,
            server_name=ctx.server_name,
            env=ctx.env,
            prefix=service_prefix(ctx),
        )
        return await self.uc.submit(self.jobs_url, description)

    def _view(self, ref: str, job: dict[str, Any]) -> JobView:
        status = str(job.get("status", "UNDEFINED"))
        state = jobs.lab_state_for(status)
        seen = (status, job.get("batchSystemID"), job.get("queue"))
        if state is None:
            code = str(job.get("exitCode") or "")
            return JobView(
                ref,
                None,
                str(job.get("statusMessage") or ""),
                exit_code=int(code) if EXIT_CODE.fullmatch(code) else None,
                seen=seen,
                raw=job,
            )
        partition = self.ctx.system.partitions.get(self.ctx.options.get("partition", ""))
        interactive = bool(partition and partition.interactive)
        return JobView(
            ref, state, jobs.status_message(status, job, interactive), seen=seen, raw=job
        )

    async def look(self, ref: str) -> JobView | None:
        job = await self.uc.job(ref)
        return None if job is None else self._view(ref, job)

    async def tagged(self) -> list[str]:
        return await self.uc.jobs_tagged(self.jobs_url, job_tag(self.ctx.lab_id))

    async def cancel(self, job: JobView) -> None:
        await self.uc.action(job.raw, "abort")

    async def address(self, job: JobView) -> bytes | None:
        storage = link(job.raw, "workingDirectory")
        if storage is None:
            return None
        return await self.uc.read_file(storage, LAB_FILE, length=4096)

    async def output(self, job: JobView) -> str:
        storage = link(job.raw, "workingDirectory")
        if storage is None:
            return ""
        lines = self.ctx.system.output_lines
        parts = []
        for name in ("stdout", "stderr"):
            tail = (await self.uc.tail(storage, name)).splitlines()[-lines:]
            if tail:
                parts.append(f"[{name}]\n" + "\n".join(tail))
        return "\n".join(parts)


class UnicoreDriver(BatchDriver[UnicoreSystem]):
    site_kind: ClassVar[str] = "UNICORE"
    log: ClassVar[logging.Logger] = logging.getLogger("lablink.backend.unicore")

    def __init__(self, http: httpx.AsyncClient):
        super().__init__(http)
        self._tls_clients: dict[str, httpx.AsyncClient] = {}

    def _http_for(self, system: UnicoreSystem) -> httpx.AsyncClient:
        if not system.ca_bundle:
            return self.http
        client = self._tls_clients.get(system.ca_bundle)
        if client is None:
            context = ssl.create_default_context(cafile=system.ca_bundle)
            client = turn_taking_client(verify=context)
            self._tls_clients[system.ca_bundle] = client
        return client

    def session(self, ctx: LabContext[UnicoreSystem]) -> JobSession | None:
        system = ctx.system
        if system.auth.method == "basic":
            if not ctx.secret:
                return None
            creds = Credentials(basic=(system.auth.username, ctx.secret))
        elif ctx.access_token:
            # each request takes the newest token the hub handed over: a lab that waits
            # in the queue longer than one token lives is followed with the next ones
            creds = Credentials(bearer=ctx.access_token, bearer_source=ctx.token_source)
        else:
            return None
        client = UnicoreClient(
            self._http_for(system),
            creds,
            preferences=jobs.user_preferences(ctx.options) if system.user_preferences else None,
            timeout=system.request_timeout,
            retry_for=system.retry_for,
            origin=system.url,
        )
        return UnicoreSession(client, ctx)

    def credentials_wait(self, ctx: LabContext[UnicoreSystem]) -> float:
        return ctx.system.token_wait if ctx.system.auth.method == "bearer" else 0.0

    def status_name(self, job: JobView) -> str:
        return str(job.raw.get("status", "?"))

    def summary(self, ctx: LabContext[UnicoreSystem]) -> str:
        opts = ctx.options
        if ctx.system.partitions[opts["partition"]].interactive:
            return f"login node ({opts['partition']}), {opts['runtime']} minutes"
        return super().summary(ctx)

    async def close(self) -> None:
        await super().close()
        for client in self._tls_clients.values():
            with contextlib.suppress(Exception):
                await client.aclose()
        self._tls_clients.clear()
