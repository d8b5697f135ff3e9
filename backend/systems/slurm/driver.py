"""The ``slurm`` driver: each lab is a Slurm batch job submitted through slurmrestd.

The batch kinds' driver (``backend.systems.batch.driver``) follows the job;
this module says how to talk to slurmrestd for one lab: submit the job from
``jobs``, look at it, find it by the lab's id in its comment, cancel it, and read
the lab's address and the end of its output from the job's comment.

Requests act for the lab's account with a token the backend mints from the
cluster's JWT key (as ``scontrol token`` does).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from typing import Any, ClassVar

import httpx

from ..batch.driver import BatchDriver
from ..batch.session import JobSession, JobView
from ..driver import LabContext, service_prefix
from . import jobs
from .client import SlurmClient
from .config import SlurmSystem
from .tokens import Tokens


class SlurmSession(JobSession):
    """slurmrestd acting for one lab's account."""

    def __init__(self, client: SlurmClient, ctx: LabContext[SlurmSystem]):
        self.client = client
        self.ctx = ctx

    async def submit(self) -> str:
        ctx = self.ctx
        job = jobs.job_submission(
            ctx.system,
            ctx.options,
            lab_id=ctx.lab_id,
            server_name=ctx.server_name,
            env=ctx.env,
            prefix=service_prefix(ctx),
        )
        return await self.client.submit(jobs.job_script(ctx.system), job)

    def _view(self, ref: str, job: dict[str, Any]) -> JobView:
        state = jobs.job_state(job)
        lab_state = jobs.lab_state_for(state)
        seen = (state, job.get("state_reason"), job.get("batch_host"))
        if lab_state is None:
            return JobView(
                ref,
                None,
                jobs.ended_reason(state, job),
                exit_code=jobs.exit_code(job),
                seen=seen,
                raw=job,
            )
        return JobView(ref, lab_state, jobs.status_message(state, job), seen=seen, raw=job)

    async def look(self, ref: str) -> JobView | None:
        job = await self.client.job(ref)
        return None if job is None else self._view(ref, job)

    async def tagged(self) -> list[str]:
        found = [
            j
            for j in await self.client.jobs()
            if jobs.finds(j, self.ctx.lab_id) and j.get("user_name") == self.client.user
        ]
        return [str(j["job_id"]) for j in sorted(found, key=lambda j: int(j.get("job_id", 0)))]

    async def cancel(self, job: JobView) -> None:
        await self.client.cancel(job.ref)

    def listing_key(self) -> Hashable | None:
        return (self.client.base, self.client.user)

    async def look_all(self) -> dict[str, JobView]:
        return {
            str(j["job_id"]): self._view(str(j["job_id"]), j)
            for j in await self.client.jobs()
            if j.get("user_name") == self.client.user and "job_id" in j
        }

    async def address(self, job: JobView) -> bytes | None:
        return jobs.parse_comment(job.raw.get("comment")).address

    async def output(self, job: JobView) -> str:
        tail = jobs.parse_comment(job.raw.get("comment")).tail
        lines = tail.splitlines()[-self.ctx.system.output_lines :]
        return "[output]\n" + "\n".join(lines) if lines else ""


class SlurmDriver(BatchDriver[SlurmSystem]):
    site_kind: ClassVar[str] = "Slurm"
    log: ClassVar[logging.Logger] = logging.getLogger("lablink.backend.slurm")

    def __init__(self, http: httpx.AsyncClient):
        super().__init__(http)
        self._tokens: dict[str, Tokens] = {}  # per system: its key mints the tokens

    def session(self, ctx: LabContext[SlurmSystem]) -> JobSession | None:
        if not ctx.secret:
            return None
        tokens = self._tokens.get(ctx.system_name)
        if tokens is None:
            key = bytes.fromhex(ctx.secret)
            tokens = self._tokens[ctx.system_name] = Tokens(key, ctx.system.auth.token_lifespan)
        account = str(ctx.options["account"])
        client = SlurmClient(
            self.http,
            ctx.system.url,
            account,
            tokens.token(account),
            api_version=ctx.system.api_version,
            timeout=ctx.system.request_timeout,
            retry_for=ctx.system.retry_for,
        )
        return SlurmSession(client, ctx)

    def no_credentials(self, ctx: LabContext[SlurmSystem]) -> str:
        return f"The backend has no key for {ctx.system_label!r}; please tell the site's admins."

    def status_name(self, job: JobView) -> str:
        state = jobs.job_state(job.raw)
        if state == "COMPLETING" and job.exit_code is not None:
            # its processes have ended and Slurm is cleaning up: say how it ended
            return "COMPLETED" if job.exit_code == 0 else "FAILED"
        return state
