"""The job table: each job of the site in ``<workdir>/jobs/<id>.json``, so that jobs
survive a restart of the site as they survive one of UNICORE/X.

A job's file is written whenever the job changes (``Job.save``): a new file, then
``os.replace``, so that a crash leaves the old version or the new one, never a part.
The files are small and written at once, so what a client has seen is on disk when
the site is killed. They hold what the job's description held, its Environment too,
and are readable by the site's user only. ``job_record`` and ``job_from_record`` are
pure.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import uuid
from dataclasses import asdict, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from .description import InlineImport, JobSpec
from .jobs import Job

log = logging.getLogger("lablink.devsite")

TABLE = "jobs"  # the job table's directory in the site's workdir
NOT_RECORDED = ("directory", "saver")  # the directory follows from the workdir


def job_record(job: Job) -> dict[str, Any]:
    """The job as JSON data."""
    record = {f.name: getattr(job, f.name) for f in fields(Job) if f.name not in NOT_RECORDED}
    record["spec"] = asdict(job.spec)
    record["submitted"] = job.submitted.isoformat()
    record["started_at"] = job.started_at.isoformat() if job.started_at else None
    return record


def job_from_record(record: dict[str, Any], workdir: Path) -> Job:
    """The job that ``job_record`` wrote, its directory in ``workdir``. Raises
    ValueError, KeyError or TypeError for a record that is not one."""
    job_id = str(uuid.UUID(record["id"]))  # a file name, never a path
    spec = dict(record["spec"])
    spec["imports"] = tuple(InlineImport(**item) for item in spec["imports"])
    for key in ("arguments", "tags", "unused_resources"):
        spec[key] = tuple(spec[key])
    recorded = {f.name for f in fields(Job)} - set(NOT_RECORDED)
    values = {key: value for key, value in record.items() if key in recorded}
    started_at = record.get("started_at")
    values.update(
        id=job_id,
        spec=JobSpec(**spec),
        directory=workdir / job_id,
        submitted=datetime.fromisoformat(record["submitted"]),
        started_at=datetime.fromisoformat(started_at) if started_at else None,
    )
    return Job(**values)


class JobStore:
    """The site's jobs in submission order, each also in the job table on disk."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir.resolve()
        self.table = self.workdir / TABLE
        self._jobs: dict[str, Job] = {}

    def load(self) -> list[Job]:
        """Read the job table (when the site starts). A file that cannot be read is
        left aside with a warning in the site's log."""
        self.table.mkdir(mode=0o700, parents=True, exist_ok=True)
        jobs = []
        for path in self.table.glob("*.json"):
            try:
                job = job_from_record(json.loads(path.read_text()), self.workdir)
                if path.stem != job.id:
                    raise ValueError(f"it holds the job {job.id}")
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("the job file %s cannot be read and is left aside: %s", path, exc)
                continue
            jobs.append(job)
        jobs.sort(key=lambda j: j.submitted)
        for job in jobs:
            self._jobs[job.id] = job
            job.saver = self.save
        return jobs

    def add(self, job: Job) -> None:
        self._jobs[job.id] = job
        job.saver = self.save
        self.save(job)

    def save(self, job: Job) -> None:
        """Write the job's file anew; if that fails, the job goes on (it is logged)."""
        path = self.table / f"{job.id}.json"
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(job_record(job), f)
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("job %s: the job table cannot be written (%s)", job.id, exc)

    def remove(self, job_id: str) -> None:
        job = self._jobs.pop(job_id, None)
        if job is not None:
            job.saver = None  # a runner's last word does not bring it back
        with contextlib.suppress(FileNotFoundError):
            (self.table / f"{job_id}.json").unlink()

    def get(self, job_id: str, owner: str) -> Job | None:
        """The job if ``owner`` owns it (nobody else can tell it exists)."""
        job = self._jobs.get(job_id)
        return job if job is not None and job.owner == owner else None

    def of(self, owner: str, tags: frozenset[str] = frozenset()) -> list[Job]:
        return [j for j in self._jobs.values() if j.owner == owner and tags <= set(j.spec.tags)]

    def all(self) -> list[Job]:
        return list(self._jobs.values())
