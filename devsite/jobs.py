"""Jobs of the development site: the job description, the job, the store of jobs
and the runner that starts jobs as local processes.

Jobs are kept in memory only; a restart of the development site forgets them.

A runner has this contract (``LocalRunner`` here, ``SlurmRunner`` in ``slurm``):

- ``submit(job)`` starts the job whose directory is ready. On return the job is
  QUEUED or RUNNING, or FAILED with a ``statusMessage`` if it could not start.
  Later changes (RUNNING, SUCCESSFUL, FAILED) are made by the runner itself.
- ``abort(job)`` asks an active job to end and returns at once; the job ends
  FAILED with the message ``Job aborted.`` once it has stopped.
- ``wait(job, timeout)`` waits until the runner no longer tracks the job.
- ``close()`` ends every job the runner still tracks (at shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from backend.procs import signal_group

log = logging.getLogger("lablink.devsite")

FINAL = frozenset({"SUCCESSFUL", "FAILED"})
EXIT_CODE_FILE = "UNICORE_SCRIPT_EXIT_CODE"  # as UNICORE's TSI names it
ABORTED = "Job aborted."  # UNICORE's statusMessage for an aborted job
LIFETIME = timedelta(days=1)  # UNICORE's default lifetime of a job resource
JOB_TYPES = {
    "BATCH": "BATCH",
    "NORMAL": "BATCH",  # UNICORE 8
    "ON_LOGIN_NODE": "ON_LOGIN_NODE",
    "INTERACTIVE": "ON_LOGIN_NODE",  # UNICORE 8 and pyunicore's Client.execute
}
# UNICORE's time units: a unit may be any prefix of a name, the first match wins
TIME_UNITS = ((("sec", "seconds"), 1), (("min", "minutes"), 60), (("h", "hours"), 3600),
              (("d", "days"), 86400))  # fmt: skip
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class SiteError(Exception):
    """An error answer of the site: an HTTP status and one sentence for a person."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


class DescriptionError(SiteError):
    """A job description that cannot be run (400)."""

    def __init__(self, message: str) -> None:
        super().__init__(400, message)


# -- the job description (pure) ------------------------------------------------------


@dataclass(frozen=True)
class InlineImport:
    to: str  # relative to the job directory, checked
    data: str
    permissions: int | None = None


@dataclass(frozen=True)
class JobSpec:
    """What the devsite honours of a UNICORE job description."""

    executable: str
    arguments: tuple[str, ...] = ()
    environment: Mapping[str, str] = field(default_factory=dict)
    imports: tuple[InlineImport, ...] = ()
    queue: str | None = None
    nodes: int | None = None
    runtime: int | None = None  # seconds
    reservation: str | None = None
    gpus: int | None = None
    project: str | None = None
    name: str | None = None
    tags: tuple[str, ...] = ()
    job_type: str = "BATCH"
    login_node: str | None = None
    client_stage_in: bool = False
    stdout: str = "stdout"
    stderr: str = "stderr"
    ignore_exit_code: bool = False
    unused_resources: tuple[str, ...] = ()


def parse_runtime(value: object) -> int:
    """Seconds from a UNICORE ``Runtime``: a whole number, or a string like "3600",
    "60min", "1h", "2d" (a unit is any prefix of sec/seconds, min/minutes, h/hours,
    d/days, as UNICORE's UnitParser accepts)."""
    if isinstance(value, bool):
        raise DescriptionError("Resources.Runtime must be a number of seconds or a time.")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*(\w*)\s*", value)
        if not m:
            raise DescriptionError(
                f"Resources.Runtime '{value}' is not a time; write e.g. 3600, '60min' or '1h'."
            )
        unit = m.group(2)
        found = (f for names, f in TIME_UNITS if any(n.startswith(unit) for n in names))
        factor = next(found, None)
        if factor is None:
            raise DescriptionError(
                f"Resources.Runtime has the unknown unit '{unit}'; use sec, min, h or d."
            )
        seconds = int(m.group(1)) * factor
    else:
        raise DescriptionError("Resources.Runtime must be a number of seconds or a time.")
    if seconds <= 0:
        raise DescriptionError("Resources.Runtime must be more than zero.")
    return seconds


def relative_path(value: object, key: str) -> str:
    """A path inside the job directory, as "a/b"; refuses absolute paths and '..'."""
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise DescriptionError(f"{key} must be a file name inside the job directory.")
    if value.startswith("/"):
        raise DescriptionError(f"{key} '{value}' must be relative to the job directory.")
    parts = [p for p in value.split("/") if p not in ("", ".")]
    if ".." in parts or not parts:
        raise DescriptionError(f"{key} '{value}' must stay inside the job directory.")
    return "/".join(parts)


def parse_permissions(value: object, key: str) -> int:
    """Unix permissions from "rwxr-x---" (or the owner's part alone, "r-x")."""
    if not isinstance(value, str) or not re.fullmatch(r"([r-][w-][x-]){1,3}", value):
        raise DescriptionError(f"{key} must look like 'rwxr-xr--'.")
    mode = 0
    for i, ch in enumerate(value.ljust(9, "-")):
        if ch != "-":
            mode |= 1 << (8 - i)
    return mode


def _text(value: object, key: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise DescriptionError(f"{key} must be a string.")


def _string(desc: Mapping[str, Any], key: str, where: str = "") -> str | None:
    value = desc.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise DescriptionError(f"{where}{key} must be a string.")
    return value


def _count(value: object, key: str, minimum: int) -> int:
    text = value.strip() if isinstance(value, str) else ""
    if text.isascii() and text.isdigit() and len(text) < 10:
        value = int(text)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DescriptionError(f"{key} must be a whole number of at least {minimum}.")
    return value


def _flag(value: object, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise DescriptionError(f"{key} must be true or false.")


def _environment(value: object) -> dict[str, str]:
    pairs: list[tuple[str, str]] = []
    if isinstance(value, dict):
        pairs = [(str(k), _text(v, f"Environment.{k}")) for k, v in value.items()]
    elif isinstance(value, list):
        for item in value:
            if not isinstance(item, str):
                raise DescriptionError('Environment entries must be strings like "NAME=value".')
            name, _, val = item.partition("=")
            pairs.append((name.strip(), val.strip()))
    else:
        raise DescriptionError('Environment must be an object or a list of "NAME=value".')
    for name, _ in pairs:
        if not ENV_NAME.match(name):
            raise DescriptionError(f"Environment has the invalid variable name '{name}'.")
    return dict(pairs)


def _imports(value: object) -> tuple[InlineImport, ...]:
    if not isinstance(value, list):
        raise DescriptionError("Imports must be a list.")
    out = []
    for i, item in enumerate(value):
        key = f"Imports[{i}]"
        if not isinstance(item, dict):
            raise DescriptionError(f"{key} must be an object with To and Data.")
        to = relative_path(item.get("To", item.get("file")), f"{key}.To")
        source = item.get("From", item.get("source"))
        if source is not None and not (isinstance(source, str) and source.startswith("inline:")):
            raise DescriptionError(
                f"{key}.From: the development site only has inline imports; "
                "upload other files to the job's working directory."
            )
        data = item.get("Data", "")
        if isinstance(data, list):  # UNICORE ends every line with a newline
            lines = [_text(line, f"{key}.Data") for line in data]
            data = "".join(line if line.endswith("\n") else line + "\n" for line in lines)
        elif not isinstance(data, str):
            raise DescriptionError(f"{key}.Data must be a string or a list of lines.")
        perms = item.get("Permissions")
        mode = parse_permissions(perms, f"{key}.Permissions") if perms is not None else None
        out.append(InlineImport(to, data, mode))
    return tuple(out)


def _tags(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(t for t in re.split(r"[ +,]", value) if t)
    if isinstance(value, list) and all(isinstance(t, str) for t in value):
        return tuple(value)
    raise DescriptionError("Tags must be a list of strings.")


def parse_description(desc: object, gpu_resource: str = "GPUS") -> JobSpec:
    """Check a UNICORE job description; unknown keys are ignored, as UNICORE does."""
    if not isinstance(desc, dict):
        raise DescriptionError("The job description must be a JSON object.")
    executable = desc.get("Executable")
    if not isinstance(executable, str) or not executable.strip():
        raise DescriptionError(
            "The job description needs an Executable (applications are not available here)."
        )
    args = desc.get("Arguments", [])
    if not isinstance(args, list):
        raise DescriptionError("Arguments must be a list of strings.")
    arguments = tuple(_text(a, "Arguments") for a in args)
    environment = _environment(desc["Environment"]) if "Environment" in desc else {}
    imports = _imports(desc["Imports"]) if "Imports" in desc else ()

    res = desc.get("Resources", {})
    if not isinstance(res, dict):
        raise DescriptionError("Resources must be an object.")
    queue = res.get("Queue")
    if queue is not None and not isinstance(queue, str):
        raise DescriptionError("Resources.Queue must be a string.")
    nodes = _count(res["Nodes"], "Resources.Nodes", 1) if "Nodes" in res else None
    runtime = parse_runtime(res["Runtime"]) if "Runtime" in res else None
    gpu_key = f"Resources.{gpu_resource}"
    gpus = _count(res[gpu_resource], gpu_key, 0) if gpu_resource in res else None
    reservation = _string(res, "Reservation", "Resources.")
    project = _string(desc, "Project") or _string(res, "Project", "Resources.")
    known = {"Queue", "Nodes", "Runtime", "Reservation", "Project", gpu_resource}

    raw_type = desc.get("Job type", "BATCH")
    if not isinstance(raw_type, str):
        raise DescriptionError("Job type must be a string.")
    job_type = JOB_TYPES.get(raw_type.upper())
    if job_type is None:
        raise DescriptionError(
            f"Job type '{raw_type}' is not available here; use BATCH or ON_LOGIN_NODE."
        )
    stage_in = desc.get("haveClientStageIn", False)
    return JobSpec(
        executable=executable,
        arguments=arguments,
        environment=environment,
        imports=imports,
        queue=queue,
        nodes=nodes,
        runtime=runtime,
        reservation=reservation,
        gpus=gpus,
        project=project,
        name=_string(desc, "Name"),
        tags=_tags(desc["Tags"]) if "Tags" in desc else (),
        job_type=job_type,
        login_node=_string(desc, "Login node"),
        client_stage_in=_flag(stage_in, "haveClientStageIn"),
        stdout=relative_path(desc.get("Stdout", "stdout"), "Stdout"),
        stderr=relative_path(desc.get("Stderr", "stderr"), "Stderr"),
        ignore_exit_code=_flag(desc.get("IgnoreNonZeroExitCode", False), "IgnoreNonZeroExitCode"),
        unused_resources=tuple(sorted(k for k in res if k not in known)),
    )


def submitted_copy(desc: Mapping[str, Any]) -> dict[str, Any]:
    """The description as ``/submitted`` shows it: inline data replaced, as UNICORE does."""
    copy = dict(desc)
    if isinstance(copy.get("Imports"), list):
        copy["Imports"] = [
            {**item, "Data": "n/a"} if isinstance(item, dict) and "Data" in item else item
            for item in copy["Imports"]
        ]
    return copy


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

    @property
    def active(self) -> bool:
        return self.status not in FINAL

    @property
    def storage_id(self) -> str:
        return f"{self.id}-uspace"

    @property
    def expires(self) -> datetime:
        return self.submitted + LIFETIME

    def note(self, text: str) -> None:
        """A line of the job's log (time-stamped like UNICORE's) and of the site's log."""
        stamp = datetime.now().astimezone().strftime("%a %b %d %H:%M:%S %Z %Y")
        self.log.append(f"{stamp}: {text}")
        log.info("job %s (%s): %s", self.id, self.owner, text)

    def set_status(self, status: str, message: str = "") -> None:
        if status != self.status:
            self.note(f"Status set to {status}.")
        self.status, self.status_message = status, message

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
        self.aborted = False
        with contextlib.suppress(OSError):
            (self.directory / EXIT_CODE_FILE).unlink()


class JobStore:
    """The site's jobs, in memory, in submission order."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}

    def add(self, job: Job) -> None:
        self._jobs[job.id] = job

    def remove(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)

    def get(self, job_id: str, owner: str) -> Job | None:
        """The job if ``owner`` owns it (nobody else can tell it exists)."""
        job = self._jobs.get(job_id)
        return job if job is not None and job.owner == owner else None

    def of(self, owner: str, tags: frozenset[str] = frozenset()) -> list[Job]:
        return [j for j in self._jobs.values() if j.owner == owner and tags <= set(j.spec.tags)]

    def all(self) -> list[Job]:
        return list(self._jobs.values())


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


def job_environment(base: Mapping[str, str], spec: JobSpec) -> dict[str, str]:
    """A minimal environment (PATH, HOME, LANG of the site) plus the job's own."""
    env = {k: base[k] for k in ("PATH", "HOME", "LANG") if k in base}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    return {**env, **spec.environment}


class LocalRunner:
    """Runs each job as a process in its own session, in the job's directory."""

    def __init__(self, base_env: Mapping[str, str], grace: float = 3.0) -> None:
        self.base_env = dict(base_env)
        self.grace = grace
        self.host = socket.gethostname()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._procs: dict[str, asyncio.subprocess.Process] = {}
        self._stoppers: set[asyncio.Task[None]] = set()

    async def submit(self, job: Job) -> None:
        spec = job.spec
        argv = [spec.executable, *spec.arguments]
        try:
            with (
                (job.directory / spec.stdout).open("wb") as out,
                (job.directory / spec.stderr).open("wb") as err,
            ):
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    cwd=job.directory,
                    env=job_environment(self.base_env, spec),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,
                )
        except OSError as exc:
            job.note(f"Could not start {spec.executable}: {exc.strerror or exc}")
            job.finish(None, f"Could not start '{spec.executable}': {exc.strerror or exc}.")
            return
        job.batch_id = f"INTERACTIVE_{self.host}_{proc.pid}"
        job.note(f"Submitted as a local process with PID={proc.pid} on [{self.host}]")
        job.set_status("RUNNING")
        self._procs[job.id] = proc
        self._tasks[job.id] = asyncio.create_task(self._watch(job, proc))
        if job.aborted:  # the abort came while the process was starting
            await self.abort(job)

    async def _watch(self, job: Job, proc: asyncio.subprocess.Process) -> None:
        failure = None
        try:
            await asyncio.wait_for(proc.wait(), job.spec.runtime)
        except TimeoutError:
            job.note(f"Runtime of {job.spec.runtime} seconds used up, stopping the job.")
            failure = f"The job used up its runtime of {job.spec.runtime} seconds and was stopped."
            await self._stop(proc)
        finally:
            self._procs.pop(job.id, None)
            self._tasks.pop(job.id, None)
        code = proc.returncode
        exit_code = None if code is None else (code if code >= 0 else 128 - code)
        if exit_code is not None and not job.aborted and failure is None:
            with contextlib.suppress(OSError):
                (job.directory / EXIT_CODE_FILE).write_text(f"{exit_code}\n")
        job.finish(None if job.aborted or failure else exit_code, failure)

    async def _stop(self, proc: asyncio.subprocess.Process) -> None:
        """SIGTERM to the process group, SIGKILL after the grace period."""
        signal_group(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), self.grace)
        except TimeoutError:
            signal_group(proc.pid, signal.SIGKILL)
            await proc.wait()
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

    def pids(self) -> list[int]:
        return [p.pid for p in self._procs.values()]
