"""Jobs of the development site: the job and the runner that starts jobs as local
processes (the job description is in ``description``, the job table that keeps
jobs across a restart of the site in ``table``).

A runner has this contract (``LocalRunner`` here, ``SlurmRunner`` in ``slurm``):

- ``submit(job)`` starts the job whose directory is ready. On return the job is
  QUEUED or RUNNING, or FAILED with a ``statusMessage`` if it could not start.
  Later changes (RUNNING, SUCCESSFUL, FAILED) are made by the runner itself.
- ``follow(job)`` takes up, after a restart of the site, an active job that the
  site started before; from then on the runner makes the job's changes as for a
  job it submitted itself. ``LocalRunner.follow`` returns False, and changes
  nothing, if the job's process ended meanwhile: the caller then ends the job.
- ``abort(job)`` asks an active job to end and returns at once; the job ends
  FAILED with the message ``Job aborted.`` once it has stopped.
- ``wait(job, timeout)`` waits until the runner no longer tracks the job.
- ``close()`` ends every job the runner still tracks (at shutdown).

Every job runs with its uid's login variables (``Job.login``): ``HOME`` is the uid's
home on the site, ``<workdir>/homes/<uid>`` (0700), shared by all jobs of that uid
and kept when a job is deleted, and ``SHELL`` the login shell of the site's Unix
user, whom every job runs as, locally and through ``sbatch`` alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import signal
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from backend.procs import is_alive, signal_group, start_time, wait_exit

from . import UID_PATTERN
from .description import EXIT_CODE_FILE, SCRIPT_NAME, DescriptionError, JobSpec, job_script

log = logging.getLogger("lablink.devsite")

FINAL = frozenset({"SUCCESSFUL", "FAILED"})
ABORTED = "Job aborted."  # UNICORE's statusMessage for an aborted job
LIFETIME = timedelta(days=1)  # UNICORE's default lifetime of a job resource
HOMES = "homes"  # the users' homes in the site's workdir: homes/<uid>


# -- the job --------------------------------------------------------------------------


def unicore_time(when: datetime) -> str:
    """UNICORE's time format, yyyy-MM-dd'T'HH:mm:ssZ (e.g. 2025-03-01T12:00:00+0100)."""
    return when.astimezone().strftime("%Y-%m-%dT%H:%M:%S%z")


@dataclass
class Job:
    id: str
    owner: str  # the user name the request authenticated as
    dn: str
    uid: str
    group: str | None
    spec: JobSpec
    description: dict[str, Any]  # as submitted, inline data replaced
    directory: Path
    runner: str  # "local" or "slurm"
    submitted: datetime = field(default_factory=lambda: datetime.now(UTC))
    status: str = "STAGINGIN"
    status_message: str = ""
    exit_code: int | None = None
    batch_id: str | None = None
    queue: str | None = None
    aborted: bool = False
    log: list[str] = field(default_factory=list)
    pid: int | None = None  # a local job's process, the leader of its own session
    pid_start_time: int | None = None  # that process's start time (clock ticks since boot)
    started_at: datetime | None = None  # when that process started: its Runtime counts from here
    # writes the job to the job table (set by the store; see ``save``)
    saver: Callable[[Job], None] | None = field(default=None, repr=False, compare=False)

    @property
    def active(self) -> bool:
        return self.status not in FINAL

    @property
    def storage_id(self) -> str:
        return f"{self.id}-uspace"

    @property
    def expires(self) -> datetime:
        return self.submitted + LIFETIME

    @property
    def home(self) -> Path | None:
        """The home of the job's uid on the site, ``<workdir>/homes/<uid>``: the same
        for every job of that uid (None for a uid that is no Unix user name)."""
        if not UID_PATTERN.match(self.uid):
            return None
        return self.directory.parent / HOMES / self.uid

    def login(self) -> dict[str, str]:
        """What a login of the job's uid has on the site (``HOME``, ``SHELL``), which
        UNICORE's TSI gives every job of that uid."""
        home = self.home
        return {"HOME": str(home), "SHELL": login_shell()} if home else {"SHELL": login_shell()}

    def save(self) -> None:
        """Write the job to the job table (nothing before the store has it). Every note
        and every status change saves; a change without one calls ``save`` itself."""
        if self.saver is not None:
            self.saver(self)

    def note(self, text: str) -> None:
        """A line of the job's log (time-stamped like UNICORE's) and of the site's log."""
        stamp = datetime.now().astimezone().strftime("%a %b %d %H:%M:%S %Z %Y")
        self.log.append(f"{stamp}: {text}")
        log.info("job %s (%s): %s", self.id, self.owner, text)
        self.save()

    def set_status(self, status: str, message: str = "") -> None:
        changed = status != self.status
        self.status, self.status_message = status, message
        if changed:
            self.note(f"Status set to {status}.")
        else:
            self.save()

    def finish(self, exit_code: int | None, failure: str | None = None) -> None:
        """End the job: FAILED if aborted, if ``failure`` is given or on a non-zero exit."""
        if not self.active:
            return
        if exit_code is not None:
            self.exit_code = exit_code
            self.note(f"Exit code {exit_code}")
        if self.aborted:
            failure = ABORTED
        elif failure is None and exit_code and not self.spec.ignore_exit_code:
            failure = f"User application exited with non-zero exit code: <{exit_code}>."
        if failure:
            self.set_status("FAILED", failure)
        else:
            self.set_status("SUCCESSFUL")

    def reset(self) -> None:
        """Back to the start, for a restart."""
        self.status, self.status_message = "QUEUED", ""
        self.exit_code = self.batch_id = None
        self.pid = self.pid_start_time = None
        self.started_at = None
        self.aborted = False
        with contextlib.suppress(OSError):
            (self.directory / EXIT_CODE_FILE).unlink()


def login_shell() -> str:
    """The login shell of the Unix user the site runs its jobs as."""
    try:
        shell = pwd.getpwuid(os.getuid()).pw_shell
    except KeyError:
        shell = ""
    return shell or "/bin/bash"


def make_home(job: Job) -> None:
    """Create the home of the job's uid (0700) if it does not exist yet."""
    home = job.home
    if home is not None:
        home.parent.mkdir(exist_ok=True)
        home.mkdir(mode=0o700, exist_ok=True)


def write_imports(job: Job) -> None:
    """Write the job's inline imports into its (existing) directory."""
    root = job.directory.resolve()
    for imp in job.spec.imports:
        target = root / imp.to
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.parent.resolve().is_relative_to(root):
            raise DescriptionError(f"Imports: '{imp.to}' would leave the job directory.")
        target.write_text(imp.data)
        if imp.permissions is not None:
            target.chmod(imp.permissions)


def read_exit_code(directory: Path) -> int | None:
    try:
        return int((directory / EXIT_CODE_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


# -- the local-process runner ---------------------------------------------------------


def base_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """A minimal environment (PATH, HOME, LANG of the site); the job's own variables
    are exported by its script."""
    env = {k: environ[k] for k in ("PATH", "HOME", "LANG") if k in environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    return env


@dataclass
class _Process:
    """A local job's process. ``ended`` is done once it has ended, with its exit status
    if the site started it, or None if it was started before the site's restart (its
    status then went to another parent)."""

    pid: int
    ended: asyncio.Future[int | None]


async def _ended(pid: int, started: int) -> int | None:
    """Wait for the end of a process the site did not start (its exit status is not ours)."""
    await wait_exit(pid, started)
    return None


class LocalRunner:
    """Runs each job's script (``job_script``) with bash, as a process in its own
    session, in the job's directory. The process outlives the site; after a restart,
    ``follow`` takes it up again by its pid and start time."""

    def __init__(self, environ: Mapping[str, str], grace: float = 3.0) -> None:
        self.env = base_environment(environ)
        self.grace = grace
        self.host = socket.gethostname()
        self._procs: dict[str, _Process] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stoppers: set[asyncio.Task[None]] = set()

    async def submit(self, job: Job) -> None:
        spec = job.spec
        script = job.directory / SCRIPT_NAME
        try:
            await asyncio.to_thread(
                script.write_text, job_script(spec, job.id, job.directory, job.login())
            )
            with (
                (job.directory / spec.stdout).open("wb") as out,
                (job.directory / spec.stderr).open("wb") as err,
            ):
                proc = await asyncio.create_subprocess_exec(
                    "bash",
                    str(script),
                    cwd=job.directory,
                    env=self.env,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,
                )
        except OSError as exc:
            job.note(f"Could not start the job's script: {exc.strerror or exc}")
            job.finish(None, f"The job could not be started: {exc.strerror or exc}.")
            return
        job.pid, job.pid_start_time = proc.pid, start_time(proc.pid)
        job.started_at = datetime.now(UTC)
        job.batch_id = f"INTERACTIVE_{self.host}_{proc.pid}"
        job.note(f"Submitted as a local process with PID={proc.pid} on [{self.host}]")
        job.set_status("RUNNING")
        self._follow(job, _Process(proc.pid, asyncio.ensure_future(proc.wait())))
        if job.aborted:  # the abort came while the process was starting
            await self.abort(job)

    def follow(self, job: Job) -> bool:
        """Take up the process of a job started before the site's restart: True if it
        still runs (the same pid and start time), False if it has ended."""
        pid, started = job.pid, job.pid_start_time
        if pid is None or started is None or not is_alive(pid, started):
            return False
        job.note(f"Following the local process with PID={pid} again after a restart of the site.")
        job.set_status("RUNNING")
        self._follow(job, _Process(pid, asyncio.ensure_future(_ended(pid, started))))
        return True

    def _follow(self, job: Job, proc: _Process) -> None:
        self._procs[job.id] = proc
        self._tasks[job.id] = asyncio.create_task(self._watch(job, proc))

    async def _watch(self, job: Job, proc: _Process) -> None:
        runtime, left, failure = job.spec.runtime, None, None
        if runtime is not None:
            started = job.started_at or datetime.now(UTC)
            left = max(0.0, runtime - (datetime.now(UTC) - started).total_seconds())
        try:
            await asyncio.wait_for(asyncio.shield(proc.ended), left)
        except TimeoutError:
            job.note(f"Runtime of {runtime} seconds used up, stopping the job.")
            failure = f"The job used up its runtime of {runtime} seconds and was stopped."
            await self._stop(proc)
        finally:
            self._procs.pop(job.id, None)
            self._tasks.pop(job.id, None)
        # the script records its command's exit code; a script ended by a signal has none
        exit_code = await asyncio.to_thread(read_exit_code, job.directory)
        status = proc.ended.result()
        if exit_code is None and status is not None:
            exit_code = status if status >= 0 else 128 - status
        job.finish(None if job.aborted or failure else exit_code, failure)

    async def _stop(self, proc: _Process) -> None:
        """SIGTERM to the process group, SIGKILL after the grace period."""
        if not proc.ended.done():
            signal_group(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(proc.ended), self.grace)
        except TimeoutError:
            signal_group(proc.pid, signal.SIGKILL)
            await proc.ended
        signal_group(proc.pid, signal.SIGKILL)  # whatever the leader left behind

    async def abort(self, job: Job) -> None:
        proc = self._procs.get(job.id)
        if proc is None:
            return
        stopper = asyncio.create_task(self._stop(proc))
        self._stoppers.add(stopper)
        stopper.add_done_callback(self._stoppers.discard)

    async def wait(self, job: Job, timeout: float) -> None:
        task = self._tasks.get(job.id)
        if task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), timeout)

    async def close(self) -> None:
        procs = list(self._procs.values())
        tasks = list(self._tasks.values())
        await asyncio.gather(*(self._stop(p) for p in procs), return_exceptions=True)
        if tasks:
            await asyncio.wait(tasks, timeout=self.grace + 2)
