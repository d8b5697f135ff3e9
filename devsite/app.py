"""The development site's HTTP API, built by ``create_app(config)``: UNICORE/X's REST
API under ``/<SITE>/rest/core`` (base, jobs, sites, factories; storages in ``storage``;
errors and authentication in ``auth``), and ``Devsite``, which runs the jobs.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

import httpx
from fastapi import Depends, FastAPI, Request, Response

from backend.bounded import BodyLimit

from . import DevsiteConfig, SiteError
from .auth import Authenticated, Caller, UserinfoCache, install_error_handlers
from .description import JOB_TYPES, parse_description, submitted_copy
from .jobs import Job, LocalRunner, make_home, read_exit_code, unicore_time, write_imports
from .slurm import SlurmRunner
from .storage import base_url, storage_router
from .table import JobStore

log = logging.getLogger("lablink.devsite")

SERVER_VERSION = "10.1.0"  # the UNICORE/X version whose API this site follows
SITE_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
SITE_ID = "default_target_system"
FACTORY_ID = "default_target_system_factory"
ENDED_WHILE_DOWN = "The job ended while the development site was down and left no exit code."
NOT_STARTED = "The development site stopped before the job was started; submit it again."
NO_SLURM = "The development site now runs without Slurm and cannot follow this Slurm job."


# -- the caller's jobs -----------------------------------------------------------------


async def own_job(request: Request, job_id: str, caller: Authenticated) -> Job:
    job = request.app.state.devsite.store.get(job_id, caller.name)
    if job is None:
        raise SiteError(404, f"There is no job {job_id} here.")
    return job  # type: ignore[no-any-return]


async def storage_job(request: Request, sid: str, caller: Authenticated) -> Job:
    job = request.app.state.devsite.store.get(sid.removesuffix("-uspace"), caller.name)
    if job is None or not sid.endswith("-uspace"):
        raise SiteError(404, f"There is no storage {sid} here.")
    return job  # type: ignore[no-any-return]


async def own_jobs(request: Request, caller: Authenticated, tags: str = "") -> list[Job]:
    wanted = frozenset(t for t in re.split(r"[ +,]", tags.strip("\"'")) if t)
    return request.app.state.devsite.store.of(caller.name, wanted)  # type: ignore[no-any-return]


OwnJob = Annotated[Job, Depends(own_job)]


# -- the site: jobs and their runners ---------------------------------------------------


class Devsite:
    """Creates, starts, aborts, restarts and deletes jobs; owns the runners. Its jobs
    are in the job table in the workdir: it takes them up again when it starts."""

    def __init__(self, config: DevsiteConfig) -> None:
        self.config = config
        self.store = JobStore(config.workdir)
        self.local = LocalRunner(config.environ, config.grace)
        self.slurm = SlurmRunner(config.environ) if config.slurm else None
        self.queues, self.default_queue = list(config.queues), config.queues[0]
        self.up_since = datetime.now(UTC)
        self._tasks: set[asyncio.Task[None]] = set()
        self._expiry: asyncio.Task[None] | None = None
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(10.0), trust_env=False)
        self.userinfo = UserinfoCache(config.userinfo_cache)

    async def open(self) -> None:
        self.config.workdir.mkdir(parents=True, exist_ok=True)
        if self.slurm is not None:
            queues, default = await self.slurm.partitions()
            self.queues, self.default_queue = queues, default or "batch"
            self.slurm.start()
        for job in await asyncio.to_thread(self.store.load):
            if job.active:
                await self._restore(job)
        self._expiry = asyncio.create_task(self._expire())

    async def _restore(self, job: Job) -> None:
        """Take up an active job of the job table, as UNICORE/X does after a restart: a
        local process that still runs is followed again, one that has ended finishes
        the job with the exit code the job recorded; Slurm is asked about a Slurm job."""
        if job.status == "READY":
            return  # it waits for its start
        if job.runner == "slurm" and job.batch_id is not None:
            if self.slurm is None:
                job.finish(None, NO_SLURM)
            else:
                self.slurm.follow(job)
        elif job.runner == "local" and job.pid is not None:
            if not self.local.follow(job):
                code = await asyncio.to_thread(read_exit_code, job.directory)
                job.note("The job's process ended while the development site was down.")
                job.finish(code, None if code is not None else ENDED_WHILE_DOWN)
        else:  # the site stopped between the job's creation and its start
            job.finish(None, NOT_STARTED)
        if job.active and job.aborted:  # the site stopped while the job was being aborted
            await self.runner(job).abort(job)

    async def close(self) -> None:
        """End every active job (local processes, Slurm jobs): the site shuts down.
        (A site that is killed leaves its jobs running; ``open`` takes them up again.)"""
        if self._expiry is not None:
            self._expiry.cancel()
        for job in self.store.all():
            if job.active:
                job.aborted = True
                job.note("Aborted: the development site is shutting down.")
                if job.status in ("READY", "STAGINGIN"):
                    job.finish(None)
        if self._tasks:  # submissions under way see the abort and end their job
            await asyncio.wait(list(self._tasks), timeout=40)
        await self.local.close()
        if self.slurm is not None:
            await self.slurm.close()
        await self.http.aclose()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def runner(self, job: Job) -> LocalRunner | SlurmRunner:
        return self.slurm if job.runner == "slurm" and self.slurm else self.local

    async def submit(self, caller: Caller, description: Any) -> Job:
        spec = parse_description(description, self.config.gpu_resource)
        job_id = str(uuid.uuid4())
        on_slurm = self.slurm is not None and spec.job_type == "BATCH"
        job = Job(
            id=job_id,
            owner=caller.name,
            dn=caller.dn,
            uid=caller.uid,
            group=caller.group,
            spec=spec,
            description=submitted_copy(description),
            directory=self.store.workdir / job_id,
            runner="slurm" if on_slurm else "local",
        )
        job.queue = (spec.queue or self.default_queue) if spec.job_type == "BATCH" else None
        await asyncio.to_thread(job.directory.mkdir, mode=0o700)
        await asyncio.to_thread(make_home, job)
        await asyncio.to_thread(write_imports, job)
        self.store.add(job)
        job.note(f"Created with type 'JSON' for {caller.name} (uid {caller.uid}).")
        if spec.imports:
            job.note(f"Wrote {len(spec.imports)} inline import(s).")
        if spec.client_stage_in:
            job.set_status("READY")
        else:
            self.start(job)
        return job

    def start(self, job: Job) -> None:
        job.set_status("QUEUED")
        self._spawn(self._run(job))

    async def _run(self, job: Job) -> None:
        spec = job.spec
        if job.aborted:
            job.finish(None)
            return
        if spec.job_type == "ON_LOGIN_NODE":
            node = f", requested node: <{spec.login_node}>" if spec.login_node else ""
            job.note("Execution on login node" + node)
        elif job.runner == "local" and spec.queue is not None and spec.queue not in self.queues:
            job.finish(
                None,
                f"The queue '{spec.queue}' is not available; use one of: "
                + ", ".join(self.queues)
                + ".",
            )
            return
        unused = list(spec.unused_resources)
        if job.runner == "local":
            local_unused = {
                "Nodes": spec.nodes,
                "Reservation": spec.reservation,
                "Project": spec.project,
                self.config.gpu_resource: spec.gpus,
            }
            unused += [k for k, v in local_unused.items() if v]
        if unused:
            job.note(f"Not used for this job: {', '.join(unused)}.")
        await self.runner(job).submit(job)

    async def abort(self, job: Job) -> None:
        if not job.active:
            return
        job.aborted = True
        job.note("Got 'abort' request.")
        if job.status in ("READY", "STAGINGIN"):
            job.finish(None)
        else:
            await self.runner(job).abort(job)

    def restart(self, job: Job) -> None:
        if job.active:
            return
        job.note("RESTARTING job.")
        job.reset()
        self.start(job)

    async def delete(self, job: Job) -> None:
        await self.abort(job)
        await self.runner(job).wait(job, self.config.grace + 2)
        self.store.remove(job.id)
        await asyncio.to_thread(shutil.rmtree, job.directory, True)
        log.info("job %s (%s): deleted", job.id, job.owner)

    async def details(self, job: Job) -> dict[str, Any]:
        if job.runner == "slurm" and self.slurm is not None:
            return await self.slurm.details(job)
        return {"batchSystemID": job.batch_id or "N/A", "host": self.local.host}

    async def _expire(self) -> None:
        """Remove jobs whose lifetime is over, as UNICORE does."""
        while True:
            await asyncio.sleep(self.config.lifetime_check)
            now = datetime.now(UTC)
            for job in self.store.all():
                if job.expires < now:
                    await self.delete(job)


# -- JSON as UNICORE renders it (pure) -------------------------------------------------


def job_json(job: Job, base: str) -> dict[str, Any]:
    """The job as UNICORE/X renders it (``GET /jobs/<id>``); ``base`` ends in /rest/core."""
    url = f"{base}/jobs/{job.id}"
    links = (
        ("self", url, "This job"),
        ("details", f"{url}/details", "BSS job details"),
        ("submitted", f"{url}/submitted", "Submitted job description"),
        ("action:start", f"{url}/actions/start", "Start"),
        ("action:abort", f"{url}/actions/abort", "Abort"),
        ("action:restart", f"{url}/actions/restart", "Restart"),
        ("workingDirectory", f"{base}/storages/{job.storage_id}", "Working directory"),
        ("parentTSS", f"{base}/sites/{SITE_ID}", "Parent TSS"),
    )
    prefs = {"uid": [job.uid], **({"group": [job.group]} if job.group else {})}
    body: dict[str, Any] = {
        "status": job.status,
        "statusMessage": job.status_message,
        "name": job.spec.name or "N/A",
        "queue": job.queue or "N/A",
        "batchSystemID": job.batch_id or "N/A",
        "jobType": job.spec.job_type,
        "submissionTime": unicore_time(job.submitted),
        "terminationTime": unicore_time(job.expires),
        "currentTime": unicore_time(datetime.now(UTC)),
        "log": list(job.log),
        "owner": job.dn,
        "acl": [],
        "tags": list(job.spec.tags),
        "submissionPreferences": prefs,
        "_links": {rel: {"href": href, "description": text} for rel, href, text in links},
    }
    if job.exit_code is not None:
        body["exitCode"] = str(job.exit_code)
    return body


def base_json(site: Devsite, caller: Caller, base: str) -> dict[str, Any]:
    """``GET <base>``: who the caller is, the server, links to the resources."""
    xlogin: dict[str, Any] = {
        "UID": caller.uid,
        "availableUIDs": list(caller.uids),
        "availableGroups": [caller.group] if caller.group else [],
        "selectedSupplementaryGroups": [],
    }
    if caller.group:
        xlogin["group"] = caller.group
    slurm = "OK" if site.slurm else "not used (jobs run as local processes)"
    return {
        "client": {
            "dn": caller.dn,
            "xlogin": xlogin,
            "role": {"selected": "user", "availableRoles": ["user"]},
            "queues": {"selected": site.default_queue, "availableQueues": list(site.queues)},
            "authenticationMethod": caller.method,
        },
        "server": {
            "siteName": site.config.site,
            "version": SERVER_VERSION,
            "upSince": unicore_time(site.up_since),
            "currentTime": unicore_time(datetime.now(UTC)),
            "jobSubmission": {"enabled": True, "message": "OK"},
            "externalConnections": {"Slurm": slurm},
            "trustedCAs": [],
            "trustedSAMLIssuers": [],
        },
        "_links": {
            r: {"href": f"{base}/{r}"}
            for r in ("factories", "sites", "jobs", "storages", "transfers")
        },
    }


def only_fields(body: dict[str, Any], fields: str | None) -> dict[str, Any]:
    """UNICORE's ``?fields=a,b`` (and ``!a`` to leave one out)."""
    if not fields:
        return body
    names = [f for f in re.split(r"[ +,]", fields) if f]
    wanted = {f for f in names if not f.startswith("!")}
    unwanted = {f[1:] for f in names if f.startswith("!")}
    return {k: v for k, v in body.items() if (not wanted or k in wanted) and k not in unwanted}


def paged(name: str, urls: list[str], url: str, offset: int, num: int) -> dict[str, Any]:
    links = {"self": {"href": f"{url}?offset={offset}&num={num}"}}
    if offset + num < len(urls):
        links["next"] = {"href": f"{url}?offset={offset + num}&num={num}"}
    if offset > 0:
        links["previous"] = {"href": f"{url}?offset={max(0, offset - num)}&num={num}"}
    return {name: urls[offset : offset + num], "_links": links}


# -- the app ------------------------------------------------------------------------------


_STRINGS = {"type": "array", "items": {"type": "string"}}
# the job description as UNICORE/X takes it (only in the OpenAPI document: the route
# reads the JSON itself and answers what UNICORE/X would for what does not fit)
JOB_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "Name": {"type": "string"},
                        "Executable": {"type": "string"},
                        "Arguments": _STRINGS,
                        "Environment": {
                            "oneOf": [
                                _STRINGS,
                                {"type": "object", "additionalProperties": {"type": "string"}},
                            ]
                        },
                        "Imports": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "From": {"type": "string"},
                                    "To": {"type": "string"},
                                    "Data": {"type": "string"},
                                    "Permissions": {"type": "string"},
                                },
                            },
                        },
                        "Resources": {"type": "object", "additionalProperties": {"type": "string"}},
                        "Tags": _STRINGS,
                        "Job type": {"type": "string", "enum": sorted(JOB_TYPES)},
                        "Login node": {"type": "string"},
                        "Project": {"type": "string"},
                        "haveClientStageIn": {"type": "string", "enum": ["true", "false"]},
                        "Stdout": {"type": "string"},
                        "Stderr": {"type": "string"},
                        "IgnoreNonZeroExitCode": {"type": "string", "enum": ["true", "false"]},
                    },
                }
            }
        },
    }
}


def create_app(config: DevsiteConfig) -> FastAPI:
    if not SITE_PATTERN.match(config.site):
        raise ValueError(f"the site name '{config.site}' may only hold letters, digits, _ and -")
    if not config.users and not config.tokens and not config.oidc_userinfo:
        raise ValueError("the development site needs at least one user or token")
    site = Devsite(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await site.open()
        log.info(
            "UNICORE development site %s is ready (jobs on %s, in %s)",
            config.site,
            "Slurm" if config.slurm else "local processes",
            config.workdir,
        )
        try:
            yield
        finally:
            await site.close()

    prefix = f"/{config.site}/rest/core"
    app = FastAPI(
        title=f"UNICORE development site {config.site}",
        description="The part of UNICORE/X's REST API that Lablink and pyunicore use. "
        "Every resource but this document needs a login.",
        lifespan=lifespan,
        openapi_url=prefix + "/openapi.json",  # UNICORE/X has none; for tests and fuzzing
        docs_url=None,
        redoc_url=None,
    )
    app.state.devsite = site
    app.state.prefix = prefix
    install_error_handlers(app)
    app.add_middleware(BodyLimit, key="errorMessage")

    @app.get(prefix)
    @app.get(prefix + "/")
    async def base(request: Request, caller: Authenticated, fields: str = "") -> dict[str, Any]:
        return only_fields(base_json(site, caller, base_url(request)), fields)

    @app.get(prefix + "/jobs")
    @app.get(prefix + "/sites/{tss}/jobs")
    async def list_jobs(
        request: Request,
        jobs: Annotated[list[Job], Depends(own_jobs)],
        offset: int = 0,
        num: int = 200,
    ) -> dict[str, Any]:
        base = base_url(request)
        urls = [f"{base}/jobs/{j.id}" for j in jobs]
        return paged("jobs", urls, f"{base}/jobs", max(0, offset), max(0, num))

    @app.post(prefix + "/jobs", status_code=201, openapi_extra=JOB_BODY)
    @app.post(prefix + "/sites/{tss}", status_code=201, openapi_extra=JOB_BODY)
    async def submit(request: Request, caller: Authenticated) -> Response:
        try:
            description = await request.json()
        except ValueError:
            raise SiteError(400, "The job description is not valid JSON.") from None
        job = await site.submit(caller, description)
        return Response(status_code=201, headers={"Location": f"{base_url(request)}/jobs/{job.id}"})

    @app.get(prefix + "/jobs/{job_id}")
    async def get_job(request: Request, job: OwnJob, fields: str = "") -> dict[str, Any]:
        return only_fields(job_json(job, base_url(request)), fields)

    @app.get(prefix + "/jobs/{job_id}/details")
    async def job_details(job: OwnJob) -> dict[str, Any]:
        return await site.details(job)

    @app.get(prefix + "/jobs/{job_id}/submitted")
    async def job_submitted(job: OwnJob) -> dict[str, Any]:
        return job.description

    @app.post(prefix + "/jobs/{job_id}/actions/{action}", status_code=204)
    async def job_action(job: OwnJob, action: str) -> Response:
        if action == "abort":
            await site.abort(job)
        elif action == "start":
            if job.status == "READY":
                site.start(job)
        elif action == "restart":
            site.restart(job)
        else:
            raise SiteError(404, f"A job has no action '{action}'; use start, abort or restart.")
        return Response(status_code=204)

    @app.delete(prefix + "/jobs/{job_id}", status_code=204)
    async def delete_job(job: OwnJob) -> Response:
        await site.delete(job)
        return Response(status_code=204)

    @app.get(prefix + "/sites")
    @app.get(prefix + "/factories")
    async def list_sites(request: Request, caller: Authenticated) -> dict[str, Any]:
        kind = request.url.path.rstrip("/").rsplit("/", 1)[-1]
        one = SITE_ID if kind == "sites" else FACTORY_ID
        return paged(
            kind, [f"{base_url(request)}/{kind}/{one}"], f"{base_url(request)}/{kind}", 0, 200
        )

    @app.get(prefix + "/sites/{tss}")
    @app.get(prefix + "/factories/{tss}")
    async def get_site(request: Request, caller: Authenticated, tss: str) -> dict[str, Any]:
        base = base_url(request)
        kind = "sites" if f"{prefix}/sites/" in request.url.path else "factories"
        if tss != (SITE_ID if kind == "sites" else FACTORY_ID):
            raise SiteError(404, f"There is no {kind[:-1]} {tss} here.")
        resources = {"Nodes": "*", "Runtime": "*", "Reservation": "*", config.gpu_resource: "*"}
        links = {
            "self": f"{base}/{kind}/{tss}",
            "jobs": f"{base}/sites/{SITE_ID}/jobs",
            "applications": f"{base}/{kind}/{tss}/applications",
        }
        return {
            "siteName": config.site,
            "resources": {q: dict(resources) for q in site.queues},
            "applications": [],
            "supportsReservation": "true",
            "numberOfJobs": len(site.store.of(caller.name)),
            "otherInfo": {},
            "_links": {rel: {"href": href} for rel, href in links.items()},
        }

    @app.get(prefix + "/transfers")
    async def list_transfers(request: Request, caller: Authenticated) -> dict[str, Any]:
        return paged("transfers", [], f"{base_url(request)}/transfers", 0, 200)

    app.include_router(storage_router(storage_job, own_jobs), prefix=prefix)
    return app
